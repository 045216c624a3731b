"""A demo job that behaves like run_batt: N tasks of M CPU-bound samples each, run with a
lease from the daemon and the budget executor, one JSON summary line at the end.

    python -m supervisord_batt.demo --tasks 8 --samples 4 --want 2 --seed 1

Each sample is a loop of 64-bit integer hashing whose length comes from a seeded RNG, so
its time depends on the CPU (about 50-200 ms here) but its result does not: the checksum
is the same whatever the mode, kind or size, which is what tests and benchmarks compare.
Exit status 0 when every task succeeded, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass

from supervisord_batt import paths
from supervisord_batt.client.leases import lease

CPU_BOUND = ("process", "sequential")  # the lease kinds a GIL-bound job can use
ITERS_PER_MS = 10_000  # rough speed of one hashing iteration on the reference host
MASK = (1 << 64) - 1


@dataclass(frozen=True)
class Task:
    index: int
    seed: int
    samples: int
    min_ms: float
    max_ms: float


def spin(iterations: int, h: int) -> int:
    """`iterations` steps of a hashing loop from `h` (ITERS_PER_MS of them take about a ms)."""
    for i in range(iterations):
        h = (h * 6364136223846793005 + i + 1442695040888963407) & MASK
    return h


def score_sample(task: Task, sample: int) -> int:
    """One sample of a task: a hashing loop whose length comes from a seeded RNG."""
    rng = random.Random(f"{task.seed}:{task.index}:{sample}")
    iterations = int(rng.uniform(task.min_ms, task.max_ms) * ITERS_PER_MS)
    return spin(iterations, rng.getrandbits(64))


def score(task: Task) -> int:
    """The task's checksum: deterministic for (seed, index, samples, min_ms, max_ms)."""
    acc = 0
    for sample in range(task.samples):
        acc = (acc * 31 + score_sample(task, sample)) & MASK
    return acc


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m supervisord_batt.demo",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--tasks", type=int, default=8)
    p.add_argument("--samples", type=int, default=4)
    p.add_argument(
        "--want",
        type=int,
        default=int(os.environ.get(paths.WANT_ENV, "2")),
        help="workers to ask the daemon for (default: $SUPERVISORD_BATT_WANT, "
        "which the supervisor sets from the program's slots, else 2)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--min-ms", type=float, default=50.0)
    p.add_argument("--max-ms", type=float, default=200.0)
    p.add_argument("--task-timeout", type=float, default=None, metavar="S")
    p.add_argument("--job", default="demo")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # by its importable name (not __main__'s), so loky workers unpickle it by reference
    from supervisord_batt.demo import Task as TaskT  # noqa: PLC0415
    from supervisord_batt.demo import score as score_fn  # noqa: PLC0415

    tasks = [TaskT(i, args.seed, args.samples, args.min_ms, args.max_ms) for i in range(args.tasks)]
    start = time.monotonic()
    done = 0
    results: list[int] = []
    error = ""
    # pure-Python scoring holds the GIL: a thread pool would add threads and no speed, so
    # the job accepts a process pool or sequential, never threads
    with lease(args.want, kinds=CPU_BOUND, job=args.job) as grant:

        def progressed(_index: int, _result: object) -> None:
            nonlocal done
            done += 1
            grant.heartbeat(progress=done)

        with grant.executor(task_timeout=args.task_timeout) as ex:
            try:
                results = ex.map(score_fn, tasks, on_done=progressed)
            except Exception as exc:
                error = f"{type(exc).__name__}: {exc}"
                sys.stderr.write(f"demo: {error}\n")
        kinds, workers, degraded = ex.kinds_used, ex.workers, grant.degraded
    checksum = 0
    for value in results:
        checksum = (checksum * 1_000_003 + value) & MASK
    summary = {
        "tasks_done": len(results) if not error else done,
        "tasks_failed": 0 if not error else args.tasks - done,
        "kinds": kinds,
        "workers": workers,
        "degraded": degraded,
        "elapsed_s": round(time.monotonic() - start, 3),
        "checksum": f"{checksum:016x}" if not error else None,
    }
    if error:
        summary["error"] = error
    sys.stdout.write(json.dumps(summary) + "\n")
    sys.stdout.flush()
    return 0 if not error else 1


if __name__ == "__main__":
    sys.exit(main())
