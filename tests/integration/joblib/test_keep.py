"""Issue 24: a joblib call's loky pool is kept with its lease between calls, as plain
joblib keeps its executor; both go together when idle, on a shrink, and at exit; a fork,
a nested call and a call from another thread while one runs neither hang nor share it."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import joblib  # type: ignore[import-untyped]  # joblib ships no type hints
import psutil
import pytest

from supervisord_batt import joblib as batt_joblib
from supervisord_batt import paths
from tests.helpers import REPO, WaitTimeout, wait_until
from tests.support.daemons import DaemonHandle
from tests.support.pools import BUDGET, loky_workers


def square_pid(x: int) -> tuple[int, int]:
    return x * x, os.getpid()


def gated(flag: str, x: int) -> tuple[int, int]:
    deadline = time.monotonic() + 30
    while not os.path.exists(flag) and time.monotonic() < deadline:
        time.sleep(0.01)
    return x * x, os.getpid()


def inner_sum(n: int) -> tuple[int, int]:
    """A task that runs its own Parallel call (inside a worker: sequential)."""
    parts = joblib.Parallel(n_jobs=2)(joblib.delayed(abs)(-i) for i in range(n))
    return sum(parts), os.getpid()


def _leases(d: DaemonHandle, pid: int | None = None) -> list[dict[str, Any]]:
    pid = os.getpid() if pid is None else pid
    return [x for x in d.status()["leases"] if x["pid"] == pid]


def _grants(d: DaemonHandle, pid: int | None = None) -> list[dict[str, Any]]:
    pid = os.getpid() if pid is None else pid
    return [e for e in d.events("grant") if e.get("pid") == pid]


def _exited(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _keeper_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "supervisord-batt-keeper"]


def test_issue_24_short_calls_run_on_one_pool_and_one_lease(batt: DaemonHandle) -> None:
    seen: set[int] = set()
    for _ in range(10):
        out = joblib.Parallel(n_jobs=3)(joblib.delayed(square_pid)(x) for x in range(8))
        assert [r for r, _ in out] == [x * x for x in range(8)]
        seen |= {pid for _, pid in out}
    workers = set(loky_workers())
    assert len(workers) == 3 and seen <= workers  # every call ran on the same 3 workers
    assert [(e["kind"], e["workers"]) for e in _grants(batt)] == [("process", 3)]
    (held,) = _leases(batt)
    assert (held["kind"], held["workers"]) == ("process", 3)
    assert [g.lease_id for g in batt_joblib.current()] == [held["lease"]]
    assert batt_joblib.kept() is batt_joblib.current()[0]


def test_issue_24_idle_past_keep_alive_leaves_no_worker_no_lease_no_thread(
    batt: DaemonHandle, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(paths.KEEP_ALIVE_ENV, "1.5")
    joblib.Parallel(n_jobs=2)(joblib.delayed(square_pid)(x) for x in range(4))
    workers = loky_workers()
    assert len(workers) == 2 and len(_leases(batt)) == 1 and len(_keeper_threads()) == 1
    wait_until(lambda: _leases(batt) == [], timeout=10, what="the idle lease given back")
    assert loky_workers() == []  # closed before the lease was released
    assert not any(psutil.pid_exists(pid) for pid in workers)  # killed and reaped
    assert batt_joblib.current() == [] and batt_joblib.kept() is None
    wait_until(lambda: _keeper_threads() == [], timeout=5, what="the keeper's thread ended")


def test_issue_24_a_shrink_asked_while_idle_gives_back_pool_and_lease(
    batt: DaemonHandle, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(paths.KEEP_ALIVE_ENV, "120")  # only the shrink can end it here
    joblib.Parallel(n_jobs=3)(joblib.delayed(square_pid)(x) for x in range(6))
    (held,) = _leases(batt)
    assert held["workers"] == 3
    with batt.client() as other:
        reply = other.request("acquire", want=3, kinds=["process"], job="other")
        assert reply["ok"], reply

        def mine() -> list[str]:
            return [x["lease"] for x in _leases(batt) if x["lease"] != reply["lease"]]

        wait_until(lambda: mine() == [], timeout=10, what="the kept lease given back")
        assert loky_workers() == []
        (released,) = [e for e in batt.events("release") if e["lease"] == held["lease"]]
        assert released["reason"] == "released by holder"
        other.request("release", lease=reply["lease"])
    # the next call leases again and builds what it is granted now
    out = joblib.Parallel(n_jobs=3)(joblib.delayed(square_pid)(x) for x in range(6))
    assert [r for r, _ in out] == [x * x for x in range(6)]


def test_issue_24_a_call_that_asks_for_another_size_ends_the_kept_pool_first(
    batt: DaemonHandle,
) -> None:
    joblib.Parallel(n_jobs=3)(joblib.delayed(square_pid)(x) for x in range(6))
    (first,) = _leases(batt)
    out = joblib.Parallel(n_jobs=2)(joblib.delayed(square_pid)(x) for x in range(6))
    assert [r for r, _ in out] == [x * x for x in range(6)]
    (second,) = _leases(batt)  # one lease, one pool per process
    assert second["lease"] != first["lease"] and second["workers"] == 2
    assert len(loky_workers()) == 2
    assert [e["lease"] for e in batt.events("release")] == [first["lease"]]


def test_issue_24_a_kept_pool_whose_worker_died_is_not_reused(batt: DaemonHandle) -> None:
    joblib.Parallel(n_jobs=2)(joblib.delayed(square_pid)(x) for x in range(4))
    dead = loky_workers()[0]
    os.kill(dead, signal.SIGKILL)
    wait_until(lambda: _exited(dead), timeout=10, what="the killed worker exited")
    out = joblib.Parallel(n_jobs=2)(joblib.delayed(square_pid)(x) for x in range(8))
    assert [r for r, _ in out] == [x * x for x in range(8)]
    assert dead not in {pid for _, pid in out} and dead not in loky_workers()
    assert len(_leases(batt)) == 1


def test_issue_24_a_second_call_while_one_holds_the_pool_runs_on_threads(
    daemon: Callable[..., DaemonHandle], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Same thread (a generator not yet exhausted) and another thread: neither waits for
    the first call's tasks, neither touches its pool; each leases threads of its own."""
    batt = daemon({"budget": {**BUDGET, "cpu_cap": 6}})  # room for 3 pools of 2
    monkeypatch.setenv(paths.SOCKET_ENV, str(batt.socket))
    monkeypatch.setattr(batt_joblib, "STATE", batt_joblib.State())
    monkeypatch.setattr(joblib.parallel, "DEFAULT_BACKEND", batt_joblib.BACKEND_NAME)
    flag = str(tmp_path / "go")
    gen = joblib.Parallel(n_jobs=2, return_as="generator")(
        joblib.delayed(gated)(flag, x) for x in range(4)
    )
    try:
        wait_until(lambda: len(_leases(batt)) == 1, timeout=10, what="the first call's lease")
        workers = set(loky_workers())
        out = joblib.Parallel(n_jobs=2)(joblib.delayed(square_pid)(x) for x in range(6))
        assert out == [(x * x, os.getpid()) for x in range(6)]  # threads of this process

        result: list[Any] = []

        def other() -> None:
            result.append(joblib.Parallel(n_jobs=2)(joblib.delayed(abs)(-x) for x in range(6)))

        thread = threading.Thread(target=other)
        thread.start()
        thread.join(timeout=30)
        assert not thread.is_alive(), "a call from another thread did not finish"
        assert result == [list(range(6))]
        assert set(loky_workers()) == workers  # the first call's pool, untouched
    finally:
        Path(flag).touch()
        first = list(gen)
    assert [r for r, _ in first] == [x * x for x in range(4)]
    kinds = [(e["kind"], e["workers"]) for e in _grants(batt)]
    assert kinds == [("process", 2), ("thread", 2), ("thread", 2)], kinds
    batt_joblib.KEEPER.close()
    wait_until(lambda: loky_workers() == [], timeout=10, what="no loky worker left")


