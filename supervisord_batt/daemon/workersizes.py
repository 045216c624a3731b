"""Each job's memory and tasks per process worker, learned from the daemon's scans
(issue 24).

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

The tasks alike: of the same n workers, the most threads one of them runs (a worker
whose BLAS starts threads counts them), and what the pool adds beyond its workers: the
holder's tree less the tasks the holder had when it asked (`Lease.base_tasks`) and the
workers' (loky's manager and feeder threads, the resource trackers, and in a notebook
kernel the tracker's OpenBLAS thread). A run keeps the peak of each; they are learned
only where one process lease is the holder's, and the budget charges a pool of n
workers n times the first plus the second, the constants (n + 4) for a job never seen.

A job never seen with a pool is learned from its own process instead, where the budget
charges memory not written yet (`budget.memory_unwritten`): a job granted sequential (or
threads) runs its tasks there, so its holder's resident bytes are what a worker of it
takes (the interpreter and the data it loads). Its ended runs' peaks are kept alike, in
memory only (a live run's first scans may come before it loads its data), and give the
job's figure until a run of it is seen with a pool, whose workers' figure then wins (a
notebook kernel's own process holds more than its workers do).
Without it, a job first granted sequential would be charged `memory_per_slot` for every
run, learn nothing, and jobs of small workers under a tight limit never get a pool.

# A run cut short by the OOM killer teaches nothing smaller than its charge
A run during which the OOM killer killed a process in a memory cgroup the daemon watches
(an `oom_kill` count, memory.events in v2 or memory.oom_control in v1, rose between two
scans while it was live) may have been killed before its workers wrote their data: its
peak is then a lower bound, not a size, and a job learned at its workers' bare size
(20 MiB of interpreter) would have its next run's pools sized for it. Such a run is kept
only where its peak is at least the most each of its workers was charged at a scan (its
job's figure, its declared size, or `memory_per_slot`, before its own live peak could
lower the figure): a larger peak is still the truth of what they
held; a smaller one is dropped, and the job keeps the figure it had (a live run so hit
is left out of the figures until its peak reaches its charge). The count says
only that some process in the cgroup was killed, not which: every run live then is
judged so, which costs a job of small workers (charged more than it holds) the one run.

# An OOM kill the kernel reported teaches its victim's size
Where the daemon reads the kernel's log (`daemon.oomkills`), a kill is attributed to the
lease whose holder's tree its victim was in (`killed`): only that run is judged cut
short (the count above is then only the fallback), and the victim's resident bytes at
the kill are a size its job's workers reach at least: a worker's raises its run's peak,
a holder's that runs its own tasks (or ran them earlier in the run, its data still held)
its own peak. A kill no lease's tree can be found for judges every live run (`judge`),
as the count would. A job of 1.5 GiB workers charged
`memory_per_slot` (512 MiB) and killed before any scan saw their data taught nothing
before and was charged 512 MiB and killed again, run after run; now its next run is
charged at least what the victim held (`Learned.from_kill` while that is the figure).

A victim is often killed mid-write: what it held is part of its data (the kills traced
in docs/SIMULATION.md's plain rows held 57-105% of their 400 MiB), and a next run
charged only that is killed again, each kill failing a run's tasks. So a kill that
teaches charges its job KILL_MARGIN times what the victim held, until a run charged that
much ends with no kill, seen at a scan at least at what the victim held: that run's peak
is then its size, and the margin goes. A run seen only smaller (its scans came before
its workers wrote their data) says nothing of its size, and the figure without the
margin would be the victim's again: the margin stays. The runs of the job live when the
margin is set were sized before it: their charge stays what it was (a kill's victim
held more than that, so its run's peak is kept), and none of them takes the margin
away (a run not scanned yet then is charged the margin at its first scan; its peak
must still reach the victim's). A run sized too small costs a run's tasks; one sized
twice too big, half its pool for one run.

Kept in memory, and the ended runs and the kills' margins in a small file beside the
socket (`daemon.sizesfile`), written when a run ends or a margin changes: a restarted
daemon starts from them.

Each scan also gives the budget what each process lease's workers hold now (`observe`'s
result): below the memory reserve, a pool that grew gives that back as it shrinks.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import NamedTuple, TypeVar

from supervisord_batt.budget.records import Lease
from supervisord_batt.host.sample import TreeUsage

RUNS = 32  # runs per (job, uid) the figure is taken over
PERCENTILE = 0.9  # of those runs' peaks: high, so one small run does not undersize
MAX_JOBS = 4096  # (job, uid) kept; the one updated longest ago goes first
FLOOR = 1 << 20  # bytes: no worker is charged less (0 would mean "not budgeted")
KILL_MARGIN = 2  # times what an OOM kill's victim held: its job's charge until a run ends

Key = tuple[str, int]  # (job, uid)
T = TypeVar("T")


@dataclass(frozen=True)
class Learned:
    """A job's figures: bytes per worker and the runs they were learned from, and its
    tasks per worker and beyond its workers (None: no run showed them)."""

    worker_bytes: int
    runs: int
    worker_tasks: int | None = None
    pool_tasks: int | None = None
    from_kill: bool = False  # the figure is a victim's size at an OOM kill (`killed`)


class Peak(NamedTuple):
    """What a run was seen at, at most: its biggest worker's bytes and threads, and the
    tasks its pool added beyond the workers (worker_tasks 0: the tasks not seen)."""

    worker_bytes: int
    worker_tasks: int = 0
    pool_tasks: int = 0

    def top(self, other: Peak) -> Peak:
        return Peak(*(max(a, b) for a, b in zip(self, other, strict=True)))


def percentile(values: Iterable[int], q: float = PERCENTILE) -> int:
    """The nearest-rank q-th percentile of `values` (not empty)."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


