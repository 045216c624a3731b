"""The ledger's books: the adjusted usage of every limit, the CPUs and the memory for one
assignment of pool sizes (`Book`), with the checks of whether a pool fits them.

The ledger keeps two up to date as leases come, go and resize (every lease at its
granted pool, and every lease sequential); the allocation copies the second and grows
the leases in the copy. A lease is seen here only through its `claims.Footprint`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from supervisord_batt.budget.claims import Footprint
from supervisord_batt.budget.costs import (
    MIN_POOL,
    UNBOUNDED,
    memory_reserve,
    reserve_for,
)
from supervisord_batt.config.records import BudgetConfig
from supervisord_batt.host.sample import HostSample, Limit
from supervisord_batt.protocol import Kind

Size = tuple[Kind, int]  # (kind, workers) of a lease in a book
# (CPUs of a user's share, CPUs its other leases hold): what bounds a lease's CPUs where
# several users hold leases (see `Book.fit`)
CpuShare = tuple[int, int]
_MIB = 1 << 20


def lease_cpus(fp: Footprint, workers: int) -> int:
    """CPUs a lease holding `workers` counts: its workers, or its seat while sequential."""
    return workers if workers > 1 else fp.seat


@dataclass(slots=True)
class Book:
    """Adjusted usage of every limit, CPUs and memory for one assignment of pool sizes.

    The ledger keeps two books up to date as leases come, go and resize, so no call
    rebuilds usage from every lease: `charged` (every lease at its granted pool) and
    `idle` (every lease sequential, where the water-filling starts). A lease moves in a
    book by `move(fp, old, new)`, sizes being (kind, workers) or None for "not in the book".
    """

    limits: tuple[Limit, ...]
    caps: tuple[int, ...]  # limit - reserve, per limit
    usage: list[int]  # in_use - measured trees + charges, per limit
    cpus: int
    # memory headroom less its reserve, for what the pools add to the sample's figure
    # (below 0: the measured pools must give some back; UNBOUNDED: not budgeted)
    mem_bytes: int
    cpu_used: int = 0
    mem_used: int = 0

    @classmethod
    def of(cls, sample: HostSample, config: BudgetConfig) -> Book:
        """The book of a sample with no lease in it: each limit less its reserve, the CPUs
        (the config's cap, else the sample's) and the memory in bytes: the least of
        MemAvailable and each memory cgroup's headroom (`HostSample.memory_room`) less the
        reserve of the limit that binds (`costs.memory_reserve`), below 0 where a pool
        grew into it, or UNBOUNDED where `memory_per_slot` is 0 (memory is not budgeted)."""
        cpus = config.cpu_cap if config.cpu_cap is not None else sample.cpus
        mem = UNBOUNDED
        if config.memory_per_slot > 0:
            room, total, _ = sample.memory_room()
            mem = room - memory_reserve(total, config)
        caps = tuple(lim.limit - reserve_for(lim, config) for lim in sample.limits)
        usage = [lim.in_use for lim in sample.limits]
        return cls(sample.limits, caps, usage, math.floor(cpus), mem)

    def copy(self) -> Book:
        return replace(self, usage=list(self.usage))

    def move(self, fp: Footprint, old: Size | None, new: Size | None) -> int:
        """Resize one lease (None: absent) and update the usage it moves; the CPUs moved.

        A lease adds to each limit in scope its charge less its measured tree, its workers
        or its seat in CPUs (`claims.seat_of`: one, none if it asked for no worker), and its
        signed memory (`Footprint.memory`: its unsampled process workers unless its pool is
        measured; inlined for the common case: this runs on every request).
        """
        measured = fp.measured_bytes is not None
        delta = cpu = mem = 0
        if old is not None:
            kind, workers = old
            delta -= fp.charge(kind, workers) - (fp.measured or 0)
            cpu -= workers if workers > 1 else fp.seat
            mem -= fp.pending_bytes
            if kind == "process" or measured:
                mem -= fp.memory(kind, workers)
        if new is not None:
            kind, workers = new
            delta += fp.charge(kind, workers) - (fp.measured or 0)
            cpu += workers if workers > 1 else fp.seat
            mem += fp.pending_bytes
            if kind == "process" or measured:
                mem += fp.memory(kind, workers)
        if delta:
            usage = self.usage
            for i in fp.scope:
                usage[i] += delta
        self.cpu_used += cpu
        self.mem_used += mem
        return cpu

    def fits(
        self, fp: Footprint, kind: Kind, size: int, old: Size | None, cpu: CpuShare | None = None
    ) -> bool:
        """Whether `fit(fp, kind, old, cpu=cpu)[0] >= size` (size >= 1), without sizing
        the pool.

        Every limit in scope offers the lease the same tasks beyond its slack, so only the
        smallest slack matters; the two task bounds of `fit` become one need.
        """
        cost = fp.cost(kind, size)
        need = fp.base_tasks + cost
        if fp.measured is not None:
            need = max(need, fp.measured - fp.sampled_cost + cost)
        if old is not None:
            need -= fp.charge(*old)
        caps, usage = self.caps, self.usage
        for i in fp.scope:
            if caps[i] - usage[i] < need:
                return False
        if cpu is not None:
            if cpu[0] - cpu[1] < size:
                return False
        elif self.cpus - (self.cpu_used - (lease_cpus(fp, old[1]) if old else 0)) < size:
            return False
        if kind != "process":  # threads add no memory, and a measured pool's give some back
            return True
        if fp.measured_bytes is None and fp.sampled_process >= size:
            return True  # unmeasured: the sampled workers are charged nothing
        return self._spare(fp, old) >= fp.memory(kind, size)

    def fit(
        self,
        fp: Footprint,
        kind: Kind,
        old: Size | None,
        explain: bool = True,
        cpu: CpuShare | None = None,
    ) -> tuple[int, str]:
        """The largest pool of `kind` every cap lets the lease hold now, and the binding cap
        ("" unless `explain`: the request path mostly needs no reason, only the size).

        `cpu`, where several users hold leases: the CPUs of the lease's user's share and
        those its other leases hold, which bound the lease instead of the book's CPUs
        (`hierarchy.allocate_users`: one user's leases may hold more CPUs than its share,
        sequential ones or pools not shrunk yet, and that must not cost another user its
        share)."""
        best, at, at_tasks = UNBOUNDED, -1, 0  # the first limit that binds most
        held = fp.charge(*old) if old else 0
        caps, usage, base, measured = self.caps, self.usage, fp.base_tasks, fp.measured
        for i in fp.scope:
            room = caps[i] - usage[i] + held
            tasks = room - base
            if measured is not None:
                tasks = min(tasks, fp.sampled_cost + room - measured)
            n = fp.workers_for(kind, tasks)
            if n < best:
                best, at, at_tasks = n, i, tasks
        if cpu is None:
            cpus, others, what = (
                self.cpus,
                self.cpu_used - (lease_cpus(fp, old[1]) if old else 0),
                "cpu cap",
            )
        else:
            (cpus, others), what = cpu, "user's cpu share"
        why = ""
        if cpus - others < best:
            best, at = cpus - others, -1
            if explain:
                why = f"{what}: {cpus} CPUs, {others} in use"
        if kind == "process":
            n = _memory_fit(fp, self._spare(fp, old))
            if n < best:
                best, at = n, -1
                if explain and self.mem_bytes < 0:  # the pools grew into the reserve
                    why = f"memory: {-(self.mem_bytes // _MIB)} MiB into the reserve"
                elif explain:
                    # the recorded replays hold this wording: the size is in `status`
                    why = f"memory: {n - fp.sampled_process} worker slots free"
        if explain and at >= 0:  # formatted once, for the limit that binds in the end
            size = max(best + 1, MIN_POOL)
            why = (
                f"{self.limits[at].name} headroom {max(0, at_tasks)} tasks < {kind} pool of"
                f" {size} ({fp.cost(kind, size)} tasks)"
            )
        return max(0, best), why

    def _spare(self, fp: Footprint, old: Size | None) -> int:
        """Memory bytes left for the lease's pool beyond what it holds at `old` (None:
        not in the book, where its `pending_bytes` are charged as they will be)."""
        if old is None:
            return self.mem_bytes - self.mem_used - fp.pending_bytes
        return self.mem_bytes - (self.mem_used - fp.memory(*old))


def _memory_fit(fp: Footprint, spare: int) -> int:
    """The largest process pool whose memory (`Footprint.memory`) is at most `spare`.

    Unmeasured, the sampled workers are free and each one more costs `worker_bytes`. A
    measured pool below its spare (grown into the reserve) drops the fewest workers whose
    share of `measured_bytes` covers the deficit: d with d * measured // sampled >= deficit,
    that is d >= deficit * sampled / measured (the deficit is whole bytes)."""
    sampled, unit, measured = fp.sampled_process, fp.worker_bytes, fp.measured_bytes
    if measured is None or not sampled or spare >= 0:
        return sampled + max(0, spare) // unit if unit else UNBOUNDED
    if not measured:  # its workers hold nothing to give back
        return 0
    deficit = -spare
    drop = -(-deficit * sampled // measured)  # ceil(deficit * sampled / measured)
    return max(0, sampled - drop)
