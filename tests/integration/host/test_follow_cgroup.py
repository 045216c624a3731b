"""The monitor follows the daemon into another cgroup (issue 11).

The daemon was moved into a cgroup with pids.max 4; when it filled, spawns failed with
EAGAIN while the logs blamed pid_max and the level stayed normal, because the monitor
kept watching the cgroup the daemon started in.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from collections.abc import Callable

from tests.helpers import REPO, PidsCgroup, killing

CHILD = textwrap.dedent(
    """
    import json, os, sys
    from supervisord_batt import logs
    from supervisord_batt.host.monitor import HostMonitor
    logs.configure("json")
    mon = HostMonitor()
    before = mon.sample().tightest()
    with open(sys.argv[1] + "/cgroup.procs", "w") as f:
        f.write(str(os.getpid()))
    mon.scan()
    after = mon.sample().tightest()
    print(json.dumps({"before": [before.name, before.limit], "after": [after.name, after.limit]}))
    mon.close()
    """
)


def test_the_monitor_follows_the_process_into_a_tighter_cgroup(
    pids_cgroup: Callable[..., PidsCgroup],
) -> None:
    cg = pids_cgroup()
    cg.set_max(4)
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(cg.path)],
        stdout=subprocess.PIPE,
        text=True,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
    )
    with killing(proc):
        out, _ = proc.communicate(timeout=60)
    lines = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    result = next(x for x in lines if "after" in x)
    assert result["before"][0] != f"cgroup:{cg.cgroup_path}"
    assert result["after"] == [f"cgroup:{cg.cgroup_path}", 4]
    (moved,) = [x for x in lines if x.get("event") == "own_cgroup_changed"]
    assert moved["new"] == [cg.cgroup_path]
