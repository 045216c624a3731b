"""Grant round trips against the real daemon, beside a bare asyncio Unix-socket echo.

For 1, 16 and 64 client processes, each client connects once and loops for a fixed time:
acquire (want 2), read the grant, release, read the reply. The floor is the same loop
against a bare asyncio echo server (the same two messages, the same sizes), measured in
the same run on the same machine. Prints p50/p99 of one acquire+release pair and the pairs
per second over all clients, and the ratio daemon/floor (target: within 2x everywhere).

The host is shared and its load drifts over seconds, so each cell is measured in
`--rounds` rounds (5) that alternate which server goes first (echo, daemon; then daemon,
echo; ...), and the figures printed are the medians over rounds, the ratios included
(each round's ratio is taken within the round, between neighbours in time).

    python benchmarks/bench_grant.py [--seconds 3] [--rounds 5] [--clients 1,16,64] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing as mp
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Event
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the repository, for benchmarks.*

from benchmarks.daemonproc import spawn_daemon  # noqa: E402
from benchmarks.views import attached_views, free_port, metrics_config  # noqa: E402

ACQUIRE = json.dumps({"op": "acquire", "want": 2, "job": "bench"}).encode() + b"\n"
# --op hello: two no-op requests of the same size instead, to measure the daemon's socket
# path (framing, decode, dispatch, encode) apart from what acquire and release do
HELLO = json.dumps({"op": "hello", "version": 1, "client": "bench-padding-x"}).encode() + b"\n"


def _release(lease: str) -> bytes:
    return json.dumps({"op": "release", "lease": lease}).encode() + b"\n"


def _client(
    path: str, seconds: float, echo: bool, start: float, out: Queue[list[float]], *, op: str
) -> None:
    first = ACQUIRE if op == "grant" else HELLO
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(path)
    f = s.makefile("rwb", buffering=0)
    reader = s.makefile("rb")
    lat: list[float] = []
    while time.time() < start:
        time.sleep(0.001)
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        t0 = time.perf_counter()
        f.write(first)
        grant = reader.readline()
        if op == "hello":
            f.write(HELLO)
        else:
            f.write(_release("L0" if echo else json.loads(grant)["lease"]))
        reader.readline()
        lat.append(time.perf_counter() - t0)
    s.close()
    out.put(lat)


async def _echo_main(path: str, ready: Event) -> None:
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                line = await reader.readuntil(b"\n")
                writer.write(line)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_unix_server(serve, path=path, limit=65536, backlog=256)
    ready.set()
    async with server:
        await server.serve_forever()


def _echo_server(path: str, ready: Event, nice: int) -> None:
    os.setpriority(os.PRIO_PROCESS, 0, nice)  # the same priority as the daemon under test
    asyncio.run(_echo_main(path, ready))


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_cell(
    path: str, clients: int, seconds: float, echo: bool, *, server_pid: int, op: str
) -> dict[str, float]:
    out: Queue[list[float]] = mp.Queue()
    cpu_before = _cpu_s(server_pid)
    start = time.time() + 0.5 + clients * 0.01
    procs = [
        mp.Process(target=_client, args=(path, seconds, echo, start, out), kwargs={"op": op})
        for _ in range(clients)
    ]
    for p in procs:
        p.start()
    lat: list[float] = []
    for _ in procs:
        lat += out.get(timeout=seconds + 60)
    for p in procs:
        p.join(timeout=30)
    server_cpu = _cpu_s(server_pid) - cpu_before
    lat.sort()
    return {
        "p50_us": statistics.median(lat) * 1e6,
        "p99_us": lat[int(len(lat) * 0.99) - 1] * 1e6,
        "pairs_per_s": len(lat) / seconds,
        # the server's own CPU per acquire+release pair: what the target is really about
        "server_cpu_us_per_pair": server_cpu / max(1, len(lat)) * 1e6,
    }


def start_daemon(
    workdir: Path, nice: int, lease_log_rate: int | None = None, metrics: str = ""
) -> subprocess.Popen[bytes]:
    sock = workdir / "d.sock"
    rate = "" if lease_log_rate is None else f"  lease_log_rate: {lease_log_rate}\n"
    (workdir / "c.yaml").write_text(
        f"daemon:\n  socket: {sock}\n  log_format: json\n  log_file: {workdir / 'd.log'}\n"
        f"  max_connections: 512\n{rate}budget:\n  cpu_cap: 64\n  max_per_lease: 8\n" + metrics
    )
    return spawn_daemon(workdir / "c.yaml", sock, prefix=("nice", "-n", str(nice)))


def _log_counts(path: Path) -> dict[str, int]:
    """Lease lines the daemon wrote, and those it held back (lease_lines_suppressed)."""
    written = held = 0
    for line in path.read_text().splitlines() if path.exists() else ():
        event = json.loads(line)
        if event["event"] in ("grant", "deny", "release"):
            written += 1
        elif event["event"] == "lease_lines_suppressed":
            held += sum(event.get(k, 0) for k in ("grant", "deny", "release"))
    return {"lease_lines_written": written, "lease_lines_held_back": held}


def _medians(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Each figure's median over the rounds (ratios too, each taken within its round)."""
    out: dict[str, Any] = {}
    for key, value in rounds[0].items():
        if isinstance(value, dict):
            out[key] = {k: statistics.median(r[key][k] for r in rounds) for k in value}
        else:
            out[key] = statistics.median(r[key] for r in rounds)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--clients", default="1,16,64")
    ap.add_argument("--json", action="store_true")
    ap.add_argument(
        "--rounds", type=int, default=5, help="rounds per cell, alternating which goes first"
    )
    ap.add_argument(
        "--lease-log-rate",
        type=int,
        default=None,
        help="the daemon's daemon.lease_log_rate (default: the shipped default, 100 lines a"
        " second; 0 logs every grant and release)",
    )
    ap.add_argument(
        "--op",
        choices=("grant", "hello"),
        default="grant",
        help="grant: acquire+release (default); hello: two no-op requests",
    )
    ap.add_argument(
        "--nice",
        type=int,
        default=0,
        help="priority of both servers, the daemon and the echo floor (default 0)",
    )
    ap.add_argument(
        "--views",
        action="store_true",
        help="metrics on (endpoint scraped every second, textfile every tick), with `logs -f`"
        " and `top` (in tmux) attached to the daemon while it is measured",
    )
    args = ap.parse_args()
    counts = [int(c) for c in args.clients.split(",")]
    workdir = Path(tempfile.mkdtemp(prefix="sbb-", dir="/tmp"))
    port = free_port()
    metrics = metrics_config(port, workdir / "batt.prom") if args.views else ""
    ready = mp.Event()
    echo_path = str(workdir / "e.sock")
    echo = mp.Process(target=_echo_server, args=(echo_path, ready, args.nice), daemon=True)
    echo.start()
    ready.wait(10)
    daemon = start_daemon(workdir, args.nice, args.lease_log_rate, metrics)
    rows: list[dict[str, Any]] = []
    views = contextlib.ExitStack()
    try:
        attached = "none"
        if args.views:
            running = views.enter_context(
                attached_views(workdir / "d.sock", workdir / "d.log", port, scrape_every=1.0)
            )
            time.sleep(2)  # their start-up is not what is measured
            attached = ", ".join(running.alive())
        for n in counts:
            rounds = []
            for i in range(args.rounds):
                cells = {}
                for which in ("echo", "daemon") if i % 2 == 0 else ("daemon", "echo"):
                    cells[which] = run_cell(
                        echo_path if which == "echo" else str(workdir / "d.sock"),
                        n,
                        args.seconds,
                        echo=which == "echo",
                        server_pid=(echo.pid or 0) if which == "echo" else daemon.pid,
                        op=args.op,
                    )
                floor, real = cells["echo"], cells["daemon"]
                rounds.append(
                    {
                        "echo": floor,
                        "daemon": real,
                        "ratio_p50": real["p50_us"] / floor["p50_us"],
                        "ratio_p99": real["p99_us"] / floor["p99_us"],
                        "ratio_throughput": floor["pairs_per_s"] / real["pairs_per_s"],
                    }
                )
            rows.append({"clients": n, **_medians(rounds), "rounds": rounds})
    finally:
        views.close()
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(timeout=20)
        log_lines = _log_counts(workdir / "d.log")
        echo.terminate()
        echo.join(10)
        shutil.rmtree(workdir, ignore_errors=True)
    if args.json:
        print(json.dumps({"cells": rows, "daemon_log": log_lines, "views": attached}, indent=2))
        return 0
    print(f"views attached: {attached}")
    print(
        f"{'clients':>7} | {'echo p50':>9} {'p99':>9} {'pairs/s':>9} | "
        f"{'daemon p50':>10} {'p99':>9} {'pairs/s':>9} | {'x p50':>6} {'x p99':>6} {'x tput':>6}"
        f" | server CPU/pair echo, daemon"
    )
    for r in rows:
        e, d = r["echo"], r["daemon"]
        print(
            f"{r['clients']:>7} | {e['p50_us']:>7.0f}us {e['p99_us']:>7.0f}us "
            f"{e['pairs_per_s']:>9.0f} | "
            f"{d['p50_us']:>8.0f}us {d['p99_us']:>7.0f}us {d['pairs_per_s']:>9.0f} | "
            f"{r['ratio_p50']:>6.2f} {r['ratio_p99']:>6.2f} {r['ratio_throughput']:>6.2f}"
            f" | {e['server_cpu_us_per_pair']:>5.0f}us {d['server_cpu_us_per_pair']:>6.0f}us"
        )
    rate = "default" if args.lease_log_rate is None else args.lease_log_rate
    print(
        f"daemon log: {log_lines['lease_lines_written']} lease lines written,"
        f" {log_lines['lease_lines_held_back']} held back and counted"
        f" (daemon.lease_log_rate {rate})"
    )
    print(
        f"target: every ratio <= 2.0 (x = daemon / echo floor; medians of {args.rounds} rounds"
        " alternating which server goes first)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
