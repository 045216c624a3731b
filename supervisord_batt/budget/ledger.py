"""The concurrency budget: a pure ledger of leases over the host's task limits.

`BudgetLedger` answers "how many workers may this job run now?" at once, never blocking,
with a process pool of n, a thread pool of n or sequential, and tracks the answer as a
lease until it is released, expires or its holder disconnects. It does no I/O: the daemon
feeds it `HostSample`s and the measured task count of every holder's process tree, and a
clock is injected, so every rule here is tested without sleeping.
"""

# Why leases are charged at their granted size. A job creates its pool after the grant
# and the next host sample sees it only seconds later; two jobs granted between two
# samples would otherwise both see the same free tasks and together overrun the limit
# (the incident: loky's own threads then fail with "can't start new thread" and the job
# hangs). So a grant is charged in full the moment it is made, and the sample's count is
# corrected per holder instead: the holder's measured tree is taken out of the limit's
# in_use and its charge, max(measured tree, base tasks + pool cost), put back. A pool
# that exists is then counted once, and a pool that is granted but not yet created is
# counted too. A shrink frees nothing until the client acknowledges it (its workers may
# still be alive), and what a released job still runs is freed by the next sample.

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from types import MappingProxyType

from supervisord_batt.budget.books import _Book, _Entry
from supervisord_batt.budget.costs import (
    KINDS,
    LEVELS,
    LOKY_RESOURCE_TRACKERS,
    MIN_POOL,
    PROCESS_POOL_OVERHEAD,
    PROCESS_POOL_THREADS,
    PROCESS_WORKER_TASKS,
    THREAD_WORKER_TASKS,
    UNBOUNDED,
    Kind,
    Level,
    pool_cost,
    reserve_for,
    workers_for,
)
from supervisord_batt.budget.demand import _Demand
from supervisord_batt.budget.pressure import pressure_level
from supervisord_batt.budget.records import (
    Grant,
    Lease,
    LeaseError,
    LedgerStats,
    Request,
    UpdateResult,
    validate_request,
)
from supervisord_batt.budget.sizing import _Sizing
from supervisord_batt.config.records import BudgetConfig
from supervisord_batt.host.sample import HostSample

_MAX_SCOPES = 4096  # cached (cgroups, uid) scopes; each job in its own cgroup adds one


