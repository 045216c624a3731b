"""Alternating rounds of a baseline and a candidate, and the ratio they show together.

On a shared host one candidate run against one baseline run minutes apart measures the
host as much as the candidate: a baseline's own rate moved by a third between runs here
(docs/BENCHMARKS.md). So a benchmark runs both in short rounds within one invocation,
the one that goes first alternating (ABBA: baseline, candidate, candidate, baseline, ...),
takes the candidate's ratio to the baseline of its own round, and reports the median of
those ratios with their range and the number of rounds. Where there are several
baselines (the best other mode), the one with the best median over the rounds is the
baseline in every round: taking each round's faster one would compare the candidate with
whichever the host's noise lifted in that round, a bias against it. Pure: the
benchmarks run the rounds, this orders them and sums them up.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass


def round_order(index: int, arms: Sequence[str]) -> list[str]:
    """The arms of round `index` (from 0) in the order they run: as given in even
    rounds, reversed in odd ones, so each arm goes first as often as the other."""
    return list(arms) if index % 2 == 0 else list(reversed(arms))


def best_arm(rates: Mapping[str, Sequence[float]]) -> str | None:
    """The arm whose median rate over the rounds is the highest (None for no arm with
    a round)."""
    seen = {arm: statistics.median(r) for arm, r in rates.items() if r}
    return max(seen, key=lambda arm: seen[arm], default=None)


@dataclass(frozen=True)
class Paired:
    """A candidate's ratios to its baseline, one per round, summed up."""

    ratios: tuple[float, ...]
    median: float
    low: float
    high: float

    @property
    def rounds(self) -> int:
        return len(self.ratios)

    def met(self, target: float) -> bool:
        """Whether the median reaches `target` (there is at least one round)."""
        return bool(self.ratios) and self.median >= target

    def __str__(self) -> str:
        if not self.ratios:
            return "- (0 rounds)"
        return f"{self.median:.3f} ({self.low:.3f}-{self.high:.3f}, {self.rounds} rounds)"


def paired(baseline: Sequence[float], candidate: Sequence[float]) -> Paired:
    """Round i's candidate rate over round i's baseline rate; a round whose baseline
    did nothing (rate 0) has no ratio and is left out."""
    if len(baseline) != len(candidate):
        raise ValueError(f"{len(baseline)} baseline rounds, {len(candidate)} candidate rounds")
    ratios = tuple(c / b for b, c in zip(baseline, candidate, strict=True) if b > 0)
    if not ratios:
        return Paired((), 0.0, 0.0, 0.0)
    return Paired(ratios, statistics.median(ratios), min(ratios), max(ratios))
