"""Issue 10: 100,000 generated messages against a live daemon, a good client timed all along.

The generator (seeded, so a failure replays) mixes random bytes, JSON nested tens of
thousands deep, lines at and over the size limit, wrong types, unknown ops, huge and
negative numbers, NaN and Infinity, invalid UTF-8 and NULs, and well-formed requests,
over several pipelined connections that read their replies as they come (a selector
loop, so the daemon's back-pressure is honoured). Meanwhile a well-behaved client asks
`status` over and over. Checked: the daemon never exits and never logs a traceback or a
handler failure; the good client is always answered; the daemon's memory is flat after
warm-up; and the log's lines about bad input stay within the configured rate.
"""

from __future__ import annotations

import json
import random
import selectors
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil

from tests.helpers import WireClient

MESSAGES = 100_000
CONNECTIONS = 8
RATE = 10  # daemon.bad_input_log_rate for this test
LIMIT = 64 * 1024  # daemon.max_message_bytes (the default)
OPS = ["hello", "acquire", "renew", "release", "heartbeat", "status", "tail", "nope", ""]
NON_FINITE = [
    b'{"op":"acquire","want":NaN}',
    b'{"op":"acquire","want":Infinity}',
    b'{"op":"acquire","want":-Infinity}',
    b'{"op":"renew","lease":1e999}',
]
FIELDS = ["want", "kinds", "lease", "version", "id", "job", "progress", "workers_in_use"]


def _value(rng: random.Random) -> Any:
    return rng.choice(
        [
            None,
            True,
            -1,
            0,
            10**100,
            -(10**30),
            1e308,
            "x" * rng.randint(0, 50),
            [1, "a", None],
            {"k": [1]},
            ["process", "gpu"],
            "L1",
        ]
    )


def messages(seed: int) -> Iterator[bytes]:
    """Endless fuzz lines (each ends in a newline; some hold more newlines inside)."""
    rng = random.Random(seed)
    while True:
        kind = rng.randrange(12)
        if kind == 0:
            yield bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 200))) + b"\n"
        elif kind == 1:
            n = rng.choice([100, 1000, 5000, 30_000])
            yield (
                b"[" * n + b"]" * n if rng.random() < 0.5 else b'{"a":' * n + b"1" + b"}" * n
            ) + b"\n"
        elif kind == 2:  # at the limit, and just over it
            size = LIMIT - 30 if rng.random() < 0.5 else LIMIT + rng.randint(1, 5000)
            yield b'{"op":"status","job":"' + b"j" * size + b'"}\n'
        elif kind == 3:
            fields = {rng.choice(FIELDS): _value(rng) for _ in range(rng.randint(0, 4))}
            yield json.dumps({"op": rng.choice(OPS), **fields}).encode() + b"\n"
        elif kind == 4:
            yield (
                rng.choice(
                    [
                        b'{"op":"acquire","want":NaN}',
                        b'{"op":"acquire","want":Infinity}',
                        b'{"op":"acquire","want":-Infinity}',
                        b'{"op":"renew","lease":1e999}',
                    ]
                )
                + b"\n"
            )
        elif kind == 5:
            yield b'{"op":"status","job":"\xff\xfe\xc3\x28"}\n'
        elif kind == 6:
            yield (
                b'{"op":"sta\x00tus"}\n'
                if rng.random() < 0.5
                else b"\x00" * rng.randint(1, 64) + b"\n"
            )
        elif kind == 7:
            yield b'{"op":"acquire","want":' + str(rng.randint(-5, 40)).encode() + b"}\n"
        elif kind == 8:
            yield b"{" * rng.randint(1, 3000)  # no newline: joins the next line
        else:
            yield (
                json.dumps(
                    {"op": rng.choice(["status", "heartbeat", "hello"]), "version": 1}
                ).encode()
                + b"\n"
            )


