"""The incident, reproduced for real and prevented: demo jobs in one tight pids cgroup.

K demo jobs share a pids cgroup whose pids.max fits about half of what they would use
unguarded (each wants a loky pool of 2: 1 + 2 workers + 4 pool tasks = 7 tasks). With the
daemon watching that cgroup and every job leasing through the client, every task must
finish, no job may hang, nothing may be left in the cgroup, and every checksum must match.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable

from tests.helpers import CALM, PidsCgroup, wait_until
from tests.support.daemons import DaemonHandle

JOBS = 4
DEMAND = JOBS * (1 + 2 + 4)  # unguarded: main thread + 2 workers + manager, feeder, 2 trackers
DEMO = [
    "-m",
    "supervisord_batt.demo",
    "--tasks",
    "4",
    "--samples",
    "2",
    "--want",
    "2",
    "--min-ms",
    "5",
    "--max-ms",
    "15",
    "--seed",
    "7",
]


def reference_checksum() -> str:
    env = dict(os.environ, SUPERVISORD_BATT_SOCKET="/nonexistent/sock")
    out = subprocess.run(
        [sys.executable, *DEMO], env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    return str(json.loads(out.stdout.splitlines()[-1])["checksum"])


def test_demo_jobs_in_a_half_size_cgroup_all_finish_and_leave_nothing(
    pids_cgroup: Callable[..., PidsCgroup], daemon: Callable[..., DaemonHandle]
) -> None:
    expected = reference_checksum()
    cg = pids_cgroup()
    cg.set_max(DEMAND // 2)
    d = daemon(
        {
            "budget": {
                "cgroups": [cg.cgroup_path],
                "reserve_tasks": 1,
                "reserve_percent": 0,
                "cpu_cap": 8,
                "pressure": CALM,
            }
        }
    )
    env = dict(os.environ, SUPERVISORD_BATT_SOCKET=str(d.socket))
    jobs = [
        subprocess.Popen(
            [sys.executable, *DEMO],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            preexec_fn=cg.preexec(),
        )
        for _ in range(JOBS)
    ]
    deadline = time.monotonic() + 120
    try:
        results = []
        for job in jobs:
            out, err = job.communicate(timeout=max(1.0, deadline - time.monotonic()))
            assert job.returncode == 0, err.decode()
            results.append(json.loads(out.decode().splitlines()[-1]))
    finally:
        for job in jobs:
            if job.poll() is None:
                job.kill()
                job.wait(timeout=10)
    assert [r["tasks_done"] for r in results] == [4] * JOBS
    assert [r["tasks_failed"] for r in results] == [0] * JOBS
    assert {r["checksum"] for r in results} == {expected}
    assert any(r["kinds"] != ["sequential"] for r in results), "the cgroup fits one pool"
    wait_until(lambda: cg.procs() == [], timeout=10, what="nothing left in the cgroup")
    grants = d.events("grant") + d.events("deny")
    assert len(grants) == JOBS
    # the budget kept the jobs below the limit: the kernel never had to refuse a task
    assert cg.events_max() == 0, (cg.events_max(), grants)
