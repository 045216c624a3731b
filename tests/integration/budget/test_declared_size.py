"""Issue 24: a job that declares its workers' size is charged it before the daemon has
seen the job. Two jobs declaring 1 GiB workers ($SUPERVISORD_BATT_WORKER_MEMORY, sent by
the project's client) ask for 16 process workers each in a real memory cgroup limited to
4 GiB, with memory_per_slot at 128 MiB: charged that, the first would be granted 16 and
the second most of what is left, workers that would write 32 GiB into the cgroup;
charged what they declared, the two hold no more than fits. `status` shows the size."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import pytest

from supervisord_batt import paths
from tests.helpers import CALM
from tests.support.allocating import allocating_job
from tests.support.daemons import DaemonHandle

if TYPE_CHECKING:
    from tests.helpers import MemoryCgroup

MIB = 1 << 20
GIB = 1 << 30
WANT = 16


def test_issue24_two_jobs_declaring_1_gib_workers_are_granted_what_fits_at_1_gib(
    memory_cgroup: Callable[..., MemoryCgroup],
    daemon: Callable[..., DaemonHandle],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cg = memory_cgroup()
    cg.set_limit(4 * GIB)
    d = daemon(
        {
            "budget": {  # memory must bind: CPUs and tasks cannot, nor the host's pressure
                "cgroups": [cg.cgroup_path],
                "reserve_tasks": 0,
                "reserve_percent": 0,
                "cpu_cap": 64,
                "max_per_lease": WANT,
                "memory_per_slot": "128MiB",
                "pressure": CALM,
            },
        }
    )
    monkeypatch.setenv(paths.WORKER_MEMORY_ENV, "1GiB")  # the jobs inherit it
    with (
        allocating_job(d, "first", 0, WANT, run=False, preexec_fn=cg.preexec()) as first,
        allocating_job(d, "second", 0, WANT, run=False, preexec_fn=cg.preexec()) as second,
    ):
        # 4 GiB less the 5% reserve: the job's own process, charged a worker until it
        # holds one (it may run its tasks: budget.memory_unwritten), and two workers
        assert (first["kind"], first["workers"]) == ("process", 2), first
        assert (second["kind"], second["workers"]) == ("sequential", 0), second
        rows = {r["job"]: r for r in d.status()["leases"]}
        for name in ("first", "second"):
            row = rows[name]
            assert (row["declared_bytes"], row["worker_bytes"], row["learned_runs"]) == (
                GIB,
                GIB,
                0,
            ), row
        shown = d.cli("status")
        assert shown.returncode == 0, shown.stderr
        assert "first: 1.0 GiB per worker, declared" in shown.stdout, shown.stdout
    assert cg.oom_kills() == 0
