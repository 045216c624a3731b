"""A daemon killed with SIGKILL leaves its workers running: the next start stops them
(issue 11).

They kept running unsupervised, with no wall-clock limit; on the next start, leftovers of
instances still configured were killed without a word in the log, and leftovers of
instances no longer configured were ignored forever and not shown in `status`.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from supervisord_batt import protocol, shapes
from tests.helpers import wait_until

# a worker whose tree ignores SIGTERM and has a grandchild in its own session
STUBBORN = [
    sys.executable,
    "-c",
    "import os, signal, time\n"
    "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
    "if os.fork() == 0:\n"
    "    os.setsid()\n"
    "    time.sleep(600)\n"
    "time.sleep(600)\n",
]
POLITE = [sys.executable, "-c", "import time; time.sleep(600)"]


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[1][0] != "Z"
    except (OSError, IndexError):
        return False


def test_the_next_start_stops_what_a_killed_daemon_left(
    daemon: Callable[..., Any], needs_root: None
) -> None:
    # both daemons on one socket path: the worker-cgroup root is named after it
    where = Path(tempfile.mkdtemp(prefix="sbt-left-", dir="/tmp"))
    socket = where / "s.sock"
    first = daemon(
        {
            "daemon": {"socket": str(socket)},
            "programs": {
                "gone": {"command": POLITE},
                "kept": {"command": STUBBORN},
            },
        }
    )
    wait_until(lambda: all(i["pid"] for i in first.status()["instances"]))
    root = Path(first.events("supervisor_started")[0]["cgroup_root"])

    # gone's worker, kept's worker and its setsid grandchild
    def members() -> list[int] | None:
        got = [int(x) for f in root.glob("*/cgroup.procs") for x in f.read_text().split()]
        return got if len(got) == 3 else None

    pids = wait_until(members, what="three processes in the worker cgroups")
    first.proc.send_signal(signal.SIGKILL)
    first.proc.wait(timeout=10)
    try:
        assert all(_alive(pid) for pid in pids)  # nobody supervises them now
        second = daemon(
            {
                "daemon": {"socket": str(socket)},
                "programs": {"kept": {"command": STUBBORN, "stop_grace": "300ms"}},
            }
        )
        # the socket serves while the start stops them (kept's new grace is 300 ms)
        wait_until(lambda: len(second.events("leftover_stopped")) == 2, timeout=15)
        stopped = {e["instance"]: e for e in second.events("leftover_stopped")}
        assert set(stopped) == {"gone:0", "kept:0"}
        assert stopped["gone:0"]["configured"] is False  # named from its environment
        assert stopped["gone:0"]["outcome"] == "exited on SIGTERM"
        assert stopped["kept:0"]["configured"] is True
        assert stopped["kept:0"]["outcome"] == "killed"  # it ignored SIGTERM for its grace
        assert len(stopped["kept:0"]["pids"]) == 2
        assert not any(_alive(pid) for pid in pids)
        leftovers = second.status()["leftovers"]
        assert [shapes.problems(protocol.LeftoverRow, x, strict=True) for x in leftovers] == [
            [],
            [],
        ]
        assert {x["instance"]: x["outcome"] for x in leftovers} == {
            "gone:0": "exited on SIGTERM",
            "kept:0": "killed",
        }
        # the configured one runs again, supervised, in a fresh cgroup
        wait_until(lambda: second.status()["instances"][0]["state"] == "RUNNING")
    finally:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(where, ignore_errors=True)