class Fuzzer:
    """Pipelines `total` messages over `n` connections, reading every reply as it comes."""

    def __init__(self, path: Path, total: int, n: int, seed: int) -> None:
        self.path, self.left, self.sent = path, total, 0
        self.gen = messages(seed)
        self.sel = selectors.DefaultSelector()
        self.reconnects = 0
        self.replies = 0
        self.pending: dict[socket.socket, bytes] = {}
        for _ in range(n):
            self._connect()

    def _connect(self) -> None:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(str(self.path))
        s.setblocking(False)
        self.pending[s] = b""
        self.sel.register(s, selectors.EVENT_READ | selectors.EVENT_WRITE)

    def _drop(self, s: socket.socket) -> None:
        self.sel.unregister(s)
        del self.pending[s]
        s.close()
        self.reconnects += 1
        self._connect()  # the daemon may close a connection it cannot resync: open another

    def run(self, progress: Callable[[int], None]) -> None:
        while self.left > 0 or any(self.pending.values()):
            for key, events in self.sel.select(timeout=1.0):
                s: socket.socket = key.fileobj  # type: ignore[assignment]
                if events & selectors.EVENT_READ:
                    try:
                        data: bytes | None = s.recv(1 << 16)
                    except BlockingIOError:
                        data = None
                    except ConnectionResetError:
                        data = b""
                    if data == b"":
                        self._drop(s)
                        continue
                    self.replies += data.count(b"\n") if data else 0
                if events & selectors.EVENT_WRITE:
                    buf = self.pending[s]
                    while len(buf) < 1 << 16 and self.left > 0:
                        buf += next(self.gen)
                        self.left -= 1
                        self.sent += 1
                        if self.sent % 1000 == 0:
                            progress(self.sent)
                    try:
                        done = s.send(buf)
                    except BlockingIOError:
                        done = 0
                    except (BrokenPipeError, ConnectionResetError):
                        self._drop(s)
                        continue
                    self.pending[s] = buf[done:]
        for s in list(self.pending):
            self.sel.unregister(s)
            s.close()


def test_a_hundred_thousand_fuzzed_messages(daemon: Callable[..., Any]) -> None:
    d = daemon({"daemon": {"bad_input_log_rate": RATE, "log_level": "info"}})
    proc = psutil.Process(d.proc.pid)
    rss: dict[int, int] = {}
    latencies: list[float] = []
    failures: list[str] = []
    stop = threading.Event()

    def good_client() -> None:
        with WireClient(d.socket, timeout=10) as c:
            while not stop.is_set():
                t0 = time.monotonic()
                try:
                    reply = c.request("status")
                except Exception as exc:  # any failure is a finding
                    failures.append(repr(exc))
                    return
                latencies.append(time.monotonic() - t0)
                if not reply.get("ok"):
                    failures.append(json.dumps(reply))

    def progress(sent: int) -> None:
        if sent in (30_000, MESSAGES):
            rss[sent] = proc.memory_info().rss

    watcher = threading.Thread(target=good_client)
    watcher.start()
    started = time.monotonic()
    try:
        fuzzer = Fuzzer(d.socket, MESSAGES, CONNECTIONS, seed=20261204)
        fuzzer.run(progress)
    finally:
        stop.set()
        watcher.join(timeout=30)
    elapsed = time.monotonic() - started

    assert d.proc.poll() is None, d.log_text()[-2000:]
    assert fuzzer.sent == MESSAGES
    assert not failures, failures[:3]
    assert latencies, "the good client was never answered"
    latencies.sort()
    p99 = latencies[int(len(latencies) * 0.99)]
    print(
        f"\n{MESSAGES} messages in {elapsed:.1f}s, {fuzzer.replies} replies, "
        f"{fuzzer.reconnects} connections closed by the daemon; good client: "
        f"{len(latencies)} requests, p50 {latencies[len(latencies) // 2] * 1e3:.1f} ms, "
        f"p99 {p99 * 1e3:.1f} ms, max {latencies[-1] * 1e3:.1f} ms; "
        f"rss {rss[30_000] >> 20} -> {rss[MESSAGES] >> 20} MiB"
    )
    assert latencies[-1] < 2.0, f"the good client waited {latencies[-1]:.2f}s"
    assert rss[MESSAGES] - rss[30_000] < 4 << 20, rss  # flat after warm-up

    log = d.log_text()
    assert "Traceback" not in log and not d.events("handler_failed")
    bad = {"bad_request", "message_too_large", "half_message", "connection_refused"}
    per_second = Counter(e["timestamp"][:19] for e in d.events() if e.get("event") in bad)
    assert per_second and max(per_second.values()) <= RATE, per_second.most_common(3)
    assert d.events("bad_input_suppressed")


def test_json_nested_ten_thousand_deep_is_bad_json_not_a_traceback(
    daemon: Callable[..., Any],
) -> None:
    """It was answered `internal`, with a traceback logged for every such line."""
    d = daemon()
    with WireClient(d.socket, timeout=10) as c:
        for line in (b"[" * 10_000 + b"]" * 10_000, b'{"a":' * 10_000 + b"1" + b"}" * 10_000):
            c.send_raw(line + b"\n")
            reply = c.read_reply()
            assert reply["error"]["code"] == "bad_json", reply
            assert "nested too deeply" in reply["error"]["message"]
        assert c.request("status")["ok"]
    assert not d.events("handler_failed") and "Traceback" not in d.log_text()
