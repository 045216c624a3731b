"""The executor without limits: order, task errors, per-task timeouts, following a grant."""

from __future__ import annotations

import os
import time
from typing import Any

import pytest

from supervisord_batt.client.executor import BudgetExecutor, TaskTimeout
from supervisord_batt.client.leases import Grant
from tests.helpers import wait_until
from tests.support.pools import loky_workers


class Boom(ValueError):
    pass


def square_after(x: int) -> int:
    time.sleep(0.01 * (5 - x % 5))  # finish out of order
    return x * x


def fail_on_3(x: int) -> int:
    if x == 3:
        raise Boom(f"bad task {x}")
    return x


def sleepy(x: float) -> float:
    time.sleep(x)
    return x


@pytest.mark.parametrize("kind", ["process", "thread", "sequential"])
def test_results_in_input_order(kind: str) -> None:
    with BudgetExecutor(Grant.local(kind, 2)) as ex:
        assert ex.map(square_after, range(12)) == [x * x for x in range(12)]
        assert ex.kinds_used == [kind if kind == "sequential" else f"{kind}:2"]
    assert ex.fallbacks == []
    wait_until(lambda: loky_workers() == [], timeout=10, what="no loky worker left")


@pytest.mark.parametrize("kind", ["process", "thread", "sequential"])
def test_task_errors_propagate_unchanged(kind: str) -> None:
    with BudgetExecutor(Grant.local(kind, 2)) as ex, pytest.raises(Boom, match="bad task 3"):
        ex.map(fail_on_3, range(8))
    assert ex.fallbacks == []  # a task's error is not a pool failure


def test_task_timeout_names_the_task_and_kills_the_workers() -> None:
    start = time.monotonic()
    with (
        BudgetExecutor(Grant.local("process", 2), task_timeout=1.0, poll_interval=0.1) as ex,
        pytest.raises(TaskTimeout) as err,
    ):
        ex.map(sleepy, [0.01, 60.0, 0.01])
    assert time.monotonic() - start < 20
    assert err.value.index == 1 and "task 1 (60.0)" in str(err.value)
    assert "process pool of 2" in str(err.value)
    assert loky_workers() == []


def test_worker_killed_midway_is_redone_on_the_fallback() -> None:
    """A pool that breaks under a task (a worker killed) costs no result."""
    killed: list[int] = []

    def kill_one(index: int, _result: Any) -> None:
        if index == 0 and not killed:
            pid = loky_workers()[0]
            killed.append(pid)
            os.kill(pid, 9)

    with BudgetExecutor(Grant.local("process", 2), poll_interval=0.1) as ex:
        out = ex.map(sleepy, [0.01] + [0.3] * 5, on_done=kill_one)
    assert out == [0.01] + [0.3] * 5
    assert killed and ex.fallbacks and ex.fallbacks[0].from_kind == "process"
    assert ex.kinds_used[-1] == "thread:2"
    assert loky_workers() == []


class ScriptedGrant(Grant):
    """A grant whose daemon shrinks it to 1 after a few renewals, recording the acks."""

    def __init__(self) -> None:
        super().__init__(kind="thread", workers=3, target=3, lease_id="L1", degraded=False)
        self.renewals: list[int | None] = []

    def renew_due(self, interval: float | None = None) -> bool:
        return True

    def renew(self, workers_in_use: int | None = None) -> Grant:
        self.renewals.append(workers_in_use)
        if len(self.renewals) >= 4:
            self.target = 1
        return self

    def release(self) -> None:
        return None


def test_follows_a_shrink_between_tasks() -> None:
    grant = ScriptedGrant()
    with grant.executor(poll_interval=0.05) as ex:
        assert ex.map(sleepy, [0.05] * 10) == [0.05] * 10
    assert ex.kinds_used == ["thread:3", "thread:1"]
    assert 1 in grant.renewals[grant.renewals.index(3) :]  # acknowledged the new size
    assert ex.fallbacks == []
