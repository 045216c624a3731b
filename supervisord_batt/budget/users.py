"""The users (uids) holding leases, as the split across users sees them: `User`, one
user's leases for one allocation, and `UserSums`, the running sums the ledger keeps per
uid as leases come, go and resize (seats, weight, demand, CPUs held).

A lease holds a seat while it asked for at least one worker (`claims.seat_of`): its job's
own thread, one CPU while it runs sequential. Only users holding seats take part in the
split (`hierarchy.allocate_users`): a lease that asked for no worker asks for nothing,
and counts no CPU against anyone.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from fractions import Fraction

from supervisord_batt.budget.allocation import Planned
from supervisord_batt.budget.demand import Demand

# A user's weight, exact: its part of a resource is floor(R * weight / sum of weights),
# and a float's rounding must not decide who gets the last unit.
Weight = int | Fraction
# uid -> its weight (the daemon's, from budget.user_weights and budget.group_weights)
Weigh = Callable[[int], float]


def exact_weight(weight: float) -> Weight:
    """The weight as an exact number (as written: 0.1 is 1/10), an int when whole."""
    if not (0 < weight < math.inf):
        raise ValueError(f"a user's weight must be a positive number, got {weight!r}")
    if float(weight).is_integer():  # 1, the default: no Fraction to parse on each acquire
        return int(weight)
    exact = Fraction(repr(float(weight)))
    return exact.numerator if exact.denominator == 1 else exact


def even(_uid: int) -> float:
    """Every user the same weight (the default)."""
    return 1.0


@dataclass(slots=True)
class User:
    """One user's leases as the allocation sees them: its plan (the leases that ask for a
    pool, in the ledger's order), their demand, the CPUs its leases hold sequential, and
    the workers of the pools its planned leases run now (`hierarchy.keep_remainders`)."""

    uid: int
    weight: Weight
    planned: list[Planned] = field(default_factory=list)
    demand: Demand = field(default_factory=lambda: Demand.empty(0))
    seats: int = 0
    held: dict[str, int] = field(default_factory=dict)  # lease id -> workers; absent: none

    def cpu_demand(self) -> int:
        """CPUs it asks for: a seat per lease, and each planned lease's workers beyond it."""
        return cpu_demand(self.seats, self.demand)


@dataclass(slots=True)
class UserSums:
    """What the ledger keeps per uid holding seats, up to date as its leases come, go and
    resize: its weight, its seats, the CPUs its leases hold in the charged book, the
    sizes of the pools they run there, and (while several users hold seats) the demand
    of its planned leases, as `Demand` sums every user's."""

    weight: Weight
    demand: Demand
    seats: int = 0
    cpus: int = 0
    pools: dict[int, int] = field(default_factory=dict)  # workers -> its leases running so many

    def pool(self, workers: int, sign: int) -> None:
        """A lease of the user starts (sign 1) or ends (-1) running a pool of `workers`."""
        if workers:
            left = self.pools.get(workers, 0) + sign
            if left:
                self.pools[workers] = left
            else:
                del self.pools[workers]

    def user(self, uid: int, planned: list[Planned], held: dict[str, int] | None = None) -> User:
        return User(uid, self.weight, planned, self.demand, self.seats, held or {})

    def cpu_demand(self) -> int:
        return cpu_demand(self.seats, self.demand)


def cpu_demand(seats: int, demand: Demand) -> int:
    """CPUs a user asks for: a seat per lease, and each planned lease's workers beyond it."""
    return seats + sum(cap * n for cap, n in demand.caps.items()) - demand.n
