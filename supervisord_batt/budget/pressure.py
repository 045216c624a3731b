"""The pressure level: normal, high or extreme, from the tightest limit's headroom and
the host's PSI, graded against the configured thresholds. Pure: it takes the sample, the
config and the book of charged usage."""

from __future__ import annotations

from supervisord_batt.budget.books import Book
from supervisord_batt.config.records import BudgetConfig
from supervisord_batt.host.sample import HostSample
from supervisord_batt.protocol import LEVELS, Level


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
    """A grade for CPU (if `cpu`) and for memory pressure, where the sample has them and
    the config has not set both their thresholds off."""
    th, psi = config.pressure, sample.psi
    if psi is None:
        return []
    signals = (
        ("cpu", psi.cpu_some_avg10 if cpu else None, th.cpu_high, th.cpu_extreme),
        ("memory", psi.memory_some_avg10, th.memory_high, th.memory_extreme),
    )
    return [
        _grade(value, high, extreme, f"psi {name} some avg10 {value:g}")
        for name, value, high, extreme in signals
        if value is not None and (high is not None or extreme is not None)
    ]


def _grade(
    value: float, high: float | None, extreme: float | None, what: str, *, below: bool = False
) -> tuple[int, str]:
    """0, 1 or 2 (normal, high, extreme) for one signal, with its description; a
    threshold that is None (off) is never reached."""
    hit = 2 if _reached(value, extreme, below) else 1 if _reached(value, high, below) else 0
    return hit, what


def _reached(value: float, threshold: float | None, below: bool) -> bool:
    if threshold is None:
        return False
    return value < threshold if below else value >= threshold
