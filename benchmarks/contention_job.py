"""One demo-like job for benchmarks/contention.py, in one of four modes.

    python benchmarks/contention_job.py --mode budget --tasks 6 --samples 4 --workers 2 --seed 3

The work is supervisord_batt.demo's: task i of seed s is `samples` CPU-bound samples, and
its value is `demo.score(Task(i, s, ...))` whatever the mode. Modes differ only in how a
task's work is spread:

- unguarded: what run_batt did, a fresh loky pool per task over the task's samples
  (`with ProcessPoolExecutor(W) as ex: list(ex.map(score_sample, samples))`), no guard;
- heuristic: the published per-process guard, per task: a ThreadPoolExecutor(1) when
  `threading.active_count() > 50`, else a loky pool of W, falling back to a thread pool of
  W, then to sequential, on any exception;
- sequential: `demo.score(task)` in the main thread, no pool;
- budget: the real client, as the demo job does: `with lease(W) as grant: with
  grant.executor() as ex: ex.map(demo.score, tasks)` (one pool reused over the tasks).

A task that raises is reported and the job goes on with the next one (a batch runner
logs a failed battery and scores the next); the budget executor raises out of map, so
its remaining tasks count as failed. Output, one JSON object per line, flushed as it
happens so the benchmark still counts the finished tasks of a job it had to kill:

    {"started": "budget", "at": 1765000000.12}  # every line has "at", its epoch time
    {"granted": {...}}                      # budget: the first grant, then the lease's end:
    {"released": true}
    {"task": 3, "value": "0123456789abcdef", "path": "process"}
    {"task": 4, "error": "BrokenProcessPool: ..."}
    {"summary": {...}}                      # last line, when the job gets that far

Exit status 0 when every task succeeded, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from supervisord_batt.demo import CPU_BOUND, MASK, Task, score
from supervisord_batt.demo import score_sample as demo_score_sample

MODES = ("unguarded", "heuristic", "sequential", "budget")
HEURISTIC_THREAD_LIMIT = 50


def score_sample(item: tuple[Task, int]) -> int:
    """One sample of demo.score's loop, as one pool task."""
    return demo_score_sample(*item)


def fold_samples(values: Sequence[int]) -> int:
    """Sample values into the task's value, exactly as demo.score folds them."""
    acc = 0
    for value in values:
        acc = (acc * 31 + value) & MASK
    return acc


def fold_tasks(values: Sequence[int]) -> int:
    """Task values into the job's checksum, exactly as the demo job folds them."""
    checksum = 0
    for value in values:
        checksum = (checksum * 1_000_003 + value) & MASK
    return checksum


def _emit(record: dict[str, Any]) -> None:
    record["at"] = time.time()  # when: the benchmark splits each job's time by it
    sys.stdout.write(json.dumps(record) + "\n")
    sys.stdout.flush()


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}".splitlines()[0][:200]


def _items(task: Task) -> list[tuple[Task, int]]:
    return [(task, s) for s in range(task.samples)]


def run_unguarded(
    task: Task, workers: int, sample_fn: Callable[[tuple[Task, int]], int], paths: Counter[str]
) -> int:
    from loky import ProcessPoolExecutor  # type: ignore[import-untyped]

    with ProcessPoolExecutor(workers) as ex:
        values = list(ex.map(sample_fn, _items(task)))
    paths["process"] += 1
    return fold_samples(values)


def run_heuristic(
    task: Task, workers: int, sample_fn: Callable[[tuple[Task, int]], int], paths: Counter[str]
) -> int:
    from loky import ProcessPoolExecutor

    items = _items(task)
    if threading.active_count() > HEURISTIC_THREAD_LIMIT:
        with ThreadPoolExecutor(1) as tex:
            values = list(tex.map(sample_fn, items))
        paths["thread:1"] += 1
        return fold_samples(values)
    try:
        with ProcessPoolExecutor(workers) as ex:
            values = list(ex.map(sample_fn, items))
        paths["process"] += 1
        return fold_samples(values)
    except Exception:
        paths["process failed"] += 1
    try:
        with ThreadPoolExecutor(workers) as tex:
            values = list(tex.map(sample_fn, items))
        paths["thread"] += 1
        return fold_samples(values)
    except Exception:
        paths["thread failed"] += 1
    paths["sequential"] += 1
    return fold_samples([sample_fn(item) for item in items])


