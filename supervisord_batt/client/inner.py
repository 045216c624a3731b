"""How many threads each worker may start inside (BLAS, OpenMP): the grant divided.

A process grant of n on a host of c CPUs runs n workers; if each worker's BLAS or OpenMP
starts its default c threads, n workers run n x c threads on c CPUs. Each worker gets
about c / n inner threads instead, and 1 when the budget is tight (the daemon is under
pressure, or it granted fewer workers than were wanted: the CPUs are not all ours).

Set three ways: in the environment of a program `exec` starts (its BLAS reads it when it
loads), in the environment of the loky workers the executor and the joblib backend
spawn, and with threadpoolctl in a process whose libraries are already loaded (a thread
grant: the pool's threads share the process's BLAS). Standard library only.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

from supervisord_batt import protocol

# read by OpenMP and each BLAS when it loads (the ones joblib's loky backend sets too)
INNER_THREAD_ENV_VARS = (
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "BLIS_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
    "NUMEXPR_NUM_THREADS",
)
TIGHT_LEVELS = protocol.LEVELS[1:]  # the daemon's pressure levels above normal


def cpu_count() -> int:
    """The CPUs this process may run on (its affinity mask, which a cpuset narrows)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def inner_threads(kind: str, workers: int, *, cpus: int | None = None, tight: bool = False) -> int:
    """Inner threads per worker for a grant of `workers` of `kind` on `cpus` CPUs.

    A pool of n gets cpus // n each, at least 1. Sequential gets 1: the daemon grants
    no worker when it has none to spare, so the job's own thread must not start more;
    so does any grant when the budget is tight.
    """
    if tight or kind == "sequential":
        return 1
    cpus = cpu_count() if cpus is None else max(1, cpus)
    return max(1, cpus // max(1, workers))


def for_grant(grant: Any, *, cpus: int | None = None) -> int:
    """inner_threads() for a grant-like object (kind, size; `tight` when it has one)."""
    return inner_threads(
        str(grant.kind), int(grant.size), cpus=cpus, tight=bool(getattr(grant, "tight", False))
    )


def inner_env(threads: int) -> dict[str, str]:
    """The environment variables that cap every known inner thread pool at `threads`."""
    return {name: str(max(1, threads)) for name in INNER_THREAD_ENV_VARS}


@contextlib.contextmanager
def limit_here(threads: int) -> Iterator[None]:
    """Cap this process's loaded thread pools for the block (threadpoolctl, if installed).

    For a thread grant: the pool's threads share the process's BLAS, which was loaded
    before the grant was known, so only threadpoolctl can still resize it. Without
    threadpoolctl nothing changes (the job ran like this before).

    Not for a pool made after a refused creation: setting OpenBLAS's thread count makes
    it start its own threads if it had not yet, and when that is refused OpenBLAS
    raises SIGINT in the job (measured: tests/integration/joblib/test_refusal.py)."""
    try:
        from threadpoolctl import threadpool_limits  # type: ignore[import-untyped]  # noqa: PLC0415
    except ImportError:
        yield
        return
    with threadpool_limits(limits=max(1, threads)):
        yield


def limit_this_thread(threads: int) -> None:
    """Cap OpenMP in the calling thread: its thread count is a per-thread setting, so a
    pool thread does not inherit limit_here()'s (measured with scikit-learn's libgomp).
    A pool's initializer; never raises (a failed limit must not break the pool)."""
    with contextlib.suppress(Exception):
        from threadpoolctl import threadpool_limits  # noqa: PLC0415

        threadpool_limits(limits=max(1, threads), user_api="openmp")
