"""Grants against a real pids cgroup: never more than its headroom, even in a burst."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from collections.abc import Callable

from supervisord_batt.budget.costs import pool_cost
from tests.helpers import CALM, PidsCgroup, wait_until
from tests.support.daemons import DaemonHandle

ACQUIRER = textwrap.dedent(
    """
    import json, socket, sys
    s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1])
    f = s.makefile("rwb")
    print("ready", flush=True)
    sys.stdin.readline()  # wait for "go": every acquirer asks at the same moment
    f.write(json.dumps({"op": "acquire", "want": 4, "job": "burst"}).encode() + b"\\n")
    f.flush()
    print(f.readline().decode().strip(), flush=True)
    sys.stdin.read()  # hold the lease until stdin closes
    """
)

PIDS_MAX = 120
ACQUIRERS = 50


def test_fifty_concurrent_acquirers_never_exceed_the_cgroup_headroom(
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
                "memory_per_slot": "1MiB",
                "max_per_lease": 8,
                "pressure": CALM,
            }
        }
    )
    procs = []
    try:
        for _ in range(ACQUIRERS):
            p = subprocess.Popen(
                [sys.executable, "-c", ACQUIRER, str(d.socket)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                preexec_fn=cg.preexec(),
            )
            procs.append(p)
        for p in procs:
            assert p.stdout is not None and p.stdout.readline().strip() == b"ready"

        def sampled_all() -> bool:
            rows = d.status()["host"]["cgroups"]
            return any(r["path"] == cg.cgroup_path and r["pids_current"] == ACQUIRERS for r in rows)

        wait_until(sampled_all, timeout=10, what="the daemon to see every acquirer in the cgroup")
        for p in procs:
            assert p.stdin is not None
            p.stdin.write(b"go\n")
            p.stdin.flush()
        grants = [json.loads(p.stdout.readline()) for p in procs if p.stdout is not None]
        assert all(g["ok"] for g in grants), grants
        charged = sum(pool_cost(g["kind"], g["workers"]) for g in grants)
        # every acquirer's own task is already in pids.current; the pools must fit the rest
        assert charged <= PIDS_MAX - ACQUIRERS, (charged, grants)
        pools = [g for g in grants if g["kind"] != "sequential"]
        assert pools, "a cgroup with 70 free tasks must fit some pools"
        status = d.status()
        # max-min: grants are first come, first served, but once a holder that asked is left
        # with none, every holder above the first pool step is told to shrink to it. (If a
        # tick has meanwhile seen the cgroup nearly full, the level is extreme and every
        # target is 0: still nobody above the first step.)
        if any(g["kind"] == "sequential" for g in grants):
            targets = [
                lease["target"] for lease in status["leases"] if lease["kind"] != "sequential"
            ]
            assert max(targets) <= 2, status["leases"]
            if status["level"] == "normal":
                assert max(targets) == 2, status["leases"]
        assert status["leased"] == sum(g["workers"] for g in pools)
        assert len(status["leases"]) == ACQUIRERS
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait(timeout=10)
    wait_until(lambda: not d.status()["leases"], timeout=5, what="every lease released")
