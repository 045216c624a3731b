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
#
# Why a pool of n < 2 becomes sequential. A pool's main thread only waits on its
# workers, so one worker computes no faster than the main thread alone, and it still
# costs kernel tasks (a process pool of 1 costs 5: FACTS.md) that can be refused half
# way, which is what leaves orphaned workers and hung jobs. Grants and targets are
# therefore 0 (sequential) or at least MIN_POOL workers.

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Literal, get_args

from supervisord_batt.config import BudgetConfig
from supervisord_batt.host import HostSample, Limit

Kind = Literal["process", "thread", "sequential"]
Level = Literal["normal", "high", "extreme"]
KINDS: tuple[Kind, ...] = get_args(Kind)
LEVELS: tuple[Level, ...] = get_args(Level)

# Kernel tasks (threads + processes) a pool adds to a job beyond its main thread, measured
# in FACTS.md "What a loky pool costs" (Python 3.11, loky 3.6.0 and 3.7.0, pids cgroup):
# ProcessPoolExecutor(3) after the first submit() is 8 tasks = the main thread, 3 workers
# (one thread each), ExecutorManagerThread, QueueFeederThread and two resource trackers
# (loky's and multiprocessing's) which stay until the job exits. So a process pool of n
# costs n + 4; a thread pool of n costs its n threads; sequential costs nothing.
PROCESS_WORKER_TASKS = 1
PROCESS_POOL_THREADS = 2  # ExecutorManagerThread + QueueFeederThread, in the job
LOKY_RESOURCE_TRACKERS = 2  # loky's and multiprocessing's resource trackers
PROCESS_POOL_OVERHEAD = PROCESS_POOL_THREADS + LOKY_RESOURCE_TRACKERS
THREAD_WORKER_TASKS = 1
MIN_POOL = 2  # a pool of 1 never beats sequential (see the comment at the top)
_UNBOUNDED = 1 << 30


