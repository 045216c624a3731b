"""The running demand totals of the water-filling's plan (`_Demand`): what the planned
leases ask for, summed per limit, per cap and per (memory-free size, cap), kept up to date
as leases come, go and resize, with the water level in closed form when only the CPUs can
run out."""

from __future__ import annotations

from dataclasses import dataclass, field

from supervisord_batt.budget.books import _Entry
from supervisord_batt.budget.costs import MIN_POOL, Kind

# what `_Demand` sums of a lease's profile: its first kind (None: not in the plan), cap,
# plan_lo, full_tasks, first_tasks, full_mem and first_mem (see `_Entry`)
Counted = tuple[Kind | None, int, int, int, int, int, int]
Groups = dict[tuple[int, int], int]  # (plan_lo, plan_cap) -> planned leases


def counted(e: _Entry) -> Counted:
    """A lease's profile as `_Demand` counts it: whether it is live or may fall back to
    threads changes no sum."""
    return (
        e.plan_kind,
        e.plan_cap,
        e.plan_lo,
        e.full_tasks,
        e.first_tasks,
        e.full_mem,
        e.first_mem,
    )


@dataclass
class _Demand:
    """What the leases of the water-filling's plan ask for, summed: each lease counts at
    its cap on top of the idle book. Kept up to date as leases come, go and resize, so that
    `_Allocation._cpu_only` can tell in O(limits) that no task limit nor the memory can
    stop a lease, and the caps' histogram gives the CPU water level in closed form."""

    tasks: list[int]  # per limit: sum of full_tasks over the planned leases in scope
    leases: list[int]  # per limit: planned leases in scope
    first_tasks: list[int]  # per limit: sum of first_tasks over the planned leases in scope
    caps: dict[int, int] = field(default_factory=dict)  # plan_cap -> planned leases
    n: int = 0  # planned leases
    mem: int = 0  # sum of full_mem
    first_mem: int = 0  # sum of first_mem
    groups: Groups = field(default_factory=dict)  # (lo, cap) -> leases
    process: int = 0  # planned leases starting as process pools

    def add(self, e: _Entry, sign: int) -> None:
        """Count a lease in (sign 1) or out (sign -1) at its current profile."""
        self.count(e.scope, counted(e), sign)

    def count(self, scope: tuple[int, ...], c: Counted, sign: int) -> None:
        """Count a profile (`counted`) in or out over the limits in `scope`."""
        kind, cap, lo, full_tasks, first_tasks, full_mem, first_mem = c
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

    def fallen(self, moved: Groups) -> Groups:
        """`groups` with the leases of `moved` ((lo, cap) -> leases), which fell back to
        threads in the first round, counted at (cap, cap): threads need no memory slot."""
        groups = dict(self.groups)
        for (lo, cap), n in moved.items():
            groups[lo, cap] -= n  # a group left empty counts nothing
            groups[cap, cap] = groups.get((cap, cap), 0) + n
        return groups

    def used(self, size: int, groups: Groups | None = None) -> tuple[int, int]:
        """CPUs and memory slots the rounds after the first take, up to `size`, if every
        planned lease grows in its first kind (or as `groups` has it: `fallen`)."""
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
