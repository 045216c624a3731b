"""A member of a worker's tree that leaves its cgroup, its session and its parent (issue
23): the wall-clock kill still finds and kills it, and `timeout_kill` tells the truth.

The escape is made for real by a root worker: its child forks a grandchild and exits
(the grandchild is re-parented to the daemon, the subreaper), and the grandchild calls
setsid() and writes its own pid into the pids hierarchy's root cgroup. Before the fix it
outlived the kill, reported as `survivors: []`.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import PIDS_V1, alive, pids_v1_writable, wait_until

# The worker. ESCAPE_AFTER: seconds the grandchild stays in the tree (where a scan sees
# it) before it escapes; CLEAR_ENV: it drops its environment too (only the daemon's
# record of the tree then knows it).
WORKER = """
import os, sys, time
escape_after, clear_env, pidfile = float(sys.argv[1]), sys.argv[2] == "1", sys.argv[3]
if os.fork() == 0:  # the child
    if os.fork() == 0:  # the grandchild
        time.sleep(escape_after)
        os.setsid()
        with open("/sys/fs/cgroup/pids/cgroup.procs", "w") as f:
            f.write(str(os.getpid()))
        with open(pidfile + ".tmp", "w") as f:
            f.write(str(os.getpid()))
        os.rename(pidfile + ".tmp", pidfile)
        argv = ["/bin/sleep", "600"]
        if clear_env:
            os.execve(argv[0], argv, {})
        os.execv(argv[0], argv)
    time.sleep(escape_after)
    os._exit(0)  # the grandchild is an orphan now
time.sleep(600)
"""


@pytest.mark.parametrize(
    ("escape_after", "clear_env", "scan"),
    [
        # escapes at once and keeps its environment: found as the daemon's orphan that
        # carries the worker's instance name (no scan ever saw it in the tree)
        (0.0, False, "60s"),
        # stays in the tree while scans run, then escapes with an empty environment:
        # found by the daemon's record of the tree
        (1.5, True, "200ms"),
    ],
)
def test_a_member_that_left_the_cgroup_and_session_is_killed_with_the_tree(  # noqa: PLR0917
    daemon: Callable[..., Any],
    py: Callable[[str], list[str]],
    tmp_path: Path,
    needs_root: None,
    escape_after: float,
    clear_env: bool,
    scan: str,
) -> None:
    if not pids_v1_writable():
        pytest.fail(f"needs the writable cgroup v1 pids hierarchy at {PIDS_V1}")
    pidfile = tmp_path / "escaped.pid"
    command = [*py(WORKER), str(escape_after), "1" if clear_env else "0", str(pidfile)]
    d = daemon(
        {
            "daemon": {"scan_interval": scan},
            "programs": {
                "escaper": {
                    "command": command,
                    "output": {"mode": "daemon"},
                    "wall_clock_limit": f"{escape_after + 2.5}s",
                    "stop_grace": "300ms",
                    "restart": "never",
                }
            },
        }
    )
    escaped = 0
    try:
        escaped = int(wait_until(lambda: pidfile.exists() and pidfile.read_text(), timeout=20))
        assert alive(escaped)
        with open(f"/proc/{escaped}/cgroup") as f:  # it did leave the worker's cgroup
            pids = [line for line in f if ":pids:" in line]  # (not its cpu cgroup)
            assert pids and "supervisord-batt" not in pids[0]
        kill = wait_until(lambda: d.events("timeout_kill"), timeout=30, what="the limit's kill")
        wait_until(lambda: not alive(escaped), timeout=10, what="the escaped member gone")
        assert kill[0]["survivors"] == []
        assert kill[0]["processes"] >= 2  # the main pid and the escaped one at least
    finally:
        if escaped and alive(escaped):  # ours (the test's worker's): by pid
            with contextlib.suppress(ProcessLookupError):
                os.kill(escaped, signal.SIGKILL)
