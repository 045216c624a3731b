"""The /metrics endpoint, served from the daemon's event loop.

prometheus-client's own server (`start_http_server`) runs in a thread, and the daemon
starts none: a host out of threads is exactly when the metrics matter. So this is a small
HTTP/1.1 responder on asyncio: one GET (or HEAD) per connection, answered and closed.
The body is the library's exposition in Prometheus' text format, whatever the Accept
header offers: Prometheus reads it, and one rendering a tick (`render`, the daemon's)
then serves every scraper and the textfile alike (see daemon.metrics).

What a peer can make it do is bounded: a request head of at most 8 KiB read within 5 s,
at most 16 connections at once (more are closed at once), nothing kept after the reply.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

from supervisord_batt.logs import get_logger

log = get_logger(component="metrics")

MAX_HEAD = 8 * 1024
HEAD_TIMEOUT = 5.0
MAX_CONNECTIONS = 16


Render = Callable[[], tuple[bytes, str]]  # -> (body, content type)


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


class _Exchange(asyncio.Protocol):
    """One connection: read the head, write the response, close."""

    def __init__(self, endpoint: MetricsEndpoint) -> None:
        self.endpoint = endpoint
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None
        self.timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        if len(self.endpoint.open) >= MAX_CONNECTIONS:
            transport.abort()
            self.endpoint.refused += 1
            return
        self.endpoint.open.add(self)
        loop = asyncio.get_running_loop()
        self.timer = loop.call_later(HEAD_TIMEOUT, transport.abort)

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        if self not in self.endpoint.open:
            return
        self.buffer += data
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(self.buffer) > MAX_HEAD:
                self._reply(_plain(431, "Request Header Fields Too Large", "head too large\n"))
            return
        try:
            response = respond(bytes(self.buffer[:end]), self.endpoint.render)
        except Exception as exc:  # a collector bug: the scrape fails, the daemon serves on
            self.endpoint.on_error(exc)
            response = _plain(500, "Internal Server Error", "metrics failed; see the log\n")
        self.endpoint.scrapes += 1
        self._reply(response)

    def _reply(self, response: bytes) -> None:
        assert self.transport is not None
        self.transport.write(response)
        self.transport.close()  # after the buffered response is written
        self.buffer.clear()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.timer is not None:
            self.timer.cancel()
        self.endpoint.open.discard(self)


class MetricsEndpoint:
    """Listens on (address, port); `start` and `close` from the daemon's loop."""

    def __init__(
        self,
        address: tuple[str, int],
        render: Render,
        on_error: Callable[[Exception], Any],
    ) -> None:
        self.address = address
        self.render = render
        self.on_error = on_error
        self.open: set[_Exchange] = set()
        self.scrapes = 0
        self.refused = 0  # connections closed at once: MAX_CONNECTIONS were open
        self._server: asyncio.base_events.Server | None = None

    async def start(self) -> None:
        """Listen; raises OSError (the port is taken, the address is not this host's)."""
        host, port = self.address
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: _Exchange(self), host, port, reuse_address=True, backlog=MAX_CONNECTIONS
        )
        log.info("metrics_listening", address=host, port=self.port)

    @property
    def port(self) -> int:
        """The port bound (the configured one, or the kernel's pick for port 0 in tests)."""
        if self._server is None or not self._server.sockets:
            return self.address[1]
        return int(self._server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        for exchange in list(self.open):
            if exchange.transport is not None:
                exchange.transport.abort()
        with contextlib.suppress(Exception):
            await server.wait_closed()
