"""Each job's memory per worker learned from scans (issue 24): the n largest descendants
of a pool's holder, a run's peak, the high percentile over the last runs per (job, uid)."""

from __future__ import annotations

import dataclasses

from supervisord_batt.daemon.workersizes import (
    FLOOR,
    RUNS,
    Learned,
    WorkerSizes,
    holder_bytes,
    percentile,
    runs_itself,
)
from supervisord_batt.host.sample import TreeUsage
from tests.support.sizes import MIB, lease, tree


def test_a_run_counts_its_largest_workers_not_the_holder_nor_the_trackers() -> None:
    sizes = WorkerSizes()
    t, rss = tree(100, 300, 290, 15, 12)  # two workers, two resource trackers
    held = [lease("L1", 100, 2)]
    assert sorted(sizes.pool_pids(held, {100: t})) == [101, 102, 103, 104]
    sizes.observe(held, {100: t}, rss)
    assert sizes.figures() == {("batt", 1000): Learned(300 * MIB, 1)}


def test_each_process_lease_is_given_what_its_workers_hold_now() -> None:
    """What a scan returns for the budget to take back as a grown pool shrinks: the
    holder's n largest descendants now (not the peak), split over its process leases by
    their workers; a thread lease, or a pool not started, has none."""
    sizes = WorkerSizes()
    t, rss = tree(100, 400, 300, 200, 100, 15)  # 4 workers of two leases, one tracker
    u, rss2 = tree(200)  # a pool not started yet
    held = [lease("L1", 100, 3), lease("L2", 100, 1), lease("L3", 100, 4, kind="thread")]
    pools = sizes.observe([*held, lease("L4", 200, 2)], {100: t, 200: u}, {**rss, **rss2})
    assert pools == {"L1": 750 * MIB, "L2": 250 * MIB}
    t, rss = tree(100, 100, 100, 100, 100, 15)  # shrunk back: now, not the peak
    assert sizes.observe(held, {100: t}, rss) == {"L1": 300 * MIB, "L2": 100 * MIB}


def test_a_jobs_tasks_per_worker_and_beyond_them_are_learned_from_its_tree() -> None:
    """Issue 24, learned tasks: a holder that had 3 tasks when it asked, three workers
    running 2, 3 and 2 threads (a BLAS thread pool), and the pool's manager and feeder
    threads (2 more in the holder) and two resource trackers (2 of them in a notebook
    kernel, OpenBLAS's thread): 3 tasks per worker, the pool +6. A run keeps its peaks
    (an early scan sees fewer); the figure is the high percentile over the runs."""
    sizes = WorkerSizes()
    held = [lease("L1", 100, 3, base_tasks=3)]
    t, rss = tree(100, 200, 210, threads=(4, 2, 2))  # two workers up of three: not told
    sizes.observe(held, {100: t}, rss)
    assert sizes.figures()[("batt", 1000)].worker_tasks is None
    t, rss = tree(100, 200, 210, 220, 10, 12, threads=(5, 2, 3, 2, 2, 2))
    sizes.observe(held, {100: t}, rss)
    t, rss = tree(100, 200, 210, 220, 10, 12, threads=(5, 2, 2, 2, 1, 2))  # fewer later
    sizes.observe(held, {100: t}, rss)
    assert sizes.figures() == {("batt", 1000): Learned(220 * MIB, 1, 3, 6)}
    # several leases of one holder: memory is learned, the tasks cannot be told apart
    two = [lease("L2", 300, 2, job="two"), lease("L3", 300, 2, job="two")]
    u, more = tree(300, 100, 100, 100, 100, threads=(3, 1, 1, 1, 1))
    sizes.observe([*held, *two], {100: t, 300: u}, {**rss, **more})
    assert sizes.figures()[("two", 1000)].worker_tasks is None


def test_a_run_keeps_its_peak_and_a_worker_that_grows_raises_the_figure_at_once() -> None:
    sizes = WorkerSizes()
    held = [lease("L1", 100, 2)]
    for mib in (100, 400, 200):
        t, rss = tree(100, mib, 50)
        sizes.observe(held, {100: t}, rss)
        if mib == 400:
            assert sizes.figures()[("batt", 1000)].worker_bytes == 400 * MIB
    assert sizes.figures() == {("batt", 1000): Learned(400 * MIB, 1)}
    sizes.observe([], {}, {})  # the lease ended: its run is done, its peak kept
    assert sizes.figures() == {("batt", 1000): Learned(400 * MIB, 1)}


