"""What the daemon counts as it serves: requests and their latency, grants by kind, and
the fallbacks jobs report. Plain counters, bumped on the request path (a dictionary
increment and a bisect); the `stats` lines and the Prometheus metrics read them.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import Counter
from dataclasses import dataclass, field

# request latency buckets, seconds: a grant takes tens of microseconds, a status a few
# hundred; a control request that waits for a stop takes seconds
LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.1, 1.0, 10.0)


# Why a pool request got sequential, from the ledger's reason: the tuning that would
# change it differs (CPUs are not a key to turn down; a reserve or a threshold is). A
# pressure level that allows no pool is put down to the signal that set it: busy CPUs
# (sequential is then right), memory pressure, or a limit's headroom (`pressure`).
DENIAL_CAUSES = (
    "cpu",
    "fair_share",
    "limit",
    "memory",
    "pressure",
    "cpu_pressure",
    "memory_pressure",
    "other",
)
_CAUSE_PREFIXES = (
    ("cpu cap", "cpu"),  # the host's CPUs (or budget.cpu_cap) all charged to other leases
    ("fair share", "fair_share"),  # more holders than the CPUs and headroom give a pool each
    ("memory", "memory"),  # no memory free for another process worker of the job
    ("level", "pressure"),  # a pressure level that allows no pool kind
)
_SIGNALS = (("psi cpu", "cpu_pressure"), ("psi memory", "memory_pressure"))


def denial_cause(reason: str, signal: str = "") -> str:
    """The cause of a sequential grant, one of DENIAL_CAUSES, from `Grant.reason` and
    the signal that set its pressure level (`BudgetLedger.level_signal`)."""
    for prefix, cause in _CAUSE_PREFIXES:
        if reason.startswith(prefix):
            if cause == "pressure":
                return next((c for s, c in _SIGNALS if signal.startswith(s)), cause)
            return cause
    return "limit" if " headroom " in reason else "other"  # "<limit> headroom N tasks < ..."


@dataclass
class Tallies:
    requests: Counter[tuple[str, str]] = field(default_factory=Counter)  # (op, ok|error code)
    # requests per latency bucket (not cumulative), the last one past the largest bound
    latency: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS) + 1))
    latency_sum: float = 0.0
    grants: Counter[str] = field(default_factory=Counter)  # kind granted at acquire
    # acquires that asked for a pool (want >= 2) and got sequential, by `denial_cause`
    denied_by: Counter[str] = field(default_factory=Counter)
    fallbacks: Counter[tuple[str, str]] = field(default_factory=Counter)  # (from, to)

    def request(self, op: str, result: str, seconds: float) -> None:
        self.requests[(op, result)] += 1
        self.latency[bisect_left(LATENCY_BUCKETS, seconds)] += 1
        self.latency_sum += seconds

    def granted(self, kind: str, want: int, reason: str, signal: str = "") -> None:
        self.grants[kind] += 1
        if kind == "sequential" and want >= 2:
            self.denied_by[denial_cause(reason, signal)] += 1

    @property
    def denied(self) -> int:
        return sum(self.denied_by.values())

    def cumulative_latency(self) -> list[tuple[str, int]]:
        """Prometheus' buckets: (upper bound, requests at or below it), "+Inf" last."""
        out, total = [], 0
        for bound, count in zip((*map(str, LATENCY_BUCKETS), "+Inf"), self.latency, strict=True):
            total += count
            out.append((bound, total))
        return out
