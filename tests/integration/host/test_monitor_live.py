"""HostMonitor against the real kernel: pids cgroups, refused thread starts, RLIMIT_NPROC."""

from __future__ import annotations

import os
import resource
import subprocess
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

import psutil

from supervisord_batt.host.monitor import HostMonitor
from tests.helpers import interpreter_for_others, killing, wait_until

if TYPE_CHECKING:  # imported for annotations only: pytest would try to collect TestUser
    from tests.helpers import PidsCgroup, TestUser

# Starts up to argv[1] threads that block, prints how many started (a refused start is
# RuntimeError: can't start new thread), optionally starts a `sleep` grandchild, then
# blocks on stdin until killed.
CHILD = r"""
import subprocess, sys, threading
want, grandchild = int(sys.argv[1]), sys.argv[2] == "1"
stop = threading.Event()
started = 0
for _ in range(want):
    try:
        threading.Thread(target=stop.wait, daemon=True).start()
    except RuntimeError:
        break
    started += 1
if grandchild:
    subprocess.Popen(["sleep", "600"])
print(started, flush=True)
sys.stdin.read()
"""


def start_child(
    threads: int,
    preexec: Callable[[], None] | None = None,
    grandchild: bool = False,
    python: str = sys.executable,
) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [python, "-c", CHILD, str(threads), "1" if grandchild else "0"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        cwd=os.sep,
        # the test process runs no threads of its own; preexec moves the child into a
        # cgroup or drops to the test user before exec
        preexec_fn=preexec,
    )


def started_threads(proc: subprocess.Popen[bytes]) -> int:
    assert proc.stdout is not None
    return int(proc.stdout.readline())


def num_threads(pid: int) -> int:
    return psutil.Process(pid).num_threads()


def test_cgroup_count_is_exact_and_tightest(pids_cgroup: Callable[..., PidsCgroup]) -> None:
    k = 6
    cg = pids_cgroup()
    cg.set_max(40)
    with (
        killing(start_child(k, cg.preexec())) as proc,
        HostMonitor(cgroups=[cg.cgroup_path]) as mon,
    ):
        assert started_threads(proc) == k
        wait_until(lambda: num_threads(proc.pid) == k + 1, what="child threads up")
        s = mon.sample()
        (cgu,) = [c for c in s.cgroups if c.path == cg.cgroup_path]
        assert (cgu.pids_current, cgu.pids_max, cgu.version) == (k + 1, 40, 1)
        assert (cgu.effective_max, cgu.headroom, cgu.limited_by) == (40, 40 - k - 1, cg.cgroup_path)
        tight = s.tightest()
        assert (tight.name, tight.kind, tight.scope) == (
            f"cgroup:{cg.cgroup_path}",
            "cgroup",
            str(cg.path),
        )
        assert (tight.limit, tight.in_use, tight.headroom) == (40, k + 1, 40 - k - 1)


def test_nested_cgroup_limited_by_parent(pids_cgroup: Callable[..., PidsCgroup]) -> None:
    k = 3
    parent = pids_cgroup()
    parent.set_max(10)
    child = pids_cgroup(parent=parent.path)
    child.set_max(100)
    with (
        killing(start_child(k, child.preexec())) as proc,
        HostMonitor(cgroups=[child.cgroup_path]) as mon,
    ):
        wait_until(lambda: num_threads(proc.pid) == k + 1, what="child threads up")
        (cgu,) = [c for c in mon.sample().cgroups if c.path == child.cgroup_path]
        assert (cgu.pids_current, cgu.pids_max) == (k + 1, 100)
        assert (cgu.effective_max, cgu.headroom, cgu.limited_by) == (
            10,
            10 - k - 1,
            parent.cgroup_path,
        )
        lim = mon.sample().tightest()
        assert (lim.scope, lim.limit, lim.in_use) == (str(parent.path), 10, k + 1)


def test_refused_thread_counts_in_events(pids_cgroup: Callable[..., PidsCgroup]) -> None:
    cg = pids_cgroup()
    cg.set_max(5)
    with HostMonitor(cgroups=[cg.cgroup_path], include_self_cgroup=False) as mon:
        assert mon.sample().cgroups[0].pids_events_max == 0
        with killing(start_child(20, cg.preexec())) as proc:
            assert started_threads(proc) == 4  # the main thread holds the 5th pid
            (cgu,) = mon.sample().cgroups
            assert cgu.pids_current == 5
            assert cgu.headroom == 0
            assert cgu.pids_events_max is not None and cgu.pids_events_max >= 1
            assert cgu.pids_events_max == cg.events_max()


def test_removed_cgroup_reads_none_then_recovers(pids_cgroup: Callable[..., PidsCgroup]) -> None:
    cg = pids_cgroup()
    cg.set_max(30)
    with HostMonitor(cgroups=[cg.cgroup_path], include_self_cgroup=False) as mon:
        assert mon.sample().cgroups[0].pids_max == 30
        cg.close()
        (cgu,) = mon.sample().cgroups
        assert (cgu.pids_current, cgu.pids_max, cgu.headroom) == (None, None, None)
        assert [lim.kind for lim in mon.sample().limits] == ["threads-max", "pid_max"]
        again = pids_cgroup(name=cg.name)
        again.set_max(12)
        (cgu,) = mon.sample().cgroups
        assert (cgu.pids_current, cgu.pids_max) == (0, 12)


def test_user_tasks_and_nproc(test_user: Callable[[], TestUser]) -> None:
    k, nproc = 4, 25
    user = test_user()

    def become_user() -> None:
        resource.setrlimit(resource.RLIMIT_NPROC, (nproc, nproc))
        os.setgroups([])
        os.setgid(user.gid)
        os.setuid(user.uid)

    with HostMonitor(users=[user.name, 0], include_self_cgroup=False) as mon:
        before = mon.sample().users[0]
        assert before.tasks == 0 and before.limit_pid is None  # no process: the daemon's own limit
        python = interpreter_for_others()
        with killing(start_child(k, become_user, python=python)) as proc:
            assert started_threads(proc) == k
            wait_until(lambda: num_threads(proc.pid) == k + 1, what="user's threads up")
            mon.scan()
            s = mon.sample()
            u, root = s.users
            assert (u.uid, u.name, u.tasks, u.nproc_limit, u.limit_pid) == (
                user.uid,
                user.name,
                k + 1,
                nproc,
                proc.pid,
            )
            assert (root.exempt, root.nproc_limit) == (True, None)
            lim = next(lim for lim in s.limits if lim.kind == "nproc")
            assert (lim.name, lim.scope, lim.limit, lim.in_use) == (
                f"nproc:{user.name}",
                user.uid,
                nproc,
                k + 1,
            )


def test_tree_tasks_counts_descendants() -> None:
    k = 3
    with (
        killing(start_child(k, grandchild=True)) as proc,
        HostMonitor(include_self_cgroup=False) as mon,
    ):
        assert started_threads(proc) == k
        grandchild = wait_until(lambda: psutil.Process(proc.pid).children(), what="grandchild")[0]
        try:
            tree = mon.tree_tasks([proc.pid])[proc.pid]
            assert tree.root == proc.pid
            assert set(tree.pids) == {proc.pid, grandchild.pid}
            assert tree.tasks == k + 1 + 1
            # the slow scan finds the same tree from the reads it makes anyway
            assert mon.scan([proc.pid]) == {proc.pid: tree}
        finally:
            grandchild.kill()  # by pid; psutil checks it is still the same process
