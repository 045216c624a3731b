"""The ledger's books: a lease's mutable state (`_Entry`) and the adjusted usage of every
limit, the CPUs and the memory for one assignment of pool sizes (`_Book`), with the
checks of whether a pool fits them."""

from __future__ import annotations

from dataclasses import dataclass, replace

from supervisord_batt.budget.costs import MIN_POOL, UNBOUNDED, Kind, pool_cost, workers_for
from supervisord_batt.budget.records import Lease, Request
from supervisord_batt.host.sample import Limit


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
    # what it asks for, found once (`_Allocation._enter`): the pool kinds it accepts, in
    # order of preference, and the most workers it may ever hold under the config
    pools: tuple[Kind, ...] = ()
    cap: int = 0
    # its place in the water-filling (`_Allocation._profile`), kept in `_Demand`:
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
        target = self.alloc if self.alloc < self.workers else self.workers
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
        sampled = self.sampled_process
        return workers - sampled if kind == "process" and workers > sampled else 0

    def in_scope(self, limit: Limit) -> bool:
        if limit.kind in ("threads-max", "pid_max") or limit.scope is None or self.everywhere:
            return True
        if limit.kind == "nproc":
            return limit.scope == self.req.uid
        scope = str(limit.scope).rstrip("/")
        return any(p.rstrip("/") == scope or p.startswith(scope + "/") for p in self.req.cgroups)

    def snapshot(self, ended: bool = False) -> Lease:
        """The lease now; `ended`: as it ends, with what it held and nothing left to run."""
        r = self.req
        return Lease(  # by position, in field order: 16 keywords cost 0.5 us a call
            self.lease_id,
            r.holder,
            r.pid,
            r.uid,
            r.job,
            self.kind,
            self.workers,
            0 if ended else self.target(),  # target
            r.want,  # wanted
            0 if ended else self.alloc,  # share
            pool_cost(self.kind, self.workers),  # cost_tasks
            self.charge(self.kind, self.workers),  # charge_tasks
            r.base_tasks,
            self.created_at,
            self.renewed_at,
            self.last_progress,
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
        """Resize one lease (None: absent) and update the usage it moves.

        A lease adds to each limit in scope its charge less its measured tree, one CPU at
        least, and its unsampled process workers (inlined: this runs on every request).
        """
        delta = cpu = mem = 0
        if old is not None:
            kind, workers = old
            delta -= e.charge(kind, workers) - (e.measured or 0)
            cpu -= workers if workers > 1 else 1
            if kind == "process":
                mem -= e.unsampled(kind, workers)
        if new is not None:
            kind, workers = new
            delta += e.charge(kind, workers) - (e.measured or 0)
            cpu += workers if workers > 1 else 1
            if kind == "process":
                mem += e.unsampled(kind, workers)
        if delta:
            usage = self.usage
            for i in e.scope:
                usage[i] += delta
        self.cpu_used += cpu
        self.mem_used += mem

    def fits(self, e: _Entry, kind: Kind, size: int, old: _Size | None) -> bool:
        """Whether `fit(e, kind, old)[0] >= size` (size >= 1), without sizing the pool.

        Every limit in scope offers the lease the same tasks beyond its slack, so only the
        smallest slack matters; the two task bounds of `fit` become one need.
        """
        cost = pool_cost(kind, size)
        need = e.req.base_tasks + cost
        if e.measured is not None:
            need = max(need, e.measured - e.sampled_cost + cost)
        if old is not None:
            need -= e.charge(*old)
        caps, usage = self.caps, self.usage
        for i in e.scope:
            if caps[i] - usage[i] < need:
                return False
        if self.cpus - (self.cpu_used - (max(1, old[1]) if old else 0)) < size:
            return False
        if kind != "process" or e.sampled_process >= size:
            return True
        spare = self.mem_slots - (self.mem_used - (e.unsampled(*old) if old else 0))
        return spare >= size - e.sampled_process

    def fit(
        self, e: _Entry, kind: Kind, old: _Size | None, explain: bool = True
    ) -> tuple[int, str]:
        """The largest pool of `kind` every cap lets `e` hold now, and the binding cap
        ("" unless `explain`: the request path mostly needs no reason, only the size)."""
        best, at, at_tasks = UNBOUNDED, -1, 0  # the first limit that binds most
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
            best, at = self.cpus - others, -1
            if explain:
                why = f"cpu cap: {self.cpus} CPUs, {others} in use"
        if kind == "process":
            spare = self.mem_slots - (self.mem_used - (e.unsampled(*old) if old else 0))
            n = e.sampled_process + max(0, spare)
            if n < best:
                best, at = n, -1
                if explain:
                    why = f"memory: {max(0, spare)} worker slots free"
        if explain and at >= 0:  # formatted once, for the limit that binds in the end
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