def test_issue_24_nested_calls_in_the_tasks_of_a_kept_pool_run_sequential(
    batt: DaemonHandle,
) -> None:
    for _ in range(2):
        out = joblib.Parallel(n_jobs=2)(joblib.delayed(inner_sum)(n) for n in range(1, 7))
        assert [r for r, _ in out] == [sum(range(n)) for n in range(1, 7)]
        assert {pid for _, pid in out} <= set(loky_workers())
    assert [(e["kind"], e["workers"]) for e in _grants(batt)] == [("process", 2)]


FORKS = textwrap.dedent(
    """
    import json, os, sys
    import joblib
    import supervisord_batt.joblib as batt

    joblib.parallel_config(backend=batt.BACKEND_NAME)

    def pids():
        return sorted(set(joblib.Parallel(n_jobs=2)(joblib.delayed(os.getpid)() for _ in range(8))))

    def workers():
        return sorted(batt.KEEPER.parked().pool.pids)

    before = {"pids": pids(), "lease": batt.kept().lease_id, "workers": workers()}
    r, w = os.pipe()
    child = os.fork()
    if child == 0:
        try:
            out = {"me": os.getpid(), "pids": pids(), "lease": batt.kept().lease_id}
            out["workers"] = workers()
        except BaseException as exc:
            out = {"error": repr(exc)}
        os.write(w, json.dumps(out).encode())
        batt.KEEPER.close()  # what the child's exit would do; os._exit skips it
        os._exit(0)
    os.close(w)
    with os.fdopen(r) as f:
        forked = json.loads(f.read() or "{}")
    os.waitpid(child, 0)
    after = {"pids": pids(), "lease": batt.kept().lease_id, "workers": workers()}
    print(json.dumps({"before": before, "child": forked, "after": after}), flush=True)
    """
)