@dataclass
class WorkerSizes:
    """The runs seen per (job, uid), and the figures the budget is given (`figures`)."""

    runs: int = RUNS
    changed: bool = False  # a run ended since the ended runs were last saved
    _done: dict[Key, deque[Peak]] = field(default_factory=dict)  # ended runs' peaks
    _live: dict[str, tuple[Key, Peak]] = field(default_factory=dict)  # lease -> key, peak
    # alike for the holders that run their own tasks (`runs_itself`): their bytes' peaks
    _own_done: dict[Key, deque[int]] = field(default_factory=dict)
    _own_live: dict[str, tuple[Key, int]] = field(default_factory=dict)
    # by lease id: the most bytes a worker of the run was charged at a scan, and the
    # runs live while an OOM kill was counted (see "A run cut short" above)
    _charged: dict[str, int] = field(default_factory=dict)
    _hit: set[str] = field(default_factory=set)
    # per (job, uid): the least its workers are charged since an OOM kill taught it
    # (KILL_MARGIN times what the victim held), until a run charged that ends uncut
    # (saved with the ended runs; `status` says the figure came from a kill while it is that)
    _kills: dict[Key, int] = field(default_factory=dict)
    # by lease id: the runs live when their job's margin was set, sized before it: their
    # charge is not raised to it (`killed`)
    _pinned: set[str] = field(default_factory=set)

    def observe(
        self,
        leases: Iterable[Lease],
        trees: Mapping[int, TreeUsage],
        rss: Mapping[int, int],
        charged: Mapping[str, int] | None = None,
        oom: bool = False,
    ) -> dict[str, int]:
        """One scan: `leases` live now, each holder's tree, the resident bytes per pid
        (of the descendants of process pool holders at least), the bytes each lease's
        workers are charged (by lease id) and whether an OOM kill was counted since the
        last scan. Leases gone since the last scan end their runs. Returns what each
        process lease's workers hold now, by lease id: its holder's n largest
        descendants (n: the workers its process leases hold) split by its share of them,
        which the budget takes back as a pool that grew shrinks (`BudgetLedger.update`)."""
        leases = list(leases)
        for lease_id, size in (charged or {}).items():  # the most: the charge before its
            # own live peak lowered its job's figure (a bare worker seen before its data)
            if lease_id not in self._pinned:
                self._charged[lease_id] = max(size, self._charged.get(lease_id, 0))
        if oom:  # the runs ending now were live when it was counted too
            self._hit.update(lease.lease_id for lease in leases)
            self._hit.update(self._live, self._own_live)
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
            ranked = sorted(
                ((rss[p], i) for i, p in enumerate(tree.pids) if i and p in rss), reverse=True
            )[:workers]
            if not ranked:
                continue  # its pool is not started yet
            peak = Peak(ranked[0][0], *_tasks(tree, held, [i for _, i in ranked]))
            held_bytes = sum(size for size, _ in ranked)
            for lease in held:
                pools[lease.lease_id] = held_bytes * lease.workers // workers
                key = (lease.job, lease.uid)
                _, before = self._live.get(lease.lease_id, (key, peak))
                self._live[lease.lease_id] = (key, before.top(peak))
        for lease_id in [i for i in self._live if i not in live]:
            self._end(*self._live.pop(lease_id), lease_id)
        self._observe_own(leases, rss, live)
        for lease_id in [i for i in self._charged if i not in live]:
            del self._charged[lease_id]
        self._hit.intersection_update(live)
        self._pinned.intersection_update(live)
        return pools

    def _observe_own(self, leases: Iterable[Lease], rss: Mapping[int, int], live: set[str]) -> None:
        """The holders that run their own tasks, where `rss` has them: each run's peak."""
        for lease in leases:
            if runs_itself(lease) and lease.pid in rss:
                key = (lease.job, lease.uid)
                _, before = self._own_live.get(lease.lease_id, (key, 0))
                self._own_live[lease.lease_id] = (key, max(before, rss[lease.pid]))
        for lease_id in [i for i in self._own_live if i not in live]:
            key, size = self._own_live.pop(lease_id)
            if self._teaches(lease_id, size):
                _keep(self._own_done, key, size, self.runs)
            if self._uncut(key, lease_id, size) and key in self._done:
                # its pool's figure was a victim's, killed mid-write: this run, charged
                # the margin, ran its tasks whole in its own process
                _keep(self._done, key, Peak(size), self.runs)
                self.changed = True

    def killed(self, lease: Lease, rss: int, holder: bool, charged: int) -> bool:
        """An OOM kill the kernel reported in `lease`'s tree: its victim held `rss` bytes
        and was its holder (`holder`) or one of its descendants; its workers were charged
        `charged` bytes each. The run is judged cut short, and the victim's size is the
        least one of its job's workers takes where the victim was one: a worker of its
        process pool, or its holder running its own tasks, or holding a pool after it ran
        them in this run (seen so at a scan: the data they wrote is still in its
        process). Whether it taught a size."""
        lease_id, key = lease.lease_id, (lease.job, lease.uid)
        self._hit.add(lease_id)
        if lease_id not in self._pinned or lease_id not in self._charged:  # pinned: a
            # kill before taught its job a margin, its workers sized before that
            self._charged[lease_id] = max(charged, self._charged.get(lease_id, 0))
        if holder and (runs_itself(lease) or lease_id in self._own_live):
            _, before = self._own_live.get(lease_id, (key, 0))
            self._own_live[lease_id] = (key, max(before, rss))
        elif not holder and lease.kind == "process" and lease.workers > 0:
            _, peak = self._live.get(lease_id, (key, Peak(0)))
            self._live[lease_id] = (key, peak.top(Peak(rss)))
        else:
            return False  # a holder of a pool, a thread: its size is not a worker's
        if rss < self._charged[lease_id]:  # the most it was charged, as `_teaches` says
            return False  # killed short of its charge: the job keeps what it had
        _keep_latest(self._kills, key, max(KILL_MARGIN * rss, self._kills.get(key, 0)))
        self.changed = True  # saved: a restart must not charge the victim's size alone
        # the job's runs live now were sized before the margin: it is not their charge
        runs = (*self._live.items(), *self._own_live.items())
        self._pinned.update(i for i, (k, _) in runs if k == key)
        self._pinned.add(lease_id)
        return True

    def judge(self, lease_ids: Iterable[str]) -> None:
        """Judge these live runs cut short, as an oom_kill count that rose judges every
        live run: a kill the kernel reported that no lease's tree could be found for (a
        worker reaped before its report was read) may have hit any of them."""
        self._hit.update(lease_ids)

    def _teaches(self, lease_id: str, size: int) -> bool:
        """Whether a run that ends at `size` bytes a worker is kept: not where an OOM
        kill was counted while it was live and it holds less than its charge."""
        return lease_id not in self._hit or size >= self._charged.get(lease_id, 0)

    def _end(self, key: Key, peak: Peak, lease_id: str) -> None:
        if self._teaches(lease_id, peak.worker_bytes):
            _keep(self._done, key, peak, self.runs)
            self.changed = True
        self._uncut(key, lease_id, peak.worker_bytes)

    def _uncut(self, key: Key, lease_id: str, size: int) -> bool:
        """A run that ends at `size` bytes a worker: with no kill, charged its job's kill
        margin and seen at least at what the victim held, it takes the margin away (its
        peak is the size now; one charged less ran before the kill, one seen smaller was
        not seen at its data). Whether it did."""
        margin = self._kills.get(key)
        if not margin or lease_id in self._hit or size < margin // KILL_MARGIN:
            return False
        if self._charged.get(lease_id, 0) < margin:
            return False
        del self._kills[key]
        self.changed = True
        return True

    def end_all(self) -> None:
        """End every live run (the daemon stops: what they were seen at is kept; the
        holders' own sizes are not: they are learned again at the next scans)."""
        for lease_id, (key, peak) in self._live.items():
            self._end(key, peak, lease_id)
        self._live.clear()

    def ended(self) -> dict[Key, list[Peak]]:
        """The ended runs' peaks per (job, uid), oldest first: what is saved."""
        return {key: list(runs) for key, runs in self._done.items()}

    def margins(self) -> dict[Key, int]:
        """The kills' margins still charged, per (job, uid): saved with the ended runs."""
        return dict(self._kills)

    def restore(
        self, ended: Mapping[Key, Iterable[Peak]], margins: Mapping[Key, int] | None = None
    ) -> None:
        """Start from the ended runs a daemon before saved (`ended`), oldest first, and
        the margins it still charged (`margins`)."""
        for key, runs in ended.items():
            for peak in runs:  # judged when they ended: kept as they were saved
                _keep(self._done, key, peak, self.runs)
        for key, margin in (margins or {}).items():
            _keep_latest(self._kills, key, margin)
        self.changed = False

    def figures(self) -> dict[Key, Learned]:
        """Every (job, uid) seen: the percentile of its last runs' peaks and its live ones'."""
        peaks: dict[Key, list[Peak]] = {key: list(runs) for key, runs in self._done.items()}
        for lease_id, (key, peak) in self._live.items():
            if self._teaches(lease_id, peak.worker_bytes):  # a live run cut short: not yet
                peaks.setdefault(key, []).append(peak)
        # the holders' own runs once ended: a live one's first scans may come before it
        # loads its data, and a figure learned then would size pools at its bare size
        own = self._own_done.items()
        figures = {key: Learned(max(FLOOR, percentile(v)), len(v)) for key, v in own}
        figures.update((key, _learned(values)) for key, values in peaks.items())  # pools win
        for key, margin in self._kills.items():
            learned = figures.get(key, Learned(margin, 0))
            if learned.worker_bytes <= margin:
                figures[key] = replace(learned, worker_bytes=margin, from_kill=True)
        return figures

    def ended_runs(self) -> dict[Key, int]:
        """Per (job, uid) in `figures`, the runs its figure has from ended runs: what
        may replace a declared size (budget.costs.per_worker). Live runs do not count:
        a job array's first scan sees every job of it before their workers load their
        data, and three bare live runs would outvote what the operator declared."""
        pools = set(self._done) | {key for key, _ in self._live.values()}
        runs = {key: len(v) for key, v in self._own_done.items() if key not in pools}
        runs.update((key, len(self._done.get(key, ()))) for key in pools)
        return runs

    def pool_pids(self, leases: Iterable[Lease], trees: Mapping[int, TreeUsage]) -> list[int]:
        """The descendants of the holders of process pools: whose memory to read."""
        holders = {lease.pid for lease in leases if lease.kind == "process" and lease.workers}
        return [p for pid in holders if pid in trees for p in trees[pid].pids[1:]]


