"""proctree against the real kernel: process trees, signals, pids cgroups, users, pidfds.

Scenarios that leave orphans run in a child interpreter that is a subreaper (`_isolated`), so
the orphans re-parent to it and are reaped there, and the pytest process is not changed.
"""

from __future__ import annotations

import asyncio
import errno
import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psutil
import pytest

from supervisord_batt.host import procfs
from supervisord_batt.supervise.cgroups import WorkerCgroups, own_pids_dirs
from supervisord_batt.supervise.proctree import (
    ExitWatcher,
    UnknownUser,
    collect_tree,
    kill_tree,
    reap_adopted,
    spawn,
)
from tests.helpers import (
    REPO,
    PidsCgroup,
    interpreter_for_others,
    killing,
    pids_v1_writable,
    wait_until,
)

if TYPE_CHECKING:
    from tests.helpers import TestUser

ENV = {"PATH": os.defpath, "PYTHONPATH": str(REPO)}

# A worker that starts three children: a plain one, one that calls setsid(), one that
# ignores SIGTERM (only if the worker does, argv[1] == "ignore"), and prints their pids.
TREE = r"""
import os, signal, sys, time
ignore = sys.argv[1] == "ignore"
if ignore:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
kids = []
ready_r, ready_w = os.pipe()
for mode in ("plain", "setsid", "ignore"):
    pid = os.fork()
    if pid == 0:
        deaf = ignore and mode == "ignore"
        signal.signal(signal.SIGTERM, signal.SIG_IGN if deaf else signal.SIG_DFL)
        if mode == "setsid":
            os.setsid()
        os.write(ready_w, b".")  # dispositions set: only now may the test signal us
        while True:
            time.sleep(60)
    kids.append(pid)
got = b""
while len(got) < 3:
    got += os.read(ready_r, 3 - len(got))
print(*kids, flush=True)
while True:
    time.sleep(60)
"""


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _children() -> set[int]:
    return {p.pid for p in psutil.Process().children()}


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _own_pids_v1() -> Path:
    with open("/proc/self/mountinfo") as m, open("/proc/self/cgroup") as c:
        own = own_pids_dirs(procfs.parse_mountinfo(m.read()), procfs.parse_proc_cgroup(c.read()))
    return own["v1"]


def _remove_cgroups(root: Path) -> None:
    """Safety net for a crashed scenario: empty and remove what is left under `root`."""
    if not root.exists():
        return
    for sub in [d for d in root.iterdir() if d.is_dir()] + [root]:
        PidsCgroup.remove_dir(sub)


# ---------------------------------------------------------------- isolated scenarios


