"""One job of benchmarks/memory_proof.py: tasks whose every process holds a big buffer.

    python benchmarks/memory_job.py --mode budget --tasks 16 --workers 3 --mib 400 --job mem-0

Each process that runs a task (a loky worker, or the job itself when it runs sequential)
first allocates and writes `mib` MiB, kept for its life as a model or a data set loaded
once per worker would be; then each task spins `cpu_ms` of CPU over it and waits `io_ms`
(reading its input). Modes:

- plain: one loky pool of `workers` for the job's tasks, as plain joblib or loky would do;
- hand: the same with a pool of `hand` workers, sized by hand to fit the limit;
- sequential: every task in the job's own process;
- budget: `with lease(workers, job=...) as grant: grant.executor().map(...)`, the project's
  client against the daemon of SUPERVISORD_BATT_SOCKET.

Output, one JSON object per line, flushed as it happens (a job the OOM killer ends still
has its finished tasks counted):

    {"task": 3, "value": 1234}
    {"task": 4, "error": "TerminatedWorkerError"}
    {"summary": {...}}                      # last line, when the job gets that far

With --trace (benchmarks/plain_trace.py), each value is [index, worker pid, started,
data written, ended] on CLOCK_MONOTONIC, and a pool's job says when its pool was closed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

MODES = ("plain", "hand", "sequential", "budget")
PAGE = 4096

_held: list[bytearray] = []  # this process's buffer, allocated by its first task


def _buffer(mib: int) -> bytearray:
    if not _held:
        buf = bytearray(mib << 20)  # zero pages are not charged until written
        buf[::PAGE] = b"\x01" * (len(buf) // PAGE)
        _held.append(buf)
    return _held[0]


def run_task(item: tuple[int, int, float, float]) -> int:
    """One task: the process's buffer, `cpu_ms` of work over it, then `io_ms` of waiting."""
    index, mib, cpu_ms, io_ms = item
    buf = _buffer(mib)
    end = time.process_time() + cpu_ms / 1000.0
    acc, step = index, 0
    while time.process_time() < end:
        acc = (acc * 31 + buf[(step * PAGE * 7) % len(buf)]) & 0xFFFFFFFF
        step += 1
    time.sleep(io_ms / 1000.0)  # the task's input being read: no CPU, no memory
    return index if acc >= 0 else -1  # acc is never negative: the work is kept


def run_traced(item: tuple[int, int, float, float]) -> list[float]:
    """run_task, and when in the worker it began, had its data written, and ended."""
    start = time.monotonic()
    _buffer(item[1])
    written = time.monotonic()
    value = run_task(item)
    return [value, os.getpid(), start, written, time.monotonic()]


def _emit(record: dict[str, Any]) -> None:
    record["at"] = time.time()  # when: the proof splits each job's time by it
    sys.stdout.write(json.dumps(record) + "\n")
    sys.stdout.flush()


def run_pool(
    items: list[tuple[int, int, float, float]], workers: int, trace: bool = False
) -> dict[str, Any]:
    """A loky pool of `workers`, every task submitted at once; each error recorded."""
    # `task` by module name: workers unpickle it by reference (the name this script runs
    # under, benchmarks/ being sys.path[0]; mypy knows the file as benchmarks.memory_job)
    from loky import ProcessPoolExecutor  # type: ignore[import-untyped]
    from memory_job import run_task, run_traced  # type: ignore[import-not-found]

    task = run_traced if trace else run_task
    failed = 0
    with ProcessPoolExecutor(workers) as ex:
        futures = [ex.submit(task, item) for item in items]
        for item, fut in zip(items, futures, strict=True):
            try:
                _emit({"task": item[0], "value": fut.result()})
            except BaseException as exc:  # MemoryError included: that is what is recorded
                failed += 1
                _emit({"task": item[0], "error": type(exc).__name__})
    if trace:
        _emit({"closed": True})  # loky's shutdown(wait=True) returned
    return {"failed": failed}


def run_sequential(items: list[tuple[int, int, float, float]]) -> dict[str, Any]:
    failed = 0
    for item in items:
        try:
            _emit({"task": item[0], "value": run_task(item)})
        except MemoryError:
            failed += 1
            _emit({"task": item[0], "error": "MemoryError"})
    return {"failed": failed}


def run_budget(
    items: list[tuple[int, int, float, float]], workers: int, job: str
) -> dict[str, Any]:
    from memory_job import run_task as task

    from supervisord_batt.client.leases import lease
    from supervisord_batt.demo import CPU_BOUND

    with lease(workers, kinds=CPU_BOUND, job=job) as grant:
        first = {"kind": grant.kind, "workers": grant.workers, "reason": grant.reason}
        _emit({"granted": first})

        def done(index: int, value: int) -> None:
            _emit({"task": items[index][0], "value": value})

        with grant.executor() as ex:
            try:
                ex.map(task, items, on_done=done)
                error = None
            except Exception as exc:
                error = type(exc).__name__
                _emit({"task": None, "error": error})
        kinds = ex.kinds_used
    _emit({"released": True})  # the lease's end: last task to here is the client's
    return {"failed": 0 if error is None else -1, "grant": first, "kinds": kinds}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--mode", choices=MODES, required=True)
    p.add_argument("--tasks", type=int, default=16)
    p.add_argument("--workers", type=int, default=3, help="the pool the job wants")
    p.add_argument("--hand", type=int, default=1, help="the hand-sized pool (mode hand)")
    p.add_argument("--mib", type=int, default=400, help="MiB each process allocates")
    p.add_argument("--cpu-ms", type=float, default=40.0)
    p.add_argument("--io-ms", type=float, default=160.0)
    p.add_argument("--job", default="mem")
    p.add_argument("--trace", action="store_true", help="pool modes: when each task ran")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _emit({"started": args.mode})
    items = [(i, args.mib, args.cpu_ms, args.io_ms) for i in range(args.tasks)]
    if args.mode == "plain":
        summary = run_pool(items, args.workers, args.trace)
    elif args.mode == "hand":
        summary = run_pool(items, args.hand, args.trace)
    elif args.mode == "sequential":
        summary = run_sequential(items)
    else:
        summary = run_budget(items, args.workers, args.job)
    _emit({"summary": {"mode": args.mode, "job": args.job, **summary}})
    return 0 if not summary["failed"] else 1


if __name__ == "__main__":
    sys.exit(main())