def test_the_figure_is_the_high_percentile_of_the_last_runs_per_job_and_user() -> None:
    sizes = WorkerSizes()
    for i in range(RUNS + 8):
        mib = 2000 if i < 8 else (100 if i % 8 else 150)  # the first 8 runs fall out
        t, rss = tree(100, mib)
        sizes.observe([lease(f"L{i}", 100, 1)], {100: t}, rss)
        sizes.observe([], {}, {})
    t, rss = tree(200, 60)
    sizes.observe([lease("S", 200, 4, job="small")], {200: t}, rss)
    figures = sizes.figures()
    assert figures[("batt", 1000)] == Learned(150 * MIB, RUNS)  # 4 of 32 at 150: p90
    assert figures[("small", 1000)] == Learned(60 * MIB, 1)


def test_sequential_and_thread_leases_and_unstarted_pools_teach_no_pool_figure() -> None:
    """Not from their trees: a thread pool's or a sequential job's descendants are none
    of its workers (a holder's own size is learned only where the scan read it: below)."""
    sizes = WorkerSizes()
    t, rss = tree(100, 300)
    del rss[100]  # the daemon reads the holders only where their memory is charged
    sizes.observe([lease("T", 100, 4, kind="thread"), lease("S", 100, 0)], {100: t}, rss)
    bare = TreeUsage(300, (300,), 1)
    sizes.observe([lease("P", 300, 2)], {300: bare}, {300: 500 * MIB})
    assert sizes.figures() == {}


def test_a_tiny_worker_is_charged_at_least_the_floor() -> None:
    sizes = WorkerSizes()
    t, _ = tree(100, 1)
    sizes.observe([lease("L", 100, 1)], {100: t}, {101: 4096})
    assert sizes.figures()[("batt", 1000)].worker_bytes == FLOOR


def test_percentile_is_nearest_rank() -> None:
    assert percentile([5]) == 5
    assert percentile(range(1, 11)) == 9
    assert percentile(range(1, 15)) == 13  # 14 runs: the 13th


def test_the_holders_that_run_their_own_tasks_are_given_what_they_hold() -> None:
    """A job granted sequential or threads runs its tasks in its own process: the budget
    charges it a worker of its job until the holder holds that much (`holder_bytes`). A
    process pool's holder runs none, nor does a lease that asked for no worker."""
    rss = {100: 450 * MIB, 200: 30 * MIB, 300: 900 * MIB, 400: 60 * MIB}
    held = [
        dataclasses.replace(lease("S", 100, 0, kind="sequential"), wanted=3),
        lease("T", 200, 4, kind="thread"),
        lease("P", 300, 2),
        lease("N", 400, 0, kind="sequential"),  # wanted 0: a job checking in
        dataclasses.replace(lease("G", 500, 0, kind="sequential"), wanted=2),  # gone
    ]
    assert [runs_itself(x) for x in held] == [True, True, False, False, True]
    assert holder_bytes(held, rss) == {"S": 450 * MIB, "T": 30 * MIB}


def test_a_job_never_seen_with_a_pool_is_learned_from_its_own_process() -> None:
    """A job granted sequential runs its tasks in its own process: its holder's peak is
    its figure (kept per run, as a pool's), until a run of it is seen with a pool, whose
    workers' figure wins. Without it a job first granted sequential learned nothing and
    was charged memory_per_slot at every run."""
    sizes = WorkerSizes()
    seq = dataclasses.replace(lease("S", 100, 0, kind="sequential"), wanted=3)
    t = TreeUsage(100, (100,), 1)
    sizes.observe([seq], {100: t}, {100: 80 * MIB})
    sizes.observe([seq], {100: t}, {100: 430 * MIB})
    assert sizes.figures() == {}  # not while it runs: its data may not be loaded yet
    sizes.observe([], {}, {})  # its run ended: its peak is its figure
    assert sizes.figures() == {("batt", 1000): Learned(430 * MIB, 1)}
    pool, rss = tree(200, 120, 15)
    sizes.observe([lease("P", 200, 1)], {200: pool}, rss)
    assert sizes.figures() == {("batt", 1000): Learned(120 * MIB, 1)}
