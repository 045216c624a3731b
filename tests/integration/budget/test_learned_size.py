"""Issue 24: each job's memory per worker is learned from the daemon's scans and sizes its
grants. Two jobs hold leases through the project's client in a real memory cgroup, their
workers writing 300 MiB and 20 MiB each; before they are seen both are granted what
memory_per_slot gives, after one run each the big job gets fewer workers and the small
one more, and `status` says what each worker is charged and from how many runs."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from typing import TYPE_CHECKING, Any

from tests.helpers import CALM, REPO, wait_until
from tests.support.allocating import allocating_job
from tests.support.daemons import DaemonHandle

if TYPE_CHECKING:
    from tests.helpers import MemoryCgroup

MIB = 1 << 20
GIB = 1 << 30
SLOT = 128 * MIB
BIG, SMALL = 300, 20  # MiB each worker of the two jobs writes
WANT = 16


def budget(cgroup: str) -> dict[str, Any]:
    """Memory must bind: CPUs and tasks cannot, thresholds the host cannot reach."""
    return {
        "cgroups": [cgroup],
        "reserve_tasks": 0,
        "reserve_percent": 0,
        "cpu_cap": 64,
        "max_per_lease": WANT,
        "memory_per_slot": f"{SLOT // MIB}MiB",
        "pressure": CALM,
    }


@contextmanager
def job(
    d: DaemonHandle, cg: MemoryCgroup, name: str, mib: int, want: int, *, run: bool
) -> Iterator[dict[str, Any]]:
    """A job in the cgroup holding its lease (and workers, if `run`) for the block."""
    with allocating_job(d, name, mib, want, run=run, preexec_fn=cg.preexec()) as grant:
        yield grant


def learned(d: DaemonHandle, name: str) -> tuple[int, int]:
    """(bytes per worker, runs) the daemon shows for a lease of job `name`."""
    rows = [r for r in d.status()["leases"] if r["job"] == name]
    return (rows[0]["worker_bytes"], rows[0]["learned_runs"]) if rows else (0, 0)


def learned_at_least(d: DaemonHandle, name: str, mib: int) -> tuple[int, int] | None:
    """learned(d, name) once the daemon learned a size of at least `mib` MiB a worker."""
    size, runs = learned(d, name)
    return (size, runs) if runs and size >= mib * MIB else None


def test_issue24_grants_follow_each_jobs_learned_memory_per_worker(
    memory_cgroup: Callable[..., MemoryCgroup], daemon: Callable[..., DaemonHandle]
) -> None:
    cg = memory_cgroup()
    cg.set_limit(GIB)
    d = daemon(
        {
            "budget": budget(cg.cgroup_path),
            "daemon": {"scan_interval": "1s", "stats_interval": "1s"},
        }
    )

    def settled() -> bool:  # the jobs before have left the cgroup, and the daemon saw it
        (row,) = [r for r in d.status()["host"]["memory"]["cgroups"] if r["path"] == cg.cgroup_path]
        return bool(row["current_bytes"] < 200 * MIB)

    before = {}
    for name in ("big", "small"):
        with job(d, cg, name, 0, WANT, run=False) as grant:
            before[name] = grant["workers"]
    # never seen: both get what memory_per_slot gives, 1 GiB less the job's own
    assert before["big"] == before["small"], before
    assert 4 <= before["big"] <= GIB // SLOT, before

    for name, mib in (("big", BIG), ("small", SMALL)):  # one learning run each
        wait_until(settled, what="the cgroup's memory to come back")
        with job(d, cg, name, mib, 2, run=True) as grant:
            assert (grant["kind"], grant["workers"]) == ("process", 2), grant
            size, runs = wait_until(
                partial(learned_at_least, d, name, mib),
                what=f"the daemon to learn {name}'s workers",
            )
            assert runs == 1 and size < (mib + 60) * MIB, (size, runs)
            shown = d.cli("status")
            assert shown.returncode == 0, shown.stderr
            assert f"{name}: " in shown.stdout and "learned from 1 runs" in shown.stdout, (
                shown.stdout
            )

    after = {}
    for name in ("big", "small"):
        wait_until(settled, what="the cgroup's memory to come back")
        with job(d, cg, name, 0, WANT, run=False) as grant:
            after[name] = grant["workers"]
    assert 1 <= after["big"] <= GIB // (BIG * MIB) < before["big"], (before, after)
    assert after["small"] == WANT > before["small"], (before, after)
    assert cg.oom_kills() == 0

    def reported() -> list[str]:  # `report` names both jobs' sizes from the stats lines
        out = subprocess.run(
            [sys.executable, "-m", "supervisord_batt", "report", "--file", str(d.log_path)],
            capture_output=True,
            text=True,
            timeout=60,
            env=dict(os.environ, PYTHONPATH=str(REPO)),
        )
        assert out.returncode == 0, out.stderr
        return [x for x in out.stdout.splitlines() if "per worker, learned from 1 runs" in x]

    lines = wait_until(lambda: len(got := reported()) == 2 and got, what="the report's sizes")
    assert sorted(x.split(":")[0].split()[-1] for x in lines) == ["big", "small"], lines
