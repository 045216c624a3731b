"""What a lease claims: frozen records of the lease as the books and the plan see it.

A lease's state has four lifetimes, and each has its own record so that nothing outlives
what it was computed from:

- its request, for the lease's whole life (`records.Request`), and what it makes of it
  under the config (`pools_of`, `cap_of`);
- its pool (kind, workers), which the ledger changes on a grant or a resize;
- its `Footprint`, per host sample: the limits it is in and what the sample measured of
  it, from which the books charge any pool it may hold;
- its `Profile`, per change of the pool, the sample, the level or the config: its place
  in the water-filling's plan and what it adds to the demand's sums.

The ledger owns the leases and replaces a record when what it came from changes; the
books, the demand, the allocation and the shortcuts only read them. The two records are
named tuples rather than frozen dataclasses: as frozen and as plain, and built in a
fraction of the time (a frozen dataclass sets each field through object.__setattr__),
which matters as acquire builds both for every lease.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

from supervisord_batt.budget.costs import (
    MIN_POOL,
    PROCESS_POOL_OVERHEAD,
    PROCESS_WORKER_TASKS,
    pool_cost,
    workers_for,
)
from supervisord_batt.budget.records import Request
from supervisord_batt.config.records import BudgetConfig
from supervisord_batt.host.sample import Limit
from supervisord_batt.protocol import Kind, Level

# the pool kinds a request accepts, process first, by (accepts process, accepts threads)
_POOLS: dict[tuple[bool, bool], tuple[Kind, ...]] = {
    (True, True): ("process", "thread"),
    (True, False): ("process",),
    (False, True): ("thread",),
    (False, False): (),
}


def pools_of(req: Request) -> tuple[Kind, ...]:
    """The pool kinds a request accepts, in the order it prefers them."""
    kinds = req.kinds
    return _POOLS["process" in kinds, "thread" in kinds]


def cap_of(req: Request, config: BudgetConfig) -> int:
    """The most workers a lease may ever hold under the config (0: no pool at all)."""
    if not pools_of(req):
        return 0
    cap = min(req.want, config.max_per_lease)
    return cap if cap >= MIN_POOL else 0


def seat_of(req: Request) -> int:
    """CPUs the lease holds while it runs sequential: its job's own thread, 1; none for a
    lease that asked for no worker at all (a job checking in, or a user holding leases
    only to count CPUs against the others: it may hold as many as it likes)."""
    return 1 if req.want else 0


def in_scope(limit: Limit, req: Request) -> bool:
    """Whether the limit counts the request's tasks: host-wide limits always, a cgroup's
    when the request is in it or below it, a user's when it runs as that user."""
    if limit.kind in ("threads-max", "pid_max") or limit.scope is None:
        return True
    if limit.kind == "nproc":
        return limit.scope == req.uid
    scope = str(limit.scope).rstrip("/")
    return any(p.rstrip("/") == scope or p.startswith(scope + "/") for p in req.cgroups)


def scope_of(req: Request, limits: tuple[Limit, ...]) -> tuple[int, ...]:
    """Indices of the limits a request is in (the books index usage by limit)."""
    return tuple(i for i, lim in enumerate(limits) if in_scope(lim, req))


MAX_SCOPES = 4096  # cached (cgroups, uid) scopes; each job in its own cgroup adds one


class Scopes:
    """`scope_of` cached per (cgroups, uid), for one shape of the sample's limits.

    Jobs in transient per-job cgroups each add a key, so the cache is cleared once it
    holds MAX_SCOPES: bounded, and a cleared key is only found again.
    """

    def __init__(self, limits: tuple[Limit, ...] = ()) -> None:
        self.limits = limits
        self._cache: dict[tuple[tuple[str, ...], int], tuple[int, ...]] = {}

    def __len__(self) -> int:
        return len(self._cache)

    def of(self, req: Request) -> tuple[int, ...]:
        key = (req.cgroups, req.uid)
        scope = self._cache.get(key)
        if scope is None:
            scope = scope_of(req, self.limits)
            if len(self._cache) >= MAX_SCOPES:
                self._cache.clear()
            self._cache[key] = scope
        return scope