def run_per_task(mode: str, tasks: list[Task], workers: int) -> dict[str, Any]:
    """unguarded, heuristic, sequential: one task after another, errors reported."""
    # by its importable name (not __main__'s), so loky workers unpickle it by reference;
    # that is the name it runs under (benchmarks/ is sys.path[0]), mypy knows the file by
    # its path, benchmarks.contention_job
    from contention_job import score_sample as sample_fn  # type: ignore[import-not-found]

    paths: Counter[str] = Counter()
    values: list[int] = []
    failed = 0
    for task in tasks:
        try:
            if mode == "unguarded":
                value = run_unguarded(task, workers, sample_fn, paths)
            elif mode == "heuristic":
                value = run_heuristic(task, workers, sample_fn, paths)
            else:
                value = score(task)
                paths["sequential"] += 1
        except Exception as exc:
            failed += 1
            _emit({"task": task.index, "error": _describe(exc)})
            continue
        values.append(value)
        _emit({"task": task.index, "value": f"{value:016x}"})
    return {
        "failed": failed,
        "paths": dict(paths),
        "checksum": f"{fold_tasks(values):016x}" if not failed else None,
    }


def run_budget(tasks: list[Task], workers: int, job: str) -> dict[str, Any]:
    """The real thing: a lease from the daemon and the budget executor, as the demo does."""
    from supervisord_batt.client.leases import lease

    values: list[int] = []
    error = ""
    done = 0
    with lease(workers, kinds=CPU_BOUND, job=job) as grant:
        first = {
            "kind": grant.kind,
            "workers": grant.workers,
            "level": grant.level,
            "reason": grant.reason,
            "degraded": grant.degraded,
        }
        _emit({"granted": first})

        def progressed(index: int, value: int) -> None:
            nonlocal done
            done += 1
            _emit({"task": index, "value": f"{value:016x}"})
            grant.heartbeat(progress=done)

        with grant.executor() as ex:
            try:
                values = ex.map(score, tasks, on_done=progressed)
            except Exception as exc:
                error = _describe(exc)
                _emit({"task": None, "error": error})
        kinds, fallbacks = (
            ex.kinds_used,
            [f"{f.from_kind}->{f.to_kind} at {f.stage}" for f in ex.fallbacks],
        )
    _emit({"released": True})  # the lease's end: last task to here is the client's
    return {
        "failed": len(tasks) - done if error else 0,
        "grant": first,
        "kinds": kinds,
        "fallbacks": fallbacks,
        "error": error or None,
        "checksum": f"{fold_tasks(values):016x}" if not error else None,
    }


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--mode", choices=MODES, required=True)
    p.add_argument("--tasks", type=int, default=6)
    p.add_argument("--samples", type=int, default=4)
    p.add_argument("--workers", type=int, default=2, help="W: pool size wanted per job")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--min-ms", type=float, default=50.0)
    p.add_argument("--max-ms", type=float, default=200.0)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _emit({"started": args.mode})
    tasks = [Task(i, args.seed, args.samples, args.min_ms, args.max_ms) for i in range(args.tasks)]
    if args.mode == "budget":
        summary = run_budget(tasks, args.workers, job=f"contention-{args.seed}")
    else:
        summary = run_per_task(args.mode, tasks, args.workers)
    _emit({"summary": {"mode": args.mode, "seed": args.seed, **summary}})
    return 0 if not summary["failed"] else 1


if __name__ == "__main__":
    sys.exit(main())