class LeaseError(Exception):
    """A lease operation the ledger refuses; `code` is the protocol's error code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class Request:
    """A job asking for up to `want` workers of one of `kinds` (sequential always fits)."""

    holder: str  # the daemon's key for the connection that owns the lease
    pid: int
    uid: int
    job: str
    want: int
    kinds: tuple[Kind, ...] = KINDS
    cgroups: tuple[str, ...] = ()  # the holder's cgroup fs paths
    base_tasks: int = 1  # tasks in the holder's tree when it asks


@dataclass(frozen=True)
class Grant:
    """The answer to acquire or renew: run `target` workers of `kind`, charged `workers`."""

    lease_id: str
    kind: Kind
    workers: int  # what the lease is charged for (the client may run this many now)
    target: int  # what the client should run; below `workers` means shrink
    level: Level
    ttl: float
    reason: str  # one short line for the daemon's log


@dataclass(frozen=True)
class Lease:
    """A snapshot of one lease."""

    lease_id: str
    holder: str
    pid: int
    uid: int
    job: str
    kind: Kind
    workers: int
    target: int
    wanted: int
    share: int  # its max-min allocation: what it grows to once the others shrink
    cost_tasks: int  # the pool's tasks at `workers`
    charge_tasks: int  # what the lease counts against each limit in its scope
    base_tasks: int
    created_at: float
    renewed_at: float
    last_progress: float


@dataclass(frozen=True)
class LedgerStats:
    capacity: int  # process workers a new holder in every scope could get now (0 unless normal)
    leased: int  # sum of workers over leases
    leased_tasks: int  # sum of pool tasks over leases
    level: Level
    fair_share: int  # the water level of the last max-min allocation (0: nobody pooled)
    free_tasks: Mapping[str, int]  # limit name -> limit - reserve - adjusted usage
    leases: tuple[Lease, ...]


@dataclass(frozen=True)
class UpdateResult:
    level: Level
    changed: bool
    previous: Level
    reason: str


def pool_cost(kind: Kind, workers: int) -> int:
    """Kernel tasks a pool of `workers` adds to a job (see the constants above)."""
    if workers <= 0 or kind == "sequential":
        return 0
    if kind == "process":
        return workers * PROCESS_WORKER_TASKS + PROCESS_POOL_OVERHEAD
    return workers * THREAD_WORKER_TASKS


def workers_for(kind: Kind, tasks: int) -> int:
    """The largest pool of `kind` costing at most `tasks` (0 when none does)."""
    if kind == "process":
        return max(0, (tasks - PROCESS_POOL_OVERHEAD) // PROCESS_WORKER_TASKS)
    if kind == "thread":
        return max(0, tasks // THREAD_WORKER_TASKS)
    return 0


def reserve_for(limit: Limit, config: BudgetConfig) -> int:
    """Tasks kept free under `limit`: the larger of the floor and the percent, but never
    more than half the limit. The floor suits host-wide limits (tens of thousands); a small
    cgroup (a TasksMax of 40, say) would otherwise be all reserve and never get a pool."""
    wanted = max(config.reserve_tasks, math.ceil(limit.limit * config.reserve_percent / 100))
    return min(wanted, limit.limit // 2)


@dataclass
class _Entry:
    """A lease's mutable state inside the ledger."""

    lease_id: str
    req: Request
    seq: int
    created_at: float
    kind: Kind = "sequential"
    workers: int = 0
    alloc: int = 0  # max-min allocation of the last recompute
    alloc_kind: Kind = "sequential"
    renewed_at: float = 0.0
    last_progress: float = 0.0
    measured: int | None = None  # holder tree at the last sample; None: not measured
    sampled_cost: int = 0  # pool cost at the last sample
    sampled_process: int = 0  # process workers at the last sample
    everywhere: bool = False  # a probe that is inside every scope
    scope: tuple[int, ...] = ()  # indices of the sample's limits it is in (see in_scope)
    # its place in the water-filling (`BudgetLedger._profile`), kept in `_Demand`:
    plan_kind: Kind | None = None  # the kind it starts in; None: it asks for no pool
    plan_cap: int = 0  # the most workers the water-filling may give it
    plan_live: bool = False  # served first, as a live pool
    full_tasks: int = 0  # charge at (plan_kind, plan_cap) less charge when sequential
    full_mem: int = 0  # unsampled process workers at (plan_kind, plan_cap)
    first_tasks: int = 0  # charge at (plan_kind, MIN_POOL) less charge when sequential
    first_mem: int = 0  # unsampled process workers at (plan_kind, MIN_POOL)
    plan_fallback: bool = False  # a process pool that may fall back to threads
    plan_lo: int = 0  # the last size it grows to without a memory slot (<= plan_cap)

    def target(self) -> int:
        target = min(self.alloc, self.workers)
        return target if target >= MIN_POOL else 0

    def charge(self, kind: Kind, workers: int) -> int:
        """Tasks counted against each limit in scope if the lease held this pool."""
        cost = pool_cost(kind, workers)
        full = self.req.base_tasks + cost
        if self.measured is None:
            return full
        grown = cost - self.sampled_cost  # the part of the pool the sample did not see
        return max(self.measured + grown if grown > 0 else self.measured, full)

    def unsampled(self, kind: Kind, workers: int) -> int:
        """Process workers beyond those the last sample's memory figure already saw."""
        return max(0, workers - self.sampled_process) if kind == "process" else 0

    def in_scope(self, limit: Limit) -> bool:
        if limit.kind in ("threads-max", "pid_max") or limit.scope is None or self.everywhere:
            return True
        if limit.kind == "nproc":
            return limit.scope == self.req.uid
        scope = str(limit.scope).rstrip("/")
        return any(p.rstrip("/") == scope or p.startswith(scope + "/") for p in self.req.cgroups)

    def snapshot(self) -> Lease:
        r = self.req
        return Lease(
            lease_id=self.lease_id,
            holder=r.holder,
            pid=r.pid,
            uid=r.uid,
            job=r.job,
            kind=self.kind,
            workers=self.workers,
            target=self.target(),
            wanted=r.want,
            share=self.alloc,
            cost_tasks=pool_cost(self.kind, self.workers),
            charge_tasks=self.charge(self.kind, self.workers),
            base_tasks=r.base_tasks,
            created_at=self.created_at,
            renewed_at=self.renewed_at,
            last_progress=self.last_progress,
        )