class Footprint(NamedTuple):
    """What the books charge a lease, per host sample: the limits it is in (indices into
    the sample's limits), its base tasks, what the last sample saw of it, the CPUs it
    holds sequential (`seat_of`, for the lease's life), the bytes each process worker
    the sample did not see yet takes (its job's learned figure, else
    `budget.memory_per_slot`; 0: memory does not bound it), and the tasks a process
    pool of its job costs (its job's learned figures, else the constants of `costs`)."""

    scope: tuple[int, ...]
    base_tasks: int
    measured: int | None = None  # its tree at the last sample; None: not measured
    sampled_cost: int = 0  # its pool's cost at the last sample
    sampled_process: int = 0  # its process workers at the last sample
    seat: int = 1  # CPUs it holds sequential: 1, or 0 if it asked for no worker
    worker_bytes: int = 0  # memory per process worker not sampled yet
    # resident bytes of its pool's workers at the last sample; None: not measured
    measured_bytes: int | None = None
    worker_tasks: int = PROCESS_WORKER_TASKS  # tasks per process worker
    pool_tasks: int = PROCESS_POOL_OVERHEAD  # tasks a process pool adds beyond its workers
    # bytes its processes will still write beyond what the last scan saw of them, charged
    # whatever its pool (`Book.move`): see "Why memory not written yet is charged"
    pending_bytes: int = 0

    def cost(self, kind: Kind, workers: int) -> int:
        """Tasks a pool of `workers` adds to the job (`costs.pool_cost`, a process pool at
        its job's figures)."""
        if kind == "process" and workers > 0:
            return workers * self.worker_tasks + self.pool_tasks
        return pool_cost(kind, workers)

    def workers_for(self, kind: Kind, tasks: int) -> int:
        """The largest pool of `kind` costing at most `tasks` (`cost`'s inverse; 0: none)."""
        if kind == "process":
            return max(0, (tasks - self.pool_tasks) // self.worker_tasks)
        return workers_for(kind, tasks)

    def charge(self, kind: Kind, workers: int) -> int:
        """Tasks counted against each limit in scope if the lease held this pool: its base
        and pool, or its measured tree plus the part of the pool the sample did not see."""
        cost = self.cost(kind, workers)
        full = self.base_tasks + cost
        if self.measured is None:
            return full
        grown = cost - self.sampled_cost
        return max(self.measured + grown if grown > 0 else self.measured, full)

    def unsampled(self, kind: Kind, workers: int) -> int:
        """Bytes of the process workers beyond those the last sample's memory figure
        already saw."""
        sampled = self.sampled_process
        if kind == "process" and workers > sampled:
            return (workers - sampled) * self.worker_bytes
        return 0

    def memory(self, kind: Kind, workers: int) -> int:
        """Bytes the lease would add to the sample's memory figure at this pool, signed:
        the workers the sample saw at what it measured of them (a pool smaller than that
        gives back its share of `measured_bytes`, sequential or threads all of it), the
        others at `worker_bytes`. As `charge` is for tasks: where a pool's workers grew
        past their figure, the sample's headroom shrank by it, and only a smaller pool
        gets it back. No process worker measured: `unsampled`, which charges the sampled
        workers nothing
        and never gives them back."""
        measured, sampled = self.measured_bytes, self.sampled_process
        if measured is None or not sampled:  # no process worker measured
            return self.unsampled(kind, workers)
        if kind != "process" or workers <= 0:
            return -measured
        if workers >= sampled:
            return (workers - sampled) * self.worker_bytes
        return -((sampled - workers) * measured // sampled)  # the workers dropped


def sampled(  # noqa: PLR0917 (the footprint's parts)
    scope: tuple[int, ...],
    base_tasks: int,
    measured: int | None,
    kind: Kind,
    workers: int,
    seat: int = 1,
    worker_bytes: int = 0,
    measured_bytes: int | None = None,
    tasks: tuple[int, int] = (PROCESS_WORKER_TASKS, PROCESS_POOL_OVERHEAD),
    pending_bytes: int = 0,
) -> Footprint:
    """The footprint of a lease holding (kind, workers) when a sample measured `measured`
    tasks (and `measured_bytes` of its process workers' memory); `tasks`: a process
    pool's tasks per worker and beyond its workers, for its job; `pending_bytes`: what
    its processes will still write (`pending`)."""
    process = workers if kind == "process" else 0
    each, extra = tasks
    cost = workers * each + extra if process > 0 else pool_cost(kind, workers)
    return Footprint(
        scope,
        base_tasks,
        measured,
        cost,
        process,
        seat,
        worker_bytes,
        measured_bytes,
        each,
        extra,
        pending_bytes,
    )


# Why memory not written yet is charged. The books count a sample's memory usage as
# what every lease already holds, and charge only process workers granted since. Two
# holes let a memory cgroup be OOM-killed under the budget (docs/BENCHMARKS.md, Memory):
# a job granted sequential (or threads) runs its tasks in its own process, which writes
# a worker's data that no grant charged; and a pool the sample counted may not have
# written its data yet (its workers just started, or not even that: a sample counts the
# workers granted, not those seen), so the sample's usage was short of them and the next
# grants took the difference. So each lease is charged what its working processes will
# still write: `worker_bytes` per process worker (or its own process, for a lease with a
# seat that holds no process pool) less what the last scan saw them hold, never below 0.
# A newcomer is charged its seat in full, whatever it is granted (its pool's workers are
# charged as ever): until the next sample it may run its tasks itself. The charge is the
# footprint's, whatever pool the lease moves to before the next sample: a grant between
# samples is counted once, as a pool's workers or its seat, and a lease that shrinks
# keeps it until the sample shows what it gave back (the safe side).


def pending(kind: Kind, workers: int, seat: int, worker_bytes: int, seen: int | None) -> int:
    """Bytes a lease holding (kind, workers) will still write in its working processes
    (see above): its process workers', else its own process's if it has a seat, at
    `worker_bytes` each, less what the last scan saw them hold (`seen`; None: nothing)."""
    working = workers if kind == "process" and workers > 0 else seat
    owed = working * worker_bytes - (seen or 0)
    return owed if owed > 0 else 0


MEASURED = -1  # `Profile.unit` of a measured pool


class Profile(NamedTuple):
    """A lease's place in the water-filling's plan, and what it adds to the demand.

    The first eight fields are what `demand.Demand` sums (`unit`: the bytes of one more
    process worker, which the closed forms need to be one figure for every planned
    process pool); `live` and `fallback` only order and widen the plan.
    """

    kind: Kind | None  # the kind it starts in; None: it asks for no pool
    cap: int  # the most workers the water-filling may give it
    lo: int  # the last size it grows to without a memory slot (<= cap)
    full_tasks: int  # charge at (kind, cap) less its charge when sequential
    first_tasks: int  # charge at (kind, MIN_POOL) less its charge when sequential
    full_mem: int  # memory at (kind, cap) less its memory sequential (`Footprint.memory`)
    first_mem: int  # memory at (kind, MIN_POOL) less its memory sequential
    # bytes per unsampled process worker (0 unless it starts as a process pool; MEASURED:
    # its pool's memory is measured, and a worker is no one figure)
    unit: int
    live: bool  # served first, as a live pool
    fallback: bool  # a process pool that may fall back to threads

    def sums_as(self, other: Profile) -> bool:
        """Whether the demand sums this profile as it sums `other` (its first 8 fields)."""
        return self[:8] == other[:8]

    def plans_as(self, other: Profile) -> bool:
        """Whether it places the lease in the plan as `other` does (the same kind, cap,
        live and fallback): when this moves, an allocation computed before is no longer
        the one a recompute would give."""
        return (
            self.live == other.live
            and self.fallback == other.fallback
            and self.kind == other.kind
            and self.cap == other.cap
        )


def pool_kinds(  # noqa: PLR0917 (the lease's pool, the level and the size asked)
    pools: tuple[Kind, ...],
    level: Level,
    kind: Kind,
    workers: int,
    size: int,
    chosen: Kind | None = None,
) -> list[Kind]:
    """The pool kinds a lease holding (kind, workers) may hold at `size` under the level:
    a live pool keeps its kind, else the kind an allocation chose (None: none yet), else
    those it accepts; none at extreme, and at high no new process pool nor a larger one."""
    if level == "extreme":
        return []
    live: list[Kind]
    if workers > 0 and kind != "sequential":
        live = [kind]
    elif chosen is not None:
        live = [chosen]
    else:
        live = list(pools)
    if level == "high":
        live = [k for k in live if k != "process" or size <= workers]
    return live


# Why `profile` is cached. It is pure, and acquire asks it twice for the same newcomer
# (sequential, then at its grant) with what the last acquire asked: every job of a
# connection has the same footprint until a sample measures it. A hit costs a fifth of a
# miss. The profiles of the leases a sample measured are new keys, hence the bound.
MAX_PROFILES = 4096


@functools.lru_cache(maxsize=MAX_PROFILES)
def profile(  # noqa: PLR0917 (the lease's parts, each of its own lifetime)
    footprint: Footprint,
    pools: tuple[Kind, ...],
    cap: int,
    level: Level,
    kind: Kind,
    workers: int,
) -> Profile:
    """A lease's place in the plan: its first kind and its cap (at level high a process
    pool grows no further than it is), and what it adds to the books at that cap."""
    live = workers >= MIN_POOL
    # as the plan sees it: the allocation that is being recomputed chose no kind yet
    kinds = pool_kinds(pools, level, kind, workers, MIN_POOL) if cap >= MIN_POOL else []
    if not kinds:
        return Profile(None, 0, 0, 0, 0, 0, 0, 0, live, False)
    first = kinds[0]
    if level == "high" and first == "process":
        cap = min(cap, workers)
    # charge(first, cap) and charge(first, MIN_POOL) less charge("sequential", 0), inlined
    # (this runs for every lease on every sample)
    base, measured, sampled_cost = footprint.base_tasks, footprint.measured, footprint.sampled_cost
    full, one = footprint.cost(first, cap), footprint.cost(first, MIN_POOL)
    if measured is None:
        full_tasks, first_tasks = full, one
    else:
        idle = max(measured, base)
        full_tasks = max(measured + max(0, full - sampled_cost), base + full) - idle
        first_tasks = max(measured + max(0, one - sampled_cost), base + one) - idle
    if first == "process" and footprint.measured_bytes is not None and footprint.sampled_process:
        # a measured pool: every worker costs memory, from the share it gives back
        idle_mem = footprint.memory("sequential", 0)
        full_mem = footprint.memory(first, cap) - idle_mem
        first_mem = footprint.memory(first, MIN_POOL) - idle_mem
        lo, unit = 0, MEASURED
    elif first == "process":  # as `unsampled`, and the size it grows to without memory
        # (conditionals, not max/min: a builtin call costs more than the compare here)
        done, unit = footprint.sampled_process, footprint.worker_bytes
        full_mem = (cap - done) * unit if cap > done else 0
        first_mem = (MIN_POOL - done) * unit if done < MIN_POOL else 0
        lo = done if done > MIN_POOL else MIN_POOL
        lo = lo if lo < cap else cap
    else:
        full_mem = first_mem = unit = 0
        lo = cap
    return Profile(
        first, cap, lo, full_tasks, first_tasks, full_mem, first_mem, unit, live, len(kinds) > 1
    )
