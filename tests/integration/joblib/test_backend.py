"""The joblib backend with real joblib against a real daemon: it runs on the grant, holds
the lease while its pool lives (the call, then the idle keep-alive), gives the sequential
run's results, degrades like lease()."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import joblib  # type: ignore[import-untyped]  # joblib ships no type hints
import pytest

from supervisord_batt import joblib as batt_joblib
from supervisord_batt import paths
from supervisord_batt.client import inner
from tests.helpers import wait_until
from tests.support.daemons import DaemonHandle
from tests.support.pools import BUDGET, loky_workers


def gated(flag: str, x: int) -> tuple[int, int]:
    """Waits (to a deadline) until the test lets the call finish; returns its pid."""
    deadline = time.monotonic() + 30
    while not os.path.exists(flag) and time.monotonic() < deadline:
        time.sleep(0.01)
    return x * x + 1, os.getpid()


def marked(flag: str, x: int) -> tuple[int, int]:
    """gated, after leaving a mark of its worker beside the flag."""
    Path(f"{flag}.{os.getpid()}").touch()
    return gated(flag, x)


def square(x: int) -> int:
    return x * x + 1


def _leases(d: DaemonHandle) -> list[dict[str, Any]]:
    """The leases of this process's joblib calls (not the test's own wire client's)."""
    return [x for x in d.status()["leases"] if x["job"] == batt_joblib.BACKEND_NAME]


