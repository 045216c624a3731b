"""A process's own start and end on this machine: the fixed costs the memory simulator
(benchmarks/sim/memory.py, Mem) charges each job and worker of memory_proof.py's shape.

    python benchmarks/process_costs.py [--runs 15] [--mib 400] [--path DIR]

Each figure is the median of `runs` fresh interpreters (wall seconds, and CPU seconds
from the children's rusage), with DIR (default: this checkout) first on PYTHONPATH and
`-P` (the current directory not first); an older client is measured by exporting its
package there (`git archive COMMIT supervisord_batt | tar -x -C DIR`):

- start: `python -c pass`, `python -c "import argparse, json"` (memory_job.py's own
  imports before it marks `started`);
- imports: the CPU seconds each mode's imports add in a fresh interpreter (loky's pool,
  the client's lease, demo and psutil, which its executor loads);
- a loky worker's start: the CPU seconds of a fresh interpreter's reaped children (its
  pool's workers and resource tracker) after a pool of 4 ran 4 tasks of 0.3 s waiting
  and shut down, less a pool of 1's, over 3 (what one worker more costs);
- exit: a child that has written `mib` MiB (as a job's process or a worker does) is told
  to end; from then to its reaping (its pages freed, its modules torn down), against the
  same child holding nothing and holding `mib` MiB with the client imported; its CPU is
  the rusage's total less what it had used when it was told.
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
from functools import partial
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CLIENT = "from supervisord_batt.client.leases import lease; import supervisord_batt.demo, psutil"
IMPORTS = {"loky pool": "import loky", "client": CLIENT}
TIMED = """
import argparse, json, time
t = time.process_time()
{imp}
print(time.process_time() - t)
"""
CHILD = """
import sys, time
{imp}
buf = bytearray({mib} << 20)
buf[::4096] = b"\\x01" * (len(buf) // 4096)
print(time.process_time(), flush=True)
sys.stdin.read()
"""

POOL = """
import resource, time
import loky
def wait(x):
    time.sleep(0.3)
    return x
if __name__ == "__main__":
    with loky.ProcessPoolExecutor({n}) as ex:
        list(ex.map(wait, range({n})))
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    print(r.ru_utime + r.ru_stime)
"""


def _child_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def start(code: str, path: str) -> tuple[float, float]:
    """Wall and CPU seconds of one fresh interpreter running `code` to its end."""
    cpu, t0 = _child_cpu(), time.monotonic()
    subprocess.run([sys.executable, "-P", "-c", code], check=True, env=_env(path))
    return time.monotonic() - t0, _child_cpu() - cpu


def _printed(code: str, path: str) -> float:
    """The number a fresh interpreter running `code` prints."""
    out = subprocess.run(
        [sys.executable, "-P", "-c", code],
        check=True,
        capture_output=True,
        text=True,
        env=_env(path),
    ).stdout
    return float(out)


def imports(imp: str, path: str) -> tuple[float, float]:
    """CPU seconds `imp` adds to a fresh interpreter (twice: the medians' shape)."""
    cpu = _printed(TIMED.format(imp=imp), path)
    return cpu, cpu


def exit_cost(mib: int, path: str, imp: str = "") -> tuple[float, float]:
    """Wall and CPU seconds from telling a child holding `mib` MiB to end to its reaping."""
    cpu = _child_cpu()
    proc = subprocess.Popen(
        [sys.executable, "-P", "-c", CHILD.format(mib=mib, imp=imp)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env=_env(path),
    )
    assert proc.stdout is not None and proc.stdin is not None
    used = float(proc.stdout.readline())
    t0 = time.monotonic()
    proc.stdin.close()
    proc.wait()
    return time.monotonic() - t0, _child_cpu() - cpu - used


def worker_start(path: str) -> tuple[float, float]:
    """CPU seconds one loky worker more costs its pool (children of 4 less 1, over 3),
    twice: the medians' shape."""
    each = (_printed(POOL.format(n=4), path) - _printed(POOL.format(n=1), path)) / 3
    return each, each


def _env(path: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": path}


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
    p.add_argument("--path", default=str(REPO), help="where supervisord_batt is imported from")
    args = p.parse_args(argv)
    runs, mib, path = args.runs, args.mib, args.path
    figures: dict[str, object] = {
        "load average": os.getloadavg()[0],
        "bare interpreter": median(runs, lambda: start("pass", path)),
        "memory_job imports": median(runs, lambda: start("import argparse, json", path)),
    }
    for name, imp in IMPORTS.items():
        figures[f"{name} imports"] = median(runs, partial(imports, imp, path))
    figures["loky worker start"] = median(runs, lambda: worker_start(path))
    figures["exit holding nothing"] = median(runs, lambda: exit_cost(0, path))
    figures[f"exit holding {mib} MiB"] = median(runs, lambda: exit_cost(mib, path))
    figures[f"exit holding {mib} MiB, the client imported"] = median(
        runs, lambda: exit_cost(mib, path, CLIENT)
    )
    print(json.dumps(figures, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
