"""Issue 24, learned tasks: a job's tasks per process worker and beyond its workers are
learned from the daemon's scans and size its grants. In a real pids cgroup of 20 tasks,
a job never seen is granted what the constants give (n + 4 tasks); it then runs a pool
whose two workers start two threads each (3 tasks per worker, as a worker whose BLAS
starts threads) and one thread in the job beside them (+1, charged at the constants'
floor of 4: a pool's threads and trackers a short run's scans missed are still its cost),
`status` names the figures charged, and its next grant is sized by them: a third of the
constant's, as the cgroup holds."""

from __future__ import annotations

import textwrap
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from supervisord_batt.budget.costs import PROCESS_POOL_OVERHEAD
from tests.helpers import CALM, wait_until
from tests.support.allocating import holding_job
from tests.support.daemons import DaemonHandle

if TYPE_CHECKING:
    from tests.helpers import PidsCgroup

PIDS_MAX = 20
WANT = 16
EACH, EXTRA = 3, 1  # tasks per worker, and beyond the workers, of the job's pool
CHARGED = max(EXTRA, PROCESS_POOL_OVERHEAD)  # beyond the workers: the constants are a floor

# A job: leases up to `want` process workers through the client, and with "run" starts
# that many worker processes of EACH threads each and one thread of its own beside them;
# prints its grant, holds lease and pool until its stdin closes.
JOB = textwrap.dedent(
    """
    import json, subprocess, sys, threading
    from supervisord_batt.client import lease
    sock, want, run = sys.argv[1:4]
    WORKER = (
        "import sys, threading\\n"
        "done = threading.Event()\\n"
        "for _ in range(2):\\n"
        "    threading.Thread(target=done.wait, daemon=True).start()\\n"
        "print('up', flush=True)\\n"
        "sys.stdin.read()\\n"
    )
    with lease(int(want), kinds=["process"], job="blas", socket_path=sock) as grant:
        workers, done = [], threading.Event()
        if run == "run" and grant.kind == "process":
            threading.Thread(target=done.wait, daemon=True).start()  # the pool's own
            for _ in range(grant.workers):
                workers.append(subprocess.Popen(
                    [sys.executable, "-c", WORKER], stdin=subprocess.PIPE, stdout=subprocess.PIPE
                ))
            for w in workers:
                assert w.stdout.readline() == b"up\\n"
        print(json.dumps({"kind": grant.kind, "workers": grant.workers}), flush=True)
        sys.stdin.read()
        for w in workers:
            w.stdin.close()
            w.wait()
        done.set()
    """
)


@contextmanager
def job(d: DaemonHandle, cg: PidsCgroup, want: int, *, run: bool) -> Iterator[dict[str, Any]]:
    """A job in the cgroup holding its lease (and pool, if `run`) for the block."""
    with holding_job(JOB, [str(d.socket), str(want), "run" * run], cg.preexec()) as grant:
        yield grant


def test_issue24_grants_follow_each_jobs_learned_tasks_per_worker_and_pool(
    pids_cgroup: Callable[..., PidsCgroup], daemon: Callable[..., DaemonHandle]
) -> None:
    cg = pids_cgroup()
    cg.set_max(PIDS_MAX)
    d = daemon(
        {
            "budget": {
                "cgroups": [cg.cgroup_path],
                "reserve_tasks": 0,
                "reserve_percent": 0,
                "cpu_cap": 64,
                "max_per_lease": WANT,
                "memory_per_slot": "1MiB",  # memory cannot bind
                "pressure": CALM,
            },
        }
    )

    def empty() -> bool:  # the jobs before have left the cgroup, and the daemon saw it
        # (until its next sample it counts a released job's tasks as still there: a
        # grant in between is the smaller, on the safe side, and not what this compares)
        seen = [c for c in d.status()["host"]["cgroups"] if c["path"] == cg.cgroup_path]
        return cg.current() == 0 and [c["pids_current"] for c in seen] == [0]

    with job(d, cg, WANT, run=False) as grant:
        before = grant["workers"]  # never seen: n + 4 tasks beside its own
    assert 8 <= before < WANT, before

    wait_until(empty, what="the cgroup to empty")
    with job(d, cg, 2, run=True) as grant:
        assert (grant["kind"], grant["workers"]) == ("process", 2), grant

        def learned() -> tuple[object, object]:  # a scan may see the workers still starting
            (row,) = [r for r in d.status()["leases"] if r["job"] == "blas"]
            return row.get("worker_tasks"), row.get("pool_tasks")

        wait_until(lambda: learned() == (EACH, CHARGED), what="the pool's tasks learned")
        shown = d.cli("status")
        assert shown.returncode == 0, shown.stderr
        assert f"; {EACH} tasks per worker, pool +{CHARGED} tasks" in shown.stdout, shown.stdout

    wait_until(empty, what="the cgroup to empty")
    with job(d, cg, WANT, run=False) as grant:
        after = grant["workers"]
    # the same room: before + 4 tasks; now each worker costs EACH and the pool CHARGED.
    # A sample taken between a job's start and its acquire counts its own process
    # beside the seat its lease is charged, until the next sample: one task less room,
    # for either job (1 run in 8: the first job granted 14 where 15 fit, this one 5).
    expected = {(before + room - CHARGED) // EACH for room in (3, 4, 5)}
    assert after in expected, (before, after)
    assert cg.events_max() == 0