def oom_rose(before: Mapping[str, int], now: Mapping[str, int]) -> bool:
    """Whether a cgroup's OOM kill count rose from `before` to `now` (by cgroup path; a
    cgroup not in `before` was not watched then, one whose count fell was made again)."""
    return any(count > before.get(path, count) for path, count in now.items())


def runs_itself(lease: Lease) -> bool:
    """Whether the lease's holder runs its tasks in its own process: it asked for workers
    and holds no process pool (sequential, or threads)."""
    return lease.wanted > 0 and not (lease.kind == "process" and lease.workers)


def holder_bytes(leases: Iterable[Lease], rss: Mapping[int, int]) -> dict[str, int]:
    """What the holder of each lease that runs its own tasks (`runs_itself`) holds, by
    lease id: the budget charges it a worker of its job until it holds that much
    (`budget.claims.pending`)."""
    return {
        lease.lease_id: rss[lease.pid]
        for lease in leases
        if runs_itself(lease) and lease.pid in rss
    }


def _keep(done: dict[Key, deque[T]], key: Key, run: T, runs: int) -> None:
    """Keep an ended run's figure as its key's newest, at most `runs` per key and
    MAX_JOBS keys (the key updated longest ago goes first)."""
    kept = done.pop(key, None)  # popped and put back: the newest last
    if kept is None:
        kept = deque(maxlen=runs)
        if len(done) >= MAX_JOBS:
            del done[next(iter(done))]
    kept.append(run)
    done[key] = kept