def _isolated(scenario: str, **kwargs: Any) -> dict[str, Any]:
    """Run `scenario(**kwargs)` of this module in a child interpreter that is a subreaper."""
    code = (
        "import json, sys\n"
        "from supervisord_batt.supervise.proctree import become_subreaper\n"
        "assert become_subreaper()\n"
        "from tests.integration.supervise import test_proctree as t\n"
        "print(json.dumps(getattr(t, sys.argv[1])(**json.loads(sys.argv[2]))))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, scenario, json.dumps(kwargs)],
        env=ENV,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    result: dict[str, Any] = json.loads(out.stdout.splitlines()[-1])
    return result


def scenario_kill(base: str | None, ignore: bool, grace: float) -> dict[str, Any]:
    """Spawn TREE (in a cgroup when `base`), kill it, reap the orphans; report everything."""
    cgs = WorkerCgroups.detect(base) if base else None
    cg = cgs.create("tree:0") if cgs else None
    proc = spawn(
        [sys.executable, "-c", TREE, "ignore" if ignore else "exit"],
        cwd=None,
        env=ENV,
        user=None,
        group=None,
        cgroup=cg,
        stdout=subprocess.PIPE,
        stderr=None,
    )
    try:
        assert proc.stdout is not None
        kids = [int(p) for p in proc.stdout.readline().split()]
        tree = [proc.pid, *kids]
        real_tasks = sum(psutil.Process(p).num_threads() for p in tree)
        current = cg.tasks_current() if cg else None
        collected = sorted(collect_tree(proc.pid, cg))
        report = asyncio.run(
            kill_tree(proc.pid, cgroup=cg, stop_signal=signal.SIGTERM, grace=grace, reap=proc.poll)
        )
        gone_at_return = {p: _gone(p) for p in tree}
        wait_until(
            lambda: (
                reap_adopted({proc.pid}) is not None
                and proc.poll() is not None
                and not any(psutil.pid_exists(p) for p in tree)
            ),
            what="the tree reaped",
        )
        return {
            "tree": tree,
            "kids": kids,
            "real_tasks": real_tasks,
            "cg_current": current,
            "collected": collected,
            "report": report.__dict__,
            "gone": list(gone_at_return.values()),
            "returncode": proc.returncode,
            "cleanup": cgs.cleanup() if cgs else [],
            "root_left": bool(cgs and cgs.root and cgs.root.exists()),
        }
    finally:
        for pid in [proc.pid, *collect_tree(proc.pid, cg)]:
            if psutil.pid_exists(pid) and not _gone(pid):
                os.kill(pid, signal.SIGKILL)
        proc.wait()
        if cgs is not None and cgs.root is not None:
            _remove_cgroups(cgs.root)


def scenario_subreaper() -> dict[str, Any]:
    """A child forks a grandchild and exits; the grandchild re-parents to us and is reaped."""
    me = os.getpid()
    prog = (
        "import os, sys, time\n"
        "parent = os.getpid()\n"
        "if os.fork() == 0:\n"
        "    while os.getppid() == parent:\n"
        "        time.sleep(0.002)\n"
        "    os._exit(7 if os.getppid() == int(sys.argv[1]) else 8)\n"
    )
    child = subprocess.Popen([sys.executable, "-c", prog, str(me)])
    known = subprocess.Popen([sys.executable, "-c", "raise SystemExit(5)"])
    wait_until(lambda: psutil.Process(known.pid).status() == psutil.STATUS_ZOMBIE)
    child.wait()
    reaped: list[tuple[int, int]] = []

    def reap() -> list[tuple[int, int]]:
        reaped.extend(reap_adopted({known.pid}))
        return reaped

    wait_until(reap, what="an adopted orphan")
    return {
        "child": child.pid,
        "child_rc": child.returncode,
        "reaped": reaped,
        "known_rc": known.wait(),
        "left": sorted(_children()),
    }


def scenario_parent_full(cgroup_procs: str) -> dict[str, Any]:
    """Move into a cgroup, fill its pids.max, spawn (refused by fork), raise it, spawn."""
    with open(cgroup_procs, "w") as f:
        f.write(str(os.getpid()))
    cgroup = Path(cgroup_procs).parent
    (cgroup / "pids.max").write_text((cgroup / "pids.current").read_text())
    before = (_fds(), _children())
    try:
        spawn(
            [sys.executable, "-c", "pass"],
            cwd=None,
            env=ENV,
            user=None,
            group=None,
            cgroup=None,
            stdout=None,
            stderr=None,
        )
        refused = None
    except OSError as exc:
        refused = exc.errno
    after = (_fds(), _children())
    (cgroup / "pids.max").write_text("max")
    proc = spawn(
        [sys.executable, "-c", "raise SystemExit(4)"],
        cwd=None,
        env=ENV,
        user=None,
        group=None,
        cgroup=None,
        stdout=None,
        stderr=None,
    )
    return {"refused": refused, "clean": before == after, "rc": proc.wait()}


# ---------------------------------------------------------------- kill_tree


@pytest.fixture
def base(needs_root: None) -> Iterator[str]:
    """A unique base name for WorkerCgroups (in our own v1 pids cgroup, so root only);
    whatever is left under it is removed."""
    if not pids_v1_writable():
        pytest.skip("needs a writable cgroup v1 pids hierarchy at /sys/fs/cgroup/pids")
    name = f"sbtest-{uuid.uuid4().hex[:8]}"
    yield name
    _remove_cgroups(_own_pids_v1() / f"{name}.workers")


def test_kill_tree_in_cgroup_sigkills_the_term_ignoring(base: str) -> None:
    r = _isolated("scenario_kill", base=base, ignore=True, grace=0.5)
    rep = r["report"]
    assert all(r["gone"]), r
    assert rep["survivors"] == []
    assert set(rep["pids"]) == set(r["tree"])
    assert rep["needed_sigkill"] == 2  # the worker and its TERM-ignoring child
    assert 0.5 <= rep["duration_s"] <= 0.5 + 0.3
    assert rep["tasks_at_kill"] == r["real_tasks"] == r["cg_current"] == 4
    assert r["returncode"] == -signal.SIGKILL
    assert r["cleanup"] == [] and not r["root_left"]


def test_kill_tree_without_cgroup_finds_the_setsid_child() -> None:
    r = _isolated("scenario_kill", base=None, ignore=True, grace=0.5)
    rep = r["report"]
    setsid_kid = r["kids"][1]
    assert setsid_kid in r["collected"], "collected before the kill, while its parent lives"
    assert all(r["gone"]), r
    assert rep["survivors"] == [] and set(rep["pids"]) == set(r["tree"])
    assert rep["needed_sigkill"] == 2
    assert 0.5 <= rep["duration_s"] <= 0.5 + 0.3
    assert rep["tasks_at_kill"] == r["real_tasks"]


def test_kill_tree_that_exits_on_term_needs_no_sigkill(base: str) -> None:
    r = _isolated("scenario_kill", base=base, ignore=False, grace=2.0)
    rep = r["report"]
    assert all(r["gone"]) and rep["survivors"] == []
    assert rep["needed_sigkill"] == 0
    assert rep["duration_s"] < 0.5
    assert r["returncode"] == -signal.SIGTERM


# ---------------------------------------------------------------- spawn


def test_spawn_refused_when_the_worker_cgroup_is_full(base: str) -> None:
    cgs = WorkerCgroups.detect(base)
    try:
        cg = cgs.create("full:0")
        assert cg is not None
        argv = [sys.executable, "-c", "raise SystemExit(3)"]
        for full in (cg.path, cgs.root):  # the worker's own limit, then its parent's
            assert full is not None
            (full / "pids.max").write_text(f"{int((full / 'pids.current').read_text())}\n")
            before = (_fds(), _children())
            with pytest.raises(OSError) as info:
                spawn(
                    argv,
                    cwd=None,
                    env=ENV,
                    user=None,
                    group=None,
                    cgroup=cg,
                    stdout=None,
                    stderr=None,
                )
            assert info.value.errno == errno.EAGAIN, info.value
            assert (_fds(), _children()) == before
            (full / "pids.max").write_text("max\n")
        proc = spawn(
            argv, cwd=None, env=ENV, user=None, group=None, cgroup=cg, stdout=None, stderr=None
        )
        with killing(proc):
            assert proc.wait(timeout=10) == 3
    finally:
        assert cgs.cleanup() == []


def test_spawn_refused_when_the_daemons_own_cgroup_is_full(
    pids_cgroup: Callable[..., PidsCgroup],
) -> None:
    cg = pids_cgroup()
    r = _isolated("scenario_parent_full", cgroup_procs=str(cg.path / "cgroup.procs"))
    assert r == {"refused": errno.EAGAIN, "clean": True, "rc": 4}


def test_spawn_drops_to_the_user_after_joining_the_cgroup(
    base: str, test_user: Callable[[], TestUser]
) -> None:
    user = test_user()
    cgs = WorkerCgroups.detect(base)
    try:
        cg = cgs.create("user:0")
        code = "import os; print(os.getuid(), os.getgid(), sorted(os.getgroups()))"
        proc = spawn(
            [interpreter_for_others(), "-c", code],
            cwd=Path("/"),
            env=ENV,
            user=user.name,
            group=None,
            cgroup=cg,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        with killing(proc):
            out, err = proc.communicate(timeout=20)
        assert proc.returncode == 0, err
        assert out.decode().split(maxsplit=2) == [str(user.uid), str(user.gid), f"[{user.gid}]\n"]
    finally:
        assert cgs.cleanup() == []


def test_spawn_errors_surface() -> None:
    kw: dict[str, Any] = {"cwd": None, "env": ENV, "group": None, "cgroup": None}
    kw.update(stdout=None, stderr=None)
    with pytest.raises(FileNotFoundError) as info:
        spawn(["/nonexistent/program"], user=None, **kw)
    assert info.value.errno == errno.ENOENT
    with pytest.raises(UnknownUser, match="no-such-user-sbt"):
        spawn([sys.executable, "-c", "pass"], user="no-such-user-sbt", **kw)


def test_spawn_starts_a_session_leader_with_devnull_stdin() -> None:
    code = "import os, sys; print(os.getsid(0) == os.getpid() == os.getpgrp(), sys.stdin.read())"
    proc = spawn(
        [sys.executable, "-c", code],
        cwd=None,
        env=ENV,
        user=None,
        group=None,
        cgroup=None,
        stdout=subprocess.PIPE,
        stderr=None,
    )
    with killing(proc):
        out, _ = proc.communicate(timeout=20)
    assert out == b"True \n"


# ---------------------------------------------------------------- exits and orphans


def test_exit_watcher_reports_code_and_signal_promptly() -> None:
    async def main() -> dict[str, tuple[int | None, float]]:
        loop = asyncio.get_running_loop()
        watcher = ExitWatcher()
        got: dict[str, tuple[int | None, float]] = {}
        quit_seen, done = asyncio.Event(), asyncio.Event()

        def on_exit(name: str) -> Callable[[int | None], None]:
            def cb(code: int | None) -> None:
                got[name] = (code, loop.time())
                quit_seen.set()
                if len(got) == 2:
                    done.set()

            return cb

        kw: dict[str, Any] = {"cwd": None, "env": ENV, "user": None, "group": None}
        kw["cgroup"] = None
        quits = spawn([sys.executable, "-c", "raise SystemExit(3)"], stdout=None, stderr=None, **kw)
        sleeper = spawn(["sleep", "60"], stdout=None, stderr=None, **kw)
        with killing(quits), killing(sleeper):
            watcher.watch(quits, on_exit("quits"))
            watcher.watch(sleeper, on_exit("sleeper"))
            # the first exit reported: the loop is running with both watched
            await asyncio.wait_for(quit_seen.wait(), 10)
            assert "sleeper" not in got
            killed_at = loop.time()
            sleeper.send_signal(signal.SIGKILL)
            await asyncio.wait_for(done.wait(), 10)
            assert len(watcher) == 0
            watcher.close()
        got["killed_at"] = (0, killed_at)
        return got

    got = asyncio.run(main())
    assert got["quits"][0] == 3
    assert got["sleeper"][0] == -signal.SIGKILL
    assert got["sleeper"][1] - got["killed_at"][1] < 0.1


def test_subreaper_reaps_the_adopted_orphan_only() -> None:
    r = _isolated("scenario_subreaper")
    assert r["child_rc"] == 0
    assert [rc for _, rc in r["reaped"]] == [7], "re-parented to us, reaped by us"
    assert r["known_rc"] == 5, "a child in `known` is left to its Popen"
    assert r["left"] == []


def test_become_subreaper_in_a_child_only() -> None:
    code = "from supervisord_batt.supervise.proctree import become_subreaper as b; print(b())"
    out = subprocess.run([sys.executable, "-c", code], env=ENV, cwd=REPO, capture_output=True)
    assert out.stdout == b"True\n", out.stderr


# ---------------------------------------------------------------- detection


def test_detect_v1_creates_reuses_and_cleans_up(base: str) -> None:
    cgs = WorkerCgroups.detect(base)
    assert cgs.enabled and cgs.version == 1, cgs.reason
    assert cgs.root == _own_pids_v1() / f"{base}.workers" and cgs.root.is_dir()
    cg = cgs.create("batt:0")
    assert cg is not None and cg.path.name == "batt.0"
    proc = spawn(
        ["sleep", "60"],
        cwd=None,
        env=ENV,
        user=None,
        group=None,
        cgroup=cg,
        stdout=None,
        stderr=None,
    )
    with killing(proc):
        assert cg.procs() == [proc.pid] and cg.tasks_current() == 1
        # a later daemon finds the cgroup: it kills the leftover member and reuses the cgroup
        again = WorkerCgroups.detect(base)
        cg2 = again.create("batt:0")
        assert cg2 is not None and cg2.path == cg.path
        assert proc.wait(timeout=10) == -signal.SIGKILL
        assert again.cleanup() == []
    assert cgs.cleanup() == []
    assert not cgs.root.exists()


@pytest.mark.usefixtures("needs_root")  # root, to drop to nobody
def test_detect_falls_back_with_a_reason_when_v1_is_not_writable() -> None:
    code = (
        "import os; from supervisord_batt.supervise.cgroups import WorkerCgroups\n"
        "os.setgid(65534); os.setuid(65534)\n"
        "c = WorkerCgroups.detect('sbtest-nobody'); print(c.enabled, '|', c.reason)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], env=ENV, cwd=REPO, capture_output=True, text=True
    )
    enabled, _, reason = out.stdout.partition(" | ")
    assert enabled == "False", out
    assert "cannot create" in reason and "/proc" in reason
