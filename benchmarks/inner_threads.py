"""Inner threads under a process grant: numpy matrix multiplies in a loky pool of 2.

An unmodified job run by `supervisord-batt exec` sizes its pool and its BLAS from the
environment. Before the fix `exec` exported OMP_NUM_THREADS and friends equal to the
worker count (2 workers x 2 BLAS threads on 2 CPUs); now each worker gets cpus / workers
(client.inner). This runs the same job under both environments, alternating, and prints
tasks/s and the threads each worker was seen running.

    python benchmarks/inner_threads.py [--rounds 5] [--tasks 200] [--size 700]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from supervisord_batt.client import inner  # noqa: E402
from supervisord_batt.client.leases import Grant, child_env  # noqa: E402

WORKERS = 2

JOB = textwrap.dedent(
    """
    import json, os, sys, time
    import numpy as np
    import psutil
    from loky import ProcessPoolExecutor

    def task(args):
        size, seed = args
        rng = np.random.default_rng(seed)
        a = rng.random((size, size))
        b = a @ a.T
        from threadpoolctl import threadpool_info
        blas = max((x["num_threads"] for x in threadpool_info()), default=0)
        return float(b[0, 0]), os.getpid(), psutil.Process().num_threads(), blas

    tasks, size = int(sys.argv[1]), int(sys.argv[2])
    workers = int(os.environ["LOKY_MAX_CPU_COUNT"])
    with ProcessPoolExecutor(max_workers=workers) as ex:
        list(ex.map(task, [(size, 1000 + i) for i in range(workers)]))  # spawn, load BLAS
        start = time.perf_counter()
        out = list(ex.map(task, [(size, i) for i in range(tasks)]))
        elapsed = time.perf_counter() - start
    print(json.dumps({
        "tasks_per_s": tasks / elapsed,
        "workers": len({pid for _, pid, _, _ in out}),
        "threads_per_worker": max(n for _, _, n, _ in out),
        "blas_threads_per_worker": max(b for _, _, _, b in out),
    }))
    """
)


def old_env(workers: int) -> dict[str, str]:
    """What `exec` exported before: every variable equal to the worker count."""
    env = dict(os.environ)
    for name in (
        "LOKY_MAX_CPU_COUNT",
        "OMP_NUM_THREADS",
        "OPENBLAS_NUM_THREADS",
        "MKL_NUM_THREADS",
    ):
        env[name] = str(workers)
    return env


def new_env(workers: int) -> dict[str, str]:
    return child_env(Grant.local("process", workers))


def run(env: dict[str, str], tasks: int, size: int) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, "-c", JOB, str(tasks), str(size)],
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )
    if out.returncode != 0:
        raise SystemExit(f"job failed:\n{out.stderr}")
    result: dict[str, float] = json.loads(out.stdout)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--tasks", type=int, default=200)
    parser.add_argument("--size", type=int, default=700)
    args = parser.parse_args()
    cpus = inner.cpu_count()
    envs = {
        "without fix (OMP=workers)": old_env(WORKERS),
        "with fix (cpus/workers)": new_env(WORKERS),
    }
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in envs}
    for _ in range(args.rounds):
        for name, env in envs.items():
            runs[name].append(run(env, args.tasks, args.size))
    print(
        f"process grant of {WORKERS} on {cpus} CPUs; {args.tasks} tasks of a "
        f"{args.size}x{args.size} matrix multiply; median of {args.rounds} rounds"
    )
    head = ("OMP_NUM_THREADS", "tasks/s", "threads/worker", "BLAS threads")
    print(f"{'':28} {head[0]:>15} {head[1]:>8} {head[2]:>14} {head[3]:>12}")
    for name, env in envs.items():
        rows = runs[name]
        rate = statistics.median(r["tasks_per_s"] for r in rows)
        threads = max(int(r["threads_per_worker"]) for r in rows)
        blas = max(int(r["blas_threads_per_worker"]) for r in rows)
        omp = env["OMP_NUM_THREADS"]
        print(f"{name:28} {omp:>15} {rate:8.2f} {threads:14d} {blas:12d}")
        each = ", ".join(f"{r['tasks_per_s']:.2f}" for r in rows)
        print(f"{'':28} rounds: {each}")


if __name__ == "__main__":
    main()