class BudgetLedger(_Sizing):
    """Leases of concurrency over the host's task limits, CPUs and memory.

    Cost model (the daemon calls this on every request, on its one thread): the usage
    every call reads is kept up to date incrementally in two `_Book`s, each lease knows
    the limits in its scope as indices (found once per shape of the sample's limits), and
    the max-min allocation is recomputed lazily: an operation that changes its inputs
    marks it stale, and the next call that reads targets recomputes it once, with the
    state as it was right after that operation (see `_fresh`). So a call costs O(its
    lease's limits) plus, at most once per change, one water-filling, which itself skips
    the rounds nobody contends for, and is O(leases) in closed form when only the CPU
    cap can bind (`_Demand.level`).

    acquire needs only the newcomer's share. When only the CPU cap can bind, it is read
    off the water level in O(limits + distinct caps) (`_quick_share`), and the others'
    shares follow at the next call that reads them; releasing that lease next undoes the
    acquire, allocation included (`_undo_acquire`). So a pair costs no water-filling.
    When memory can bind too, but no task limit can, the newcomer's share is in closed
    form as well (`_first_round_share`): it is last in plan order, so it needs only what
    the others leave it, summed over their (memory-free size, cap) (`_Demand.used`), the
    others whose first pool fell back to threads counted as threads (`_Demand.fallen`).
    Otherwise acquire simulates.
    """

    def __init__(
        self,
        config: BudgetConfig,
        clock: Callable[[], float],
        sample: HostSample | None = None,
    ) -> None:
        self._config = config
        self._clock = clock
        self._sample: HostSample | None = None
        self._entries: dict[str, _Entry] = {}  # in seq order: leases are only appended
        self._counter = 0
        self._level: Level = "normal"
        self._fair_share = 0
        self._stale = False  # the allocation predates the last change of its inputs
        # the allocation is what a recompute now would give (a resize that moves a lease
        # in the plan breaks this, as the allocation follows only at the next change)
        self._exact = True
        # the last change was acquiring this lease by `_quick_share`: only its own share
        # and the fair share are known, and `_undo` is (fresh before it, fair share before)
        self._fast: _Entry | None = None
        self._undo = (False, 0)
        # the leases the allocation gave a share (a recompute resets them), by lease id;
        # an ended lease leaves at once: until the next recompute, which only a reader
        # causes, thousands of short leases would otherwise pile up here
        self._allocated: dict[str, _Entry] = {}
        self._shape: tuple[tuple[str, str | int | None], ...] = ()
        self._scopes: dict[tuple[tuple[str, ...], int], tuple[int, ...]] = {}
        self._charged = self._idle = _Book((), (), [], 0, 0)
        self._demand = _Demand([], [], [])
        if sample is not None:
            self.update(sample, {})

    @property
    def level(self) -> Level:
        return self._level

    # -- leases ---------------------------------------------------------------------------

    def acquire(self, req: Request) -> Grant:
        """Grant at once what fits now: process, else thread, else sequential."""
        validate_request(req)
        # no _fresh(): the allocation is recomputed below, and a pending one is unseen
        undo = (self._exact and not self._stale and self._fast is None, self._fair_share)
        self._counter += 1
        now = self._clock()
        e = _Entry(f"L{self._counter}", req, self._counter, now, renewed_at=now, last_progress=now)
        e.scope = self._scope_of(req)
        self._enter(e)
        self._entries[e.lease_id] = e
        self._idle.move(e, None, ("sequential", 0))
        self._profile(e)
        self._demand.add(e, 1)
        quick = self._quick_share(e)
        if not quick:
            self._recompute()
        # The allocation never reads the charged book, so the newcomer enters it only at
        # its grant: what fits a lease not in the book (held None) is what fits it held
        # sequential, its sequential charge and CPU being what it would give back.
        kind, workers, reason = self._best_now(e, None)
        self._charged.move(e, None, (kind, workers))
        if workers:
            e.kind, e.workers = kind, workers
            if kind == e.plan_kind and self._level == "normal":
                # `_relist`, when the pool is of its first kind: it is now live and keeps
                # that kind, nothing else of its profile changes, and no sum of the demand
                e.plan_live, e.plan_fallback, self._exact = True, False, False
            else:
                self._relist(e)
        if workers and kind != e.alloc_kind:  # fell back to threads: they cost less
            self._changed()  # the recompute the ledger did here, now due at the next read
        elif quick:
            self._fast, self._undo = e, undo
        return self._grant(e, reason)

    def renew(self, lease_id: str, workers_in_use: int | None = None) -> Grant:
        """Extend the lease; acknowledge a shrink; grow toward the fair share if it fits."""
        self._fresh()
        e = self._get(lease_id)
        e.renewed_at = self._clock()
        if workers_in_use is not None:
            if not 0 <= workers_in_use <= e.workers:
                raise LeaseError(
                    "invalid_workers",
                    f"{lease_id}: {workers_in_use} workers in use, {e.workers} granted",
                )
            if workers_in_use < e.workers:
                workers = max(workers_in_use, e.target())
                self._resize(e, e.kind if workers else "sequential", workers)
        return self._grant(e, self._grow(e))

    def heartbeat(self, lease_id: str) -> float:
        """Record that the holder made progress (for the no-progress timeout); the time."""
        e = self._get(lease_id)  # no _fresh(): nothing here reads or moves the allocation
        e.last_progress = self._clock()
        return e.last_progress

    def release(self, lease_id: str) -> Lease:
        """Give the lease back; releasing a lease the ledger does not hold is an error.

        The snapshot is of the lease as it ends: its kind and workers are what it gave
        back, its target and share 0.
        """
        if self._fast is not None and self._fast.lease_id == lease_id:
            return self._undo_acquire(self._fast)
        e = self._get(lease_id)
        self._remove(e)
        return e.snapshot(ended=True)

    def release_holder(self, holder: str) -> list[Lease]:
        """Release every lease of one holder (its connection closed)."""
        return self._drop(e for e in self._entries.values() if e.req.holder == holder)

    def expire(self) -> list[Lease]:
        """Release the leases not renewed within the TTL."""
        deadline = self._clock() - self._config.lease_ttl
        return self._drop(e for e in self._entries.values() if e.renewed_at < deadline)

    def lease(self, lease_id: str) -> Lease:
        self._fresh()
        return self._get(lease_id).snapshot()

    def holder_of(self, lease_id: str) -> str:
        """Who holds the lease (cheap: the request path checks ownership on every call)."""
        return self._get(lease_id).req.holder

    # -- host -----------------------------------------------------------------------------

    def update(self, sample: HostSample, trees: Mapping[str, int]) -> UpdateResult:
        """Take a new sample and holder tree sizes; recompute level and targets."""
        # no _fresh(): the allocation is recomputed before anyone reads it again
        self._sample = sample
        for e in self._entries.values():
            e.measured = trees.get(e.lease_id)
            e.sampled_cost = pool_cost(e.kind, e.workers)
            e.sampled_process = e.workers if e.kind == "process" else 0
        self._rebook()
        previous = self._level
        self._level, reason = self._compute_level()
        self._relist_all()
        self._changed()
        return UpdateResult(self._level, self._level != previous, previous, reason)

    def reconfigure(self, config: BudgetConfig) -> None:
        """Take a reloaded budget config; targets follow at once, leases are kept."""
        self._config = config
        for e in self._entries.values():
            self._enter(e)
        if self._sample is not None:
            self._rebook()
            self._level, _ = self._compute_level()
            self._relist_all()
            self._changed()

    def statistics(self) -> LedgerStats:
        self._fresh()
        entries = list(self._entries.values())  # already in seq order
        free: dict[str, int] = {}
        if self._sample is not None:
            book = self._charged
            for i, lim in enumerate(self._sample.limits):
                free[lim.name] = book.caps[i] - book.usage[i]
        return LedgerStats(
            capacity=self._capacity(),
            leased=sum(e.workers for e in entries),
            leased_tasks=sum(pool_cost(e.kind, e.workers) for e in entries),
            level=self._level,
            fair_share=self._fair_share,
            free_tasks=MappingProxyType(free),
            leases=tuple(e.snapshot() for e in entries),
        )

    # -- internals: bookkeeping -----------------------------------------------------------

    def _fresh(self) -> None:
        """Bring the allocation up to date before a call reads or changes targets.

        The ledger used to recompute inside every operation that changed the allocation's
        inputs (acquire, release, update, reconfigure). It now only marks it stale there,
        and every public call runs this first, so the recompute sees exactly the state the
        eager one saw; acquire alone skips it, as it recomputes before anyone reads.

        After a quick acquire (`_quick_share`) the eager recompute saw the newcomer still
        sequential, before its grant (which moves it among the live pools): so it is
        recomputed with the newcomer put back to sequential for the while.
        """
        e = self._fast
        if e is not None:
            kind, workers = e.kind, e.workers
            e.kind, e.workers = "sequential", 0  # its books are untouched: only the plan
            self._relist(e)
            self._recompute()
            e.kind, e.workers = kind, workers
            self._relist(e)
        elif self._stale:
            self._recompute()

    # Why ending a lease recomputes nothing. A recompute reads only the leases as they are
    # (their pools, plans and the books), never the allocation before it, and only a resize
    # (a grant, a shrink acknowledged) changes those without a recompute of its own. So
    # removing leases while the allocation is stale, or while a quick acquire's is pending,
    # and recomputing at the next read gives what recomputing before the removal, and again
    # after it, would give: the removal is a change, and only the allocation after it is
    # ever read. With many holders a recompute costs a water-filling over all of them, and
    # the daemon releases on every job's exit; so the only recompute is the one a reader
    # needs.

    def _changed(self) -> None:
        """An input of the allocation changed: recompute it before the next read."""
        self._stale, self._fast = True, None

    def _undo_acquire(self, e: _Entry) -> Lease:
        """Release the lease `_quick_share` just granted, with nothing in between.

        Its share is the one the eager recompute gave it, and taking it out leaves the
        books, the plan and so the inputs of the allocation as they were before acquire:
        if the allocation was up to date then, it is again, fair share and all.
        """
        fresh, fair = self._undo
        self._remove(e)
        self._fast = None
        if fresh:
            self._stale, self._exact, self._fair_share = False, True, fair
        return e.snapshot(ended=True)

    def _get(self, lease_id: str) -> _Entry:
        try:
            return self._entries[lease_id]
        except KeyError:
            raise LeaseError("unknown_lease", f"no lease {lease_id!r} is held") from None

    def _drop(self, doomed: Iterable[_Entry]) -> list[Lease]:
        gone = sorted(doomed, key=lambda e: e.seq)
        if not gone:  # nothing changes, nothing is read
            return []
        if len(gone) == 1 and gone[0] is self._fast:
            return [self._undo_acquire(gone[0])]
        for e in gone:  # no _fresh(): see `_changed`
            self._remove(e)
        return [e.snapshot(ended=True) for e in gone]

    def _remove(self, e: _Entry) -> None:
        del self._entries[e.lease_id]
        self._allocated.pop(e.lease_id, None)
        self._charged.move(e, (e.kind, e.workers), None)
        self._idle.move(e, ("sequential", 0), None)
        self._demand.add(e, -1)
        self._changed()

    def _scope_of(self, req: Request, everywhere: bool = False) -> tuple[int, ...]:
        """Indices of the sample's limits a request is in, cached per cgroups and uid."""
        if self._sample is None:
            return ()
        key = (req.cgroups, req.uid)
        scope = self._scopes.get(key)
        if scope is None:
            probe = _Entry("", req, 0, 0.0, everywhere=everywhere)
            scope = tuple(i for i, lim in enumerate(self._sample.limits) if probe.in_scope(lim))
            if not everywhere:
                if len(self._scopes) >= _MAX_SCOPES:  # jobs in transient cgroups: bounded
                    self._scopes.clear()
                self._scopes[key] = scope
        return scope

    def _rebook(self) -> None:
        """Rebuild both books from every lease (a new sample or config)."""
        assert self._sample is not None
        sample, cfg = self._sample, self._config
        shape = tuple((lim.kind, lim.scope) for lim in sample.limits)
        if shape != self._shape:  # scopes are indices into the limits: find them again
            self._shape, self._scopes = shape, {}
            for e in self._entries.values():
                e.scope = self._scope_of(e.req)
        cpus = cfg.cpu_cap if cfg.cpu_cap is not None else sample.cpus
        slots = (
            sample.mem_available_bytes // cfg.memory_per_slot
            if cfg.memory_per_slot > 0
            else UNBOUNDED
        )
        caps = tuple(lim.limit - reserve_for(lim, cfg) for lim in sample.limits)
        usage = [lim.in_use for lim in sample.limits]
        self._charged = _Book(sample.limits, caps, usage, math.floor(cpus), slots)
        self._idle = self._charged.copy()
        for e in self._entries.values():
            self._charged.move(e, None, (e.kind, e.workers))
            self._idle.move(e, None, ("sequential", 0))

    def _grant(self, e: _Entry, reason: str) -> Grant:
        return Grant(
            e.lease_id, e.kind, e.workers, e.target(), self._level, self._config.lease_ttl, reason
        )

    def _compute_level(self) -> tuple[Level, str]:
        """The pressure level from the tightest limit and PSI."""
        assert self._sample is not None
        return pressure_level(self._sample, self._config, self._charged)


__all__ = [
    "KINDS",
    "LEVELS",
    "LOKY_RESOURCE_TRACKERS",
    "MIN_POOL",
    "PROCESS_POOL_OVERHEAD",
    "PROCESS_POOL_THREADS",
    "PROCESS_WORKER_TASKS",
    "THREAD_WORKER_TASKS",
    "BudgetLedger",
    "Grant",
    "Kind",
    "Lease",
    "LeaseError",
    "LedgerStats",
    "Level",
    "Request",
    "UpdateResult",
    "pool_cost",
    "reserve_for",
    "workers_for",
]
