"""Scrapes and Unix-socket latency while slow peers hold the metrics endpoint's connections.

One daemon with the endpoint on. Two phases on it, one after the other, in one run:

- baseline: a Prometheus-like scraper (a new connection per scrape, 10 s timeout, as
  Prometheus' default `scrape_timeout`) in each of `--scrapers` processes, and a job's
  client timing acquire+release pairs on the Unix socket, one pair every 5 ms;
- flood: the same, plus `--peers` (20) slow peers in one process: each connects, sends
  one byte of a request head a second and never finishes it, and reconnects at once when
  the daemon closes its connection (it watches for the close, so it is back within
  microseconds).

Prints, per phase: the share of scrapes that got a whole 200 reply, their p50/p99 time,
the pairs' p50/p99, and the flood's ratios to the baseline (target: >= 99% of scrapes,
latency ratios within the run-to-run spread, about 1.0). Also the daemon's CPU share and
its lines about the endpoint.

    python benchmarks/bench_scrape_flood.py [--seconds 30] [--peers 20] [--json]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository, for benchmarks.*

from benchmarks.bench_views import cpu_seconds, start, stop
from benchmarks.views import free_port

PEERS = Path(__file__).resolve().parent / "slow_peers.py"  # one byte a second each
ACCEPT = "application/openmetrics-text;version=1.0.0;q=0.6,text/plain;version=0.0.4;q=0.3"


def _scraper(port: int, seconds: float, every: float, out: Any) -> None:
    import urllib.request

    request = urllib.request.Request(f"http://127.0.0.1:{port}/metrics", headers={"Accept": ACCEPT})
    results: list[tuple[bool, float]] = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        t0 = time.monotonic()
        try:
            with urllib.request.urlopen(request, timeout=10) as reply:
                ok = reply.status == 200 and b"supervisord_batt_host_tasks" in reply.read()
        except OSError:
            ok = False
        results.append((ok, time.monotonic() - t0))
        time.sleep(max(0.0, every - (time.monotonic() - t0)))
    out.put(results)


def _prober(sock: str, seconds: float, out: Any) -> None:
    """acquire + release pairs on the Unix socket, one every 5 ms: their round trips."""
    import socket

    s = socket.socket(socket.AF_UNIX)
    s.connect(sock)
    f = s.makefile("rwb", buffering=0)
    reader = s.makefile("rb")
    acquire = json.dumps({"op": "acquire", "want": 2, "job": "probe"}).encode() + b"\n"
    lat: list[float] = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        t0 = time.perf_counter()
        f.write(acquire)
        lease = json.loads(reader.readline())["lease"]
        f.write(json.dumps({"op": "release", "lease": lease}).encode() + b"\n")
        reader.readline()
        lat.append(time.perf_counter() - t0)
        time.sleep(0.005)
    s.close()
    out.put(lat)


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def phase(port: int, sock: Path, pid: int, args: argparse.Namespace, flood: bool) -> dict[str, Any]:
    ctx = mp.get_context("fork")
    out = ctx.Queue()
    peers = None
    if flood:
        peers = subprocess.Popen(
            [sys.executable, str(PEERS), str(port), str(args.peers)],
            stdout=subprocess.PIPE,
            text=True,
        )
        time.sleep(2)  # the peers fill the endpoint before the first measured scrape
    cpu0, t0 = cpu_seconds(pid), time.monotonic()
    procs = [
        ctx.Process(target=_scraper, args=(port, args.seconds, args.scrape_every, out))
        for _ in range(args.scrapers)
    ]
    procs.append(ctx.Process(target=_prober, args=(str(sock), args.seconds, out)))
    for p in procs:
        p.start()
    results = [out.get(timeout=args.seconds + 60) for _ in procs]
    for p in procs:
        p.join()
    cpu = 100 * (cpu_seconds(pid) - cpu0) / (time.monotonic() - t0)
    reconnects = 0
    if peers is not None:
        peers.send_signal(signal.SIGTERM)
        text, _ = peers.communicate(timeout=10)
        lines = text.split()
        reconnects = int(lines[-1]) if lines else 0
    scrapes = [r for batch in results if batch and isinstance(batch[0], tuple) for r in batch]
    pairs = [x for batch in results if batch and isinstance(batch[0], float) for x in batch]
    ok = [t for good, t in scrapes if good]
    return {
        "scrapes": len(scrapes),
        "scrapes_ok_percent": round(100 * len(ok) / len(scrapes), 2) if scrapes else None,
        "scrape_p50_ms": round(1000 * _pct(ok, 0.5), 2),
        "scrape_p99_ms": round(1000 * _pct(ok, 0.99), 2),
        "pairs": len(pairs),
        "pair_p50_us": round(1e6 * _pct(pairs, 0.5), 1),
        "pair_p99_us": round(1e6 * _pct(pairs, 0.99), 1),
        "daemon_cpu_percent": round(cpu, 2),
        "peer_reconnects": reconnects,
    }


def endpoint_lines(log: Path) -> dict[str, int]:
    counts: dict[str, int] = {}
    for line in log.read_text(errors="replace").splitlines():
        if '"metrics_' in line:
            event = json.loads(line).get("event", "")
            counts[event] = counts.get(event, 0) + 1
    return counts


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--peers", type=int, default=20)
    ap.add_argument("--scrapers", type=int, default=4)
    ap.add_argument("--scrape-every", type=float, default=0.25)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="sbf-", dir="/tmp"))
    port = free_port()
    proc = None
    try:
        proc, sock, log = start(workdir, f"metrics:\n  listen: 127.0.0.1:{port}\n")
        time.sleep(2)
        base = phase(port, sock, proc.pid, args, flood=False)
        flood = phase(port, sock, proc.pid, args, flood=True)
        lines = endpoint_lines(log)
    finally:
        if proc is not None:
            stop(proc)
        shutil.rmtree(workdir, ignore_errors=True)
    ratios = {
        k: round(flood[k] / base[k], 2)
        for k in ("pair_p50_us", "pair_p99_us", "scrape_p50_ms")
        if base[k]
    }
    result = {"baseline": base, "flood": flood, "ratios": ratios, "log_lines": lines}
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"{args.seconds:g} s per phase, {args.scrapers} scrapers every {args.scrape_every:g} s")
    print(f"flood: {args.peers} peers, one byte a second each, back at once when dropped")
    print(
        f"{'':10}{'scrapes':>9}{'ok':>9}{'p50 ms':>9}{'p99 ms':>9}"
        f"{'pair p50':>10}{'pair p99':>10}{'cpu %':>8}"
    )
    for name, r in (("baseline", base), ("flood", flood)):
        print(
            f"{name:10}{r['scrapes']:>9}{r['scrapes_ok_percent']:>8}%{r['scrape_p50_ms']:>9}"
            f"{r['scrape_p99_ms']:>9}{r['pair_p50_us']:>8}us{r['pair_p99_us']:>8}us"
            f"{r['daemon_cpu_percent']:>8}"
        )
    print("flood / baseline: " + ", ".join(f"{k} {v}" for k, v in ratios.items()))
    print(f"peer reconnects during the flood: {flood['peer_reconnects']}")
    print("daemon's endpoint lines: " + (", ".join(f"{k} {v}" for k, v in lines.items()) or "none"))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    raise SystemExit(main())
