"""The server's framing and back-pressure, in process: `Link` driven by a fake transport.

The subprocess tests (tests/integration/daemon/test_socket.py) show the same behaviour
over a real socket; these pin down each rule of server.py's framing exactly: which reads
are answered, in which order, what an overlong line gets, when reading pauses and
resumes. Each test runs a real asyncio loop; the transport is fake (it records writes,
holds the peer's unread bytes and calls pause_writing/resume_writing at a high-water
mark), the peer credentials come from a real socketpair.
"""

from __future__ import annotations

import asyncio
import collections
import json
import os
import socket
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from supervisord_batt import protocol
from supervisord_batt.config.loader import load_config_text
from supervisord_batt.daemon.server import Connection, Hooks, Link, Server

LIMIT = 256  # max_message_bytes in these tests


class FakeTransport(asyncio.Transport):
    """A transport with a peer the test plays: `send` is what the peer writes, `take`
    what it reads. Writes are kept until the peer takes them; past `high` unread bytes
    the protocol is told to pause writing, and to resume once the peer has read down to
    `low`. While reading is paused, what the peer sends waits (as in the socket) and is
    delivered on a later loop iteration after resume_reading, chunk by chunk as sent."""

    def __init__(self, sock: socket.socket, high: int = 1 << 20, low: int = 0) -> None:
        super().__init__()
        self.sock = sock
        self.high, self.low = high, low
        self.link: Link | None = None
        self.unread = bytearray()  # replies the peer has not read yet
        self.inbox: collections.deque[bytes] = collections.deque()  # sent, not delivered
        self.reading = True
        self.write_paused = False
        self.closing = False
        self.lost = False
        self.eof_sent = False  # the peer sent EOF
        self.eof_written = False  # the server half-closed
        self.writes_after_close = 0
        self.pauses = 0

    def attach(self, link: Link) -> None:
        self.link = link
        link.connection_made(self)

    # -- what the protocol calls ---------------------------------------------------------

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.sock if name == "socket" else default

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self.closing:
            self.writes_after_close += 1
            return
        self.unread += data
        if not self.write_paused and len(self.unread) > self.high:
            self.write_paused = True
            self.pauses += 1
            assert self.link is not None
            self.link.pause_writing()

    def get_write_buffer_size(self) -> int:
        return len(self.unread)

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        if not self.reading:
            self.reading = True
            asyncio.get_running_loop().call_soon(self._deliver)

    def is_reading(self) -> bool:
        return self.reading

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        if not self.closing:
            self.closing = True
            asyncio.get_running_loop().call_soon(self._lose)

    def abort(self) -> None:
        self.close()

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self.eof_written = True

    # -- what the peer does --------------------------------------------------------------

    def send(self, *chunks: bytes) -> None:
        """The peer writes `chunks`, each arriving as one read (while reading is on)."""
        self.inbox.extend(chunks)
        self._deliver()

    def send_eof(self) -> None:
        self.eof_sent = True
        self._deliver()

    def take(self, n: int | None = None) -> bytes:
        """The peer reads up to `n` bytes of replies (all by default)."""
        n = len(self.unread) if n is None else n
        got = bytes(self.unread[:n])
        del self.unread[:n]
        if self.write_paused and len(self.unread) <= self.low:
            self.write_paused = False
            assert self.link is not None
            self.link.resume_writing()
        return got

    def replies(self) -> list[dict[str, Any]]:
        """Every whole reply line the peer has not read yet, read now."""
        end = self.unread.rfind(b"\n") + 1
        return [json.loads(line) for line in self.take(end).splitlines()]

    def _deliver(self) -> None:
        assert self.link is not None
        while self.inbox and self.reading and not self.closing:
            self.link.data_received(self.inbox.popleft())
        if self.eof_sent and not self.inbox and self.reading and not self.closing:
            self.eof_sent = False
            if not self.link.eof_received():
                self.close()

    def _lose(self) -> None:
        if not self.lost:
            self.lost = True
            assert self.link is not None
            self.link.connection_lost(None)


