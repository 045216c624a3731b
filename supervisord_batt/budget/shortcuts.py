"""The acquire shortcuts (`_AcquireShortcuts`): a newcomer's share without the others'.

A mixin of `BudgetLedger`, over `_Allocation`. acquire needs only the newcomer's share,
and the newcomer is last in plan order, so in three cases it is in closed form: when only
the CPU cap can bind (`_quick_share`, off the water level), when memory can bind too but
no task limit can (`_first_round_share` and `_later_share`, from the sums in `_Demand`),
and when the newcomer is alone in the plan (`_lone_share`). Each either sets the
newcomer's allocation and the fair share exactly as `_recompute` would, or answers
False (None) for no shortcut, and the ledger then recomputes in full.
"""

from __future__ import annotations

from supervisord_batt.budget.allocation import _Allocation
from supervisord_batt.budget.books import _Entry
from supervisord_batt.budget.costs import MIN_POOL, Kind
from supervisord_batt.budget.demand import Groups


class _AcquireShortcuts(_Allocation):
    """The newcomer's share in closed form, where it has one."""

    def _quick_share(self, e: _Entry) -> bool:
        """The newcomer's share and the fair share without the others' (False: no shortcut).

        The newcomer is last in plan order, so when only the CPU cap binds it never wins
        the contested round: its share is min(its cap, the water level).
        """
        if self._sample is None or self._level == "extreme":
            self._fair_share = 0
            return True
        spare = self._idle.cpus - self._idle.cpu_used
        if spare < 1 or not self._demand.n:
            self._fair_share = 0
            return True
        if not self._cpu_only():
            return self._first_round_share(e, spare)
        level, bonus, winners = self._demand.level(spare)
        self._fair_share = bonus if winners else level
        if e.plan_kind is not None and level:
            e.alloc = e.plan_cap if e.plan_cap < level else level
            e.alloc_kind = e.plan_kind
            self._allocated[e.lease_id] = e
        return True

    def _first_round_share(self, e: _Entry, spare: int) -> bool:
        """`_quick_share` when more than the CPUs can bind (False: no shortcut).

        Three cases are in closed form. The newcomer alone in the plan grows, round by
        round, as far as it fits (`_Book.fit`). Otherwise no task limit may bind in the
        first round (`first_tasks`, as `_cpu_only` at MIN_POOL); the others' first round is
        then a walk over memory alone (`_first_walk`, or none when their first pools fit
        the memory at once) until the CPUs run out, each taking one. The newcomer's
        sequential task and CPU are in the idle book it starts from, and it adds no memory
        there. If somebody misses a first pool, nobody goes beyond MIN_POOL, so the first
        round is all: the newcomer, last in plan order, gets MIN_POOL if a CPU and its
        memory are left after the others. If nobody does, the later rounds decide
        (`_later_share`), with the others that fell back to threads in the walk counted
        as threads (`_Demand.fallen`): with many holders, memory for only some of their
        first pools is the daemon's common case.
        """
        d, idle = self._demand, self._idle
        if e.plan_kind is not None and d.n == 1:
            return self._lone_share(e)
        for i, n in enumerate(d.leases):
            if n and idle.usage[i] + d.first_tasks[i] > idle.caps[i]:
                return False
        mem = idle.mem_slots - idle.mem_used
        others = d.first_mem - e.first_mem
        moved: Groups = {}  # the others that fell back to threads, by (plan_lo, plan_cap)
        if others <= mem:  # nobody runs out of memory
            passed, missed, mem = d.n - (e.plan_kind is not None), 0, mem - others
        else:
            passed, missed, mem = self._first_walk(e, mem, spare, moved)
        kind: Kind | None = None
        if e.plan_kind is not None and passed < spare:  # a CPU is left for the newcomer
            if e.first_mem == 0 or e.first_mem <= mem:
                kind = e.plan_kind
            elif e.plan_fallback:
                kind = "thread"
        if not missed and passed <= spare and (kind is not None or e.plan_kind is None):
            # everyone has a first pool: the later rounds decide
            if kind is None:
                return False
            # a fallback to threads took no memory slot, and needs none later (lo = cap)
            own = kind == e.plan_kind
            lo = e.plan_lo if own else e.plan_cap
            groups = d.fallen(moved) if moved else None
            share = self._later_share(e, spare - d.n, mem - e.first_mem if own else mem, lo, groups)
            if share is None:
                return False
            e.alloc, e.alloc_kind = share, kind
            self._allocated[e.lease_id] = e
            self._fair_share = share  # not read before the recompute `_fast` defers
            return True
        self._fair_share = MIN_POOL if kind is not None or min(passed, spare) > 0 else 0
        if kind is not None:
            e.alloc, e.alloc_kind = MIN_POOL, kind
            self._allocated[e.lease_id] = e
        return True

    def _later_share(
        self, e: _Entry, cpu: int, mem: int, lo: int, groups: Groups | None = None
    ) -> int | None:
        """The newcomer's share when every planned lease took a first pool, leaving `cpu`
        CPUs and `mem` memory slots (None: no shortcut). The others hold their first kind,
        or threads for those `groups` counts at (cap, cap) (`_Demand.fallen`; None: none
        fell back). `lo` is the last size the newcomer grows to without a memory slot: its
        `plan_lo`, or its cap if it fell back to threads (the sums count it at `plan_lo`
        regardless).

        With no task limit binding at any size, a round costs each growing lease a CPU and,
        a process pool past its sampled size, a memory slot. The rounds in which everyone
        fits follow from the sums over (lo, cap) (`_Demand.used`). In the next, the others
        go first: the newcomer grows if a CPU is left after them and, if it needs one, a
        memory slot. If it grows there, the others took the last memory slot, so from then
        on only leases that need none grow, and it grows while they leave it a CPU.
        A fallback to threads costs fewer tasks than its first kind, which `d.tasks`
        counts, so the check that no task limit binds holds for it too; and it grows as
        threads in the later rounds, needing no memory slot, as `groups` counts it.
        """
        d, idle = self._demand, self._idle
        for i, n in enumerate(d.leases):
            if n and idle.usage[i] + d.tasks[i] > idle.caps[i]:
                return None
        cap, counted = e.plan_cap, e.plan_lo  # counted: its lo as the sums have it
        low, high = MIN_POOL, cap  # everyone fits up to low; not known above
        while low < high:
            mid = (low + high + 1) // 2
            used_cpu, used_mem = d.used(mid, groups)
            used_mem -= max(0, mid - counted) - max(0, mid - lo)  # mid <= cap
            if used_cpu <= cpu and used_mem <= mem:
                low = mid
            else:
                high = mid - 1
        if low >= cap:
            return cap
        used_cpu, used_mem = d.used(low, groups)
        used_mem -= max(0, low - counted) - max(0, low - lo)
        cpu, mem = cpu - used_cpu, mem - used_mem
        size = low + 1
        grow, needy, _ = d.growing(size, groups)
        own = lo < size  # the newcomer needs a memory slot
        grow, needy = grow - 1, needy - (counted < size)  # the others
        passed = grow - needy + min(mem, needy)
        if passed >= cpu or (own and mem <= needy):
            return low  # the CPUs or memory ran out before its turn
        if own or needy <= mem:
            return None  # everyone fit after all: not the round the sums say
        cpu -= passed + 1
        while size < cap:  # no memory left: only leases that need none grow
            size += 1
            _, _, free = d.growing(size, groups)
            free -= counted >= size
            if free >= cpu or lo < size:
                return size - 1
            cpu -= free + 1
        return size

    def _first_walk(self, e: _Entry, mem: int, spare: int, moved: Groups) -> tuple[int, int, int]:
        """The first round of the planned leases but `e`, in plan order, with CPUs to
        spare and no task limit binding: (first pools, misses, memory slots left). Those
        that fell back to threads are counted in `moved` by (plan_lo, plan_cap).

        It stops once more than `spare` leases took a first pool: the CPUs ran out before
        the newcomer's turn, which is all `_first_round_share` reads then.
        """
        passed = missed = 0
        for live in (True, False):
            for o in self._entries.values():
                if o.plan_kind is None or o.plan_live is not live or o is e:
                    continue
                if o.first_mem == 0 or o.first_mem <= mem:
                    mem -= o.first_mem
                    passed += 1
                elif o.plan_fallback:  # threads need no memory
                    passed += 1
                    key = (o.plan_lo, o.plan_cap)
                    moved[key] = moved.get(key, 0) + 1
                else:
                    missed += 1
                    continue
                if passed > spare:
                    return passed, missed, mem
        return passed, missed, mem

    def _lone_share(self, e: _Entry) -> bool:
        """The newcomer alone in the plan: its first kind that fits a first pool, grown
        as far as every cap lets it (each round's check is `fit` of the same book)."""
        assert e.plan_kind is not None
        kinds: list[Kind] = [e.plan_kind, "thread"] if e.plan_fallback else [e.plan_kind]
        self._fair_share = 0
        for kind in kinds:
            fit, _ = self._idle.fit(e, kind, ("sequential", 0))
            if fit >= MIN_POOL:
                e.alloc, e.alloc_kind = min(e.plan_cap, fit), kind
                self._allocated[e.lease_id] = e
                self._fair_share = e.alloc
                break
        return True
