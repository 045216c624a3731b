"""Stdlib-only helper processes for benchmarks/soak.py (runs under /usr/bin/python3, as
root or as an unprivileged user; imports nothing of supervisord_batt).

    soak_worker.py lease SOCK WANT HOLD_S release|disconnect
        connect, hello, acquire, hold, then release (or just exit); prints
        {"served": n, "lease": id} on stdout.
    soak_worker.py rogue SOCK
        the supervised worker that ignores its grant: leases 2 threads, tries to start
        30, holds them 3 s, exits 0. Prints how many threads were refused.
    soak_worker.py connflood SOCK N HOLD_S
        forever: open up to N connections (each sends hello and reads the reply), hold
        them HOLD_S, close them all; prints one JSON line of counters per cycle.
"""

from __future__ import annotations

import json
import socket
import sys
import threading
import time
from typing import Any


def _conn(path: str, timeout: float = 5.0) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    s.connect(path)
    return s


class Lines:
    def __init__(self, s: socket.socket) -> None:
        self.s = s
        self.buf = b""

    def request(self, msg: dict[str, Any]) -> dict[str, Any]:
        self.s.sendall(json.dumps(msg).encode() + b"\n")
        while b"\n" not in self.buf:
            chunk = self.s.recv(65536)
            if not chunk:
                raise ConnectionError("closed")
            self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\n")
        reply: dict[str, Any] = json.loads(line)
        return reply


def lease_main(path: str, want: int, hold: float, end: str) -> int:
    served = 0
    lease = None
    try:
        c = Lines(_conn(path))
        c.request({"op": "hello", "version": 1, "client": "soak"})
        served += 1
        r = c.request({"op": "acquire", "want": want, "job": "soak-client"})
        served += 1
        lease = r.get("lease")
        print(json.dumps({"served": served, "lease": lease}), flush=True)
        time.sleep(hold)
        if end == "release" and lease:
            c.request({"op": "release", "lease": lease})
            served += 1
        c.s.close()
    except (OSError, ValueError):
        pass
    print(json.dumps({"served": served, "lease": lease, "done": True}), flush=True)
    return 0


def rogue_main(path: str) -> int:
    granted = None
    try:
        c = Lines(_conn(path))
        r = c.request({"op": "acquire", "want": 2, "kinds": ["thread"], "job": "rogue"})
        granted = r.get("workers")
    except (OSError, ValueError):
        c = None
    stop = threading.Event()
    started = refused = 0
    threads = []
    for _ in range(30):
        t = threading.Thread(target=stop.wait, args=(10,))
        try:
            t.start()
            threads.append(t)
            started += 1
        except RuntimeError:
            refused += 1
    time.sleep(3)
    stop.set()
    for t in threads:
        t.join()
    print(json.dumps({"granted": granted, "started": started, "refused": refused}), flush=True)
    return 0


def connflood_main(path: str, n: int, hold: float) -> int:
    opened = refused = served = cycles = 0
    while True:
        socks = []
        for _ in range(n):
            try:
                c = Lines(_conn(path, 2.0))
                r = c.request({"op": "hello", "version": 1, "client": "flood"})
                served += 1
                if not r.get("ok"):
                    refused += 1
                    c.s.close()
                    continue
                opened += 1
                socks.append(c.s)
            except (OSError, ValueError):
                refused += 1
        time.sleep(hold)
        for s in socks:
            s.close()
        cycles += 1
        print(
            json.dumps({"cycles": cycles, "opened": opened, "refused": refused, "served": served}),
            flush=True,
        )
        time.sleep(0.2)


def main(argv: list[str]) -> int:
    mode = argv[0]
    if mode == "lease":
        return lease_main(argv[1], int(argv[2]), float(argv[3]), argv[4])
    if mode == "rogue":
        return rogue_main(argv[1])
    if mode == "connflood":
        return connflood_main(argv[1], int(argv[2]), float(argv[3]))
    raise SystemExit(f"unknown mode {mode}")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