class Harness:
    """A Server (never started: no listening socket) whose handler the test scripts."""

    def __init__(self, config: str = "") -> None:
        text = f"daemon:\n  max_message_bytes: {LIMIT}\n{config}"
        self.config = load_config_text(text).daemon
        self.closed: list[Connection] = []
        self.gates: dict[Any, asyncio.Event] = {}  # request id -> what its reply waits for
        self.handled: list[Any] = []  # request ids in the order the handler saw them
        hooks = Hooks(handle=self.handle, on_close=self.closed.append)
        self.server = Server(self.config, hooks, Path("/nonexistent"))
        self.socks: list[socket.socket] = []

    def handle(self, conn: Connection, msg: dict[str, Any]) -> Any:
        self.handled.append(msg.get("id"))
        op = msg["op"]
        if op == "reload":  # a request that waits: answered from a task
            gate = self.gates.setdefault(msg.get("id"), asyncio.Event())
            return self._later(gate, msg.get("id"))
        if op == "stop":  # a handler bug
            raise RuntimeError("boom")
        if op == "release":
            raise protocol.ProtocolError(protocol.UNKNOWN_LEASE, "no such lease")
        if op == "renew":
            raise protocol.ProtocolError(protocol.BAD_REQUEST, "fatal", fatal=True)
        if op == "tail":  # a big reply
            return protocol.ok(msg.get("id"), data="x" * msg.get("bytes", 0))
        return protocol.ok(msg.get("id"), conn=conn.key)

    async def _later(self, gate: asyncio.Event, request_id: Any) -> dict[str, Any]:
        await gate.wait()
        return protocol.ok(request_id, waited=True)

    def gate(self, request_id: Any) -> asyncio.Event:
        return self.gates.setdefault(request_id, asyncio.Event())

    def connect(self, high: int = 1 << 20, low: int = 0) -> FakeTransport:
        ours, theirs = socket.socketpair()
        self.socks += [ours, theirs]
        transport = FakeTransport(ours, high=high, low=low)
        transport.attach(Link(self.server))
        return transport

    def close(self) -> None:
        for s in self.socks:
            s.close()


@pytest.fixture
def harness() -> Iterator[Callable[..., Harness]]:
    made: list[Harness] = []

    def make(config: str = "") -> Harness:
        h = Harness(config)
        made.append(h)
        return h

    try:
        yield make
    finally:
        for h in made:
            h.close()


def run(main: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(main(), timeout=10))


