"""Issue 24, proof with a real memory cgroup: a small run of benchmarks/memory_proof.py.

Four jobs whose every task-running process holds 100 MiB it wrote, each wanting a loky
pool of 3, in a memory cgroup of 768 MiB (plain pools would take about 1.7 GiB). Plain
pools hit the limit (the cgroup counts OOM kills, tasks fail); the same jobs through the
project's client against a real daemon watching the cgroup finish every task with no
OOM kill."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from benchmarks.memory_proof import Bench, Shape, daemon, reaping, run_jobs

if TYPE_CHECKING:
    from tests.helpers import MemoryCgroup

MIB = 1 << 20
SHAPE = Shape(jobs=4, tasks=6, workers=3, mib=100, cpu_ms=20.0, io_ms=80.0)
NAMES = [f"proof-{i}" for i in range(SHAPE.jobs)]


def test_issue24_plain_pools_hit_the_memory_limit_and_the_budget_does_not(
    memory_cgroup: Callable[..., MemoryCgroup],
) -> None:
    cg = memory_cgroup()
    cg.set_limit(768 * MIB)
    workdir = Path(tempfile.mkdtemp(prefix="sbm-", dir="/tmp"))  # short: a socket lives here
    try:
        with reaping() as children:
            bench = Bench(cg, children, workdir)
            plain = run_jobs(bench, SHAPE, "plain", "plain", names=NAMES)
            assert plain.oom_kills >= 1 and plain.failed > 0, plain
            with daemon(bench, scan="1s", cpu_cap=None, name="proof") as sock:
                budget = run_jobs(bench, SHAPE, "budget", "budget", names=NAMES, sock=sock)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    assert budget.oom_kills == 0, budget
    assert (budget.done, budget.failed) == (budget.total, 0), budget
    assert len(budget.grants) == SHAPE.jobs, budget  # every job got as far as its summary
