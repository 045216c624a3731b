"""Inner threads per worker: the grant's CPUs divided among its workers, 1 when tight."""

from __future__ import annotations

import pytest

from supervisord_batt.client import inner
from supervisord_batt.client.executor import FixedGrant
from supervisord_batt.client.leases import Grant, child_env


@pytest.mark.parametrize(
    ("kind", "workers", "cpus", "tight", "expected"),
    [
        ("process", 2, 2, False, 1),  # this VM: 2 workers x 1 thread on 2 CPUs
        ("process", 1, 2, False, 2),
        ("process", 2, 8, False, 4),
        ("process", 3, 8, False, 2),  # rounded down: never more threads than CPUs
        ("process", 16, 8, False, 1),  # more workers than CPUs: still 1, never 0
        ("thread", 4, 8, False, 2),
        ("process", 2, 8, True, 1),  # tight budget
        ("sequential", 1, 8, False, 1),  # no worker granted: no thread to spare
        ("process", 0, 8, False, 8),  # a zero-size pool counts as one
    ],
)
def test_inner_threads(kind: str, workers: int, cpus: int, tight: bool, expected: int) -> None:
    assert inner.inner_threads(kind, workers, cpus=cpus, tight=tight) == expected


def test_workers_times_inner_threads_never_exceed_the_cpus() -> None:
    for cpus in range(1, 33):
        for workers in range(1, 40):
            per = inner.inner_threads("process", workers, cpus=cpus)
            assert per >= 1
            assert workers * per <= max(cpus, workers)


def test_tight_when_pressure_or_granted_less_than_wanted() -> None:
    def grant(level: str, workers: int, wanted: int) -> Grant:
        return Grant(
            kind="process", workers=workers, target=workers, level=level, degraded=False,
            lease_id="L1", wanted=wanted,
        )  # fmt: skip

    assert not grant("normal", 2, 2).tight
    assert grant("high", 2, 2).tight and grant("extreme", 2, 2).tight
    assert grant("normal", 2, 4).tight  # the budget cut it: the CPUs are not all ours
    assert grant("normal", 2, 4).inner_threads == 1
    assert not Grant.local("process", 2).tight  # no daemon: nothing says it is tight


def test_for_grant_reads_grant_likes_without_tight() -> None:
    assert inner.for_grant(FixedGrant("process", 2), cpus=8) == 4


def test_exec_env_divides_the_cpus_among_the_workers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(inner, "cpu_count", lambda: 8)
    env = child_env(Grant.local("process", 2), base={"OMP_NUM_THREADS": "64"})
    assert env["LOKY_MAX_CPU_COUNT"] == "2"
    assert {env[name] for name in inner.INNER_THREAD_ENV_VARS} == {"4"}
    env = child_env(Grant.local("sequential"), base={})
    assert {env[name] for name in inner.INNER_THREAD_ENV_VARS} == {"1"}


def test_inner_env_is_never_zero() -> None:
    assert set(inner.inner_env(0).values()) == {"1"}
