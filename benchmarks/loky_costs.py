"""Measure what a loky pool costs in kernel tasks, step by step (docs/FACTS.md, table 1).

A child interpreter builds a pool one step at a time and stops after each step; this
process counts the child's threads and its descendant processes (and their threads) with
psutil at every stop. Tasks are what a pids cgroup, TasksMax, RLIMIT_NPROC and
threads-max count: threads plus processes, a process's main thread counted once.

    python benchmarks/loky_costs.py [--workers 3]
"""

from __future__ import annotations

import argparse
import subprocess
import sys

import psutil

JOB = r"""
import sys
def stop(step):
    sys.stdout.write(step + "\n"); sys.stdout.flush()
    sys.stdin.readline()
import loky
from concurrent.futures import ThreadPoolExecutor
n = int(sys.argv[1])
stop("loky imported, no pool yet")
pool = loky.ProcessPoolExecutor(n)
stop(f"ProcessPoolExecutor({n}) constructed")
pool.submit(abs, -1).result()
stop("after the first submit()")
pool.shutdown(wait=True)
stop("after shutdown()")
with ThreadPoolExecutor(1) as tp:
    tp.submit(abs, -1).result()
    stop("ThreadPoolExecutor(1) alive as well")
"""


def census(pid: int) -> tuple[int, int, int]:
    """(threads of the job, descendant processes, tasks of the whole tree)."""
    job = psutil.Process(pid)
    children = job.children(recursive=True)
    threads = job.num_threads()
    tasks = threads + sum(c.num_threads() for c in children)
    return threads, len(children), tasks


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, default=3)
    args = ap.parse_args()
    proc = subprocess.Popen(
        [sys.executable, "-c", JOB, str(args.workers)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdin is not None and proc.stdout is not None
    # only for its version, once the job started (loky ships no type hints)
    import loky  # type: ignore[import-untyped]

    print(f"loky {loky.__version__}, Python {sys.version.split()[0]}, pool of {args.workers}")
    print(f"{'state of one job':<42} {'threads':>7} {'children':>8} {'tasks':>5}")
    try:
        for line in proc.stdout:
            threads, children, tasks = census(proc.pid)
            print(f"{line.strip():<42} {threads:>7} {children:>8} {tasks:>5}")
            proc.stdin.write("\n")
            proc.stdin.flush()
    finally:
        proc.stdin.close()
        if proc.wait(timeout=30) != 0:
            print(f"job exited with {proc.returncode}", file=sys.stderr)
    return proc.returncode


if __name__ == "__main__":
    raise SystemExit(main())