_Size = tuple[Kind, int]  # (kind, workers) of a lease in a book
_Plan = tuple[_Entry, Kind, int]  # a lease in the water-filling: its pool kind and its cap


@dataclass
class _Book:
    """Adjusted usage of every limit, CPUs and memory for one assignment of pool sizes.

    The ledger keeps two books up to date as leases come, go and resize, so no call
    rebuilds usage from every lease: `charged` (every lease at its granted pool) and
    `idle` (every lease sequential, where the water-filling starts). A lease moves in a
    book by `move(e, old, new)`, sizes being (kind, workers) or None for "not in the book".
    """

    limits: tuple[Limit, ...]
    caps: tuple[int, ...]  # limit - reserve, per limit
    usage: list[int]  # in_use - measured trees + charges, per limit
    cpus: int
    mem_slots: int
    cpu_used: int = 0
    mem_used: int = 0

    def copy(self) -> _Book:
        return replace(self, usage=list(self.usage))

    def move(self, e: _Entry, old: _Size | None, new: _Size | None) -> None:
        """Resize one lease (None: absent) and update the usage it moves."""
        delta = _weight(e, new) - _weight(e, old)
        if delta:
            usage = self.usage
            for i in e.scope:
                usage[i] += delta
        self.cpu_used += (max(1, new[1]) if new else 0) - (max(1, old[1]) if old else 0)
        self.mem_used += (e.unsampled(*new) if new else 0) - (e.unsampled(*old) if old else 0)

    def fits(self, e: _Entry, kind: Kind, size: int, old: _Size) -> bool:
        """Whether `fit(e, kind, old)[0] >= size`, without building the reason.

        Every limit in scope offers the lease the same tasks beyond its slack, so only the
        smallest slack matters; the two task bounds of `fit` become one need.
        """
        cost = pool_cost(kind, size)
        need = e.req.base_tasks + cost
        if e.measured is not None:
            need = max(need, e.measured - e.sampled_cost + cost)
        need -= e.charge(*old)
        caps, usage = self.caps, self.usage
        for i in e.scope:
            if caps[i] - usage[i] < need:
                return False
        if self.cpus - (self.cpu_used - max(1, old[1])) < size:
            return False
        if kind != "process" or e.sampled_process >= size:
            return True
        return self.mem_slots - (self.mem_used - e.unsampled(*old)) >= size - e.sampled_process

    def fit(self, e: _Entry, kind: Kind, old: _Size | None) -> tuple[int, str]:
        """The largest pool of `kind` every cap lets `e` hold now, and the binding cap."""
        best, at, at_tasks = _UNBOUNDED, -1, 0  # the first limit that binds most
        held = e.charge(*old) if old else 0
        caps, usage, base, measured = self.caps, self.usage, e.req.base_tasks, e.measured
        for i in e.scope:
            room = caps[i] - usage[i] + held
            tasks = room - base
            if measured is not None:
                tasks = min(tasks, e.sampled_cost + room - measured)
            n = workers_for(kind, tasks)
            if n < best:
                best, at, at_tasks = n, i, tasks
        others = self.cpu_used - (max(1, old[1]) if old else 0)
        why = ""
        if self.cpus - others < best:
            best, why = self.cpus - others, f"cpu cap: {self.cpus} CPUs, {others} in use"
        if kind == "process":
            spare = self.mem_slots - (self.mem_used - (e.unsampled(*old) if old else 0))
            n = e.sampled_process + max(0, spare)
            if n < best:
                best, why = n, f"memory: {max(0, spare)} worker slots free"
        if not why and at >= 0:  # formatted once, for the limit that binds in the end
            size = max(best + 1, MIN_POOL)
            why = (
                f"{self.limits[at].name} headroom {max(0, at_tasks)} tasks < {kind} pool of"
                f" {size} ({pool_cost(kind, size)} tasks)"
            )
        return max(0, best), why

    def fits_all(self, plan: list[_Plan], top: int) -> bool:
        """Whether every planned lease at min(its cap, top) fits every cap at once.

        Sufficient for each lease's own check in the rounds up to `top`: a round's check
        sees every other lease at or below its final size, charges only grow with size,
        and `fits`' need is at most the charge. So when this holds those rounds are skipped.
        """
        by_scope: dict[tuple[int, ...], int] = {}
        cpu, mem, process = self.cpu_used, self.mem_used, False
        for e, kind, cap in plan:
            size = min(cap, top)
            if size <= e.alloc:
                continue
            old = (e.alloc_kind, e.alloc)
            by_scope[e.scope] = by_scope.get(e.scope, 0) + e.charge(kind, size) - e.charge(*old)
            cpu += size - max(1, e.alloc)
            if kind == "process":
                mem += e.unsampled(kind, size) - e.unsampled(*old)
                process = True
        if cpu > self.cpus or (process and mem > self.mem_slots):
            return False
        added: dict[int, int] = {}
        for scope, delta in by_scope.items():
            for i in scope:
                added[i] = added.get(i, 0) + delta
        return all(self.usage[i] + d <= self.caps[i] for i, d in added.items())


