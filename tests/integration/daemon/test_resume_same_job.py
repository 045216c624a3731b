"""A job whose request timed out on a slow daemon reconnects and resumes its lease before
the daemon has read its old connection's close: it keeps the same lease, moved to the
new connection, and the old connection's close releases nothing. Another process, even
of the same user, cannot take a lease over by naming it."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from typing import Any

from tests.helpers import CALM, REPO, WireClient, wait_until


def leases(d: Any) -> dict[str, tuple[int, int]]:
    return {lease["lease"]: (lease["pid"], lease["workers"]) for lease in d.status()["leases"]}


def test_a_resume_on_a_new_connection_of_the_same_process_keeps_the_lease(
    daemon: Callable[..., Any],
) -> None:
    d = daemon({"budget": {"pressure": CALM, "cpu_cap": 8, "max_per_lease": 8}})
    old = WireClient(d.socket)
    try:
        grant = old.request("acquire", want=3, kinds=["thread"], job="slow-daemon")
        assert grant["ok"] and grant["workers"] == 3, grant
        lease = str(grant["lease"])
        with WireClient(d.socket) as new:
            again = new.request(
                "acquire",
                want=3,
                kinds=["thread"],
                job="slow-daemon",
                resume=lease,
                workers_in_use=3,
            )
            assert (again["lease"], again["workers"]) == (lease, 3), again
            old.close()  # the close the daemon reads only now releases nothing
            assert new.request("renew", lease=lease, workers_in_use=3)["ok"]
            moved = wait_until(
                lambda: [e for e in d.events("lease_resumed") if e["lease"] == lease],
                what="the lease_resumed line",
            )
            assert moved[0]["reason"] == "moved from the job's earlier connection"
            assert leases(d) == {lease: (grant_pid(d, lease), 3)}
            assert not [e for e in d.events("release") if e.get("lease") == lease]
        wait_until(lambda: leases(d) == {}, what="the lease released with its new connection")
    finally:
        old.close()


def grant_pid(d: Any, lease: str) -> int:
    (row,) = [r for r in d.status()["leases"] if r["lease"] == lease]
    return int(row["pid"])


def test_another_process_naming_the_lease_gets_a_new_one(daemon: Callable[..., Any]) -> None:
    d = daemon({"budget": {"pressure": CALM, "cpu_cap": 8, "max_per_lease": 8}})
    with WireClient(d.socket) as mine:
        lease = str(mine.request("acquire", want=2, kinds=["thread"], job="mine")["lease"])
        other = subprocess.run(
            [
                sys.executable,
                "-c",
                "import json, sys\n"
                "from tests.helpers import WireClient\n"
                "with WireClient(sys.argv[1]) as c:\n"
                "    print(json.dumps(c.request('acquire', want=2, kinds=['thread'],"
                " job='thief', resume=sys.argv[2])))\n",
                str(d.socket),
                lease,
            ],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=REPO,
            env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
            check=True,
        )
        assert f'"lease": "{lease}"' not in other.stdout, other.stdout
        assert mine.request("renew", lease=lease, workers_in_use=2)["ok"]
