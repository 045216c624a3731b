"""The pressure level: normal, high or extreme, from the tightest limit's headroom and
the host's PSI, graded against the configured thresholds. Pure: it takes the sample, the
config and the book of charged usage."""

from __future__ import annotations

from supervisord_batt.budget.books import Book
from supervisord_batt.budget.costs import LEVELS, Level
from supervisord_batt.config.records import BudgetConfig
from supervisord_batt.host.sample import HostSample


def pressure_level(
    sample: HostSample, config: BudgetConfig, book: Book, cpu: bool = True
) -> tuple[Level, str]:
    """The pressure level from the tightest limit and PSI, with the signal that set it
    (`cpu`: whether CPU pressure counts)."""
    found = _headroom_grades(sample, config, book) + _psi_grades(sample, config, cpu)
    grade, reason = max(found, default=(0, "no limits"), key=lambda f: f[0])
    return LEVELS[grade], reason


def _headroom_grades(sample: HostSample, config: BudgetConfig, book: Book) -> list[tuple[int, str]]:
    """A grade per limit, from its free tasks as a percent of the limit."""
    found: list[tuple[int, str]] = []
    th = config.pressure
    for i, lim in enumerate(sample.limits):
        if lim.limit <= 0:
            continue
        pct = 100.0 * (book.caps[i] - book.usage[i]) / lim.limit
        found.append(
            _grade(
                pct,
                th.headroom_high_percent,
                th.headroom_extreme_percent,
                f"{lim.name} free {pct:.1f}%",
                below=True,
            )
        )
    return found


def _psi_grades(sample: HostSample, config: BudgetConfig, cpu: bool) -> list[tuple[int, str]]:
    """A grade for CPU (if `cpu`) and for memory pressure, where the sample has them."""
    found: list[tuple[int, str]] = []
    th = config.pressure
    psi = sample.psi
    if cpu and psi is not None and psi.cpu_some_avg10 is not None:
        found.append(
            _grade(
                psi.cpu_some_avg10,
                th.cpu_high,
                th.cpu_extreme,
                f"psi cpu some avg10 {psi.cpu_some_avg10:g}",
            )
        )
    if psi is not None and psi.memory_some_avg10 is not None:
        found.append(
            _grade(
                psi.memory_some_avg10,
                th.memory_high,
                th.memory_extreme,
                f"psi memory some avg10 {psi.memory_some_avg10:g}",
            )
        )
    return found


def _grade(
    value: float, high: float, extreme: float, what: str, *, below: bool = False
) -> tuple[int, str]:
    """0, 1 or 2 (normal, high, extreme) for one signal, with its description."""
    if below:
        value, high, extreme = -value, -high, -extreme
        hit = 2 if value > extreme else 1 if value > high else 0
    else:
        hit = 2 if value >= extreme else 1 if value >= high else 0
    return hit, what
