"""A daemon killed with SIGKILL leaves its workers running: the next start adopts those
it has a record of and stops the rest (issues 11 and 23).

They kept running unsupervised, with no wall-clock limit; on the next start, leftovers of
instances still configured were killed without a word in the log (issue 11), and then
stopped with a line each: a crash of the daemon cost every running job (issue 23). Now
the state record beside the socket lets the next daemon go on supervising them, with
their deadlines; what it has no record of, or is no longer configured, is stopped.
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


def test_the_next_start_adopts_what_it_knows_and_stops_the_rest(
    daemon: Callable[..., Any], needs_root: None
) -> None:
    # both daemons on one socket path: the worker-cgroup root and record are named after it
    where = Path(tempfile.mkdtemp(prefix="sbt-left-", dir="/tmp"))
    socket = where / "s.sock"
    first = daemon(
        {
            "daemon": {"socket": str(socket)},
            "programs": {
                "gone": {"command": POLITE},
                "kept": {"command": STUBBORN, "wall_clock_limit": "600s"},
            },
        }
    )
    wait_until(lambda: all(i["pid"] for i in first.status()["instances"]))
    root = Path(first.events("supervisor_started")[0]["cgroup_root"])
    kept = {i["name"]: i for i in first.status()["instances"]}["kept:0"]

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
                "programs": {
                    "kept": {"command": STUBBORN, "stop_grace": "300ms", "wall_clock_limit": "600s"}
                },
            }
        )
        # gone is no longer configured: stopped, named from its environment
        wait_until(lambda: len(second.events("leftover_stopped")) == 1, timeout=15)
        (stopped,) = second.events("leftover_stopped")
        assert stopped["instance"] == "gone:0" and stopped["configured"] is False
        assert stopped["outcome"] == "exited on SIGTERM"
        leftovers = second.status()["leftovers"]
        assert [shapes.problems(protocol.LeftoverRow, x, strict=True) for x in leftovers] == [[]]
        assert leftovers[0]["instance"] == "gone:0"
        # kept is adopted: the same process, its deadline counted from its first start
        (adopted,) = second.events("adopted")
        assert adopted["instance"] == "kept:0" and adopted["pid"] == kept["pid"]
        assert adopted["child"] is False
        assert 590 < adopted["deadline_in_s"] <= 600 - kept["uptime_s"]
        now = second.status()["instances"][0]
        assert now["state"] == "RUNNING" and now["pid"] == kept["pid"]
        assert now["uptime_s"] >= kept["uptime_s"]
        assert all(_alive(pid) for pid in pids if pid != stopped["pids"][0])
        # and it is supervised: a stop kills its whole tree, the grandchild included
        with second.client() as c:
            assert c.request("stop", target="kept:0")["ok"]
        wait_until(lambda: not any(_alive(pid) for pid in pids), timeout=15)
    finally:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(where, ignore_errors=True)


def test_a_leftover_without_a_record_is_stopped(
    daemon: Callable[..., Any], needs_root: None
) -> None:
    """No record (or one that cannot be trusted): a worker nobody can vouch for is
    stopped the way the daemon stops any worker, as before."""
    where = Path(tempfile.mkdtemp(prefix="sbt-left-", dir="/tmp"))
    socket = where / "s.sock"
    config = {"daemon": {"socket": str(socket)}, "programs": {"kept": {"command": STUBBORN}}}
    first = daemon({**config})
    pid = wait_until(lambda: first.status()["instances"][0]["pid"])
    first.proc.send_signal(signal.SIGKILL)
    first.proc.wait(timeout=10)
    record = socket.with_name(socket.name + ".state")
    try:
        assert record.exists()
        record.write_text("{not json")
        second = daemon(
            {
                "daemon": {"socket": str(socket)},
                "programs": {"kept": {"command": STUBBORN, "stop_grace": "300ms"}},
            }
        )
        wait_until(lambda: second.events("leftover_stopped"), timeout=15)
        (stopped,) = second.events("leftover_stopped")
        assert stopped["instance"] == "kept:0" and stopped["outcome"] == "killed"
        assert second.events("state_record_ignored")
        assert not second.events("adopted") and not _alive(pid)
        wait_until(lambda: second.status()["instances"][0]["state"] == "RUNNING")
        assert second.status()["instances"][0]["pid"] != pid
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        shutil.rmtree(where, ignore_errors=True)


def test_an_adopted_worker_that_ends_is_seen_and_restarted(
    daemon: Callable[..., Any], tmp_path: Path, needs_root: None
) -> None:
    """The adopted worker is not our child: its exit is seen (pidfd) but its status went
    to its new parent, so the run ends 'unknown' and on-failure restarts it."""
    where = Path(tempfile.mkdtemp(prefix="sbt-left-", dir="/tmp"))
    socket = where / "s.sock"
    go = tmp_path / "go"
    # runs until the test creates `go`, then exits 0
    waiter = [
        sys.executable,
        "-c",
        f"import os, time\nwhile not os.path.exists({str(go)!r}): time.sleep(0.05)\n",
    ]
    config = {"daemon": {"socket": str(socket)}, "programs": {"w": {"command": waiter}}}
    first = daemon({**config})
    pid = wait_until(lambda: first.status()["instances"][0]["pid"])
    first.proc.send_signal(signal.SIGKILL)
    first.proc.wait(timeout=10)
    try:
        second = daemon({"daemon": {"socket": str(socket)}, "programs": {"w": {"command": waiter}}})
        assert second.events("adopted")[0]["pid"] == pid
        go.touch()
        (ended,) = wait_until(lambda: second.events("exit"), timeout=15, what="the exit")
        assert ended["pid"] == pid and ended["returncode"] is None
        assert ended["outcome"] == "unknown"
        wait_until(lambda: len(second.events("spawn")) == 1, timeout=15, what="a restart")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        shutil.rmtree(where, ignore_errors=True)
