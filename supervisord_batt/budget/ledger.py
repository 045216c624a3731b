"""The concurrency budget: a pure ledger of leases over the host's task limits.

`BudgetLedger` answers "how many workers may this job run now?" at once, never blocking,
with a process pool of n, a thread pool of n or sequential, and tracks the answer as a
lease until it is released, expires or its holder disconnects. It does no I/O: the daemon
feeds it `HostSample`s and the measured task count of every holder's process tree, and a
clock is injected, so every rule here is tested without sleeping.

# Why one module
`BudgetLedger` keeps its lease table, its two books and its pending allocation equal to
a recount after every call (the property tests check it), and each public method changes
them together. The pure pieces it calls are apart: `allocation`, `books`, `claims`,
`demand`, `shortcuts`, `hierarchy`, `topup`, `hold`, `lone`, `users`, `pressure`.
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

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from types import MappingProxyType
from typing import NamedTuple

from supervisord_batt.budget.allocation import (
    EMPTY,
    NO_SHARE,
    Allocation,
    Planned,
    Share,
    allocate,
    share,
)
from supervisord_batt.budget.books import Book, CpuShare, Size, lease_cpus
from supervisord_batt.budget.claims import (
    Footprint,
    Profile,
    Scopes,
    cap_of,
    pending,
    pool_kinds,
    pools_of,
    profile,
    sampled,
    seat_of,
)
from supervisord_batt.budget.costs import (
    MIN_POOL,
    PROCESS_POOL_OVERHEAD,
    PROCESS_WORKER_TASKS,
    per_worker,
)
from supervisord_batt.budget.demand import Demand
from supervisord_batt.budget.hierarchy import allocate_users, over_parts
from supervisord_batt.budget.hold import GROW_AFTER, GrowHold, first_size
from supervisord_batt.budget.lone import LoneAskers
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
from supervisord_batt.budget.shortcuts import QuickShare, newcomer_share, newcomer_user_share
from supervisord_batt.budget.users import (
    User,
    UserSums,
    Weigh,
    even,
    exact_weight,
)
from supervisord_batt.config.records import BudgetConfig
from supervisord_batt.host.sample import HostSample
from supervisord_batt.protocol import Kind, Level

_SEQUENTIAL: Size = ("sequential", 0)
# A burst-held lease is held at most this many burst windows after its ask (`__init__`)
BURST_HOLD_MAX = 2
# Seconds: a reply's precision for `retry_after`. A window with less than this left has
# ended, for the renew of a held lease and for a newcomer alike (`_first_grant`).
BURST_PRECISION = 0.001
_CONSTANT_TASKS = (PROCESS_WORKER_TASKS, PROCESS_POOL_OVERHEAD)
_UNSPLIT = Demand.empty(0)  # a user's demand while it is not counted: never written
_ASKS_NOTHING = QuickShare(NO_SHARE, 0)


@dataclass(slots=True, eq=False)
class _Held:
    """One lease as the ledger holds it: the parts of its state, by lifetime."""

    # for its whole life: who asked, for what, and when
    lease_id: str
    request: Request
    created_at: float
    pools: tuple[Kind, ...]  # the pool kinds it accepts, in order (`claims.pools_of`)
    cap: int  # the most workers it may hold under the config (`claims.cap_of`)
    # per host sample: what the books charge it (`claims.Footprint`)
    footprint: Footprint
    # per change of pool, sample, level or config: its place in the plan
    profile: Profile
    # per renew and per heartbeat
    renewed_at: float
    last_progress: float
    # its pool, changed by a grant or a resize
    kind: Kind = "sequential"
    workers: int = 0
    burst_held: bool = False  # held sequential for a burst, until it has quieted down

    def planned(self) -> tuple[str, Footprint, Profile]:
        return self.lease_id, self.footprint, self.profile


class _Pending(NamedTuple):
    """A quick acquire (its share by `newcomer_share`) whose allocation of the others is
    not computed yet, with the allocation to go back to if it is released at once (None:
    the allocation before it was stale, or no longer what a recompute would give)."""

    held: _Held
    before: Allocation | None


class BudgetLedger:
    """Leases of concurrency over the host's task limits, CPUs and memory.

    Cost model (the daemon calls this on every request, on its one thread): the usage
    every call reads is kept up to date incrementally in two `Book`s (every lease at its
    granted pool, and every lease sequential) and the `Demand` sums of the plan, each
    lease knows the limits in its scope as indices (found once per shape of the sample's
    limits), and the max-min allocation (`allocate`) is computed lazily: an operation
    that changes its inputs drops it (None: stale), and the next call that reads targets
    computes it once, with the state as it was right after that operation (`_fresh`).

    acquire needs only the newcomer's share, and where it is in closed form
    (`newcomer_share`: the CPUs alone bind, or the CPUs and memory, or the newcomer is
    alone in the plan) the others' shares follow at the next call that reads them;
    releasing that lease next undoes the acquire, allocation included. So a pair mostly
    costs no water-filling. The shortcut knows one level: while several users hold
    leases that ask for workers, acquire computes the allocation across users in full
    (`hierarchy.allocate_users`), its cost growing with the leases held.
    """

    def __init__(
        self,
        config: BudgetConfig,
        clock: Callable[[], float],
        sample: HostSample | None = None,
        weigh: Weigh = even,
    ) -> None:
        self._config = config
        # Why a newcomer may be granted sequential at first (`burst_window` of the
        # config; 0: never).
        # Jobs started together (a scheduler's array, a shell loop) ask within a fraction
        # of a second of each other, and the first to ask get the pools the later ones
        # need: they start workers that the next rebalance drains again (the simulation's
        # 64 jobs on 64 cores reach 0.93 of sequential so). So a newcomer that would get
        # a pool and asks within `burst_window` of the last one, or into an empty ledger
        # (it may be the first of a burst), is held: granted sequential with a "burst:"
        # reason and `retry_after`, the seconds until no newcomer will have asked for
        # `burst_window`. Its renews are held the same way until then, or until it has
        # been held `BURST_HOLD_MAX` windows (a steady stream of newcomers must not hold
        # it forever); then it grows to its share, which counts the whole burst. The
        # client waits before it starts its pool (client.leases), so a lone job pays one
        # window of waiting, once: a process seen asking alone is not held into an
        # empty ledger again until it comes in a burst (`lone`). A held lease whose share
        # has fallen under a pool (the burst that asked since has taken the CPUs) is
        # let go at its next renew: newcomers only shrink its share, so the end of the
        # window would grant it sequential too, and the wait would be lost time (the
        # first of four jobs on 2 cores waited a window for nothing). Where jobs end as
        # others start, its share may rise again later, and a job let go grows to it in
        # steps (docs/SIMULATION.md has what that costs). The client renews a held
        # grant every `client.leases.BURST_POLL` to hear it.
        self._clock = clock
        self._weigh = weigh  # uid -> its weight in the split across users
        self._sample: HostSample | None = None
        self._level: Level = "normal"
        # Where users over their CPU part explain the CPU pressure (`_set_level`): those
        # users, and the level every other user's leases are planned and granted at.
        self._over: frozenset[int] = frozenset()
        self._calm: Level = "normal"
        # the signal that set each level (`level_signal`): a refusal at a level is
        # tuned by its cause (busy CPUs, memory pressure, a limit's headroom)
        self._why = ""
        self._calm_why = ""
        self._leases: dict[str, _Held] = {}  # in the order acquired: only ever appended
        # uid -> its sums, for each uid holding a seat (a lease that asked for a worker):
        # with more than one, the budget is split per user first (`allocate_users`)
        self._users: dict[int, UserSums] = {}
        self._split = False  # whether each UserSums.demand is kept (see `_seated`)
        self._counter = 0
        self._last_acquire = float("-inf")  # when the last newcomer asked (`burst_window`)
        self._lone = LoneAskers()  # processes seen asking alone: not held as the first
        self._shape: tuple[tuple[str, str | int | None], ...] = ()
        self._scopes = Scopes()
        self._charged = Book((), (), [], 0, 0)  # every lease at its granted pool
        self._idle = Book((), (), [], 0, 0)  # every lease sequential
        self._demand = Demand.empty(0)
        # The allocation; None: stale, computed again by the next call that reads it.
        self._alloc: Allocation | None = EMPTY
        # Whether `_alloc` is what a recompute now would give: a resize that moves a lease
        # in the plan breaks this, as the allocation follows only at the next change.
        self._exact = True
        self._last = EMPTY  # the last allocation computed (`held_by` reads it)
        self._pending: _Pending | None = None
        # (job, uid) -> bytes per process worker, as the daemon learned them from its
        # scans (`learn`), and the runs each was learned from; a job not in it is charged
        # the size its request declared, else `memory_per_slot` (`costs.per_worker`)
        self._worker_bytes: dict[tuple[str, int], int] = {}
        self._learned_runs: Mapping[tuple[str, int], int] = {}
        # where several users hold leases, a raised share waits before a lease grows
        self._hold = GrowHold()
        # (job, uid) -> (tasks per process worker, tasks a pool adds beyond its workers),
        # learned alike (`learn`); a job not in it is charged the constants of `costs`
        self._pool_tasks: dict[tuple[str, int], tuple[int, int]] = {}
        if sample is not None:
            self.update(sample, {})

    @property
    def level(self) -> Level:
        return self._level

    def level_signal(self, uid: int) -> str:
        """The signal that set the level `uid`'s leases are granted at ("psi cpu some
        avg10 97", "pid_max free 3.0%"): what a refusal at that level is put down to."""
        return self._calm_why if self._over and uid not in self._over else self._why

    # -- leases ---------------------------------------------------------------------------

    def acquire(self, req: Request, *, restoring: bool = False) -> Grant:
        """Grant at once what fits now: process, else thread, else sequential.
        `restoring`: the lease of a job that already ran under the daemon before this one
        (a reexec, a restart): never held for a burst, as it is no newcomer."""
        validate_request(req)
        # no _fresh(): the newcomer's share is computed below, and a pending one is unseen
        before = self._alloc if self._exact and self._pending is None else None
        self._counter += 1
        now = self._clock()
        seat, unit = seat_of(req), self._unit(req)
        fp = Footprint(
            self._scopes.of(req),
            req.base_tasks,
            None,
            0,
            0,
            seat,
            unit,
            None,
            *self._pool_tasks.get((req.job, req.uid), _CONSTANT_TASKS),
            seat * unit if self._config.memory_unwritten else 0,  # it may run its tasks
        )
        pools, cap = pools_of(req), cap_of(req, self._config)
        level = self._level_of(req.uid) if self._over else self._level  # no call: hot path
        e = _Held(
            f"L{self._counter}",
            req,
            now,
            pools,
            cap,
            fp,
            profile(fp, pools, cap, level, "sequential", 0),
            now,
            now,
        )
        self._leases[e.lease_id] = e
        self._idle.move(fp, None, _SEQUENTIAL)
        self._demand.count(fp.scope, e.profile, 1)
        if fp.seat:
            self._seated(e, 1)
        quick, cpu = None, None
        if len(self._users) < 2:
            others = (o.profile for o in self._leases.values() if o is not e)
            quick = newcomer_share(e.profile, fp, others, self._idle, self._demand)
        elif not fp.seat:  # it asks for no worker: no share, and it holds no CPU
            quick = _ASKS_NOTHING
        else:
            quick, cpu = self._quick_user_share(e)
        if quick is None:
            alloc = self._allocate()
            mine, fair = alloc.share(e.lease_id), alloc.fair_share
            cpu = self._cpu_share(e, alloc, charged=False)
        else:
            mine, fair = quick.share, quick.fair_share
        # The allocation never reads the charged book, so the newcomer enters it only at
        # its grant: what fits a lease not in the book (held None) is what fits it held
        # sequential, its sequential charge and CPU being what it would give back.
        start = mine
        if cpu is not None and not restoring:  # several users: its user's pools (`hold`)
            start = first_size(mine, self._largest_pool(e))
        kind, workers, reason = self._first_grant(e, start, fair, cpu, restoring)
        if cpu is not None:  # several users: short of its start, it is owed it (`hold`)
            self._hold.granted(e.lease_id, start.workers, workers)
        self._charge(e, None, (kind, workers))
        if workers:
            e.kind, e.workers = kind, workers
            self._replan(e)
        if workers and kind != mine.kind:  # fell back to threads: they cost less
            self._changed()  # the allocation computed here is due again at the next read
        elif quick is not None:
            self._alloc, self._pending = None, _Pending(e, before)
        return self._grant(e, mine, reason, self._burst_wait(e) if e.burst_held else 0.0)

    def renew(self, lease_id: str, workers_in_use: int | None = None) -> Grant:
        """Extend the lease; acknowledge a shrink; grow toward the fair share if it fits."""
        alloc = self._fresh()
        e = self._get(lease_id)
        mine = alloc.share(lease_id)
        e.renewed_at = self._clock()
        if e.burst_held:  # held until the burst has asked, unless it cannot get a pool
            wait = self._burst_wait(e)
            if wait > 0 and mine.workers >= MIN_POOL:  # else the burst left it no pool
                return self._grant(e, mine, self._burst_reason(e), wait)
            e.burst_held = False
        if workers_in_use is not None:
            if not 0 <= workers_in_use <= e.workers:
                raise LeaseError(
                    "invalid_workers",
                    f"{lease_id}: {workers_in_use} workers in use, {e.workers} granted",
                )
            if workers_in_use < e.workers:
                workers = max(workers_in_use, _target(e, mine))
                self._resize(e, e.kind if workers else "sequential", workers)
        held = self._held(e, mine, bool(alloc.cpus))
        reason = self._grow(e, held, self._cpu_share(e, alloc))
        if held.workers < mine.workers and reason == "unchanged":
            reason = f"share {mine.workers} taken once it has stood {GROW_AFTER:g} s"
        return self._grant(e, held, reason)

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
        pending = self._pending
        if pending is not None and pending.held.lease_id == lease_id:
            return self._undo_acquire(pending)
        e = self._get(lease_id)
        self._remove(e)
        return _snapshot(e, None)

    def release_holder(self, holder: str) -> list[Lease]:
        """Release every lease of one holder (its connection closed)."""
        return self._drop([e for e in self._leases.values() if e.request.holder == holder])

    def expire(self) -> list[Lease]:
        """Release the leases not renewed within the TTL."""
        deadline = self._clock() - self._config.lease_ttl
        return self._drop([e for e in self._leases.values() if e.renewed_at < deadline])

    def lease(self, lease_id: str) -> Lease:
        alloc = self._fresh()
        return _snapshot(self._get(lease_id), alloc.share(lease_id))

    def continue_ids(self, last: int) -> None:
        """Number the next lease after L`last`: a daemon that restores the leases of the
        one before it goes on from its numbers, so no id is ever given to two leases."""
        self._counter = max(self._counter, last)

    @property
    def last_id(self) -> int:
        """The number of the last lease given (L`last_id`)."""
        return self._counter

    @property
    def lone(self) -> LoneAskers:
        """The processes seen asking alone (`lone`): kept across a re-execution."""
        return self._lone

    @lone.setter
    def lone(self, askers: LoneAskers) -> None:
        self._lone = askers

    def transfer(self, lease_id: str, holder: str) -> None:
        """Hand a lease to another holder (its job reconnected after a re-execution)."""
        e = self._get(lease_id)
        e.request = replace(e.request, holder=holder)
        e.renewed_at = self._clock()

    def requests(self) -> list[tuple[str, Request, Kind, int]]:
        """(lease id, request, kind, workers) of every live lease, in the order acquired:
        what a daemon's state record keeps for the next one to restore."""
        return [(e.lease_id, e.request, e.kind, e.workers) for e in self._leases.values()]

    def holder_of(self, lease_id: str) -> str:
        """Who holds the lease (cheap: the request path checks ownership on every call)."""
        return self._get(lease_id).request.holder

    def lease_pids(self) -> dict[str, int]:
        """Lease id -> holder pid of every live lease, in the order acquired. Cheap: it
        computes no allocation (the daemon looks pids up here, not in `statistics`)."""
        return {e.lease_id: e.request.pid for e in self._leases.values()}

    def held_by(self, pids: Iterable[int]) -> list[Lease]:
        """Snapshots of the live leases whose holder pid is in `pids`, in the order
        acquired. Cheap: it computes no allocation, so each snapshot's share and target
        are those of the last allocation computed, which may predate the last change
        (`lease` or `statistics` give them up to date)."""
        wanted = set(pids)
        last = self._last
        return [
            _snapshot(e, last.share(e.lease_id))
            for e in self._leases.values()
            if e.request.pid in wanted
        ]

    # -- host -----------------------------------------------------------------------------

    def update(
        self,
        sample: HostSample,
        trees: Mapping[str, int],
        pool_bytes: Mapping[str, int] | None = None,
        holder_bytes: Mapping[str, int] | None = None,
    ) -> UpdateResult:
        """Take a new sample, holder tree sizes and the resident bytes of each process
        lease's workers (`pool_bytes`, by lease id) and of the holder of each other lease
        (`holder_bytes`: its own process runs its tasks); recompute level and targets.
        What they hold less what they will write is charged (`claims.pending`)."""
        # no _fresh(): the allocation is recomputed before anyone reads it again
        self._sample = sample
        pools, holders = pool_bytes or {}, holder_bytes or {}
        owe = self._config.memory_unwritten
        for e in self._leases.values():
            scope = e.footprint.scope
            measured = trees.get(e.lease_id)
            seat, unit, r = e.footprint.seat, self._unit(e.request), e.request
            tasks = self._pool_tasks.get((r.job, r.uid), _CONSTANT_TASKS)
            owed = 0
            if owe:
                working = pools if e.kind == "process" and e.workers else holders
                owed = pending(e.kind, e.workers, seat, unit, working.get(e.lease_id))
            e.footprint = sampled(
                scope, r.base_tasks, measured, e.kind, e.workers, seat, unit, None, tasks, owed
            )
        self._rebook()
        if pool_bytes and self._charged.mem_bytes < self._charged.mem_used:
            self._measure_pools(pool_bytes)
        previous = self._level
        reason = self._set_level()
        self._replan_all()
        self._changed()
        return UpdateResult(self._level, self._level != previous, previous, reason)

    # Why pools are measured only below the reserve. A measured pool's every worker costs
    # memory in the plan (`Footprint.memory`), so the closed forms that count memory in
    # slots of one size no longer apply, and acquire would allocate in full. Above the
    # reserve no pool needs to give anything back, and unmeasured footprints plan the
    # same pools: their sampled workers are free and stay. Below it, the pools whose
    # workers grew are what the next allocation takes workers from.

    def _measure_pools(self, pool_bytes: Mapping[str, int]) -> None:
        """Memory is short of its reserve: charge each measured process pool what its
        workers hold (they give it back as the pool shrinks), and book again."""
        for e in self._leases.values():
            held = pool_bytes.get(e.lease_id)
            if held is not None and e.kind == "process" and e.workers:
                e.footprint = e.footprint._replace(measured_bytes=held)
        self._rebook()

    def learn(
        self,
        worker_bytes: Mapping[tuple[str, int], int],
        pool_tasks: Mapping[tuple[str, int], tuple[int, int]] | None = None,
        runs: Mapping[tuple[str, int], int] | None = None,
    ) -> None:
        """Take the bytes per process worker learned per (job, uid), and the tasks per
        process worker and beyond them (`pool_tasks`); they size the pools of those jobs
        from the next `update` (and newcomers' at once): a reload with the same config
        recounts the books with the sizes they hold. A job not in them is charged the
        size its request declared, else `memory_per_slot`, and the constants of `costs`
        (n + 4 tasks). `runs`: the runs each size was learned from (a size not in it:
        one), which decides whether one smaller than a declared size replaces it."""
        self._worker_bytes = dict(worker_bytes)
        self._learned_runs = dict(runs or {})
        # the constants are a floor: a pool's threads and trackers that a short run's
        # scans did not see (one before they started) are still its cost
        self._pool_tasks = {
            key: (max(each, PROCESS_WORKER_TASKS), max(extra, PROCESS_POOL_OVERHEAD))
            for key, (each, extra) in (pool_tasks or {}).items()
        }

    def pool_tasks(self, job: str, uid: int) -> tuple[int, int]:
        """(tasks per process worker, tasks a process pool adds beyond its workers) that
        (job, uid) is charged: learned, else the constants."""
        return self._pool_tasks.get((job, uid), _CONSTANT_TASKS)

    def worker_bytes(self, job: str, uid: int, declared: int = 0) -> int:
        """What one more process worker of (job, uid) is charged, where its lease declared
        `declared` bytes a worker (0: nothing): the learned figure, the declared size, or
        `memory_per_slot` (`costs.per_worker`; 0 where memory is not budgeted)."""
        key = (job, uid)
        learned = self._worker_bytes.get(key)
        runs = self._learned_runs.get(key, 1)
        return per_worker(self._config.memory_per_slot, declared, learned, runs)

    def _unit(self, req: Request) -> int:
        return self.worker_bytes(req.job, req.uid, req.declared_bytes)

    def reconfigure(self, config: BudgetConfig, weigh: Weigh | None = None) -> None:
        """Take a reloaded budget config (and the users' weights, if given); targets
        follow at once, leases are kept."""
        old_slot = max(0, self._config.memory_per_slot)
        self._config = config
        if weigh is not None:
            self._weigh = weigh
            for uid, sums in self._users.items():
                sums.weight = exact_weight(weigh(uid))
        new_slot = max(0, config.memory_per_slot)
        for e in self._leases.values():
            e.cap = cap_of(e.request, config)
            unit = e.footprint.worker_bytes
            if new_slot != old_slot and (unit == old_slot or not new_slot):
                # charged memory_per_slot (or memory no longer budgeted): the new one (or
                # its declared size) at once; a learned size stays until the next update,
                # as the trees do
                e.footprint = e.footprint._replace(worker_bytes=self._unit(e.request))
        if self._sample is not None:
            self._rebook()
            self._set_level()
            self._replan_all()
            self._changed()

    def statistics(self, *, leases: bool = True) -> LedgerStats:
        """The totals and, when `leases`, a snapshot of every lease (`leases` False: an
        empty tuple; `page` gives some of them: with 3,000 leases, building every snapshot
        took 10 ms of a status summary that shows none)."""
        alloc = self._fresh()
        held = list(self._leases.values())
        free: dict[str, int] = {}
        if self._sample is not None:
            book = self._charged
            for i, lim in enumerate(self._sample.limits):
                free[lim.name] = book.caps[i] - book.usage[i]
        return LedgerStats(
            capacity=self._capacity(),
            leased=sum(e.workers for e in held),
            leased_tasks=sum(e.footprint.cost(e.kind, e.workers) for e in held),
            level=self._level,
            fair_share=alloc.fair_share,
            free_tasks=MappingProxyType(free),
            leases=tuple(_snapshot(e, alloc.share(e.lease_id)) for e in held) if leases else (),
        )

    def count(self) -> int:
        """The live leases."""
        return len(self._leases)

    def page(self, uid: int | None, start: int, stop: int) -> tuple[list[Lease], int]:
        """Snapshots of the leases of `uid` (None: of everyone) from `start` to `stop` in
        the order acquired, as `statistics` gives them, and how many leases `uid` holds."""
        held = [e for e in self._leases.values() if uid is None or e.request.uid == uid]
        alloc = self._fresh()
        return [_snapshot(e, alloc.share(e.lease_id)) for e in held[start:stop]], len(held)

    # -- the allocation -------------------------------------------------------------------

    def _fresh(self) -> Allocation:
        """The allocation, computed first if it is stale.

        The ledger used to recompute inside every operation that changed the allocation's
        inputs (acquire, release, update, reconfigure). It now only drops it there, and
        every call that reads it runs this first, so the recompute sees exactly the state
        the eager one saw; acquire alone skips it, as it computes the newcomer's share.

        After a quick acquire the eager recompute saw the newcomer still sequential,
        before its grant (which moves it among the live pools): so it is recomputed with
        the newcomer put back to sequential for the while (its books are untouched).
        """
        pending = self._pending
        if pending is not None:
            e = pending.held
            kind, workers = e.kind, e.workers
            e.kind, e.workers = "sequential", 0
            self._replan(e)
            alloc = self._allocate()
            e.kind, e.workers = kind, workers
            self._replan(e)
            return alloc
        if self._alloc is None:
            return self._allocate()
        return self._alloc

    def _allocate(self) -> Allocation:
        """Compute the allocation of the leases as they are now, and keep it."""
        alloc = EMPTY
        if self._sample is not None and (self._level != "extreme" or self._over):
            if len(self._users) > 1:
                alloc = allocate_users(self._per_user(), self._idle)
            else:
                planned = (e.planned() for e in self._leases.values())
                alloc = allocate(planned, self._idle, self._demand)
        self._alloc, self._last, self._exact, self._pending = alloc, alloc, True, None
        return alloc

    def _per_user(self) -> list[User]:
        """The users holding seats in uid order (which breaks ties: the order they came
        in would make the allocation depend on leases already gone), each with its
        planned leases in the ledger's order and the pools they run. A lease that holds no
        seat asks for nothing."""
        planned: dict[int, list[Planned]] = {uid: [] for uid in sorted(self._users)}
        held: dict[int, dict[str, int]] = {uid: {} for uid in planned}
        for e in self._leases.values():
            if e.footprint.seat and e.profile.kind is not None:
                planned[e.request.uid].append(e.planned())
                if e.workers:
                    held[e.request.uid][e.lease_id] = e.workers
        return [self._users[uid].user(uid, mine, held[uid]) for uid, mine in planned.items()]

    def _largest_pool(self, e: _Held) -> int:
        """Workers of the largest pool the lease's user runs in its other leases, or ran
        in one that ended lately (`GrowHold.ended`)."""
        uid = e.request.uid
        return max(max(self._users[uid].pools, default=0), self._hold.recent(uid, e.created_at))

    def _quick_user_share(self, e: _Held) -> tuple[QuickShare | None, CpuShare | None]:
        """The newcomer's share and CPU bound by `newcomer_user_share`, from the users'
        sums alone ((None, None): no shortcut, allocate in full)."""
        uids = sorted(self._users)
        users = [self._users[uid].user(uid, []) for uid in uids]
        mine = uids.index(e.request.uid)
        pools = self._users[e.request.uid].pools  # its others': it is not charged yet
        found = newcomer_user_share(e.profile, e.footprint, mine, users, self._idle, pools)
        if found is None:
            return None, None
        quick, held = found
        return quick, (held, self._users[e.request.uid].cpus)  # not charged yet itself

    def _cpu_share(self, e: _Held, alloc: Allocation, charged: bool = True) -> CpuShare | None:
        """What bounds the lease's CPUs where several users hold leases: its user's CPUs
        in `alloc` and those its other leases hold now in the charged book (`charged`:
        whether the lease is in it), or None: one user, the host's CPUs bound it."""
        if not alloc.cpus:
            return None
        sums = self._users.get(e.request.uid)
        if sums is None:  # it holds no seat: it asked for no worker
            return 0, 0
        own = lease_cpus(e.footprint, e.workers) if charged else 0
        return alloc.cpus.get(e.request.uid, 0), sums.cpus - own

    # Why CPU pressure may spare some users. CPU pressure (PSI) rises when more threads
    # want CPU than there are CPUs; at level high or extreme the budget grants fewer
    # workers or none, to everyone. One user's jobs can cause it alone: 60 sequential
    # jobs on 32 CPUs keep CPU pressure extreme, and every other user's jobs ran
    # sequential for as long as they ran. So where users hold more CPUs than their part
    # (their sequential jobs beyond it, or pools not given back), the CPU pressure is
    # put down to them: they get the full level, and every other user the level of the
    # other signals (task headroom, memory pressure), which are the host's to all. Where
    # no user is over its part, or one user holds leases, everyone gets the full level.

    def _set_level(self) -> str:
        """The level of the sample (and, per user, `_level_of`); the signal that set it."""
        assert self._sample is not None
        self._level, reason = pressure_level(self._sample, self._config, self._charged)
        self._why, self._over = reason, frozenset()
        if self._level != "normal" and len(self._users) > 1:
            calm, why = pressure_level(self._sample, self._config, self._charged, cpu=False)
            if calm != self._level:
                self._calm, self._calm_why = calm, why
                self._over = over_parts(self._users, self._charged.cpus)
        return reason

    def _level_of(self, uid: int) -> Level:
        """The level a user's leases are planned and granted at (fixed between samples,
        so that every profile computed in between agrees)."""
        return self._calm if self._over and uid not in self._over else self._level

    def _user(self, uid: int) -> UserSums:
        """The sums of a uid holding seats, made (and weighed) at its first."""
        sums = self._users.get(uid)
        if sums is None:
            # its demand is counted only while users are split (`_split_demand`)
            demand = Demand.empty(len(self._idle.caps)) if self._split else _UNSPLIT
            sums = self._users[uid] = UserSums(exact_weight(self._weigh(uid)), demand)
        return sums

    # Why ending a lease recomputes nothing. A recompute reads only the leases as they are
    # (their pools, profiles and the books), never the allocation before it, and only a
    # resize (a grant, a shrink acknowledged) changes those without a recompute of its
    # own. So removing leases while the allocation is stale, or while a quick acquire's is
    # pending, and recomputing at the next read gives what recomputing before the
    # removal, and again after it, would give: the removal is a change, and only the
    # allocation after it is ever read. With many holders a recompute costs a
    # water-filling over all of them, and the daemon releases on every job's exit; so the
    # only recompute is the one a reader needs.

    def _changed(self) -> None:
        """An input of the allocation changed: compute it again before the next read."""
        self._alloc, self._pending = None, None

    def _undo_acquire(self, pending: _Pending) -> Lease:
        """Release the lease a quick acquire just granted, with nothing in between.

        Taking it out leaves the books, the demand and so the inputs of the allocation as
        they were before that acquire: if the allocation was up to date then, it is again.
        """
        e = pending.held
        self._remove(e)
        if pending.before is not None:
            self._alloc, self._exact = pending.before, True
        return _snapshot(e, None)

    def _replan(self, e: _Held) -> None:
        """Find a lease's profile again after its pool changed, and recount it."""
        before = e.profile
        level = self._level_of(e.request.uid) if self._over else self._level
        after = profile(e.footprint, e.pools, e.cap, level, e.kind, e.workers)
        e.profile = after
        if not after.sums_as(before):  # a grant of its first kind changes no sum
            scope = e.footprint.scope
            self._demand.count(scope, before, -1)
            self._demand.count(scope, after, 1)
            if self._split and e.footprint.seat:
                demand = self._users[e.request.uid].demand
                demand.count(scope, before, -1)
                demand.count(scope, after, 1)
        if not after.plans_as(before) or self._split:  # split: the pools' sizes count too
            self._exact = False

    def _replan_all(self) -> None:
        """Find every profile again and recount the demand (a new sample, level or config)."""
        demand = self._demand = Demand.empty(len(self._idle.caps))
        for e in self._leases.values():
            level = self._level_of(e.request.uid)
            e.profile = profile(e.footprint, e.pools, e.cap, level, e.kind, e.workers)
            demand.count(e.footprint.scope, e.profile, 1)
        self._split_demand()

    # -- bookkeeping ----------------------------------------------------------------------

    def _get(self, lease_id: str) -> _Held:
        try:
            return self._leases[lease_id]
        except KeyError:
            raise LeaseError("unknown_lease", f"no lease {lease_id!r} is held") from None

    def _drop(self, gone: list[_Held]) -> list[Lease]:
        if not gone:  # nothing changes, nothing is read
            return []
        pending = self._pending
        if len(gone) == 1 and pending is not None and gone[0] is pending.held:
            return [self._undo_acquire(pending)]
        for e in gone:  # no _fresh(): see `_changed`
            self._remove(e)
        return [_snapshot(e, None) for e in gone]

    def _remove(self, e: _Held) -> None:
        del self._leases[e.lease_id]
        self._hold.forget(e.lease_id)
        if self._split and e.workers:  # its user's next job may start a pool as large
            self._hold.ended(e.request.uid, e.workers, self._clock())
        fp = e.footprint
        self._charge(e, (e.kind, e.workers), None)
        self._idle.move(fp, _SEQUENTIAL, None)
        self._demand.count(fp.scope, e.profile, -1)
        if fp.seat:
            self._seated(e, -1)
        self._changed()

    # Why the users' demand is kept only while there are several. With one user holding
    # seats its demand is the ledger's (a lease without a seat asks for no pool, so it
    # counts in neither), and a second count on every acquire and release cost a tenth
    # of a single user's pair. So `UserSums.demand` is kept up to date while more than
    # one user holds seats (`_split`), and counted afresh when a second one comes.

    def _seated(self, e: _Held, sign: int) -> None:
        """A lease holding a seat comes (sign 1) or goes (-1): its user's sums follow."""
        uid = e.request.uid
        sums = self._user(uid)
        sums.seats += sign
        if not sums.seats:
            del self._users[uid]
        if len(self._users) < 2:
            self._split = False
        elif self._split:
            sums.demand.count(e.footprint.scope, e.profile, sign)
        else:
            self._split_demand()

    def _split_demand(self) -> None:
        """Count every user's demand afresh if several users hold seats (`_split`)."""
        self._split = len(self._users) > 1
        if not self._split:
            return
        limits = len(self._idle.caps)
        for sums in self._users.values():
            sums.demand = Demand.empty(limits)
        for e in self._leases.values():
            if e.footprint.seat:
                self._users[e.request.uid].demand.count(e.footprint.scope, e.profile, 1)

    def _charge(self, e: _Held, old: Size | None, new: Size | None) -> None:
        """Move a lease in the charged book, and the CPUs and pools its user holds there."""
        cpu = self._charged.move(e.footprint, old, new)
        if e.footprint.seat:
            sums = self._users[e.request.uid]
            sums.cpus += cpu
            if old is not None:
                sums.pool(old[1], -1)
            if new is not None:
                sums.pool(new[1], 1)

    def _resize(self, e: _Held, kind: Kind, workers: int) -> None:
        """Change a lease's charged pool (the allocation's order and kinds depend on it,
        but the ledger never recomputes on it: the next acquire or release does)."""
        if kind == e.kind and workers == e.workers:
            return
        self._charge(e, (e.kind, e.workers), (kind, workers))
        e.kind, e.workers = kind, workers
        self._replan(e)

    def _rebook(self) -> None:
        """Rebuild both books from every lease (a new sample or config)."""
        assert self._sample is not None
        sample = self._sample
        shape = tuple((lim.kind, lim.scope) for lim in sample.limits)
        if shape != self._shape:  # scopes are indices into the limits: find them again
            self._shape, self._scopes = shape, Scopes(sample.limits)
            for e in self._leases.values():
                e.footprint = e.footprint._replace(scope=self._scopes.of(e.request))
        self._charged = Book.of(sample, self._config)
        idle = self._idle = self._charged.copy()
        for sums in self._users.values():
            sums.cpus = 0
            sums.pools.clear()
        for e in self._leases.values():
            self._charge(e, None, (e.kind, e.workers))
            idle.move(e.footprint, None, _SEQUENTIAL)

    def _grant(self, e: _Held, mine: Share, reason: str, retry_after: float = 0.0) -> Grant:
        return Grant(
            e.lease_id,
            e.kind,
            e.workers,
            _target(e, mine),
            self._level,
            self._config.lease_ttl,
            reason,
            retry_after,
        )

    # -- what fits now ----------------------------------------------------------------------

    def _kinds(self, e: _Held, mine: Share, workers: int) -> list[Kind]:
        """Pool kinds the lease may hold at this size under the current level, given the
        kind its share is of."""
        chosen = mine.kind if mine.workers >= MIN_POOL else None
        level = self._level_of(e.request.uid)
        return pool_kinds(e.pools, level, e.kind, e.workers, workers, chosen)

    def _first_grant(
        self, e: _Held, mine: Share, fair: int, cpu: CpuShare | None, restoring: bool
    ) -> tuple[Kind, int, str]:
        """A newcomer's grant: what fits now (`_best_now`), or sequential when it may be
        in a burst (see `burst_window` in `__init__`) and would get a pool."""
        if restoring:
            return self._best_now(e, mine, fair, None, cpu)
        req, first = e.request, len(self._leases) == 1
        asker = (req.job, req.uid, req.pid)
        again = self._lone.again(asker, self._leases)  # its next call: not held (`lone`)
        since, self._last_acquire = e.created_at - self._last_acquire, e.created_at
        in_burst = not again and since < self._config.burst_window - BURST_PRECISION
        self._lone.asked(asker, e.lease_id, in_burst=in_burst, first=first)
        if self._config.burst_window > 0 and mine.workers >= MIN_POOL and self._sample is not None:
            if in_burst:
                e.burst_held = True
                return "sequential", 0, f"burst: another job asked {since:.2f} s before"
            if first and asker not in self._lone:
                e.burst_held = True
                return "sequential", 0, "burst: the first to ask, others may follow"
        return self._best_now(e, mine, fair, None, cpu)

    def _burst_wait(self, e: _Held) -> float:
        """Seconds a burst-held lease waits yet: until no newcomer has asked for a
        window, at most `BURST_HOLD_MAX` windows after its own ask."""
        quiet = self._last_acquire + self._config.burst_window
        latest = e.created_at + BURST_HOLD_MAX * self._config.burst_window
        wait = min(quiet, latest) - self._clock()
        return wait if wait >= BURST_PRECISION else 0.0

    def _burst_reason(self, e: _Held) -> str:
        since = self._clock() - self._last_acquire
        if self._last_acquire == e.created_at:
            return f"burst: held since its ask {since:.2f} s ago, others may follow"
        return f"burst: another job asked {since:.2f} s ago"

    def _best_now(
        self, e: _Held, mine: Share, fair: int, held: Size | None, cpu: CpuShare | None
    ) -> tuple[Kind, int, str]:
        """The largest pool that fits now on the charged book, capped by the lease's share
        `mine` (`fair`: the fair share, to explain a refusal); `held`: its pool in the
        charged book (None: not in it); `cpu`: its user's CPUs (`_cpu_share`)."""
        if self._sample is None:
            return "sequential", 0, "no host sample yet"
        level = self._level_of(e.request.uid)
        if level == "extreme":
            return "sequential", 0, "level extreme: sequential only"
        if e.cap < MIN_POOL:
            return "sequential", 0, f"asked for {e.request.want} workers: a pool of 1 never pays"
        kinds = self._kinds(e, mine, MIN_POOL)
        if mine.kind == "process" and "thread" in e.request.kinds:
            kinds.append("thread")
        charged, fp, size = self._charged, e.footprint, mine.workers
        for kind in kinds if size >= MIN_POOL else ():  # else no fit makes a pool
            # a share that is all it wants and fits is granted without sizing the pool
            # (`fits` is whether `fit` reaches the size, and the grant is min(fit, share))
            if size >= e.request.want and charged.fits(fp, kind, size, held, cpu):
                return kind, size, "granted in full"
            fit, _ = charged.fit(fp, kind, held, False, cpu)
            workers = min(fit, size)
            if workers >= MIN_POOL:
                return kind, workers, self._why_short(e, mine, kind, held, workers, fit, cpu)
        if size < MIN_POOL and fair:
            return "sequential", 0, f"fair share: {fair} workers each, none left for a new pool"
        why = charged.fit(fp, kinds[-1], held, True, cpu)[1] if kinds else ""  # the last kind's
        return "sequential", 0, why or f"level {level}: no pool kind accepted"

    def _why_short(  # noqa: PLR0917 (the sizing's state, to name what bound it)
        self,
        e: _Held,
        mine: Share,
        kind: Kind,
        held: Size | None,
        workers: int,
        fit: int,
        cpu: CpuShare | None,
    ) -> str:
        if workers >= e.request.want:
            return "granted in full"
        if workers == fit:  # the cap that bound it, named only now
            return self._charged.fit(e.footprint, kind, held, True, cpu)[1]
        if workers == self._config.max_per_lease:
            return f"max_per_lease {workers}"
        return f"fair share {mine.workers} across {len(self._leases)} holders"

    def _held(self, e: _Held, mine: Share, split: bool) -> Share:
        """The share a renewed lease may grow into now: where several users hold leases
        (`split`), a share that rose above its pool once it has lasted (`hold`)."""
        if not split:
            self._hold.forget(e.lease_id)  # alone, a user's leases grow at once
            return mine
        size = self._hold.size(e.lease_id, mine.workers, e.workers, e.renewed_at)
        return mine if size == mine.workers else share(size, mine.kind)

    def _grow(self, e: _Held, mine: Share, cpu: CpuShare | None) -> str:
        """Raise the lease toward its share if that fits right now (`cpu`: its user's
        CPUs, `_cpu_share`)."""
        if self._sample is None or mine.workers <= e.workers:
            return "shrink" if _target(e, mine) < e.workers else "unchanged"
        kinds = self._kinds(e, mine, mine.workers)
        if not kinds:
            return "unchanged"
        fit, why = self._charged.fit(e.footprint, kinds[0], (e.kind, e.workers), True, cpu)
        workers = min(fit, mine.workers)
        if workers <= e.workers or workers < MIN_POOL:
            return why
        self._resize(e, kinds[0], workers)
        return f"grown to {workers}" if workers == mine.workers else why

    def _capacity(self) -> int:
        """Process workers a new holder inside every scope could get now."""
        if self._sample is None or self._level != "normal":
            return 0
        unit = max(0, self._config.memory_per_slot)
        probe = Footprint(tuple(range(len(self._sample.limits))), 0, worker_bytes=unit)
        fit, _ = self._charged.fit(probe, "process", None)
        workers = min(fit, self._config.max_per_lease)
        return workers if workers >= MIN_POOL else 0


def _target(e: _Held, mine: Share) -> int:
    """What the lease should run: its share, but never more than it holds (growing is
    renew's), and nothing below a first pool."""
    target = mine.workers if mine.workers < e.workers else e.workers
    return target if target >= MIN_POOL else 0


def _snapshot(e: _Held, mine: Share | None) -> Lease:
    """The lease now, with its share `mine`; None: as it ends, with what it held and
    nothing left to run."""
    r = e.request
    return Lease(
        e.lease_id,
        r.holder,
        r.pid,
        r.uid,
        r.job,
        e.kind,
        e.workers,
        0 if mine is None else _target(e, mine),
        r.want,
        0 if mine is None else mine.workers,
        e.footprint.cost(e.kind, e.workers),
        e.footprint.charge(e.kind, e.workers),
        r.base_tasks,
        e.created_at,
        e.renewed_at,
        e.last_progress,
        r.declared_bytes,
    )
