"""Slow peers on a metrics endpoint, in one process: the load of bench_scrape_flood and of
the test that the endpoint holds under it (tests/integration/daemon/test_metrics_flood.py).

Each of COUNT peers connects to 127.0.0.1:PORT and sends one byte of a request head a
second, never finishing it (the head is 100 KB long), and reconnects as soon as the
endpoint closes its connection: it watches every socket for the close, so it is back
within microseconds, which is harsher than a peer that notices at its next byte. Every
second it prints how many times its peers have reconnected so far, one number a line.

    python benchmarks/slow_peers.py PORT COUNT
"""

from __future__ import annotations

import errno
import selectors
import socket
import sys
import time

HEAD = b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 100_000


class Peers:
    def __init__(self, port: int, count: int) -> None:
        self.port = port
        self.count = count
        self.selector = selectors.DefaultSelector()
        self.sent: dict[socket.socket, int] = {}  # each open peer: head bytes sent
        self.reconnects = 0

    def connect(self) -> None:
        s = socket.socket()
        s.setblocking(False)
        if s.connect_ex(("127.0.0.1", self.port)) not in (0, errno.EINPROGRESS):
            s.close()  # refused by the kernel: tried again on the next second
            return
        self.sent[s] = 0
        self.selector.register(s, selectors.EVENT_READ)

    def dropped(self, s: socket.socket) -> None:
        """Closed by the endpoint (or answered): back at once."""
        self.selector.unregister(s)
        del self.sent[s]
        s.close()
        self.reconnects += 1
        self.connect()

    def watch(self, timeout: float) -> None:
        for key, _ in self.selector.select(timeout):
            s = key.fileobj
            assert isinstance(s, socket.socket)
            try:
                data = s.recv(65536)
            except BlockingIOError:
                continue
            except OSError:
                data = b""
            if not data:
                self.dropped(s)

    def one_byte_each(self) -> None:
        for s in list(self.sent):
            try:
                s.send(HEAD[self.sent[s] : self.sent[s] + 1])
                self.sent[s] += 1
            except BlockingIOError:
                pass
            except OSError:
                self.dropped(s)
        while len(self.sent) < self.count:
            self.connect()

    def run(self) -> None:
        for _ in range(self.count):
            self.connect()
        next_byte = time.monotonic()
        while True:
            self.watch(max(0.0, next_byte - time.monotonic()))
            if time.monotonic() >= next_byte:
                next_byte += 1.0
                self.one_byte_each()
                sys.stdout.write(f"{self.reconnects}\n")
                sys.stdout.flush()


if __name__ == "__main__":
    Peers(int(sys.argv[1]), int(sys.argv[2])).run()
