"""Issue 24: a run cut short by the OOM killer teaches no size below its charge. A job
never seen is granted a pool of 2 in a real memory cgroup (charged memory_per_slot,
1 GiB a worker); the daemon's scans see its workers bare (about 10 MiB) and, as they
are a live run of the job, size it by that. Then the cgroup's limit drops and one worker
writes more than it allows: the OOM killer ends it below 1 GiB. The daemon reads the
cgroup's oom_kill count at its next scan and no longer gives the budget that bare
size: the job is charged memory_per_slot again, in its run and the next, where before
the next run's pools were sized for 10 MiB workers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from tests.helpers import CALM, REPO, killing, wait_until
from tests.support.allocating import allocating_job, limit_seen
from tests.support.daemons import DaemonHandle

if TYPE_CHECKING:
    from tests.helpers import MemoryCgroup

MIB = 1 << 20
GIB = 1 << 30

# leases 2 process workers, starts them bare; on "go" the first writes 600 MiB
JOB = textwrap.dedent(
    """
    import json, subprocess, sys
    from supervisord_batt.client import lease
    WORKER = (
        "import sys\\n"
        "print('up', flush=True)\\n"
        "if sys.stdin.readline():\\n"
        "    held = b'\\\\x01' * (600 << 20)\\n"
        "sys.stdin.read()\\n"
    )
    with lease(2, kinds=["process"], job="cut", socket_path=sys.argv[1]) as grant:
        workers = [
            subprocess.Popen([sys.executable, "-c", WORKER], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE)
            for _ in range(grant.workers)
        ]
        for w in workers:
            assert w.stdout.readline() == b"up\\n"
        print(json.dumps({"kind": grant.kind, "workers": grant.workers}), flush=True)
        sys.stdin.readline()
        workers[0].stdin.write(b"go\\n")
        workers[0].stdin.flush()
        print(json.dumps({"killed": workers[0].wait()}), flush=True)
        sys.stdin.read()
        workers[1].stdin.close()
        workers[1].wait()
    """
)


def size_of(d: DaemonHandle, job: str) -> tuple[int, int] | None:
    """(worker_bytes, learned_runs) of the daemon's lease row for `job`, if it holds one."""
    rows = [r for r in d.status()["leases"] if r["job"] == job]
    return (rows[0]["worker_bytes"], rows[0]["learned_runs"]) if rows else None


def test_issue24_a_job_oom_killed_at_its_bare_size_is_not_learned_at_it(
    memory_cgroup: Callable[..., MemoryCgroup], daemon: Callable[..., DaemonHandle]
) -> None:
    cg = memory_cgroup()
    cg.set_limit(4 * GIB)
    budget: dict[str, Any] = {  # memory must bind: CPUs and tasks cannot, nor pressure
        "cgroups": [cg.cgroup_path],
        "reserve_tasks": 0,
        "reserve_percent": 0,
        "cpu_cap": 64,
        "memory_per_slot": "1GiB",
        "pressure": CALM,
    }
    d = daemon({"budget": budget, "daemon": {"scan_interval": "1s"}})
    proc = subprocess.Popen(
        [sys.executable, "-c", JOB, str(d.socket)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        preexec_fn=cg.preexec(),
        env=dict(os.environ, PYTHONPATH=str(REPO)),
    )
    with killing(proc):
        assert proc.stdout is not None and proc.stdin is not None
        assert json.loads(proc.stdout.readline()) == {"kind": "process", "workers": 2}
        # the scans see its workers bare: a live run of a job never seen sizes it
        wait_until(
            lambda: (s := size_of(d, "cut")) is not None and s[1] == 1 and s[0] < 100 * MIB,
            what="the daemon to see the bare workers",
        )
        kills = cg.oom_kills()
        cg.set_limit(256 * MIB)
        proc.stdin.write(b"go\n")
        proc.stdin.flush()
        assert json.loads(proc.stdout.readline()) == {"killed": -9}
        assert cg.oom_kills() > kills
        # the next scan reads the count: the bare size is no figure any more
        wait_until(lambda: size_of(d, "cut") == (GIB, 0), what="the cut run to be dropped")
        proc.stdin.close()
        assert proc.wait(timeout=60) == 0
    cg.set_limit(4 * GIB)
    wait_until(lambda: limit_seen(d, cg.cgroup_path) == 4 * GIB, what="the limit raised again")
    with allocating_job(d, "cut", 0, 2, run=False, preexec_fn=cg.preexec()) as grant:
        assert grant == {"kind": "process", "workers": 2}, grant
        assert size_of(d, "cut") == (GIB, 0)  # the next run is charged memory_per_slot
