"""Issue 24, as with pids: a job whose workers grow past their learned size mid-run is
asked to shrink before the memory limit is reached. Four workers of a job in a real
1 GiB memory cgroup start at 100 MiB each and grow to 300 MiB (1.2 GiB together); the
daemon, seeing the pool eat into the memory reserve, lowers the lease's target, `status`
shows it below the lease's workers, the job stops workers to follow it, and every
remaining worker reaches 300 MiB with no OOM kill in the cgroup.

The job grows its workers 10 MiB each every 0.2 s (about 200 MiB/s with the renews) and
holds each shrink until the test has read `status`; the reserve (25% of the limit, 256
MiB) is what the pool may grow by while the daemon's next scan and the job's next renew
come round."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from tests.helpers import CALM, REPO, killing
from tests.support.daemons import DaemonHandle

if TYPE_CHECKING:
    from tests.helpers import MemoryCgroup

MIB = 1 << 20
GIB = 1 << 30
START, TOP, STEP = 100, 300, 10  # MiB each worker holds at first, in the end, per step
WANT = 4

# A job: leases WANT process workers, starts them at START MiB, and grows each by STEP
# MiB per step until they hold TOP, renewing after each step. When a renew's target is
# below its workers it prints the target and waits for "go" before it stops the workers
# beyond the target and acknowledges the shrink.
JOB = textwrap.dedent(
    """
    import json, subprocess, sys, time
    from supervisord_batt.client import lease
    sock, start, top, step = sys.argv[1], *map(int, sys.argv[2:5])
    WORKER = (
        "import sys\\n"
        "held = []\\n"
        "for line in sys.stdin:\\n"
        "    held += [b'\\\\x01' * (1 << 20) for _ in range(int(line))]\\n"
        "    print(len(held), flush=True)\\n"
    )
    with lease(4, kinds=["process"], job="grows", socket_path=sock) as grant:
        print(json.dumps({"kind": grant.kind, "workers": grant.workers}), flush=True)
        workers = [
            subprocess.Popen(
                [sys.executable, "-c", WORKER], stdin=subprocess.PIPE, stdout=subprocess.PIPE
            )
            for _ in range(grant.workers if grant.kind == "process" else 0)
        ]

        def grow(mib):
            for w in workers:
                w.stdin.write(b"%d\\n" % mib)
                w.stdin.flush()
            return [int(w.stdout.readline()) for w in workers]

        sizes = grow(start)
        while workers and min(sizes) < top:
            time.sleep(0.2)
            sizes = grow(step)
            grant.renew()
            if grant.target < len(workers):
                print(json.dumps({"target": grant.target, "workers": len(workers)}), flush=True)
                assert sys.stdin.readline() == "go\\n"
                while len(workers) > grant.target:
                    w = workers.pop()
                    w.stdin.close()
                    w.wait()
                sizes = sizes[: len(workers)]
                grant.renew(workers_in_use=len(workers))
        print(json.dumps({"done": sizes}), flush=True)
        for w in workers:
            w.stdin.close()
            w.wait()
    """
)


def lease_row(d: DaemonHandle) -> dict[str, Any]:
    (row,) = [r for r in d.status()["leases"] if r["job"] == "grows"]
    return dict(row)


def test_issue24_a_pool_that_grows_into_the_memory_reserve_is_asked_to_shrink(
    memory_cgroup: Callable[..., MemoryCgroup], daemon: Callable[..., DaemonHandle]
) -> None:
    cg = memory_cgroup()
    cg.set_limit(GIB)
    d = daemon(
        {
            "budget": {
                "cgroups": [cg.cgroup_path],
                "reserve_tasks": 0,
                "reserve_percent": 0,
                "memory_reserve_percent": 25,
                "cpu_cap": 64,
                "max_per_lease": WANT,
                "memory_per_slot": "128MiB",
                "pressure": CALM,
            },
            "daemon": {"sample_interval": "200ms", "scan_interval": "400ms"},
        }
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", JOB, str(d.socket), str(START), str(TOP), str(STEP)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        preexec_fn=cg.preexec(),
        env=dict(os.environ, PYTHONPATH=str(REPO)),
    )
    shrinks: list[dict[str, Any]] = []
    with killing(proc):
        assert proc.stdout is not None and proc.stdin is not None
        first = json.loads(proc.stdout.readline())
        assert first == {"kind": "process", "workers": WANT}, first  # 4 x 128 MiB fit
        while (line := proc.stdout.readline()) and "done" not in (said := json.loads(line)):
            row = lease_row(d)  # the job holds its workers until it reads "go"
            # the lease's workers are what it may run: an acknowledged shrink whose target
            # rose meanwhile (a stopped worker freed its memory) leaves it more than run
            assert row["target"] == said["target"] < said["workers"] <= row["workers"], row
            assert cg.oom_kills() == 0, "OOM killed before the shrink was asked"
            shrinks.append(said)
            proc.stdin.write(b"go\n")
            proc.stdin.flush()
        assert line, f"the job ended before it was done; OOM kills: {cg.oom_kills()}"
        proc.stdin.close()
        assert proc.wait(timeout=60) == 0
    sizes = said["done"]
    assert shrinks, "the pool grew to its end and was never asked to shrink"
    assert 2 <= len(sizes) < WANT and min(sizes) >= TOP, (shrinks, sizes)
    assert cg.oom_kills() == 0
