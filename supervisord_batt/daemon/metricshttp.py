"""The /metrics endpoint, served from the daemon's event loop.

prometheus-client's own server (`start_http_server`) runs in a thread, and the daemon
starts none: a host out of threads is exactly when the metrics matter. So this is a small
HTTP/1.1 responder on the loop's readiness callbacks: one GET (or HEAD) per connection,
answered and closed. It works on the non-blocking sockets themselves, not through
asyncio's servers: those make a Task, a Future and a Transport for every connection and
take five turns of the loop to answer one scrape, where this takes one (the request has
nearly always arrived by the time the connection is accepted).
The body is the library's exposition in Prometheus' text format, whatever the Accept
header offers: Prometheus reads it, and one rendering a tick (`render`, the daemon's)
then serves every scraper and the textfile alike (see daemon.metrics).

What a peer can make it do is bounded: a request head of at most 8 KiB read within 5 s,
at most 16 connections at once, nothing kept after the reply. When accept() fails (out of
descriptors), accepting pauses for a second, as asyncio's servers do, and the failure is
reported.

# When all 16 connections are taken
A scrape is answered in the callback that accepts it (its head has nearly always
arrived), so it needs no slot; the slots hold peers whose head is incomplete, which is
what a peer sending its head a byte at a time, or none, looks like. Refusing every
newcomer while such peers held all 16 failed the scrapes instead of them (20 peers each
sending a byte a second and back as soon as dropped: 0% of scrapes answered over 30 s,
and the refused peers' reconnections took 62% of a core). So a newcomer is always
accepted and read, and answered when its head is whole. One whose head is incomplete,
when all slots are taken, evicts the oldest exchange if that has been open
`EVICT_AFTER` (a scraper's head takes milliseconds; a second is a generous margin); else
the newcomer has `REFUSED_PAUSE` to complete its head (a scraper accepted between its
connect and its send does), or is refused (closed), and accepting pauses as long, or
until a slot frees: refused peers that reconnect at once wait in the kernel's queue
meanwhile instead of spinning, and a scrape queued behind them waits about that pause.
Evictions, refusals and peers dropped for the head timeout are reported (`on_drop`): the
daemon counts them in a metric and a throttled line.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from supervisord_batt.logs import get_logger

log = get_logger(component="metrics")

MAX_HEAD = 8 * 1024
HEAD_TIMEOUT = 5.0
MAX_CONNECTIONS = 16
BACKLOG = 64  # the kernel's queue of connections not yet accepted (see the docstring)
EVICT_AFTER = 1.0  # seconds: an exchange younger than this is not evicted
REFUSED_PAUSE = 0.05  # seconds without accepting after refusing a newcomer
ACCEPT_PAUSE = 1.0  # seconds without accepting after accept() failed (no descriptors)


Render = Callable[[], tuple[bytes, str]]  # -> (body, content type)
# (why: "evicted", "refused" or "timeout", the peer's address, seconds open, head bytes received)
OnDrop = Callable[[str, str, float, int], Any]


def respond(head: bytes, render: Render) -> bytes:
    """The whole HTTP response to one request head (pure, but for the scrape itself)."""
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/"):
        return _plain(400, "Bad Request", "not an HTTP request line\n")
    method, target, _version = parts
    if method not in ("GET", "HEAD"):
        return _plain(405, "Method Not Allowed", "GET or HEAD only\n", allow="GET, HEAD")
    path = target.split("?", 1)[0]
    if path == "/":
        return _plain(200, "OK", "supervisord-batt: metrics at /metrics\n")
    if path != "/metrics":
        return _plain(404, "Not Found", "metrics are at /metrics\n")
    body, content_type = render()
    header = _head(200, "OK", content_type, len(body))
    return header if method == "HEAD" else header + body


def _head(code: int, reason: str, content_type: str, length: int, **extra: str) -> bytes:
    fields = [
        f"HTTP/1.1 {code} {reason}",
        f"Content-Type: {content_type}",
        f"Content-Length: {length}",
        "Connection: close",
        *(f"{name.title()}: {value}" for name, value in extra.items()),
    ]
    return ("\r\n".join(fields) + "\r\n\r\n").encode("latin-1")


def _plain(code: int, reason: str, text: str, **extra: str) -> bytes:
    body = text.encode()
    return _head(code, reason, "text/plain; charset=utf-8", len(body), **extra) + body


@dataclass(eq=False)
class _Exchange:
    """One connection: read the head, write the response, close."""

    endpoint: MetricsEndpoint
    conn: socket.socket
    peer: str
    opened: float  # the loop's clock at accept
    fd: int = field(init=False)
    head: bytearray = field(default_factory=bytearray)
    out: memoryview = field(default_factory=lambda: memoryview(b""))
    reading: bool = False  # a reader callback is registered
    writing: bool = False  # a writer callback is registered
    timer: asyncio.TimerHandle | None = None

    def __post_init__(self) -> None:
        self.fd = self.conn.fileno()

    def read(self) -> None:
        try:
            data = self.conn.recv(MAX_HEAD + 1)
        except (BlockingIOError, InterruptedError):
            self._wait_for_head()
            return
        except OSError:
            self.close()
            return
        if not data:  # the peer went away before a whole head
            self.close()
            return
        self.head += data
        end = self.head.find(b"\r\n\r\n")
        if end >= 0:
            self._respond(bytes(self.head[:end]))
        elif len(self.head) > MAX_HEAD:
            self._reply(_plain(431, "Request Header Fields Too Large", "head too large\n"))
        else:
            self._wait_for_head()

    def _wait_for_head(self) -> None:
        if not self.reading:
            self.endpoint.loop.add_reader(self.fd, self.read)
            self.reading = True
            self._arm_timer()

    def _arm_timer(self) -> None:
        """A peer that sends no head, or reads no response, is dropped after HEAD_TIMEOUT."""
        if self.timer is None:
            self.timer = self.endpoint.loop.call_later(HEAD_TIMEOUT, self.drop, "timeout")

    def _respond(self, head: bytes) -> None:
        try:
            response = respond(head, self.endpoint.render)
        except Exception as exc:  # a collector bug: the scrape fails, the daemon serves on
            self.endpoint.on_error(exc)
            response = _plain(500, "Internal Server Error", "metrics failed; see the log\n")
        self.endpoint.scrapes += 1
        self._reply(response)

    def _reply(self, response: bytes) -> None:
        if self.timer is not None:  # the head is in: a reply not read gets its own timeout
            self.timer.cancel()  # (and a newcomer's REFUSED_PAUSE no longer applies)
            self.timer = None
        if self.reading:
            self.endpoint.loop.remove_reader(self.fd)
            self.reading = False
        self.out = memoryview(response)
        self.write()

    def write(self) -> None:
        try:
            sent = self.conn.send(self.out)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            self.close()
            return
        self.out = self.out[sent:]
        if not self.out:
            self.close()
        elif not self.writing:  # the rest when the peer has read some
            self.endpoint.loop.add_writer(self.fd, self.write)
            self.writing = True
            self._arm_timer()

    def drop(self, why: str) -> None:
        """Closed before its reply was sent: evicted, or the head timeout ran out."""
        age = self.endpoint.loop.time() - self.opened
        self.close()
        self.endpoint.on_drop(why, self.peer, age, len(self.head))

    def close(self) -> None:
        loop = self.endpoint.loop
        if self.reading:
            loop.remove_reader(self.fd)
        if self.writing:
            loop.remove_writer(self.fd)
        self.reading = self.writing = False
        if self.timer is not None:
            self.timer.cancel()
        self.endpoint.open.pop(self.fd, None)
        self.conn.close()
        self.endpoint.slot_freed()


class MetricsEndpoint:
    """Listens on (address, port); `start` and `close` from the daemon's loop."""

    def __init__(
        self,
        address: tuple[str, int],
        render: Render,
        on_error: Callable[[Exception], Any],
        on_accept_error: Callable[[OSError], Any] = lambda exc: None,
        on_drop: OnDrop = lambda why, peer, age, received: None,
    ) -> None:
        self.address = address
        self.render = render
        self.on_error = on_error
        self.on_accept_error = on_accept_error  # out of descriptors (accepting pauses)
        self.on_drop = on_drop  # an exchange closed unanswered (evicted, timed out)
        self.open: dict[int, _Exchange] = {}  # by descriptor, oldest first
        self.scrapes = 0
        self._sock: socket.socket | None = None
        self._resume: asyncio.TimerHandle | None = None
        self._full = False  # accepting paused until a slot frees (see the docstring)

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        return asyncio.get_running_loop()

    async def start(self) -> None:
        """Listen; raises OSError (the port is taken, the address is not this host's)."""
        host, port = self.address
        family = socket.AF_INET6 if ":" in host else socket.AF_INET  # an IP, never a name
        sock = socket.create_server((host, port), family=family, backlog=BACKLOG)
        sock.setblocking(False)
        self._sock = sock
        self.loop.add_reader(sock.fileno(), self._accept)
        log.info("metrics_listening", address=host, port=self.port)

    @property
    def port(self) -> int:
        """The port bound (the configured one, or the kernel's pick for port 0 in tests)."""
        if self._sock is None:
            return self.address[1]
        return int(self._sock.getsockname()[1])

    def _accept(self) -> None:
        sock = self._sock
        assert sock is not None
        refused = False
        for _ in range(MAX_CONNECTIONS):  # a burst, then the loop's other callbacks
            try:
                conn, addr = sock.accept()
            except (BlockingIOError, InterruptedError):
                break
            except ConnectionAbortedError:  # that one went away: the next may be there
                continue
            except OSError as exc:  # EMFILE and the like: the socket stays readable,
                self._pause(ACCEPT_PAUSE)  # so retrying at once would spin
                self.on_accept_error(exc)
                return
            conn.setblocking(False)
            peer = f"{addr[0]}:{addr[1]}" if isinstance(addr, tuple) else str(addr)
            exchange = _Exchange(self, conn, peer, self.loop.time())
            self.open[exchange.fd] = exchange
            try:
                exchange.read()  # a whole head is answered (and closed) here
            except Exception:  # a bug on this connection: it is closed, the loop says why
                exchange.close()
                raise
            if len(self.open) > MAX_CONNECTIONS:  # this one waits for its head: room?
                refused |= not self._make_room(exchange)
        if refused:
            self._full = True
            self._pause(REFUSED_PAUSE)

    def _make_room(self, newcomer: _Exchange) -> bool:
        """Evict the oldest exchange if it is old enough; else the newcomer is refused
        unless its head is whole within REFUSED_PAUSE."""
        oldest = next(iter(self.open.values()))
        if self.loop.time() - oldest.opened >= EVICT_AFTER:
            oldest.drop("evicted")
            return True
        if newcomer.timer is not None:
            newcomer.timer.cancel()
        newcomer.timer = self.loop.call_later(REFUSED_PAUSE, newcomer.drop, "refused")
        return False

    def slot_freed(self) -> None:
        """An exchange closed: accept again at once if accepting waited for room."""
        if self._full and self._resume is not None:
            self._resume.cancel()
            self._listen_again()

    def _pause(self, seconds: float) -> None:
        assert self._sock is not None
        self.loop.remove_reader(self._sock.fileno())
        self._resume = self.loop.call_later(seconds, self._listen_again)

    def _listen_again(self) -> None:
        self._resume = None
        self._full = False
        if self._sock is not None:
            self.loop.add_reader(self._sock.fileno(), self._accept)

    async def close(self) -> None:
        sock, self._sock = self._sock, None
        if sock is None:
            return
        if self._resume is not None:
            self._resume.cancel()
        else:
            self.loop.remove_reader(sock.fileno())
        sock.close()
        for exchange in list(self.open.values()):
            exchange.close()