def test_call_runs_on_the_grant_and_holds_the_lease_as_long_as_its_pool(
    batt: DaemonHandle, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(paths.KEEP_ALIVE_ENV, "3")
    flag = str(tmp_path / "go")
    gen = joblib.Parallel(n_jobs=3, return_as="generator")(
        joblib.delayed(marked)(flag, x) for x in range(9)
    )
    try:
        (held,) = wait_until(lambda: _leases(batt), timeout=10, what="the call's lease")
        assert (held["kind"], held["workers"], held["job"]) == ("process", 3, "supervisord-batt")
        assert len(loky_workers()) == 3
        assert [g.lease_id for g in batt_joblib.current()] == [held["lease"]]
        # every worker holds a task before the gate opens (the warm-up waits for one)
        wait_until(lambda: len(list(tmp_path.glob("go.*"))) == 3, timeout=20, what="3 marks")
    finally:
        Path(flag).touch()
        out = list(gen)
    assert [r for r, _ in out] == [square(x) for x in range(9)]
    assert len({pid for _, pid in out} - {os.getpid()}) == 3  # ran on the 3 workers
    assert [x["lease"] for x in _leases(batt)] == [held["lease"]]  # kept, idle, with its pool
    assert len(loky_workers()) == 3
    wait_until(lambda: _leases(batt) == [], timeout=10, what="the idle pool's lease given back")
    assert loky_workers() == [] and batt_joblib.current() == []  # the pool went first
    (released,) = [e for e in batt.events("release") if e["lease"] == held["lease"]]
    assert released["reason"] == "released by holder"


def test_results_equal_the_sequential_run_and_n_jobs_minus_one_asks_for_every_cpu(
    batt: DaemonHandle,
) -> None:
    want = inner.cpu_count()
    with joblib.Parallel(n_jobs=-1) as parallel:
        (held,) = _leases(batt)
        assert held["wanted"] == want and held["workers"] == min(want, 3)
        first = parallel(joblib.delayed(square)(x) for x in range(50))
        second = parallel(joblib.delayed(square)(x) for x in range(7))
        assert [x["lease"] for x in _leases(batt)] == [held["lease"]]  # one lease, one pool
    assert first == [square(x) for x in range(50)] and second == [square(x) for x in range(7)]


def test_threads_when_the_call_needs_shared_memory(batt: DaemonHandle, tmp_path: Path) -> None:
    flag = str(tmp_path / "go")
    gen = joblib.Parallel(n_jobs=2, require="sharedmem", return_as="generator")(
        joblib.delayed(gated)(flag, x) for x in range(4)
    )
    try:
        (held,) = wait_until(lambda: _leases(batt), timeout=10, what="the call's lease")
        assert (held["kind"], held["workers"]) == ("thread", 2)
        assert loky_workers() == []
    finally:
        Path(flag).touch()
        out = list(gen)
    assert out == [(square(x), os.getpid()) for x in range(4)]
    assert _leases(batt) == []


def test_a_task_error_propagates_and_the_lease_is_given_back(batt: DaemonHandle) -> None:
    with pytest.raises(ZeroDivisionError):
        joblib.Parallel(n_jobs=2)(joblib.delayed(divmod)(1, x) for x in [1, 0, 2, 3])
    assert _leases(batt) == []
    with joblib.Parallel(n_jobs=2) as parallel:  # a reused backend is made ready again
        with pytest.raises(ZeroDivisionError):
            parallel(joblib.delayed(divmod)(1, x) for x in [1, 0, 2, 3])
        assert parallel(joblib.delayed(square)(x) for x in range(6)) == [
            square(x) for x in range(6)
        ]
        (held,) = _leases(batt)
    assert [x["lease"] for x in _leases(batt)] == [held["lease"]]  # kept with its new pool


def test_no_daemon_one_warning_then_the_configured_fallback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import structlog

    monkeypatch.setattr(structlog, "is_configured", lambda: False)
    monkeypatch.setenv(paths.SOCKET_ENV, str(tmp_path / "none.sock"))
    monkeypatch.setenv(paths.FALLBACK_ENV, "process:2")
    monkeypatch.setattr(batt_joblib, "STATE", batt_joblib.State())
    with joblib.parallel_config(backend=batt_joblib.BACKEND_NAME):
        for _ in range(3):
            out = joblib.Parallel(n_jobs=-1)(
                joblib.delayed(gated)(str(tmp_path), x) for x in range(6)
            )
            assert [r for r, _ in out] == [square(x) for x in range(6)]
    workers = {pid for _, pid in out}
    assert os.getpid() not in workers and 1 <= len(workers) <= 2  # the fallback's pool
    warnings = [line for line in capsys.readouterr().err.splitlines() if "not reachable" in line]
    assert len(warnings) == 1, warnings
    assert "joblib runs process:2" in warnings[0]
    wait_until(lambda: loky_workers() == [], timeout=10, what="no loky worker left")


def test_each_call_runs_on_what_the_budget_has_left_then(batt: DaemonHandle) -> None:
    """Another holder takes slots: the next call gets the rest (here one: sequential, no
    pool, no lease kept); once they are given back, the call after gets its pool again."""
    with batt.client() as other:
        reply = other.request("acquire", want=2, kinds=["process"], job="other")
        assert reply["ok"] and reply["workers"] == 2, reply
        out = joblib.Parallel(n_jobs=3)(joblib.delayed(gated)("/", x) for x in range(6))
        assert {pid for _, pid in out} == {os.getpid()}
        assert _leases(batt) == [] and loky_workers() == []
    wait_until(lambda: batt.status()["leases"] == [], timeout=10, what="the other's release")
    out = joblib.Parallel(n_jobs=3)(joblib.delayed(gated)("/", x) for x in range(30))
    assert os.getpid() not in {pid for _, pid in out}
    assert [r for r, _ in out] == [square(x) for x in range(30)]


def sleepy(x: int) -> int:
    time.sleep(0.1)
    return x


def test_a_call_longer_than_the_ttl_keeps_its_lease_by_renewing_between_batches(
    daemon: Callable[..., DaemonHandle], monkeypatch: pytest.MonkeyPatch
) -> None:
    """... and while its pool idles after the call (renewed by the keeper)."""
    # the first renew after the pool's comes with its first finished batch: the TTL must
    # outlast starting the workers, which took over a second on a busy host (with 1 s, a
    # host at load 8 on 2 cores let the lease expire mid-call)
    ttl = 4.0
    tasks = int(2 * 2 * ttl / 0.1) + 10  # two workers, 0.1 s each: over two TTLs
    d = daemon({"budget": {**BUDGET, "lease_ttl": f"{ttl:g}s"}})
    monkeypatch.setenv(paths.SOCKET_ENV, str(d.socket))
    monkeypatch.setenv(paths.KEEP_ALIVE_ENV, "4.5")
    monkeypatch.setattr(batt_joblib, "STATE", batt_joblib.State())
    with joblib.parallel_config(backend=batt_joblib.BACKEND_NAME):
        start = time.monotonic()
        out = joblib.Parallel(n_jobs=2, batch_size=1)(
            joblib.delayed(sleepy)(x) for x in range(tasks)
        )
        took = time.monotonic() - start
    assert out == list(range(tasks))
    assert took > 2 * ttl, f"the call took {took:.1f}s: not longer than two TTLs"
    assert d.events("lease_expired") == [], d.events("lease_expired")
    (granted,) = [e for e in d.events("grant") if e.get("job") == batt_joblib.BACKEND_NAME]
    assert granted["kind"] == "process"
    wait_until(lambda: d.status()["leases"] == [], timeout=10, what="the lease given back")
    assert loky_workers() == []
    (released,) = d.events("release")
    assert released["reason"] == "released by holder"  # after 4.5 s idle: renewed, not expired
    assert d.events("lease_expired") == [], d.events("lease_expired")
