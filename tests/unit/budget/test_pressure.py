"""`pressure_level` on its own: each signal graded against its thresholds, the worst one
setting the level and naming itself, thresholds set off never reached, and CPU pressure
left out when the caller says it does not count."""

from __future__ import annotations

from dataclasses import replace

import pytest

from supervisord_batt.budget.books import Book
from supervisord_batt.budget.pressure import pressure_level
from supervisord_batt.host.sample import Psi
from tests.support.budget import PRESSURE, QUIET, config, limit, sample

OFF = replace(QUIET, cpu_high=None, cpu_extreme=None, memory_high=None, memory_extreme=None)


def level(
    *limits_in_use: tuple[int, int], psi: Psi | None = None, cpu: bool = True, **th: float | None
) -> tuple[str, str]:
    """The level of a sample with the given (limit, in_use) threads-max-like limits."""
    lims = tuple(
        limit(lim, used, kind="cgroup", scope=f"/c{i}")
        for i, (lim, used) in enumerate(limits_in_use)
    )
    cfg = config(pressure=replace(PRESSURE, **th))  # type: ignore[arg-type]
    s = sample(*lims, psi=psi)
    return pressure_level(s, cfg, Book.of(s, cfg), cpu=cpu)


@pytest.mark.parametrize(
    ("in_use", "expected"),
    [
        (0, "normal"),
        (79, "normal"),
        (80, "normal"),
        (81, "high"),
        (95, "high"),
        (96, "extreme"),
        (100, "extreme"),
    ],
)
def test_headroom_percent_against_the_two_thresholds(in_use: int, expected: str) -> None:
    # PRESSURE: high below 20% free, extreme below 5% free
    got, reason = level((100, in_use))
    assert got == expected
    assert reason == f"cgroup:/c0 free {100 - in_use:.1f}%"


def test_the_tightest_limit_sets_the_level_and_names_itself() -> None:
    got, reason = level((1000, 100), (100, 97), (100, 85))
    assert (got, reason) == ("extreme", "cgroup:/c1 free 3.0%")


def test_usage_charged_in_the_book_counts_not_only_the_sample() -> None:
    s = sample(limit(100, 50, kind="cgroup", scope="/c0"))
    cfg = config(pressure=PRESSURE)
    book = Book.of(s, cfg)
    assert pressure_level(s, cfg, book)[0] == "normal"
    book.usage[0] += 40  # 10% free once the book's charges are in
    assert pressure_level(s, cfg, book) == ("high", "cgroup:/c0 free 10.0%")


def test_a_reserve_lowers_the_cap_the_headroom_is_measured_against() -> None:
    s = sample(limit(100, 70, kind="cgroup", scope="/c0"))
    cfg = config(pressure=PRESSURE, reserve_tasks=15)
    assert pressure_level(s, cfg, Book.of(s, cfg)) == ("high", "cgroup:/c0 free 15.0%")


def test_a_limit_of_zero_or_less_is_not_graded() -> None:
    s = sample(limit(0, 5, kind="cgroup", scope="/none"))
    cfg = config(pressure=PRESSURE)
    assert pressure_level(s, cfg, Book.of(s, cfg)) == ("normal", "no limits")


@pytest.mark.parametrize(
    ("cpu", "memory", "expected", "reason"),
    [
        (10.0, 10.0, "normal", None),
        (40.0, 0.0, "high", "psi cpu some avg10 40"),
        (80.0, 0.0, "extreme", "psi cpu some avg10 80"),
        (0.0, 30.0, "high", "psi memory some avg10 30"),
        (50.0, 60.0, "extreme", "psi memory some avg10 60"),
    ],
)
def test_psi_graded_against_its_thresholds(
    cpu: float, memory: float, expected: str, reason: str | None
) -> None:
    got, why = level((10_000, 0), psi=Psi(cpu, memory))
    assert got == expected
    if reason is not None:
        assert why == reason


def test_cpu_pressure_does_not_count_when_the_caller_says_so() -> None:
    assert level((10_000, 0), psi=Psi(95.0, 0.0))[0] == "extreme"
    assert level((10_000, 0), psi=Psi(95.0, 0.0), cpu=False)[0] == "normal"
    assert level((10_000, 0), psi=Psi(95.0, 35.0), cpu=False) == (
        "high",
        "psi memory some avg10 35",
    )


def test_thresholds_set_off_are_never_reached() -> None:
    off = level(
        (10_000, 0),
        psi=Psi(100.0, 100.0),
        cpu_high=None,
        cpu_extreme=None,
        memory_high=None,
        memory_extreme=None,
    )
    assert off[0] == "normal"
    # one of a pair off: the other still grades
    assert level((10_000, 0), psi=Psi(100.0, 0.0), cpu_extreme=None)[0] == "high"


def test_missing_psi_values_and_a_host_without_psi_set_no_level() -> None:
    assert level((10_000, 0), psi=Psi(None, None))[0] == "normal"
    assert level((10_000, 0), psi=None)[0] == "normal"


def test_no_limit_and_no_psi_is_normal_with_a_reason() -> None:
    s = sample(limit(0, 0))
    cfg = config(pressure=OFF)
    assert pressure_level(s, cfg, Book.of(s, cfg)) == ("normal", "no limits")
