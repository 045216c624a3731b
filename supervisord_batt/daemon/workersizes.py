"""Each job's memory per process worker, learned from the daemon's scans (issue 24).

# Why learn it
The budget charges each process worker it grants and no sample has seen yet some bytes
of memory. A fixed `budget.memory_per_slot` (512 MiB by default) grants a job of 2 GiB
workers four times what fits, and holds a job of 50 MiB workers back ten times over. The
daemon already reads every lease holder's process tree at each scan; the resident memory
of the holder's largest descendants is what its workers take.

# What is counted
At each scan, for each holder of process leases: the resident bytes (statm) of its
descendants, the n largest of them (n: the process workers its leases hold, so loky's
and multiprocessing's resource trackers, smaller than a worker that holds data, are
mostly left out, and the holder's own process always is), and of those the largest:
the size to plan for is the biggest worker's. A run (one lease) keeps its peak over its
scans. A run ends with its lease; the last RUNS runs per (job, uid) are kept, and the
figure the budget charges is their PERCENTILE, the live runs' peaks counted too: a
worker that grows past its job's figure raises it at the next scan, so the job's next
workers are charged what it grew to. A job never seen is charged `memory_per_slot`.

Kept in memory only: a restarted daemon learns again within a run of each job.

Each scan also gives the budget what each process lease's workers hold now (`observe`'s
result): below the memory reserve, a pool that grew gives that back as it shrinks.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from supervisord_batt.budget.records import Lease
from supervisord_batt.host.sample import TreeUsage

RUNS = 32  # runs per (job, uid) the figure is taken over
PERCENTILE = 0.9  # of those runs' peaks: high, so one small run does not undersize
MAX_JOBS = 4096  # (job, uid) kept; the one updated longest ago goes first
FLOOR = 1 << 20  # bytes: no worker is charged less (0 would mean "not budgeted")

Key = tuple[str, int]  # (job, uid)


@dataclass(frozen=True)
class Learned:
    """A job's figure: bytes per worker, and the runs it was learned from."""

    worker_bytes: int
    runs: int


def percentile(values: Iterable[int], q: float = PERCENTILE) -> int:
    """The nearest-rank q-th percentile of `values` (not empty)."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


@dataclass
class WorkerSizes:
    """The runs seen per (job, uid), and the figures the budget is given (`figures`)."""

    runs: int = RUNS
    _done: dict[Key, deque[int]] = field(default_factory=dict)  # ended runs' peaks
    _live: dict[str, tuple[Key, int]] = field(default_factory=dict)  # lease -> key, peak

    def observe(
        self, leases: Iterable[Lease], trees: Mapping[int, TreeUsage], rss: Mapping[int, int]
    ) -> dict[str, int]:
        """One scan: `leases` live now, each holder's tree, the resident bytes per pid
        (of the descendants of process pool holders at least). Leases gone since the
        last scan end their runs. Returns what each process lease's workers hold now, by
        lease id: its holder's n largest descendants (n: the workers its process leases
        hold) split by its share of them, which the budget takes back as a pool that grew
        shrinks (`BudgetLedger.update`)."""
        pools: dict[str, int] = {}
        by_pid: dict[int, list[Lease]] = {}
        live = set()
        for lease in leases:
            live.add(lease.lease_id)
            if lease.kind == "process" and lease.workers > 0:
                by_pid.setdefault(lease.pid, []).append(lease)
        for pid, held in by_pid.items():
            tree = trees.get(pid)
            if tree is None:
                continue
            workers = sum(lease.workers for lease in held)
            sizes = sorted((rss[p] for p in tree.pids[1:] if p in rss), reverse=True)
            if not sizes:
                continue  # its pool is not started yet
            biggest, held_bytes = max(sizes[:workers]), sum(sizes[:workers])
            for lease in held:
                pools[lease.lease_id] = held_bytes * lease.workers // workers
                key = (lease.job, lease.uid)
                _, peak = self._live.get(lease.lease_id, (key, 0))
                self._live[lease.lease_id] = (key, max(peak, biggest))
        for lease_id in [i for i in self._live if i not in live]:
            self._end(*self._live.pop(lease_id))
        return pools

    def _end(self, key: Key, peak: int) -> None:
        runs = self._done.pop(key, None)  # popped and put back: the newest last
        if runs is None:
            runs = deque(maxlen=self.runs)
            if len(self._done) >= MAX_JOBS:
                del self._done[next(iter(self._done))]
        runs.append(peak)
        self._done[key] = runs

    def figures(self) -> dict[Key, Learned]:
        """Every (job, uid) seen: the percentile of its last runs' peaks and its live ones'."""
        peaks: dict[Key, list[int]] = {key: list(runs) for key, runs in self._done.items()}
        for key, peak in self._live.values():
            peaks.setdefault(key, []).append(peak)
        return {
            key: Learned(max(FLOOR, percentile(values)), len(values))
            for key, values in peaks.items()
        }

    def pool_pids(self, leases: Iterable[Lease], trees: Mapping[int, TreeUsage]) -> list[int]:
        """The descendants of the holders of process pools: whose memory to read."""
        holders = {lease.pid for lease in leases if lease.kind == "process" and lease.workers}
        return [p for pid in holders if pid in trees for p in trees[pid].pids[1:]]