def _keep_latest(kept: dict[Key, int], key: Key, value: int) -> None:
    """`value` as `key`'s newest, at most MAX_JOBS keys (the oldest goes first)."""
    kept.pop(key, None)
    if len(kept) >= MAX_JOBS:
        del kept[next(iter(kept))]
    kept[key] = value


def _tasks(tree: TreeUsage, held: list[Lease], workers: list[int]) -> tuple[int, int]:
    """(the most threads one worker runs, the tasks the pool adds beyond its workers) of a
    holder's tree, `workers` the indices of its workers in it; (0, 0) where they cannot be
    told: several leases share the holder, or not every worker is up yet."""
    if len(held) != 1 or len(workers) < held[0].workers or len(tree.threads) != len(tree.pids):
        return 0, 0
    counts = [tree.threads[i] for i in workers]
    return max(1, *counts), max(0, tree.tasks - held[0].base_tasks - sum(counts))


def _learned(peaks: list[Peak]) -> Learned:
    """A job's figures from its runs' peaks (see the top of the module)."""
    size = max(FLOOR, percentile(p.worker_bytes for p in peaks))
    seen = [p for p in peaks if p.worker_tasks]
    if not seen:
        return Learned(size, len(peaks))
    each = percentile(p.worker_tasks for p in seen)
    return Learned(size, len(peaks), each, percentile(p.pool_tasks for p in seen))