async def until(predicate: Callable[[], object], what: str, timeout: float = 5.0) -> None:
    """Let the loop run until `predicate()` holds; fail after `timeout` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0)


def line(op: str = "status", **fields: Any) -> bytes:
    return json.dumps({"op": op, **fields}).encode() + b"\n"


def padded(total: int, request_id: int) -> bytes:
    """A hello request that is exactly `total` bytes long, its newline included (padded
    with the blanks JSON allows: no text field is long enough to pad it)."""
    head = b'{"op":"hello","version":1,"id":%d' % request_id
    pad = total - len(head) - len(b"}\n")
    assert pad >= 0
    return head + b" " * pad + b"}\n"


# ---------------------------------------------------------------- framing


def test_several_lines_in_one_read_are_answered_in_order(harness: Callable[..., Harness]) -> None:
    async def main() -> None:
        h = harness()
        t = h.connect()
        t.send(line(id=1) + line("hello", version=1, id=2) + line(id=3))
        assert [r["id"] for r in t.replies()] == [1, 2, 3]
        assert t.reading and not t.closing

    run(main)


def test_one_whole_line_per_read_is_answered_at_once(harness: Callable[..., Harness]) -> None:
    async def main() -> None:
        h = harness()
        t = h.connect()
        for i in range(3):
            t.send(line(id=i))
            (reply,) = t.replies()  # within data_received: no loop iteration needed
            assert reply == {"ok": True, "id": i, "conn": "c1"}

    run(main)


def test_a_line_split_across_reads_is_answered_once_whole(
    harness: Callable[..., Harness],
) -> None:
    async def main() -> None:
        h = harness()
        t = h.connect()
        body = line("hello", version=1, client="slow", id=9)[:-1]
        t.send(*(body[i : i + 5] for i in range(0, len(body), 5)))
        assert t.replies() == [] and h.handled == []
        t.send(b"\n")
        assert [r["id"] for r in t.replies()] == [9]
        # a read that ends one line and begins the next
        first, second = line(id=10), line(id=11)
        t.send(first[:-3], first[-3:] + second[:4], second[4:])
        assert [r["id"] for r in t.replies()] == [10, 11]

    run(main)


def test_a_line_at_the_limit_is_served_one_byte_over_is_too_large(
    harness: Callable[..., Harness],
) -> None:
    async def main() -> None:
        h = harness()
        t = h.connect()
        # the limit is on the line without its newline; alone in a read (the fast path)
        t.send(padded(LIMIT + 1, 1))
        assert [r["id"] for r in t.replies()] == [1]
        t.send(padded(LIMIT + 2, 2))
        (reply,) = t.replies()
        assert reply["error"]["code"] == protocol.TOO_LARGE
        # and the same two lines in one read (the buffered path)
        t.send(padded(LIMIT + 1, 3) + padded(LIMIT + 2, 4) + line(id=5))
        replies = t.replies()
        assert [r.get("id") for r in replies] == [3, None, 5]
        assert replies[1]["error"]["code"] == protocol.TOO_LARGE
        assert h.handled == [1, 3, 5]

    run(main)


def test_an_oversized_line_gets_too_large_and_the_link_keeps_serving(
    harness: Callable[..., Harness],
) -> None:
    async def main() -> None:
        h = harness()
        t = h.connect()
        with capture_logs() as logged:
            # over the limit before its newline comes: skipped as it arrives
            t.send(b'{"op":"status","pad":"' + b"x" * (3 * LIMIT), b"x" * LIMIT)
            assert t.replies() == [], "no reply before the line has ended"
            t.send(b'x"}\n' + line(id=2))
        too_large, served = t.replies()
        assert too_large == {
            "ok": False,
            "error": {"code": "too_large", "message": f"message over {LIMIT} bytes"},
        }
        assert served["id"] == 2
        (event,) = [e for e in logged if e["event"] == "message_too_large"]
        assert event["bytes"] == len(b'{"op":"status","pad":"') + 4 * LIMIT + 4
        assert event["closed"] is False
        assert not t.closing and h.handled == [2]
        t.send(line(id=3))
        assert [r["id"] for r in t.replies()] == [3]

    run(main)


def test_no_newline_past_sixteen_times_the_limit_closes_the_link(
    harness: Callable[..., Harness],
) -> None:
    async def main() -> None:
        h = harness()
        t = h.connect()
        t.send(*(b"y" * LIMIT for _ in range(16)))
        assert t.replies() == [] and not t.closing, "16x the limit is still tolerated"
        t.send(b"y")
        (reply,) = t.replies()
        assert reply["error"] == {
            "code": "too_large",
            "message": f"message over {LIMIT} bytes; closing",
        }
        assert t.closing
        await until(lambda: t.lost, "connection_lost")
        assert h.closed and h.server.connections == {}

    run(main)


@pytest.mark.parametrize(
    "payload",
    [b"not json\n", b"[1, 2]\n", b"\xff\xfe\n", b'{"op": "status"\n'],
)
def test_malformed_json_gets_bad_json_and_the_link_keeps_serving(
    harness: Callable[..., Harness], payload: bytes
) -> None:
    async def main() -> None:
        h = harness()
        t = h.connect()
        t.send(payload + line(id=2))
        bad, good = t.replies()
        assert bad["ok"] is False and bad["error"]["code"] == protocol.BAD_JSON
        assert good["id"] == 2 and not t.closing
        assert h.handled == [2], "the handler never sees a malformed line"

    run(main)


def test_handler_errors_become_replies_with_the_request_id(
    harness: Callable[..., Harness],
) -> None:
    async def main() -> None:
        h = harness()
        t = h.connect()
        with capture_logs() as logged:
            t.send(line("release", lease="L9", id=1) + line("stop", target="x", id=2) + line(id=3))
        released, crashed, served = t.replies()
        assert released == {
            "ok": False,
            "id": 1,
            "error": {"code": "unknown_lease", "message": "no such lease"},
        }
        assert crashed["id"] == 2 and crashed["error"] == {
            "code": "internal",
            "message": "internal error: RuntimeError",
        }
        assert served["id"] == 3
        assert [e["event"] for e in logged if e["log_level"] == "error"] == ["handler_failed"]
        # a fatal protocol error is answered, then the link closes without reading on
        t.send(line("renew", lease="L1", id=4) + line(id=5))
        (fatal,) = t.replies()
        assert fatal["id"] == 4 and fatal["error"]["code"] == protocol.BAD_REQUEST
        assert t.closing and h.handled[-1] == 4
        await until(lambda: t.lost, "connection_lost")

    run(main)


# ---------------------------------------------------------------- order and waiting


def test_pipelined_requests_are_answered_in_order_around_one_that_waits(
    harness: Callable[..., Harness],
) -> None:
    async def main() -> None:
        h = harness()
        t = h.connect()
        gate = h.gate("two")
        t.send(
            line(id=1)
            + line("reload", id="two")
            + line("hello", version=1, id=3)
            + line("acquire", want=0, id=4)
            + b'{"op":"sta'
        )
        assert [r["id"] for r in t.replies()] == [1]
        assert not t.reading, "nothing more is read while a request waits"
        t.send(b'tus","id":5}\n')  # the peer goes on writing: held by the socket
        for _ in range(20):  # the loop turns, the request still waits
            await asyncio.sleep(0)
        assert t.replies() == [] and h.handled == [1, "two"]
        gate.set()
        await until(lambda: t.unread.count(b"\n") == 4, "the four replies left")
        replies = t.replies()
        assert [r["id"] for r in replies] == ["two", 3, 4, 5]
        assert replies[0]["waited"] is True
        assert t.reading and h.server.tasks == set()

    run(main)


def test_two_waiting_requests_in_a_row_keep_their_order(
    harness: Callable[..., Harness],
) -> None:
    async def main() -> None:
        h = harness()
        t = h.connect()
        first, second = h.gate("a"), h.gate("b")
        t.send(line("reload", id="a") + line("reload", id="b") + line(id="c"))
        second.set()  # the later one is ready first: it must still answer second
        for _ in range(20):
            await asyncio.sleep(0)
        assert t.replies() == [] and h.handled == ["a"]
        first.set()
        await until(lambda: t.unread.count(b"\n") == 3, "three replies")
        assert [r["id"] for r in t.replies()] == ["a", "b", "c"]

    run(main)


def test_eof_while_a_request_waits_answers_it_then_closes(
    harness: Callable[..., Harness],
) -> None:
    async def main() -> None:
        h = harness()
        t = h.connect()
        gate = h.gate(1)
        t.send(line("reload", id=1) + line(id=2))
        t.send_eof()
        assert not t.closing
        gate.set()
        await until(lambda: t.lost, "the link to close after its replies")
        assert [r["id"] for r in t.replies()] == [1, 2]
        assert h.closed and h.server.connections == {}

    run(main)


# ---------------------------------------------------------------- back-pressure


def test_a_peer_that_does_not_read_gets_no_more_answers_until_it_reads(
    harness: Callable[..., Harness],
) -> None:
    async def main() -> None:
        h = harness()
        big = 1000
        size = len(protocol.encode(protocol.ok(0, data="x" * big)))  # one reply
        t = h.connect(high=3 * big, low=size)
        t.send(b"".join(line("tail", target="t:0", bytes=big, id=i) for i in range(10)))
        # answered until the unread replies pass the high-water mark, then paused
        assert t.unread.count(b"\n") == 3 and 3 * size > 3 * big > 2 * size
        assert t.write_paused and not t.reading and t.pauses == 1
        t.send(line(id="late"))  # held by the socket: reading is paused
        for _ in range(20):  # the loop turns: still nothing more
            await asyncio.sleep(0)
        assert t.unread.count(b"\n") == 3 and h.handled == [0, 1, 2]
        t.take(size)  # not yet below the low-water mark
        assert t.write_paused and h.handled == [0, 1, 2]
        t.take(size)  # below it: resume_writing answers the buffered requests at once
        assert h.handled[:4] == [0, 1, 2, 3] and "late" not in h.handled
        ids: list[Any] = [0, 1]
        buf = bytes(t.unread)

        def read_on() -> bool:
            nonlocal buf
            buf += t.take()
            return "late" in h.handled and not t.write_paused and t.reading

        await until(read_on, "every request answered and reading on again")
        buf += t.take()
        ids += [json.loads(x)["id"] for x in buf.splitlines()[-9:]]
        assert ids == [*range(10), "late"]
        assert h.handled == [*range(10), "late"]

    run(main)


def test_replies_keep_their_order_across_a_pause(harness: Callable[..., Harness]) -> None:
    async def main() -> None:
        h = harness()
        t = h.connect(high=2000, low=0)
        t.send(b"".join(line("tail", target="t:0", bytes=900, id=i) for i in range(6)))
        received: list[Any] = []
        buf = b""
        while len(received) < 6:
            buf += t.take(700)  # a slow reader, in small pieces
            *done, buf = buf.split(b"\n")
            received += [json.loads(x)["id"] for x in done]
            await asyncio.sleep(0)
        assert received == list(range(6))
        assert t.pauses >= 2

    run(main)


def test_eof_while_paused_answers_what_was_asked_then_closes(
    harness: Callable[..., Harness],
) -> None:
    async def main() -> None:
        h = harness()
        t = h.connect(high=1500, low=0)
        t.send(b"".join(line("tail", target="t:0", bytes=1000, id=i) for i in range(4)))
        assert t.write_paused and t.unread.count(b"\n") == 2
        t.send_eof()  # the peer half-closes while paused: seen once reading resumes
        assert not t.closing
        ids: list[Any] = []

        def read_on() -> bool:
            ids.extend(r["id"] for r in t.replies())
            return t.lost

        await until(read_on, "the link closed after its last reply")
        ids.extend(r["id"] for r in t.replies())
        assert ids == [0, 1, 2, 3]
        assert h.closed and h.server.connections == {}

    run(main)


# ---------------------------------------------------------------- connections


def test_connection_lost_releases_the_connection(harness: Callable[..., Harness]) -> None:
    async def main() -> None:
        h = harness()
        a, b = h.connect(), h.connect()
        assert sorted(h.server.connections) == [1, 2]
        assert h.server.ordinary == 0 and not h.server.accounts  # root: an admin
        conn = h.server.connections[1]
        a.send(line(id=1))
        a.close()
        await until(lambda: a.lost, "connection_lost")
        assert h.closed == [conn] and sorted(h.server.connections) == [2]
        assert len(h.server.links) == 1
        h.server.links_gone = asyncio.get_running_loop().create_future()
        b.send_eof()  # no half message: closed at once
        await asyncio.wait_for(h.server.links_gone, 5)
        assert h.server.connections == {} and not h.server.links
        assert not h.server.accounts and h.server.ordinary == 0
        assert [c.key for c in h.closed] == ["c1", "c2"]

    run(main)


def test_half_message_at_eof_is_logged_and_dropped(harness: Callable[..., Harness]) -> None:
    async def main() -> None:
        h = harness()
        t = h.connect()
        with capture_logs() as logged:
            t.send(b'{"op": "acq')
            t.send_eof()
            await until(lambda: t.lost, "close at EOF")
        assert t.replies() == [] and h.handled == []
        (half,) = [e for e in logged if e["event"] == "half_message"]
        assert half["bytes"] == len(b'{"op": "acq')

    run(main)


def test_peer_credentials_come_from_the_socket(harness: Callable[..., Harness]) -> None:
    async def main() -> None:
        h = harness()
        h.connect()
        (conn,) = h.server.connections.values()
        assert (conn.peer.pid, conn.peer.uid, conn.peer.gid) == (
            os.getpid(),
            os.geteuid(),
            os.getegid(),
        )

    run(main)


def test_over_the_connection_limit_a_peer_is_told_why_then_closed(
    harness: Callable[..., Harness],
) -> None:
    async def main() -> None:
        h = harness("  max_connections: 1\n")
        first = h.connect()
        with capture_logs() as logged:
            extra = h.connect()
        (reply,) = extra.replies()
        assert reply["error"]["code"] == protocol.TOO_MANY_CONNECTIONS
        assert extra.eof_written and not extra.closing, "half-closed, lingering"
        assert list(h.server.connections) == [1] and len(h.server.links) == 2
        assert [e["event"] for e in logged] == ["connection_refused"]
        extra.send(line(id=1))  # its first line ends the linger; it is never answered
        assert extra.closing and extra.replies() == [] and h.handled == []
        await until(lambda: extra.lost, "the refused link closed")
        assert h.closed == [], "a refused link held no connection"
        first.send(line(id=2))
        assert [r["id"] for r in first.replies()] == [2]

    run(main)


def test_shutting_down_refuses_new_peers(harness: Callable[..., Harness]) -> None:
    async def main() -> None:
        h = harness()
        h.server.accepting = False
        t = h.connect()
        (reply,) = t.replies()
        assert reply["error"]["code"] == protocol.SHUTTING_DOWN
        t.send_eof()
        assert t.closing
        await until(lambda: t.lost, "closed")

    run(main)
