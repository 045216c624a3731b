"""The max-min water-filling of the ledger's capacity over its leases (`_Allocation`).

A mixin of `BudgetLedger`: it reads the ledger's state (declared below) and writes each
lease's allocation (`alloc`, `alloc_kind`) and the fair share. It keeps each lease's place
in the plan (`_profile`) and the plan's totals (`_Demand`) up to date, and recomputes the
allocation in closed form when only the CPUs can bind (`_fill`), else round by round
(`_simulate`), skipping the rounds nobody contends for.
"""

from __future__ import annotations

from supervisord_batt.budget.books import _Book, _Entry, _Plan
from supervisord_batt.budget.costs import MIN_POOL, Kind, Level, pool_cost
from supervisord_batt.budget.demand import _Demand, counted
from supervisord_batt.config.records import BudgetConfig
from supervisord_batt.host.sample import HostSample

# the pool kinds a request accepts, process first, by (accepts process, accepts threads)
_POOLS: dict[tuple[bool, bool], tuple[Kind, ...]] = {
    (True, True): ("process", "thread"),
    (True, False): ("process",),
    (False, True): ("thread",),
    (False, False): (),
}


class _Allocation:
    """The water-filling over the ledger's leases (see `_recompute`)."""

    # the ledger's state, set in `BudgetLedger.__init__`
    _config: BudgetConfig
    _sample: HostSample | None
    _level: Level
    _entries: dict[str, _Entry]
    _idle: _Book
    _demand: _Demand
    _allocated: dict[str, _Entry]
    _fair_share: int
    _stale: bool
    _exact: bool
    _fast: _Entry | None

    # -- the plan: who asks for a pool, of which kind, up to what --------------------------

    def _enter(self, e: _Entry) -> None:
        """Find what a lease asks for (again after a new config): its pool kinds, in the
        order it prefers them, and its cap (`_cap`); both depend on nothing else."""
        kinds = e.req.kinds
        e.pools = _POOLS["process" in kinds, "thread" in kinds]
        e.cap = self._cap(e)

    def _cap(self, e: _Entry) -> int:
        """The most workers this lease may ever hold."""
        if not e.pools:
            return 0
        cap = min(e.req.want, self._config.max_per_lease)
        return cap if cap >= MIN_POOL else 0

    def _kinds_for(self, e: _Entry, workers: int) -> list[Kind]:
        """Pool kinds the lease may hold at this size under the current level."""
        return self._pool_kinds(e, workers, e.alloc_kind if e.alloc >= MIN_POOL else None)

    def _pool_kinds(self, e: _Entry, workers: int, chosen: Kind | None) -> list[Kind]:
        """`_kinds_for`, with the kind the allocation chose (None: it chose none)."""
        if self._level == "extreme":
            return []
        live: list[Kind]
        if e.workers > 0 and e.kind != "sequential":  # a live pool keeps its kind
            live = [e.kind]
        elif chosen is not None:  # this allocation already chose a kind
            live = [chosen]
        else:
            live = list(e.pools)
        if self._level == "high":  # no new process pools, and none grows
            live = [k for k in live if k != "process" or workers <= e.workers]
        return live

    def _plan(self) -> list[_Plan]:
        """The leases that ask for a pool, live pools first, each with its first kind and
        its cap (see `_profile`)."""
        live: list[_Plan] = []
        rest: list[_Plan] = []
        for e in self._entries.values():
            if e.plan_kind is not None:
                (live if e.plan_live else rest).append((e, e.plan_kind, e.plan_cap))
        return live + rest

    def _profile(self, e: _Entry) -> None:
        """A lease's place in the plan: its first kind and its cap (at level high a process
        pool grows no further than it is), and what it adds to the books at that cap."""
        e.plan_live = e.workers >= MIN_POOL
        cap = e.cap
        # as the plan sees it: the allocation that is being recomputed chose no kind yet
        kinds = self._pool_kinds(e, MIN_POOL, None) if cap >= MIN_POOL else []
        if not kinds:
            e.plan_kind, e.plan_cap, e.full_tasks, e.full_mem = None, 0, 0, 0
            e.first_tasks, e.first_mem, e.plan_fallback, e.plan_lo = 0, 0, False, 0
            return
        kind = kinds[0]
        if self._level == "high" and kind == "process":
            cap = min(cap, e.workers)
        e.plan_kind, e.plan_cap = kind, cap
        # charge(kind, cap) and charge(kind, MIN_POOL) less charge("sequential", 0), inlined
        # (this runs for every lease on every sample)
        base, measured, sampled = e.req.base_tasks, e.measured, e.sampled_cost
        full, first = pool_cost(kind, cap), pool_cost(kind, MIN_POOL)
        if measured is None:
            e.full_tasks, e.first_tasks = full, first
        else:
            idle = max(measured, base)
            e.full_tasks = max(measured + max(0, full - sampled), base + full) - idle
            e.first_tasks = max(measured + max(0, first - sampled), base + first) - idle
        e.plan_fallback = len(kinds) > 1
        if kind == "process":  # as `unsampled`, and the size it grows to without memory
            # (conditionals, not max/min: a builtin call costs more than the compare here)
            sampled = e.sampled_process
            e.full_mem = cap - sampled if cap > sampled else 0
            e.first_mem = MIN_POOL - sampled if sampled < MIN_POOL else 0
            lo = sampled if sampled > MIN_POOL else MIN_POOL
            e.plan_lo = lo if lo < cap else cap
        else:
            e.full_mem = e.first_mem = 0
            e.plan_lo = cap

    def _relist(self, e: _Entry) -> None:
        """Recount a lease in the demand after its pool or kind changed."""
        was = (e.plan_kind, e.plan_cap, e.plan_live, e.plan_fallback)
        before = counted(e)
        self._profile(e)
        after = counted(e)
        if after != before:  # a grant of its first kind mostly changes no sum
            self._demand.count(e.scope, before, -1)
            self._demand.count(e.scope, after, 1)
        # the fallback to threads matters once more than the CPUs can bind (a first round
        # of `_simulate`, or `_first_round_share`)
        if (e.plan_kind, e.plan_cap, e.plan_live, e.plan_fallback) != was:
            self._exact = False

    def _relist_all(self) -> None:
        """Recount every lease (a new sample, level or config)."""
        n = len(self._idle.caps)
        self._demand = _Demand([0] * n, [0] * n, [0] * n)
        for e in self._entries.values():
            self._profile(e)
            self._demand.add(e, 1)

    def _cpu_only(self) -> bool:
        """Whether no lease can stop growing but for want of CPUs: every limit and the
        memory hold every planned lease at its cap at once (`fits_all` at the top, so by
        its argument every `fits` passes them; a first kind then never falls back)."""
        d, idle = self._demand, self._idle
        for i, n in enumerate(d.leases):
            if n and idle.usage[i] + d.tasks[i] > idle.caps[i]:
                return False
        return not d.process or idle.mem_used + d.mem <= idle.mem_slots

    # -- the water-filling -----------------------------------------------------------------

    def _recompute(self) -> None:
        """Max-min water-filling of current capacity over the holders that asked.

        Every lease starts sequential; round f raises each lease still growing to f
        workers if that fits every cap in its scope (the first round goes straight to
        MIN_POOL). A lease that does not fit stops. If any lease could not get its
        first pool, nobody goes beyond MIN_POOL: no second slot while one asker has none.
        Live pools are served first, so a newcomer that cannot fit takes no pool away.

        When only the CPU cap can bind (`_cpu_only`) the outcome is in closed form
        (`_Demand.level`). Otherwise the rounds are simulated exactly, except that a run of
        rounds in which every growing lease fits (`_Book.fits_all`) is taken in one step.
        """
        self._stale, self._exact, self._fast = False, True, None
        for e in self._allocated.values():
            e.alloc, e.alloc_kind = 0, "sequential"
        self._allocated = {}
        self._fair_share = 0
        if self._sample is None or self._level == "extreme":
            return
        # every lease counts one CPU even sequential, so with this many nobody gets a pool
        if self._idle.cpu_used - 1 + MIN_POOL > self._idle.cpus:
            return
        plan = self._plan()
        if not plan:
            return
        self._allocated = {e.lease_id: e for e, _, _ in plan}
        if self._cpu_only():
            self._fill(plan)
        else:
            self._simulate(plan)

    def _fill(self, plan: list[_Plan]) -> None:
        """The water-filling when only the CPU cap can bind, from `_Demand.level`."""
        level, bonus, winners = self._demand.level(self._idle.cpus - self._idle.cpu_used)
        for e, kind, cap in plan:
            size = min(cap, level)
            if winners and cap > level:  # served in plan order while the CPUs last
                size, winners = bonus, winners - 1
            if size:
                e.alloc, e.alloc_kind = size, kind
                self._fair_share = max(self._fair_share, size)

    def _simulate(self, plan: list[_Plan]) -> None:
        """The water-filling round by round, skipping the rounds nobody contends for."""
        book = self._idle.copy()
        top = max(cap for _, _, cap in plan)
        size = self._skip_rounds(book, plan, MIN_POOL - 1, top)
        if size < MIN_POOL:  # someone's first pool is contended: go lease by lease
            plan = self._first_round(book, plan)
            size = self._skip_rounds(book, plan, MIN_POOL, top)
        while plan := [p for p in plan if p[2] > size]:
            size += 1
            plan = self._round(book, plan, size)
            size = self._skip_rounds(book, plan, size, top)

    def _first_round(self, book: _Book, plan: list[_Plan]) -> list[_Plan]:
        """Round MIN_POOL, lease by lease; empty when anyone missed its first pool."""
        grown: list[_Plan] = []
        for e, _, cap in plan:
            for kind in self._kinds_for(e, MIN_POOL):
                if book.fits(e, kind, MIN_POOL, ("sequential", 0)):
                    self._take(book, e, kind, MIN_POOL)
                    grown.append((e, kind, cap))
                    break
        if grown:
            self._fair_share = MIN_POOL
        return grown if len(grown) == len(plan) else []

    def _skip_rounds(self, book: _Book, plan: list[_Plan], size: int, top: int) -> int:
        """Take at once the rounds after `size` in which every lease fits; the last size.

        fits_all is monotone in the size, so a binary search finds the last such round.
        """
        low, high = size, top  # fits up to low; not known above
        while low < high:
            mid = (low + high + 1) // 2
            if book.fits_all(plan, mid):
                low = mid
            else:
                high = mid - 1
        if low > size:
            for e, kind, cap in plan:
                if min(cap, low) > e.alloc:
                    self._take(book, e, kind, min(cap, low))
                    self._fair_share = max(self._fair_share, min(cap, low))
        return low

    def _round(self, book: _Book, plan: list[_Plan], size: int) -> list[_Plan]:
        """One round beyond MIN_POOL, lease by lease: the leases that grew to `size`."""
        grown = []
        for p in plan:
            e, kind, _ = p
            if book.fits(e, kind, size, (kind, size - 1)):
                self._take(book, e, kind, size)
                grown.append(p)
        if grown:
            self._fair_share = size
        return grown

    def _take(self, book: _Book, e: _Entry, kind: Kind, size: int) -> None:
        book.move(e, (e.alloc_kind, e.alloc), (kind, size))
        e.alloc, e.alloc_kind = size, kind
