"""Memory not written yet is charged (`budget.memory_unwritten`, `claims.pending`): a job
that runs its own tasks is charged a worker of its job until a scan sees its process hold
that much, and a pool's workers until a scan sees them at their size. Without it, four
jobs of 400 MiB workers overran a memory cgroup of half their demand (docs/BENCHMARKS.md,
Memory): the sequential ones wrote their data uncharged, and the sample counted pools at
their size before their workers had written anything."""

from __future__ import annotations

from supervisord_batt.budget.claims import pending
from tests.support.budget import GIB, ledger, limit, request, sample

MIB = 1 << 20


def test_a_job_running_its_own_tasks_is_charged_a_worker_of_its_job() -> None:
    """8 GiB free, 1 GiB a worker: a job granted sequential (it asked for 1 worker) will
    write a worker's data in its own process, and so will the newcomer if it stays
    sequential: 6 GiB are left for its pool, not 8."""
    led = ledger(mem=8 * GIB, memory_per_slot=GIB, memory_unwritten=True)
    alone = led.acquire(request("a", 1))
    assert (alone.kind, alone.workers) == ("sequential", 0)
    pool = led.acquire(request("b", 16, kinds=("process",)))
    assert (pool.kind, pool.workers) == ("process", 6), pool
    assert pool.reason.startswith("memory: 6 worker slots free"), pool.reason


def test_a_learned_job_running_its_own_tasks_is_charged_its_learned_size() -> None:
    led = ledger(mem=4 * GIB, memory_per_slot=GIB // 2, memory_unwritten=True)
    led.learn({("big", 1000): 2 * GIB})
    led.acquire(request("a", 1, job="big"))  # sequential: 2 GiB to write
    pool = led.acquire(request("b", 16, kinds=("process",), job="small"))
    # 4 GiB less the 2 GiB it will write and b's own seat (512 MiB): 3 of 512 MiB
    assert (pool.kind, pool.workers) == ("process", 3), pool


def test_a_job_running_its_own_tasks_is_charged_until_a_scan_sees_it_hold_a_worker() -> None:
    """Once its process holds its worker's size, the sample's usage has it: charging it
    too would count it twice. What it holds short of the size is still owed."""
    led = ledger(mem=8 * GIB, memory_per_slot=GIB, memory_unwritten=True)
    alone = led.acquire(request("a", 1)).lease_id
    # the sample shows the job's 1 GiB used (7 free) and the scan saw its process hold it
    led.update(sample(limit(), mem=7 * GIB), {alone: 1}, {}, {alone: GIB})
    pool = led.acquire(request("b", 16, kinds=("process",)))
    assert (pool.kind, pool.workers) == ("process", 6), pool  # 7 less b's own seat
    led.release(pool.lease_id)
    # a scan that saw it hold a quarter of its worker: three quarters are still owed
    led.update(sample(limit(), mem=7 * GIB), {alone: 1}, {}, {alone: GIB // 4})
    pool = led.acquire(request("c", 16, kinds=("process",)))
    assert (pool.kind, pool.workers) == ("process", 5), pool  # 7 - 3/4 - 1 GiB


def test_a_pool_is_charged_until_a_scan_sees_its_workers_at_their_size() -> None:
    """A sample taken just after a grant counts the pool's workers (its tree is
    measured) before they have written their data: they are charged what they hold
    short of their size, at the last scan; a pool the scan has not seen at all, all of
    it. Before the charge, the 4 sampled workers were charged nothing and a newcomer got
    the 8 GiB they were about to write."""
    led = ledger(mem=8 * GIB, memory_per_slot=GIB, memory_unwritten=True)
    first = led.acquire(request("a", 4, kinds=("process",)))
    assert (first.kind, first.workers) == ("process", 4)
    # the workers are up (19 MiB each) but have written nothing: 8 GiB still free
    led.update(sample(limit(), mem=8 * GIB), {first.lease_id: 9}, {first.lease_id: 76 * MIB})
    pool = led.acquire(request("b", 16, kinds=("process",)))
    # 8 GiB less a's 4 GiB owed (less the 76 MiB seen) and b's own seat: 3 workers
    assert (pool.kind, pool.workers) == ("process", 3), pool
    led.release(pool.lease_id)
    # no scan has seen it: owed in full
    led.update(sample(limit(), mem=8 * GIB), {first.lease_id: 9})
    pool = led.acquire(request("c", 16, kinds=("process",)))
    assert (pool.kind, pool.workers) == ("process", 3), pool
    led.release(pool.lease_id)
    # written: the sample has them (4 GiB free), and they are charged nothing more
    led.update(sample(limit(), mem=4 * GIB), {first.lease_id: 9}, {first.lease_id: 4 * GIB})
    pool = led.acquire(request("d", 16, kinds=("process",)))
    assert (pool.kind, pool.workers) == ("process", 3), pool  # 4 less d's own seat


def test_what_is_owed_is_never_below_zero_nor_owed_without_a_worker() -> None:
    assert pending("process", 4, 1, GIB, None) == 4 * GIB
    assert pending("process", 4, 1, GIB, 5 * GIB) == 0  # grown past its figure: not owed
    assert pending("sequential", 0, 1, GIB, GIB // 4) == 3 * GIB // 4
    assert pending("thread", 3, 1, GIB, None) == GIB  # threads run in its own process
    assert pending("sequential", 0, 0, GIB, None) == 0  # it asked for no worker


def test_off_the_sample_alone_counts_what_was_granted_before_it() -> None:
    led = ledger(mem=8 * GIB, memory_per_slot=GIB, memory_unwritten=False)
    led.acquire(request("a", 1))
    pool = led.acquire(request("b", 16, kinds=("process",)))
    assert (pool.kind, pool.workers) == ("process", 8), pool