def _weight(e: _Entry, size: _Size | None) -> int:
    """What a lease adds to each limit in scope at `size`: its charge less its measured tree."""
    if size is None:
        return 0
    return e.charge(*size) - (e.measured or 0)


@dataclass
class _Demand:
    """What the leases of the water-filling's plan ask for, summed: each lease counts at
    its cap on top of the idle book. Kept up to date as leases come, go and resize, so that
    `BudgetLedger._cpu_only` can tell in O(limits) that no task limit nor the memory can
    stop a lease, and the caps' histogram gives the CPU water level in closed form."""

    tasks: list[int]  # per limit: sum of full_tasks over the planned leases in scope
    leases: list[int]  # per limit: planned leases in scope
    first_tasks: list[int]  # per limit: sum of first_tasks over the planned leases in scope
    caps: dict[int, int] = field(default_factory=dict)  # plan_cap -> planned leases
    n: int = 0  # planned leases
    mem: int = 0  # sum of full_mem
    first_mem: int = 0  # sum of first_mem
    groups: dict[tuple[int, int], int] = field(default_factory=dict)  # (lo, cap) -> leases
    process: int = 0  # planned leases starting as process pools

    def add(self, e: _Entry, sign: int) -> None:
        """Count a lease in (sign 1) or out (sign -1) at its current profile."""
        if e.plan_kind is None:
            return
        self.n += sign
        left = self.caps.get(e.plan_cap, 0) + sign
        if left:
            self.caps[e.plan_cap] = left
        else:
            del self.caps[e.plan_cap]
        tasks, leases, first = self.tasks, self.leases, self.first_tasks
        full, one = sign * e.full_tasks, sign * e.first_tasks
        for i in e.scope:
            tasks[i] += full
            leases[i] += sign
            first[i] += one
        self.mem += sign * e.full_mem
        self.first_mem += sign * e.first_mem
        key = (e.plan_lo, e.plan_cap)
        left = self.groups.get(key, 0) + sign
        if left:
            self.groups[key] = left
        else:
            del self.groups[key]
        if e.plan_kind == "process":
            self.process += sign

    def used(self, size: int) -> tuple[int, int]:
        """CPUs and memory slots the rounds after the first take, up to `size`, if every
        planned lease grows in its first kind."""
        cpu = mem = 0
        for (lo, cap), n in self.groups.items():
            top = min(cap, size)
            cpu += n * (top - MIN_POOL)
            if top > lo:
                mem += n * (top - lo)
        return cpu, mem

    def growing(self, size: int) -> tuple[int, int, int]:
        """Planned leases with a cap of at least `size`, those of them that need a memory
        slot to grow to it, and those that do not need one up to it."""
        grow = needy = free = 0
        for (lo, cap), n in self.groups.items():
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
        for cap in sorted(self.caps):
            level = (budget - fixed) // above  # the level if no cap lay below it
            if level < cap:
                return level, level + 1, budget - fixed - level * above
            fixed += cap * self.caps[cap]
            above -= self.caps[cap]
        return max(self.caps, default=0), 0, 0


