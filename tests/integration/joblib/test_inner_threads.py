"""Inner threads fit the grant in real workers: loky workers of the executor and of the
joblib backend start with cpus/workers BLAS threads; a thread pool caps the process's."""

from __future__ import annotations

import os

import joblib  # type: ignore[import-untyped]  # joblib ships no type hints
import pytest

from supervisord_batt.client import inner
from supervisord_batt.client.executor import BudgetExecutor
from supervisord_batt.client.leases import Grant
from tests.support.daemons import DaemonHandle

pytest.importorskip("numpy")
threadpoolctl = pytest.importorskip("threadpoolctl")


def blas_threads(_: object = None) -> tuple[int, str, int]:
    """What a worker's BLAS runs with, what the environment said, and its pid."""
    import numpy as np

    np.ones((64, 64)) @ np.ones((64, 64))
    counts = [x["num_threads"] for x in threadpoolctl.threadpool_info()]
    return max(counts), os.environ.get("OMP_NUM_THREADS", ""), os.getpid()


EXPECTED = max(1, inner.cpu_count() // 2)  # a grant of 2 on this host


def test_executor_process_workers_get_cpus_over_workers() -> None:
    with BudgetExecutor(Grant.local("process", 2)) as ex:
        out = ex.map(blas_threads, range(4))
    assert {(n, omp) for n, omp, _ in out} == {(EXPECTED, str(EXPECTED))}
    assert ex.inner_threads == {"process": EXPECTED}


def test_executor_thread_pool_caps_the_process_blas_while_it_runs() -> None:
    before = blas_threads()[0]
    with BudgetExecutor(Grant.local("thread", 2)) as ex:
        out = ex.map(blas_threads, range(4))
    assert {n for n, _, _ in out} == {EXPECTED}
    assert blas_threads()[0] == before  # put back when the pool closed


def test_joblib_backend_workers_get_cpus_over_workers(batt: DaemonHandle) -> None:
    out = joblib.Parallel(n_jobs=2)(joblib.delayed(blas_threads)() for _ in range(4))
    assert {(n, omp) for n, omp, _ in out} == {(EXPECTED, str(EXPECTED))}
    assert os.getpid() not in {pid for _, _, pid in out}


def test_joblib_backend_thread_grant_caps_the_process_blas(batt: DaemonHandle) -> None:
    out = joblib.Parallel(n_jobs=2, require="sharedmem")(
        joblib.delayed(blas_threads)() for _ in range(4)
    )
    assert {n for n, _, _ in out} == {EXPECTED}
