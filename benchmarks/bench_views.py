"""What the operator's views cost the daemon: its CPU share at a 1 s tick, plain vs viewed.

Two daemons run side by side for the same `--seconds`, each supervising the same three
idle programs (so the tick has instances, trees and leases to read), with the same
sample_interval (1 s) and scan_interval (10 s):

- plain: no metrics, nobody watching;
- viewed: metrics on (the HTTP endpoint, scraped every `--scrape-every` seconds, and the
  textfile rewritten every tick), `logs -f` following its log file, and `top` refreshing
  every second in a real 80x24 terminal (tmux).

Each holds one lease (a job's), renewed by this script. The figure is each daemon's CPU
time (the scheduler's, from /proc/PID/task/*/schedstat) over the window, as a percentage
of one core;
both share the window, so host noise hits both. Target: the views add less than 0.2% of a
core (the whole host monitor's budget at a 1 s tick), and no thread (the viewed daemon's
thread count is printed).

    python benchmarks/bench_views.py [--seconds 60] [--scrape-every 1] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository, for benchmarks.*

from benchmarks.daemonproc import spawn_daemon
from benchmarks.views import ALL, attached_views, free_port, metrics_config

REPO = Path(__file__).resolve().parents[1]
TICKS = os.sysconf("SC_CLK_TCK")
PROGRAMS = """programs:
  idle:
    command: [{python}, -c, "import time; time.sleep(100000)"]
    numprocs: 3
    output: {{mode: daemon}}
"""


def start(workdir: Path, extra: str) -> tuple[subprocess.Popen[bytes], Path, Path]:
    sock, log = workdir / "d.sock", workdir / "d.log"
    config = workdir / "c.yaml"
    config.write_text(
        f"daemon:\n  socket: {sock}\n  log_format: json\n  log_file: {log}\n"
        "  sample_interval: 1s\n  scan_interval: 10s\n  log_level: info\n"
        + extra
        + PROGRAMS.format(python=sys.executable)
    )
    return spawn_daemon(config, sock), sock, log


def stop(proc: subprocess.Popen[bytes]) -> None:
    """TERM, then KILL after 30 s: a daemon this benchmark started."""
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def cpu_seconds(pid: int) -> float:
    """CPU time of all the process' threads: the scheduler's nanoseconds where the kernel
    keeps them (/proc/PID/task/*/schedstat), else utime + stime, whose 10 ms ticks are 0.017%
    of a core over a minute: coarser than the figure measured."""
    try:
        tasks = Path(f"/proc/{pid}/task").iterdir()
        return sum(int((t / "schedstat").read_text().split()[0]) for t in tasks) / 1e9
    except (OSError, ValueError, IndexError):
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / TICKS


def threads(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    return -1


class Lease:
    """One job's lease on a daemon, renewed every 10 s like a job's."""

    def __init__(self, sock: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.connect(str(sock))
        self.file = self.sock.makefile("rwb")
        self.lease = self.request({"op": "acquire", "want": 2, "job": "bench"})["lease"]

    def request(self, msg: dict[str, Any]) -> dict[str, Any]:
        self.file.write(json.dumps(msg).encode() + b"\n")
        self.file.flush()
        reply: dict[str, Any] = json.loads(self.file.readline())
        return reply

    def renew(self) -> None:
        self.request({"op": "renew", "lease": self.lease})


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--scrape-every", type=float, default=1.0)
    ap.add_argument(
        "--views",
        default=",".join(ALL),
        help=f"which views to attach, comma-separated (default: all of {','.join(ALL)})",
    )
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    views_on = tuple(v for v in args.views.split(",") if v)
    if unknown := set(views_on) - set(ALL):
        ap.error(f"unknown views {sorted(unknown)}; choose from {', '.join(ALL)}")
    workdir = Path(tempfile.mkdtemp(prefix="sbv-", dir="/tmp"))
    (workdir / "plain").mkdir()
    (workdir / "viewed").mkdir()
    port = free_port()
    textfile = workdir / "viewed" / "batt.prom"
    daemons: list[subprocess.Popen[bytes]] = []
    try:
        plain, plain_sock, _ = start(workdir / "plain", "")
        daemons.append(plain)
        viewed, viewed_sock, viewed_log = start(
            workdir / "viewed", metrics_config(port, textfile, views_on)
        )
        daemons.append(viewed)
        leases = [Lease(plain_sock), Lease(viewed_sock)]
        with attached_views(viewed_sock, viewed_log, port, args.scrape_every, views_on) as views:
            time.sleep(3)  # the views' start-up (imports, first screen) is not the steady state
            before = {p.pid: cpu_seconds(p.pid) for p in daemons}
            t0 = time.monotonic()
            next_renew = t0 + 10
            while (now := time.monotonic()) < t0 + args.seconds:
                if now >= next_renew:
                    for lease in leases:
                        lease.renew()
                    next_renew = now + 10
                time.sleep(min(1.0, t0 + args.seconds - now))
            wall = time.monotonic() - t0
            after = {p.pid: cpu_seconds(p.pid) for p in daemons}
            running = views.alive()
        share = {p.pid: 100 * (after[p.pid] - before[p.pid]) / wall for p in daemons}
        result: dict[str, Any] = {
            "seconds": round(wall, 1),
            "views": list(views_on),
            "plain_cpu_percent": round(share[plain.pid], 3),
            "viewed_cpu_percent": round(share[viewed.pid], 3),
            "views_cost_percent": round(share[viewed.pid] - share[plain.pid], 3),
            "viewed_threads": threads(viewed.pid),
            "views_running_at_end": running,
            "textfile_bytes": textfile.stat().st_size if textfile.exists() else 0,
        }
    finally:
        for proc in daemons:
            stop(proc)
        shutil.rmtree(workdir, ignore_errors=True)
    if args.json:
        print(json.dumps(result))
    else:
        print(f"window {result['seconds']} s, tick 1 s, scrape every {args.scrape_every:g} s")
        print(f"  views attached: {', '.join(views_on)}")
        print(f"  plain daemon   {result['plain_cpu_percent']:.3f}% of a core")
        print(f"  viewed daemon  {result['viewed_cpu_percent']:.3f}% of a core")
        print(f"  views cost     {result['views_cost_percent']:+.3f}% of a core (target < 0.2%)")
        print(f"  viewed daemon threads: {result['viewed_threads']}")
        print(f"  views running at the end: {', '.join(result['views_running_at_end'])}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