class BudgetLedger:
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
    the others leave it, summed over their (memory-free size, cap) (`_Demand.used`).
    Otherwise, or when a first pool falls back to threads, acquire simulates as before.
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
        self._allocated: list[_Entry] = []  # the leases the last allocation gave a share
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
        _validate(req)
        # no _fresh(): the allocation is recomputed below, and a pending one is unseen
        undo = (self._exact and not self._stale and self._fast is None, self._fair_share)
        self._counter += 1
        now = self._clock()
        e = _Entry(f"L{self._counter}", req, self._counter, now, renewed_at=now, last_progress=now)
        e.scope = self._scope_of(req)
        self._entries[e.lease_id] = e
        self._charged.move(e, None, ("sequential", 0))
        self._idle.move(e, None, ("sequential", 0))
        self._profile(e)
        self._demand.add(e, 1)
        quick = self._quick_share(e)
        if not quick:
            self._recompute()
        kind, workers, reason = self._best_now(e)
        self._resize(e, kind, workers)
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

    def heartbeat(self, lease_id: str) -> Lease:
        """Record that the holder made progress (for the no-progress timeout)."""
        self._fresh()
        e = self._get(lease_id)
        e.last_progress = self._clock()
        return e.snapshot()

    def release(self, lease_id: str) -> Lease:
        """Give the lease back; releasing a lease the ledger does not hold is an error."""
        if self._fast is not None and self._fast.lease_id == lease_id:
            return self._undo_acquire(self._fast)
        self._fresh()
        e = self._get(lease_id)
        self._remove(e)
        return e.snapshot()

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
        if self._allocated and self._allocated[-1] is e:
            self._allocated.pop()
        if fresh:
            self._stale, self._exact, self._fair_share = False, True, fair
        return e.snapshot()

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
        self._fresh()
        for e in gone:
            self._remove(e)
        return [e.snapshot() for e in gone]

    def _remove(self, e: _Entry) -> None:
        del self._entries[e.lease_id]
        self._charged.move(e, (e.kind, e.workers), None)
        self._idle.move(e, ("sequential", 0), None)
        self._demand.add(e, -1)
        self._changed()

    def _resize(self, e: _Entry, kind: Kind, workers: int) -> None:
        """Change a lease's charged pool (the allocation's order and kinds depend on it,
        but the ledger never recomputed on it: the next acquire or release does)."""
        if kind == e.kind and workers == e.workers:
            return
        self._charged.move(e, (e.kind, e.workers), (kind, workers))
        e.kind, e.workers = kind, workers
        self._relist(e)

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
            else _UNBOUNDED
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

    def _cap(self, e: _Entry) -> int:
        """The most workers this lease may ever hold."""
        if not any(k in e.req.kinds for k in ("process", "thread")):
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
            live = [k for k in ("process", "thread") if k in e.req.kinds]
        if self._level == "high":  # no new process pools, and none grows
            live = [k for k in live if k != "process" or workers <= e.workers]
        return live

    # -- internals: the allocation --------------------------------------------------------

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
        for e in self._allocated:
            e.alloc, e.alloc_kind = 0, "sequential"
        self._allocated = []
        self._fair_share = 0
        if self._sample is None or self._level == "extreme":
            return
        # every lease counts one CPU even sequential, so with this many nobody gets a pool
        if self._idle.cpu_used - 1 + MIN_POOL > self._idle.cpus:
            return
        plan = self._plan()
        if not plan:
            return
        self._allocated = [e for e, _, _ in plan]
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
        cap = self._cap(e)
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
            sampled = e.sampled_process
            e.full_mem, e.first_mem = max(0, cap - sampled), max(0, MIN_POOL - sampled)
            e.plan_lo = min(max(sampled, MIN_POOL), cap)
        else:
            e.full_mem = e.first_mem = 0
            e.plan_lo = cap

    def _relist(self, e: _Entry) -> None:
        """Recount a lease in the demand after its pool or kind changed."""
        was = (e.plan_kind, e.plan_cap, e.plan_live, e.plan_fallback)
        self._demand.add(e, -1)
        self._profile(e)
        self._demand.add(e, 1)
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
            e.alloc, e.alloc_kind = min(e.plan_cap, level), e.plan_kind
            self._allocated.append(e)
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
        memory are left after the others. If nobody does, and nobody fell back to threads,
        the later rounds decide (`_later_share`).
        """
        d, idle = self._demand, self._idle
        if e.plan_kind is not None and d.n == 1:
            return self._lone_share(e)
        for i, n in enumerate(d.leases):
            if n and idle.usage[i] + d.first_tasks[i] > idle.caps[i]:
                return False
        mem = idle.mem_slots - idle.mem_used
        others = d.first_mem - e.first_mem
        if others <= mem:  # nobody runs out of memory
            passed, missed, mem = d.n - (e.plan_kind is not None), 0, mem - others
        else:
            passed, missed, mem = self._first_walk(e, mem)
        kind: Kind | None = None
        if e.plan_kind is not None and passed < spare:  # a CPU is left for the newcomer
            if e.first_mem == 0 or e.first_mem <= mem:
                kind = e.plan_kind
            elif e.plan_fallback:
                kind = "thread"
        if not missed and passed <= spare and (kind is not None or e.plan_kind is None):
            # everyone has a first pool: the later rounds decide
            if kind is None or kind != e.plan_kind or others > idle.mem_slots - idle.mem_used:
                return False
            share = self._later_share(e, spare - d.n, mem - e.first_mem)
            if share is None:
                return False
            e.alloc, e.alloc_kind = share, kind
            self._allocated.append(e)
            self._fair_share = share  # not read before the recompute `_fast` defers
            return True
        self._fair_share = MIN_POOL if kind is not None or min(passed, spare) > 0 else 0
        if kind is not None:
            e.alloc, e.alloc_kind = MIN_POOL, kind
            self._allocated.append(e)
        return True

    def _later_share(self, e: _Entry, cpu: int, mem: int) -> int | None:
        """The newcomer's share when every planned lease took a first pool of its first
        kind, leaving `cpu` CPUs and `mem` memory slots (None: no shortcut).

        With no task limit binding at any size, a round costs each growing lease a CPU and,
        a process pool past its sampled size, a memory slot. The rounds in which everyone
        fits follow from the sums over (lo, cap) (`_Demand.used`). In the next, the others
        go first: the newcomer grows if a CPU is left after them and, if it needs one, a
        memory slot. If it grows there, the others took the last memory slot, so from then
        on only leases that need none grow, and it grows while they leave it a CPU.
        """
        d, idle = self._demand, self._idle
        for i, n in enumerate(d.leases):
            if n and idle.usage[i] + d.tasks[i] > idle.caps[i]:
                return None
        cap, lo = e.plan_cap, e.plan_lo
        low, high = MIN_POOL, cap  # everyone fits up to low; not known above
        while low < high:
            mid = (low + high + 1) // 2
            used_cpu, used_mem = d.used(mid)
            if used_cpu <= cpu and used_mem <= mem:
                low = mid
            else:
                high = mid - 1
        if low >= cap:
            return cap
        used_cpu, used_mem = d.used(low)
        cpu, mem = cpu - used_cpu, mem - used_mem
        size = low + 1
        grow, needy, _ = d.growing(size)
        own = lo < size  # the newcomer needs a memory slot
        grow, needy = grow - 1, needy - own
        passed = grow - needy + min(mem, needy)
        if passed >= cpu or (own and mem <= needy):
            return low  # the CPUs or memory ran out before its turn
        if own or needy <= mem:
            return None  # everyone fit after all: not the round the sums say
        cpu -= passed + 1
        while size < cap:  # no memory left: only leases that need none grow
            size += 1
            _, _, free = d.growing(size)
            free -= lo >= size
            if free >= cpu:
                return size - 1
            cpu -= free + 1
        return size

    def _first_walk(self, e: _Entry, mem: int) -> tuple[int, int, int]:
        """The first round of the planned leases but `e`, in plan order, with CPUs to
        spare and no task limit binding: (first pools, misses, memory slots left)."""
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
                else:
                    missed += 1
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
                self._allocated.append(e)
                self._fair_share = e.alloc
                break
        return True

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

    def _best_now(self, e: _Entry) -> tuple[Kind, int, str]:
        """The largest pool that fits now, capped by the lease's allocation."""
        if self._sample is None:
            return "sequential", 0, "no host sample yet"
        if self._level == "extreme":
            return "sequential", 0, "level extreme: sequential only"
        if self._cap(e) < MIN_POOL:
            return "sequential", 0, f"asked for {e.req.want} workers: a pool of 1 never pays"
        why = ""
        kinds = self._kinds_for(e, MIN_POOL)
        if e.alloc_kind == "process" and "thread" in e.req.kinds:
            kinds.append("thread")
        for kind in kinds:
            fit, why = self._charged.fit(e, kind, (e.kind, e.workers))
            workers = min(fit, e.alloc)
            if workers >= MIN_POOL:
                return kind, workers, self._why_short(e, workers, fit, why)
        if e.alloc < MIN_POOL and self._fair_share:
            why = f"fair share: {self._fair_share} workers each, none left for a new pool"
        return "sequential", 0, why or f"level {self._level}: no pool kind accepted"

    def _why_short(self, e: _Entry, workers: int, fit: int, why: str) -> str:
        if workers >= e.req.want:
            return "granted in full"
        if workers == fit:
            return why
        if workers == self._config.max_per_lease:
            return f"max_per_lease {workers}"
        return f"fair share {e.alloc} across {len(self._entries)} holders"

    def _grow(self, e: _Entry) -> str:
        """Raise the lease toward its allocation if that fits right now."""
        if self._sample is None or e.alloc <= e.workers:
            return "shrink" if e.target() < e.workers else "unchanged"
        kinds = self._kinds_for(e, e.alloc)
        if not kinds:
            return "unchanged"
        fit, why = self._charged.fit(e, kinds[0], (e.kind, e.workers))
        workers = min(fit, e.alloc)
        if workers <= e.workers or workers < MIN_POOL:
            return why
        self._resize(e, kinds[0], workers)
        return f"grown to {workers}" if workers == e.alloc else why

    def _compute_level(self) -> tuple[Level, str]:
        """The pressure level from the tightest limit and PSI."""
        assert self._sample is not None
        found: list[tuple[int, str]] = []
        th = self._config.pressure
        book = self._charged
        for i, lim in enumerate(self._sample.limits):
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
        psi = self._sample.psi
        if psi is not None and psi.cpu_some_avg10 is not None:
            found.append(
                _grade(
                    psi.cpu_some_avg10,
                    th.cpu_high,
                    th.cpu_extreme,
                    f"psi cpu some avg10 {psi.cpu_some_avg10:g}",
                )
            )
        if psi is not None and psi.memory_some_avg10 is not None:
            found.append(
                _grade(
                    psi.memory_some_avg10,
                    th.memory_high,
                    th.memory_extreme,
                    f"psi memory some avg10 {psi.memory_some_avg10:g}",
                )
            )
        grade, reason = max(found, default=(0, "no limits"), key=lambda f: f[0])
        return LEVELS[grade], reason

    def _capacity(self) -> int:
        """Process workers a new holder inside every scope could get now."""
        if self._sample is None or self._level != "normal":
            return 0
        req = Request("", 0, 0, "", self._config.max_per_lease, base_tasks=0)
        probe = _Entry("", req, 0, 0.0, everywhere=True)
        probe.scope = tuple(range(len(self._sample.limits)))
        fit, _ = self._charged.fit(probe, "process", None)
        workers = min(fit, self._config.max_per_lease)
        return workers if workers >= MIN_POOL else 0


def _grade(
    value: float, high: float, extreme: float, what: str, *, below: bool = False
) -> tuple[int, str]:
    """0, 1 or 2 (normal, high, extreme) for one signal, with its description."""
    if below:
        value, high, extreme = -value, -high, -extreme
        hit = 2 if value > extreme else 1 if value > high else 0
    else:
        hit = 2 if value >= extreme else 1 if value >= high else 0
    return hit, what


def _validate(req: Request) -> None:
    problems = []
    if req.want < 0:
        problems.append(f"want must be >= 0, got {req.want}")
    if req.base_tasks < 0:
        problems.append(f"base_tasks must be >= 0, got {req.base_tasks}")
    if any(k not in KINDS for k in req.kinds):
        problems.append(f"kinds must be among {', '.join(KINDS)}, got {req.kinds}")
    if problems:
        raise LeaseError("invalid_request", "; ".join(problems))


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