def _group(pgid: int) -> list[int]:
    """Live (not zombie) processes of a process group."""
    out = []
    for proc in psutil.process_iter():
        with contextlib.suppress(psutil.Error, ProcessLookupError):
            if os.getpgid(proc.pid) == pgid and proc.status() != psutil.STATUS_ZOMBIE:
                out.append(proc.pid)
    return out


def _run_job(d: DaemonHandle, code: str, keep: str, timeout: float) -> dict[str, Any]:
    """A job of its own session against `d`: its JSON line, and `left`, what of its
    process group outlived it (a forked child, loky workers and trackers: all killed
    after)."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    env[paths.SOCKET_ENV] = str(d.socket)
    env[paths.KEEP_ALIVE_ENV] = keep
    env.pop(paths.FALLBACK_ENV, None)
    proc = subprocess.Popen(
        [sys.executable, "-c", code],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
        with contextlib.suppress(WaitTimeout):  # its trackers see it gone a moment later
            wait_until(lambda: _group(proc.pid) == [], timeout=10, what="the job's group gone")
        left = _group(proc.pid)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert proc.returncode == 0, err
    got: dict[str, Any] = json.loads(out)
    got["left"] = left
    return got


def test_issue_24_a_forked_child_builds_its_own_pool_and_lease(
    daemon: Callable[..., DaemonHandle],
) -> None:
    d = daemon({"budget": {**BUDGET, "cpu_cap": 4}})  # room for the parent's 2 and the child's
    got = _run_job(d, FORKS, keep="60", timeout=90)
    before, child, after = got["before"], got["child"], got["after"]
    assert "error" not in child, child
    assert len(before["workers"]) == 2 and set(before["pids"]) <= set(before["workers"])
    # the child ran on workers of its own, under a lease of its own
    assert set(child["pids"]) <= set(child["workers"]) and child["me"] not in child["pids"]
    assert set(child["workers"]).isdisjoint(before["workers"])
    assert child["lease"] not in (None, before["lease"])
    # the parent's kept pool and lease, unharmed: its next call ran on them
    assert (after["lease"], after["workers"]) == (before["lease"], before["workers"])
    assert set(after["pids"]) <= set(before["workers"])
    assert got["left"] == []
    assert [e["kind"] for e in _grants(d, child["me"])] == ["process"]
    assert d.events("lease_expired") == []
    wait_until(lambda: d.status()["leases"] == [], timeout=10, what="every lease given back")


EXITS = textwrap.dedent(
    """
    import json, os
    import joblib
    import supervisord_batt.joblib as batt

    joblib.parallel_config(backend=batt.BACKEND_NAME)
    out = joblib.Parallel(n_jobs=2)(joblib.delayed(os.getpid)() for _ in range(8))
    print(json.dumps({"pids": sorted(set(out)), "lease": batt.kept().lease_id}), flush=True)
    """
)


def test_issue_24_interpreter_exit_gives_back_the_kept_pool_and_lease(batt: DaemonHandle) -> None:
    """A keep-alive of a minute neither delays the exit nor outlives it."""
    got = _run_job(batt, EXITS, keep="60", timeout=30)
    assert not any(psutil.pid_exists(pid) for pid in got["pids"])  # killed and reaped
    assert got["left"] == []
    (released,) = [e for e in batt.events("release") if e["lease"] == got["lease"]]
    assert released["reason"] == "released by holder"


def test_issue_24_keep_alive_0_is_a_pool_per_call_as_before(batt: DaemonHandle) -> None:
    with joblib.parallel_config(backend=batt_joblib.BACKEND_NAME, keep_alive=0):
        for _ in range(2):
            joblib.Parallel(n_jobs=2)(joblib.delayed(square_pid)(x) for x in range(4))
            assert _leases(batt) == [] and loky_workers() == []
    assert [(e["kind"], e["workers"]) for e in _grants(batt)] == [("process", 2)] * 2


def test_issue_24_keep_alive_from_the_environment() -> None:
    read = batt_joblib.keep_alive_default
    assert read({}) == batt_joblib.KEEP_ALIVE_S == 5.0
    assert (read({paths.KEEP_ALIVE_ENV: "0"}), read({paths.KEEP_ALIVE_ENV: "30s"})) == (0, 30)
    for bad in ("-1", "soon", "inf", "nan"):
        assert read({paths.KEEP_ALIVE_ENV: bad}) == 5.0  # a warning, and the default
