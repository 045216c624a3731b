"""A process's own start and end on this machine: the fixed costs the memory simulator
(benchmarks/sim/memory.py, Mem) charges each job and worker of memory_proof.py's shape.

    python benchmarks/process_costs.py [--runs 15] [--mib 400]

Each figure is the median of `runs` fresh interpreters (wall seconds, and CPU seconds
from the children's rusage):

- start: `python -c pass`, `python -c "import argparse, json"` (memory_job.py's own
  imports before it marks `started`), `python -c "import supervisord_batt.client"`;
- exit: a child that has written `mib` MiB (as a job's process or a worker does) is told
  to end; from then to its reaping (its pages freed, its modules torn down), against the
  same child holding nothing; its CPU is the rusage's total less what it had used when
  it was told.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CHILD = """
import sys, time
buf = bytearray({mib} << 20)
buf[::4096] = b"\\x01" * (len(buf) // 4096)
print(time.process_time(), flush=True)
sys.stdin.read()
"""


def _child_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def start(code: str) -> tuple[float, float]:
    """Wall and CPU seconds of one fresh interpreter running `code` to its end."""
    cpu, t0 = _child_cpu(), time.monotonic()
    subprocess.run([sys.executable, "-c", code], check=True, env=_env())
    return time.monotonic() - t0, _child_cpu() - cpu


def exit_cost(mib: int) -> tuple[float, float]:
    """Wall and CPU seconds from telling a child holding `mib` MiB to end to its reaping."""
    cpu = _child_cpu()
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD.format(mib=mib)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env=_env(),
    )
    assert proc.stdout is not None and proc.stdin is not None
    used = float(proc.stdout.readline())
    t0 = time.monotonic()
    proc.stdin.close()
    proc.wait()
    return time.monotonic() - t0, _child_cpu() - cpu - used


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO)}


def median(runs: int, f: Callable[[], tuple[float, float]]) -> dict[str, float]:
    got = [f() for _ in range(runs)]
    return {
        "wall": round(statistics.median(w for w, _ in got), 4),
        "cpu": round(statistics.median(c for _, c in got), 4),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--runs", type=int, default=15)
    p.add_argument("--mib", type=int, default=400)
    args = p.parse_args(argv)
    figures = {
        "load average": os.getloadavg()[0],
        "bare interpreter": median(args.runs, lambda: start("pass")),
        "memory_job imports": median(args.runs, lambda: start("import argparse, json")),
        "client import": median(
            args.runs, lambda: start("import argparse, json, supervisord_batt.client")
        ),
        f"exit holding {args.mib} MiB": median(args.runs, lambda: exit_cost(args.mib)),
        "exit holding nothing": median(args.runs, lambda: exit_cost(0)),
    }
    print(json.dumps(figures, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
