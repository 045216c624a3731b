"""The running demand totals of the water-filling's plan (`Demand`): what the planned
leases ask for, summed per limit, per cap and per (memory-free size, cap), kept up to
date by the ledger as leases come, go and resize, with the water level in closed form
when only the CPUs can run out (`Demand.level`, when `cpu_only`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from supervisord_batt.budget.books import Book
from supervisord_batt.budget.claims import MEASURED, Profile
from supervisord_batt.budget.costs import MIN_POOL

Groups = dict[tuple[int, int], int]  # (lo, cap) -> planned leases


@dataclass(slots=True)
class Demand:
    """What the leases of the water-filling's plan ask for, summed: each lease counts at
    its cap on top of the idle book. Kept up to date as leases come, go and resize, so that
    `cpu_only` can tell in O(limits) that no task limit nor the memory can stop a lease,
    and the caps' histogram gives the CPU water level in closed form."""

    tasks: list[int]  # per limit: sum of full_tasks over the planned leases in scope
    leases: list[int]  # per limit: planned leases in scope
    first_tasks: list[int]  # per limit: sum of first_tasks over the planned leases in scope
    caps: dict[int, int] = field(default_factory=dict)  # cap -> planned leases
    n: int = 0  # planned leases
    mem: int = 0  # sum of full_mem (bytes)
    first_mem: int = 0  # sum of first_mem (bytes)
    groups: Groups = field(default_factory=dict)  # (lo, cap) -> leases
    process: int = 0  # planned leases starting as process pools
    units: dict[int, int] = field(default_factory=dict)  # bytes per worker -> process pools

    @classmethod
    def empty(cls, limits: int) -> Demand:
        """No planned lease, over this many limits."""
        return cls([0] * limits, [0] * limits, [0] * limits)

    def count(self, scope: tuple[int, ...], p: Profile, sign: int) -> None:
        """Count a lease's profile in (sign 1) or out (sign -1) over the limits in `scope`
        (a lease that asks for no pool counts nothing)."""
        kind, cap, lo, full_tasks, first_tasks, full_mem, first_mem, unit, _, _ = p
        if kind is None:
            return
        self.n += sign
        left = self.caps.get(cap, 0) + sign
        if left:
            self.caps[cap] = left
        else:
            del self.caps[cap]
        tasks, leases, first = self.tasks, self.leases, self.first_tasks
        full, one = sign * full_tasks, sign * first_tasks
        for i in scope:
            tasks[i] += full
            leases[i] += sign
            first[i] += one
        self.mem += sign * full_mem
        self.first_mem += sign * first_mem
        key = (lo, cap)
        left = self.groups.get(key, 0) + sign
        if left:
            self.groups[key] = left
        else:
            del self.groups[key]
        if kind == "process":
            self.process += sign
            left = self.units.get(unit, 0) + sign
            if left:
                self.units[unit] = left
            else:
                del self.units[unit]

    def unit(self) -> int | None:
        """The bytes per worker every planned process pool shares (0 if there is none);
        None where they differ, or a planned pool's memory is measured (its workers give
        back what they grew to), and the rounds cannot be counted in workers alone."""
        units = self.units
        if len(units) > 1 or MEASURED in units:
            return None
        return next(iter(units)) if units else 0

    def fallen(self, moved: Groups) -> Groups:
        """`groups` with the leases of `moved` ((lo, cap) -> leases), which fell back to
        threads in the first round, counted at (cap, cap): threads need no memory slot."""
        groups = dict(self.groups)
        for (lo, cap), n in moved.items():
            groups[lo, cap] -= n  # a group left empty counts nothing
            groups[cap, cap] = groups.get((cap, cap), 0) + n
        return groups

    def used(self, size: int, groups: Groups | None = None) -> tuple[int, int]:
        """CPUs and process workers needing memory that the rounds after the first take,
        up to `size`, if every planned lease grows in its first kind (or as `groups` has
        it: `fallen`)."""
        cpu = mem = 0
        for (lo, cap), n in (self.groups if groups is None else groups).items():
            top = min(cap, size)
            cpu += n * (top - MIN_POOL)
            if top > lo:
                mem += n * (top - lo)
        return cpu, mem

    def growing(self, size: int, groups: Groups | None = None) -> tuple[int, int, int]:
        """Planned leases with a cap of at least `size`, those of them that need a memory
        slot to grow to it, and those that do not need one up to it (as `used`)."""
        grow = needy = free = 0
        for (lo, cap), n in (self.groups if groups is None else groups).items():
            if cap >= size:
                grow += n
                if lo < size:
                    needy += n
                else:
                    free += n
        return grow, needy, free

    def level(self, spare: int) -> tuple[int, int, int]:
        """The water-filling when only `spare` CPUs (beyond one per lease) can run out.

        Returns (level, bonus, winners): every planned lease gets min(its cap, level), and
        the first `winners` of those capped above it, in plan order, get `bonus` instead.
        A round of the water-filling costs each growing lease one CPU, so the rounds all
        fit up to the largest level whose sum of min(cap, level) stays within the spare
        CPUs; the next round then serves the leases in order while CPUs last. Without a
        first pool for everyone, the first `spare` leases get MIN_POOL (level 0).
        """
        if self.n > spare:
            return 0, MIN_POOL, max(0, spare)
        budget = spare + self.n  # the sum of min(cap, level) may reach this
        fixed, above = 0, self.n  # sum of the caps below the segment; leases above it
        cap = 0  # the largest cap, once the loop is through
        for cap, count in sorted(self.caps.items()):
            level = (budget - fixed) // above  # the level if no cap lay below it
            if level < cap:
                return level, level + 1, budget - fixed - level * above
            fixed += cap * count
            above -= count
        return cap, 0, 0


def cpu_only(demand: Demand, idle: Book) -> bool:
    """Whether no lease can stop growing but for want of CPUs: every limit and the memory
    hold every planned lease at its cap at once, on top of the idle book (then every
    round's check passes them, and a first kind never falls back)."""
    if not task_limits_hold(demand, idle):
        return False
    return not demand.process or idle.mem_used + demand.mem <= idle.mem_bytes


def first_pools_fit_tasks(demand: Demand, idle: Book) -> bool:
    """Whether every limit holds every planned lease's first pool at once (`cpu_only` at
    MIN_POOL for the task limits only): then no task limit binds in the first round."""
    for i, n in enumerate(demand.leases):
        if n and idle.usage[i] + demand.first_tasks[i] > idle.caps[i]:
            return False
    return True


def task_limits_hold(demand: Demand, idle: Book) -> bool:
    """Whether every limit holds every planned lease at its cap at once: no task limit
    binds at any size."""
    for i, n in enumerate(demand.leases):
        if n and idle.usage[i] + demand.tasks[i] > idle.caps[i]:
            return False
    return True
