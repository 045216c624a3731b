"""Unit tests of the budget ledger: hand-built samples and a fake clock, no sleeping."""

from __future__ import annotations

import dataclasses

import pytest

from supervisord_batt.budget.claims import MAX_SCOPES, Scopes, scope_of
from supervisord_batt.budget.costs import PROCESS_POOL_OVERHEAD, pool_cost
from supervisord_batt.budget.ledger import BudgetLedger
from supervisord_batt.budget.records import Grant, Lease, LeaseError, Request
from supervisord_batt.host.sample import HostSample, Limit, Psi
from supervisord_batt.protocol import KINDS
from tests.fakes import FakeClock
from tests.support.budget import (
    CGROUP,
    GIB,
    PRESSURE,
    config,
    ledger,
    limit,
    request,
    sample,
)

# -- grants and fallbacks ---------------------------------------------------------------


def test_process_grant_when_idle() -> None:
    led = ledger()
    grant = led.acquire(request(want=4))
    assert (grant.kind, grant.workers, grant.target, grant.level) == ("process", 4, 4, "normal")
    assert grant.lease_id == "L1"
    assert grant.ttl == 30.0
    stats = led.statistics()
    assert stats.leased == 4
    assert stats.leased_tasks == 4 + PROCESS_POOL_OVERHEAD
    assert stats.free_tasks["threads-max"] == 10_000 - 1 - 8


def test_cost_constants_match_the_measured_pool() -> None:
    # docs/FACTS.md: ProcessPoolExecutor(3) after submit is 8 tasks, main thread included
    assert 1 + pool_cost("process", 3) == 8
    assert pool_cost("thread", 3) == 3
    assert pool_cost("sequential", 5) == 0
    assert pool_cost("process", 0) == 0


def test_falls_back_to_thread_then_sequential_as_headroom_shrinks() -> None:
    # base 1 task: 8 free -> process of 3 (1 + 7); 5 free -> thread of 4; 2 free -> nothing
    led = ledger(limit(100, 92))
    assert (led.acquire(request(want=4)).kind, led.statistics().leased) == ("process", 3)
    led = ledger(limit(100, 95))
    grant = led.acquire(request(want=4))
    assert (grant.kind, grant.workers) == ("thread", 4)
    led = ledger(limit(100, 98))
    grant = led.acquire(request(want=4))
    assert (grant.kind, grant.workers) == ("sequential", 0)
    assert "threads-max headroom 1 tasks < thread pool of 2" in grant.reason


def test_kinds_the_request_accepts_are_respected() -> None:
    led = ledger(limit(100, 95))
    grant = led.acquire(request(want=4, kinds=("process", "sequential")))
    assert grant.kind == "sequential"
    grant = ledger().acquire(request(want=4, kinds=("thread",)))
    assert (grant.kind, grant.workers) == ("thread", 4)
    grant = ledger().acquire(request(want=4, kinds=("sequential",)))
    assert (grant.kind, grant.workers) == ("sequential", 0)


def test_pool_of_one_becomes_sequential() -> None:
    grant = ledger().acquire(request(want=1))
    assert (grant.kind, grant.workers, grant.target) == ("sequential", 0, 0)
    # 5 tasks beyond the base: a process pool of 1 would fit, so it is threads
    grant = ledger(limit(100, 94)).acquire(request(want=4))
    assert (grant.kind, grant.workers) == ("thread", 4)
    # 1 task beyond the base: a thread pool of 1 would fit, so it is sequential
    grant = ledger(limit(100, 98)).acquire(request(want=4))
    assert (grant.kind, grant.workers) == ("sequential", 0)


def test_no_sample_yet_means_sequential() -> None:
    led = BudgetLedger(config(), FakeClock())
    grant = led.acquire(request())
    assert (grant.kind, grant.reason) == ("sequential", "no host sample yet")


def test_invalid_request_is_refused() -> None:
    with pytest.raises(LeaseError) as err:
        ledger().acquire(request(want=-1))
    assert err.value.code == "invalid_request"


# -- scopes and reserves ----------------------------------------------------------------


def test_cgroup_scope_only_charges_holders_inside_it() -> None:
    cg = limit(20, 0, "cgroup", CGROUP, name="cgroup:/batt")
    led = ledger(limit(), cg)
    inside = led.acquire(request("a", 8, cgroups=(CGROUP + "/job1",)))
    assert (inside.kind, inside.workers) == ("process", 8)  # 1 + 12 tasks <= 20
    outside = led.acquire(request("b", 8, cgroups=("/sys/fs/cgroup/pids/other",)))
    assert (outside.kind, outside.workers) == ("process", 8)
    # a sibling whose name only starts like the scope is outside it too
    sibling = led.acquire(request("c", 8, cgroups=(CGROUP + "2",)))
    assert sibling.workers == 8
    assert led.statistics().free_tasks["cgroup:/batt"] == 20 - 13
    # the cgroup itself (not only its children) is in scope: 7 free, 1 of them d's base
    exact = led.acquire(request("d", 8, cgroups=(CGROUP,)))
    assert (exact.kind, exact.workers) == ("process", 2)
    # both holders inside the cgroup share it: 2 * (1 + 5 + 4) <= 20
    assert led.renew(inside.lease_id).target == 5
    assert led.renew(outside.lease_id).target == 8


def test_cgroup_headroom_names_the_limit_in_the_reason() -> None:
    cg = limit(7, 0, "cgroup", CGROUP, name="cgroup:/batt")
    grant = ledger(limit(), cg).acquire(
        request(want=4, kinds=("process",), base_tasks=3, cgroups=(CGROUP,))
    )
    assert grant.kind == "sequential"
    assert grant.reason == "cgroup:/batt headroom 4 tasks < process pool of 2 (6 tasks)"


def test_nproc_scope_by_uid() -> None:
    nproc = limit(12, 0, "nproc", 1000, name="nproc:alice")
    led = ledger(limit(), nproc)
    alice = led.acquire(request("a", 8, uid=1000))
    assert (alice.kind, alice.workers) == ("process", 7)  # 1 + 7 + 4 = 12
    bob = led.acquire(request("b", 8, uid=1001))
    assert (bob.kind, bob.workers) == ("process", 8)
    assert led.statistics().free_tasks["nproc:alice"] == 0


def test_reserve_absolute_and_percent() -> None:
    # 100 free: reserve max(10, 20% of 100) = 20 -> 80 - 1 base - 4 = 75... capped at want
    led = ledger(limit(100, 0), reserve_tasks=10, reserve_percent=20.0)
    assert led.statistics().free_tasks["threads-max"] == 80
    assert led.acquire(request(want=100)).workers == 64  # max_per_lease
    led = ledger(limit(100, 70), reserve_tasks=20, reserve_percent=5.0)
    grant = led.acquire(request(want=100))
    assert (grant.kind, grant.workers) == ("process", 5)  # 100 - 20 - 70 - 1 - 4
    led = ledger(limit(1000, 900), reserve_tasks=10, reserve_percent=9.0)
    grant = led.acquire(request(want=100))
    assert (grant.kind, grant.workers) == ("process", 5)  # 1000 - 90 - 900 - 1 - 4


# -- other caps ---------------------------------------------------------------------------


def test_cpu_cap_two_cpus_eight_holders_mostly_sequential() -> None:
    led = ledger(cpus=2.0)
    grants = [led.acquire(request(f"h{i}", 4)) for i in range(8)]
    assert (grants[0].kind, grants[0].workers) == ("process", 2)
    assert all(g.kind == "sequential" for g in grants[1:])
    assert grants[1].reason == "cpu cap: 2 CPUs, 2 in use"
    # the first pool is told to shrink: 8 jobs on 2 CPUs run best sequentially
    assert led.renew(grants[0].lease_id).target == 0


def test_cpu_cap_overrides_sample() -> None:
    led = ledger(cpus=16.0, cpu_cap=3.0)
    assert led.acquire(request(want=8)).workers == 3


def test_memory_cap() -> None:
    led = ledger(mem=5 * GIB, memory_per_slot=GIB)
    first = led.acquire(request("a", 4))
    assert (first.kind, first.workers) == ("process", 4)
    second = led.acquire(request("b", 4, kinds=("process",)))
    assert second.kind == "sequential"  # 1 slot left: no pool of 2
    assert second.reason.startswith("memory: 1 worker slots free")
    # threads need no memory slot
    third = led.acquire(request("c", 4))
    assert third.kind == "thread"


def test_memory_counts_only_workers_granted_since_the_sample() -> None:
    led = ledger(mem=4 * GIB, memory_per_slot=GIB)
    grant = led.acquire(request("a", 4))
    assert grant.workers == 4
    # the next sample already sees the pool's memory: 4 GiB are now 0 free
    led.update(sample(limit(), mem=0), {grant.lease_id: 9})
    assert led.renew(grant.lease_id).workers == 4
    assert led.acquire(request("b", 4, kinds=("process",))).kind == "sequential"


def test_memory_cgroup_limit_caps_workers_below_memavailable() -> None:
    """Issue 24: a memory cgroup whose headroom is below MemAvailable sizes the slots."""
    cg = Limit("memory:/batt", "memory", "/sys/fs/cgroup/memory/batt", 4 * GIB, GIB + GIB // 2)
    led = ledger(mem=64 * GIB, memory_per_slot=GIB // 2)
    led.update(dataclasses.replace(sample(limit(), mem=64 * GIB), memory_limits=(cg,)), {})
    grant = led.acquire(request("a", 16, kinds=("process",)))
    assert (grant.kind, grant.workers) == ("process", 5)  # 2.5 GiB / 0.5 GiB
    assert grant.reason.startswith("memory: 5 worker slots free")


def test_a_job_is_sized_by_the_worker_size_learned_for_it() -> None:
    """Issue 24: a job's pools are sized by the bytes per worker learned for its (job,
    uid), memory_per_slot only for a job never seen, and the learned figure charges the
    workers a sample has not seen yet."""
    led = ledger(mem=4 * GIB, memory_per_slot=GIB // 2, max_per_lease=16)  # 8 slots of 512 MiB
    led.learn({("big", 1000): 2 * GIB, ("small", 1000): GIB // 16})
    assert led.worker_bytes("big", 1000) == 2 * GIB
    assert led.worker_bytes("big", 1001) == GIB // 2  # another user's job: never seen
    big = led.acquire(request("a", 16, kinds=("process",), job="big"))
    assert (big.kind, big.workers) == ("process", 2)  # 4 GiB / 2 GiB
    assert big.reason.startswith("memory: 2 worker slots free")
    led.release(big.lease_id)
    small = led.acquire(request("b", 16, kinds=("process",), job="small"))
    assert (small.kind, small.workers) == ("process", 16)  # 64 MiB each: the CPUs bind
    led.release(small.lease_id)
    unseen = led.acquire(request("c", 8, kinds=("process",), job="new"))
    assert (unseen.kind, unseen.workers) == ("process", 8)
    # a pool the sample saw is in its memory figure: only workers beyond it are charged
    led.update(sample(limit(), mem=GIB), {unseen.lease_id: 12})
    grown = led.acquire(request("d", 16, kinds=("process",), job="small"))
    assert (grown.kind, grown.workers) == ("process", 16)  # 1 GiB / 64 MiB


def test_a_held_pool_grows_by_the_size_learned_since() -> None:
    """A figure learned while a lease is held charges the workers it grows by from the
    next sample on: its sampled workers are in the sample's memory, the others at the
    new figure."""
    led = ledger(mem=GIB, memory_per_slot=GIB // 2, max_per_lease=16)
    held = led.acquire(request("a", 16, kinds=("process",), job="big"))
    assert held.workers == 2  # 1 GiB / 512 MiB
    led.learn({("big", 1000): 2 * GIB})
    led.update(sample(limit(), mem=8 * GIB), {held.lease_id: 6})
    assert led.renew(held.lease_id).workers == 6  # its 2, and 8 GiB / 2 GiB more


def test_a_pool_grown_into_the_memory_reserve_is_asked_to_shrink() -> None:
    """Issue 24, as with pids: eight workers learned at 512 MiB grow to 1 GiB each in a
    10 GiB memory cgroup with a 5% (512 MiB) reserve. Above the reserve the lease keeps
    its 8; once the sample's headroom is 256 MiB short of it, its target drops to the
    fewest workers whose share of the measured 8 GiB restores it (7), a newcomer gets
    nothing until the shrink is acknowledged, and then what the dropped worker freed."""
    led = ledger(mem=64 * GIB, memory_per_slot=GIB // 2, max_per_lease=16, memory_reserve_percent=5)
    led.learn({("batt", 1000): GIB // 2, ("small", 1000): GIB // 8})

    def grown(in_use: int) -> HostSample:
        cg = Limit("memory:/batt", "memory", "/sys/fs/cgroup/memory/batt", 10 * GIB, in_use)
        return dataclasses.replace(sample(limit(), mem=64 * GIB), memory_limits=(cg,))

    led.update(grown(GIB), {})
    held = led.acquire(request("a", 8, kinds=("process",)))
    assert (held.kind, held.workers) == ("process", 8)
    pool = {held.lease_id: 8 * GIB}
    # grown, 256 MiB above the reserve: nothing to give back
    led.update(grown(GIB + 8 * GIB + GIB // 4), {held.lease_id: 13}, pool)
    assert led.renew(held.lease_id).target == 8
    # 256 MiB into it: one worker's share of the 8 GiB gives it back
    led.update(grown(GIB + 8 * GIB + 3 * GIB // 4), {held.lease_id: 13}, pool)
    assert (led.renew(held.lease_id).target, led.lease(held.lease_id).workers) == (7, 8)
    newcomer = led.acquire(request("b", 8, kinds=("process",), job="small"))
    assert newcomer.kind == "sequential", newcomer  # not before the shrink is done
    assert newcomer.reason == "memory: 256 MiB into the reserve", newcomer.reason
    led.release(newcomer.lease_id)
    shrunk = led.renew(held.lease_id, workers_in_use=7)
    assert (shrunk.workers, shrunk.target) == (7, 7)
    after = led.acquire(request("c", 8, kinds=("process",), job="small"))
    # the dropped worker's 1 GiB less the 256 MiB owed: 6 workers of 128 MiB
    assert (after.kind, after.workers) == ("process", 6), after


def test_a_job_is_charged_the_tasks_per_worker_and_per_pool_learned_for_it() -> None:
    """Issue 24, learned tasks: in a cgroup of 20 tasks a job never seen is charged the
    constants (n + 4: 15 workers beside its own task), a job learned at 3 tasks per worker
    and 6 beyond them gets 4 (1 + 3 * 4 + 6 = 19), one at 2 and 0 gets 9; a held pool is
    charged its job's figures, and the lease shows them as its pool's tasks."""
    cg = limit(20, 0, "cgroup", CGROUP)
    led = ledger(cg, max_per_lease=16)
    led.learn({}, {("blas", 1000): (3, 6), ("lean", 1000): (2, 0)})
    assert led.pool_tasks("blas", 1000) == (3, 6)
    assert led.pool_tasks("new", 1000) == (1, PROCESS_POOL_OVERHEAD)
    # learned below the constants: charged at them (a short run's scans may miss threads)
    assert led.pool_tasks("lean", 1000) == (2, PROCESS_POOL_OVERHEAD)
    inside = (CGROUP + "/job",)
    for job, workers in (("new", 15), ("blas", 4), ("lean", 7)):
        grant = led.acquire(request(job, 16, kinds=("process",), job=job, cgroups=inside))
        assert (grant.kind, grant.workers) == ("process", workers), (job, grant)
        if job == "blas":
            assert (
                grant.reason == f"cgroup:{CGROUP} headroom 19 tasks < process pool of 5 (21 tasks)"
            )
            assert led.lease(grant.lease_id).cost_tasks == 3 * 4 + 6
        led.release(grant.lease_id)


def test_max_per_lease() -> None:
    led = ledger(max_per_lease=3)
    grant = led.acquire(request(want=10))
    assert (grant.kind, grant.workers) == ("process", 3)
    assert grant.reason == "max_per_lease 3"
    assert ledger(max_per_lease=1).acquire(request(want=10)).kind == "sequential"


def test_reconfigured_max_per_lease_caps_live_leases_and_newcomers() -> None:
    """A lease's cap follows the config: a new max_per_lease shrinks the share of the
    leases held, caps the next grant, and lets a lease grow again once raised."""
    led = ledger(max_per_lease=8)
    held = led.acquire(request("a", want=10))
    assert (held.workers, held.target) == (8, 8)
    led.reconfigure(config(max_per_lease=3))
    assert (led.lease(held.lease_id).share, led.lease(held.lease_id).target) == (3, 3)
    assert led.acquire(request("b", want=10)).workers == 3
    assert led.renew(held.lease_id, workers_in_use=3).workers == 3
    led.reconfigure(config(max_per_lease=1))
    assert led.acquire(request("c", want=10)).kind == "sequential"
    led.reconfigure(config(max_per_lease=6))
    assert led.renew(held.lease_id).workers == 6


# -- levels -------------------------------------------------------------------------------


def test_level_transitions_from_headroom() -> None:
    led = ledger(limit(100, 10), pressure=PRESSURE)
    assert led.level == "normal"
    result = led.update(sample(limit(100, 85)), {})
    assert (result.level, result.changed, result.previous) == ("high", True, "normal")
    assert result.reason == "threads-max free 15.0%"
    grant = led.acquire(request(want=4))
    assert grant.kind == "thread"  # no new process pools at high
    result = led.update(sample(limit(100, 96)), {})
    assert (result.level, result.changed) == ("extreme", True)
    assert led.acquire(request("b", 4)).kind == "sequential"
    result = led.update(sample(limit(100, 96)), {})
    assert (result.level, result.changed) == ("extreme", False)
    result = led.update(sample(limit(100, 0)), {})
    assert (result.level, result.changed) == ("normal", True)


def test_level_transitions_from_psi() -> None:
    led = ledger(pressure=PRESSURE)
    result = led.update(sample(psi=Psi(cpu_some_avg10=50.0, memory_some_avg10=None)), {})
    assert (result.level, result.reason) == ("high", "psi cpu some avg10 50")
    result = led.update(sample(psi=Psi(cpu_some_avg10=10.0, memory_some_avg10=70.0)), {})
    assert (result.level, result.reason) == ("extreme", "psi memory some avg10 70")
    result = led.update(sample(psi=Psi(None, None)), {})
    assert result.level == "normal"


def test_psi_thresholds_off_take_the_signal_out_of_the_level() -> None:
    """PSI at 100 (a saturated host) decides nothing once its thresholds are off; one
    threshold off leaves the other."""
    full = Psi(cpu_some_avg10=100.0, memory_some_avg10=100.0)
    off = dataclasses.replace(
        PRESSURE, cpu_high=None, cpu_extreme=None, memory_high=None, memory_extreme=None
    )
    led = ledger(pressure=off)
    result = led.update(sample(psi=full), {})
    assert (result.level, result.reason) == ("normal", "threads-max free 100.0%")
    assert led.acquire(request(want=4)).kind == "process"
    only_extreme = dataclasses.replace(off, cpu_extreme=90.0)
    led = ledger(pressure=only_extreme)
    assert led.update(sample(psi=Psi(80.0, None)), {}).level == "normal"
    assert led.update(sample(psi=full), {}).level == "extreme"
    only_high = dataclasses.replace(off, memory_high=30.0)
    assert ledger(pressure=only_high).update(sample(psi=full), {}).level == "high"


def test_level_counts_leases_not_yet_sampled() -> None:
    led = ledger(limit(100, 50), pressure=PRESSURE)
    lease = led.acquire(request(want=40)).lease_id  # 1 + 44 tasks: 5 free
    result = led.update(sample(limit(100, 50)), {})
    assert result.level == "high"
    assert led.lease(lease).workers == 40


def test_extreme_sets_every_target_to_zero() -> None:
    led = ledger(limit(1000, 0), pressure=PRESSURE)
    ids = [led.acquire(request(f"h{i}", 4)).lease_id for i in range(3)]
    assert all(led.lease(i).target == 4 for i in ids)
    led.update(sample(limit(1000, 990)), {})
    assert led.level == "extreme"
    assert [led.renew(i).target for i in ids] == [0, 0, 0]
    # still charged at the granted size until acknowledged
    assert led.statistics().leased == 12
    grant = led.renew(ids[0], workers_in_use=0)
    assert (grant.kind, grant.workers, grant.target) == ("sequential", 0, 0)
    assert led.statistics().leased == 8


# -- shrink, grow, fairness ---------------------------------------------------------------


def test_fair_share_caps_newcomer_and_shrinks_incumbent() -> None:
    led = ledger(limit(40, 0))
    first = led.acquire(request("a", 30))
    assert first.workers == 30  # 1 + 30 + 4 = 35 <= 40
    second = led.acquire(request("b", 30))
    # 5 tasks free until the first acknowledges its shrink: a thread pool of 4
    assert (second.kind, second.workers) == ("thread", 4)
    # the fair share: 2 bases + a process pool of 17 (21 tasks) + a thread pool of 17 = 40
    assert led.statistics().fair_share == 17
    assert led.renew(first.lease_id).target == 17
    stats = led.statistics()
    assert (stats.leases[1].wanted, stats.leases[1].target) == (30, 4)
    led.renew(first.lease_id, workers_in_use=17)
    grown = led.renew(second.lease_id)
    assert (grown.kind, grown.workers, grown.reason) == ("thread", 17, "grown to 17")


def test_no_second_slot_while_an_asker_has_none() -> None:
    led = ledger(limit(15, 0))  # a process pool of 2 costs 6, plus 1 base task per holder
    a = led.acquire(request("a", 9, kinds=("process",)))
    assert a.workers == 9
    b = led.acquire(request("b", 9, kinds=("process",)))
    assert b.kind == "sequential"
    assert led.renew(a.lease_id).target == 3  # 2 bases + 7 + 6 = 15
    led.renew(a.lease_id, workers_in_use=3)
    assert led.renew(b.lease_id).workers == 2
    c = led.acquire(request("c", 9, kinds=("process",)))
    assert c.kind == "sequential"
    # c has no pool, so a gives back its third worker; the live pools are kept
    assert [lease.target for lease in led.statistics().leases] == [2, 2, 0]
    assert led.statistics().fair_share == 2


def test_shrink_acknowledged_via_renew() -> None:
    led = ledger(limit(100, 0))
    lease = led.acquire(request(want=20)).lease_id
    led.update(sample(limit(100, 80)), {})  # capacity fell: 20 free for a charge of 25
    grant = led.renew(lease)
    assert (grant.workers, grant.target) == (20, 15)  # 80 + 1 + 15 + 4 = 100
    assert led.statistics().leased == 20  # not freed before the client acknowledges
    acked = led.renew(lease, workers_in_use=grant.target)
    assert acked.workers == acked.target == grant.target
    assert led.statistics().leased == grant.target
    with pytest.raises(LeaseError) as err:
        led.renew(lease, workers_in_use=acked.workers + 1)
    assert err.value.code == "invalid_workers"


def test_grow_on_renew_after_a_release() -> None:
    led = ledger(limit(30, 0))
    a = led.acquire(request("a", 20))
    assert a.workers == 20  # 1 + 24 = 25
    b = led.acquire(request("b", 20))
    assert (b.kind, b.workers) == ("thread", 4)  # 5 free, a is told to shrink
    led.release(a.lease_id)
    grown = led.renew(b.lease_id)
    assert grown.kind == "thread"  # a live pool keeps its kind
    assert grown.workers == grown.target == 20
    assert grown.reason == "grown to 20"


def test_sequential_lease_grows_into_a_pool_when_room_appears() -> None:
    led = ledger(limit(20, 19))
    lease = led.acquire(request(want=4)).lease_id
    assert led.lease(lease).kind == "sequential"
    led.update(sample(limit(20, 5)), {lease: 1})
    grant = led.renew(lease)
    assert (grant.kind, grant.workers) == ("process", 4)


# -- lease life ---------------------------------------------------------------------------


def test_ttl_expiry() -> None:
    clock = FakeClock()
    led = ledger(clock=clock)
    old = led.acquire(request("a")).lease_id
    clock.advance(20)
    young = led.acquire(request("b")).lease_id
    clock.advance(15)
    led.renew(young)
    assert led.expire()[0].lease_id == old
    assert [lease.lease_id for lease in led.statistics().leases] == [young]
    clock.advance(30.5)
    assert [lease.lease_id for lease in led.expire()] == [young]
    assert led.expire() == []


def test_heartbeat_records_progress() -> None:
    clock = FakeClock()
    led = ledger(clock=clock)
    lease = led.acquire(request()).lease_id
    clock.advance(5)
    assert led.heartbeat(lease) == clock.now
    assert led.lease(lease).last_progress == clock.now
    assert led.lease(lease).renewed_at == clock.now - 5


def test_release_unknown_is_an_error() -> None:
    led = ledger()
    lease = led.acquire(request()).lease_id
    freed = led.release(lease)
    assert (freed.lease_id, freed.workers) == (lease, 4)
    for call in (led.release, led.renew, led.heartbeat):
        with pytest.raises(LeaseError) as err:
            call(lease)
        assert err.value.code == "unknown_lease"


def test_release_holder() -> None:
    led = ledger()
    a1 = led.acquire(request("a", 4)).lease_id
    led.acquire(request("b", 4))
    a2 = led.acquire(request("a", 4)).lease_id
    assert [lease.lease_id for lease in led.release_holder("a")] == [a1, a2]
    assert [lease.holder for lease in led.statistics().leases] == ["b"]
    assert led.release_holder("a") == []


def test_statistics_are_frozen() -> None:
    led = ledger(limit(50, 0))
    stats = led.statistics()
    assert stats.capacity == 50 - 4
    with pytest.raises(dataclasses.FrozenInstanceError):
        stats.leased = 3  # type: ignore[misc]
    with pytest.raises(TypeError):
        stats.free_tasks["threads-max"] = 0  # type: ignore[index]


def test_a_page_of_one_uids_leases_is_the_statistics_rows_of_that_uid() -> None:
    """Issue 22: status reads a page of leases without a snapshot of every lease; the
    page is what `statistics` would list, its count the uid's leases."""
    led = ledger()
    for n in range(7):
        led.acquire(request(f"h{n}", want=n % 3, uid=1000 + n % 2, pid=100 + n))
    every = led.statistics().leases
    assert led.statistics(leases=False).leases == ()
    assert dataclasses.replace(led.statistics(leases=False), leases=every) == led.statistics()
    assert led.count() == 7
    assert led.page(None, 0, 100) == (list(every), 7)
    assert led.page(None, 2, 5) == (list(every[2:5]), 7)
    theirs = [x for x in every if x.uid == 1001]
    assert led.page(1001, 1, 2) == (theirs[1:2], 3)
    assert led.page(1001, 3, 9) == ([], 3)
    assert led.page(4, 0, 9) == ([], 0)


@pytest.mark.parametrize("cls", [Grant, Lease, Request])
def test_grants_and_leases_are_frozen_dataclasses_of_every_field(cls: type) -> None:
    """Plain frozen dataclasses with slots: every field in order, by position or keyword,
    equal and hashable, and no instance dict."""
    names = [f.name for f in dataclasses.fields(cls)]
    values = [f"v{i}" for i in range(len(names))]
    made = cls(*values)
    assert not hasattr(made, "__dict__")
    assert [getattr(made, name) for name in names] == values
    assert made == cls(**dict(zip(names, values, strict=True)))
    assert hash(made) == hash(cls(*values))
    assert (
        repr(made)
        == f"{cls.__name__}({', '.join(f'{n}={v!r}' for n, v in zip(names, values, strict=True))})"
    )
    assert dataclasses.replace(made, **{names[0]: "x"}) == cls("x", *values[1:])
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(made, names[0], "y")
    required = [f for f in dataclasses.fields(cls) if f.default is dataclasses.MISSING]
    with pytest.raises(TypeError):
        cls(*values[: len(required) - 1])


def test_a_request_keeps_its_defaults() -> None:
    made = Request("c1", 10, 0, "job", 2)
    assert (made.kinds, made.cgroups, made.base_tasks) == (KINDS, (), 1)
    assert made == Request(holder="c1", pid=10, uid=0, job="job", want=2)


def test_a_snapshot_puts_every_value_in_its_field() -> None:
    clock = FakeClock(1.5)
    led = ledger(clock=clock)
    req = request("holder", 13, uid=12, pid=11, job="job", base_tasks=3, kinds=("thread",))
    lease_id = led.acquire(req).lease_id
    clock.advance(1.0)
    led.renew(lease_id)
    clock.advance(1.0)
    led.heartbeat(lease_id)
    expected = Lease(
        lease_id="L1",
        holder="holder",
        pid=11,
        uid=12,
        job="job",
        kind="thread",
        workers=13,
        target=13,
        wanted=13,
        share=13,
        cost_tasks=13,
        charge_tasks=16,
        base_tasks=3,
        created_at=1.5,
        renewed_at=2.5,
        last_progress=3.5,
    )
    assert led.lease(lease_id) == expected
    assert led.release(lease_id) == dataclasses.replace(expected, target=0, share=0)


# -- never over capacity, never counted twice ----------------------------------------------


def test_many_acquires_between_two_samples_never_exceed_free_tasks() -> None:
    led = ledger(limit(200, 100))
    grants = [led.acquire(request(f"h{i}", 8, base_tasks=0)) for i in range(30)]
    charged = sum(pool_cost(g.kind, g.workers) for g in grants)
    assert charged <= 100
    assert led.statistics().free_tasks["threads-max"] == 100 - charged >= 0
    assert sum(g.workers > 0 for g in grants) >= 2


def test_a_tree_that_grows_to_its_charge_is_not_counted_twice() -> None:
    led = ledger(limit(100, 10))
    a = led.acquire(request("a", 6, base_tasks=2))
    assert a.workers == 6  # charge 2 + 10 = 12
    free_before = led.statistics().free_tasks["threads-max"]
    # the pool now exists: in_use grew by its 10 tasks and a's tree measures 12
    led.update(sample(limit(100, 20)), {a.lease_id: 12})
    # not less: a's base tasks, already in in_use, are no longer charged a second time
    assert led.statistics().free_tasks["threads-max"] == free_before + 2
    # a tree larger than its charge is counted as measured
    led.update(sample(limit(100, 25)), {a.lease_id: 17})
    assert led.statistics().free_tasks["threads-max"] == 75
    b = led.acquire(request("b", 6, base_tasks=1))
    assert b.workers == 6


def test_reserve_is_capped_at_half_a_small_limit() -> None:
    """A 64-task floor must not swallow a cgroup of 28 (the contention benchmark's half cell)."""
    from supervisord_batt.budget.costs import reserve_for
    from supervisord_batt.config.loader import load_config_text
    from supervisord_batt.host.sample import Limit

    config = load_config_text("budget:\n  reserve_tasks: 64\n  reserve_percent: 5\n").budget
    assert reserve_for(Limit("cgroup:/x", "cgroup", "/x", 28, 0), config) == 14
    assert reserve_for(Limit("pid_max", "pid_max", None, 32768, 0), config) == 1639
    assert reserve_for(Limit("threads-max", "threads-max", None, 1000, 0), config) == 64


def test_cpu_water_level_caps_the_newcomer_and_serves_the_contested_round_in_order() -> None:
    # Tasks and memory to spare: only the 21 CPUs bind, and every lease counts one even
    # sequential. With a and b at 8, c's share is the level 6 (3 * 6 = 18 <= 3 + 17 spare)
    # but 21 - 16 = 5 CPUs are free now.
    led = ledger(limit(10_000, 0), cpus=21.0)
    a, b, c = (led.acquire(request(h, 8)) for h in "abc")
    assert [(g.workers, g.target) for g in (a, b, c)] == [(8, 8), (8, 8), (5, 5)]
    d = led.acquire(request("d", 8))
    assert (d.kind, d.workers, d.reason) == ("sequential", 0, "cpu cap: 21 CPUs, 21 in use")
    # 4 leases, 17 spare CPUs: levels 2..5 take 16, and the one left goes to the first
    # lease of the contested round in plan order (live pools first): a. d, the newcomer,
    # is last in that order, so its share is the level.
    stats = led.statistics()
    assert [lease.share for lease in stats.leases] == [6, 5, 5, 5]
    assert [lease.target for lease in stats.leases] == [6, 5, 5, 0]
    assert stats.fair_share == 6


def test_acquire_then_release_leaves_the_allocation_as_it_was() -> None:
    led = ledger(limit(10_000, 0), cpus=24.0)
    held = [led.acquire(request(f"h{i}", 2 + i)) for i in range(5)]
    led.renew(held[0].lease_id)
    before = led.statistics()
    for want in (2, 5, 9):
        grant = led.acquire(request("x", want))
        freed = led.release(grant.lease_id)
        assert (freed.kind, freed.workers) == (grant.kind, grant.workers)
        assert led.statistics() == before
    # and a renew after the pairs sees the targets of an eager recompute
    assert led.renew(held[4].lease_id).target == before.leases[4].target


def test_memory_binds_a_lone_newcomer() -> None:
    led = ledger(mem=3 * GIB, memory_per_slot=GIB)
    grant = led.acquire(request("a", 8))
    assert (grant.kind, grant.workers, grant.reason) == (
        "process",
        3,
        "memory: 3 worker slots free",
    )
    assert led.statistics().fair_share == 3


def test_memory_contended_first_round_keeps_everyone_at_a_first_pool() -> None:
    # 4 slots: a and b take them, c (process only) misses its first pool, so nobody goes
    # beyond MIN_POOL; d may fall back to threads and gets a first pool of those.
    led = ledger(mem=4 * GIB, memory_per_slot=GIB)
    grants = [
        led.acquire(request(h, w, kinds=("process",))) for h, w in (("a", 2), ("b", 2), ("c", 4))
    ]
    assert [(g.kind, g.workers) for g in grants] == [
        ("process", 2),
        ("process", 2),
        ("sequential", 0),
    ]
    assert grants[2].reason == "fair share: 2 workers each, none left for a new pool"
    d = led.acquire(request("d", 4))
    assert (d.kind, d.workers, d.reason) == ("thread", 2, "fair share 2 across 4 holders")
    stats = led.statistics()
    assert [(lease.share, lease.target) for lease in stats.leases] == [
        (2, 2),
        (2, 2),
        (0, 0),
        (2, 2),
    ]
    assert stats.fair_share == 2


def test_memory_runs_out_in_a_later_round_and_threads_keep_growing() -> None:
    # 6 slots, none sampled yet: a's pool of 6 holds them all. With b, the water-filling
    # spends 4 on the first round and 2 on the next, so both stop at 3; b, the newcomer,
    # then runs threads (they need no slot), and c, threads only, grows to its want.
    led = ledger(mem=6 * GIB, memory_per_slot=GIB)
    a = led.acquire(request("a", 8, kinds=("process",)))
    assert (a.kind, a.workers) == ("process", 6)
    b = led.acquire(request("b", 8))
    assert (b.kind, b.workers, b.reason) == ("thread", 3, "fair share 3 across 2 holders")
    c = led.acquire(request("c", 8, kinds=("thread",)))
    assert (c.kind, c.workers, c.reason) == ("thread", 8, "granted in full")
    stats = led.statistics()
    assert [(lease.kind, lease.workers, lease.share, lease.target) for lease in stats.leases] == [
        ("process", 6, 6, 6),
        ("thread", 3, 8, 3),
        ("thread", 8, 8, 8),
    ]
    assert stats.fair_share == 8


def test_pairs_where_memory_binds_leave_the_allocation_as_it_was() -> None:
    led = ledger(limit(10_000, 0), cpus=24.0, mem=9 * GIB, memory_per_slot=GIB)
    held = [led.acquire(request(f"h{i}", 2 + i)) for i in range(5)]
    led.update(sample(limit(10_000, 0), cpus=24.0, mem=3 * GIB), {})
    led.renew(held[0].lease_id)
    before = led.statistics()
    for want, kinds in ((2, KINDS), (5, KINDS), (9, ("process",)), (4, ("thread",))):
        grant = led.acquire(request("x", want, kinds=kinds))
        freed = led.release(grant.lease_id)
        assert (freed.kind, freed.workers) == (grant.kind, grant.workers)
        assert led.statistics() == before


def test_ended_leases_are_not_kept_however_long_nobody_reads() -> None:
    """The daemon reads the allocation only now and then (status, renew, the scan), while
    jobs may take and end thousands of short leases in between: none of those may stay
    referenced by the ledger (it once kept every lease a quick acquire shared to)."""
    import gc

    led = ledger(limit(10_000, 0), cpus=64.0, mem=4 * GIB, memory_per_slot=GIB)
    for _ in range(50):
        grants = [led.acquire(request(f"short-lived-{i}", 2)) for i in range(16)]
        for grant in reversed(grants):  # not the undo of the last acquire: the general path
            led.release(grant.lease_id)
    gc.collect()  # no read of the allocation in between: that would recompute it
    kept = [
        o
        for o in gc.get_objects()
        if isinstance(o, Request) and o.holder.startswith("short-lived-")
    ]
    assert not kept, f"{len(kept)} ended leases still referenced"


def test_scopes_of_jobs_in_their_own_cgroups_are_not_kept_forever() -> None:
    """Each (cgroups, uid) a job asks from is cached with the limits it is in; jobs in
    transient per-job cgroups must not grow that cache without bound, nor get a wrong scope
    once it is cleared."""
    limits = (limit(10_000, 0), limit(50, 0, kind="cgroup", scope=CGROUP))
    scopes = Scopes(limits)
    for i in range(MAX_SCOPES + 10):
        inside = request(f"h{i}", 2, cgroups=(f"{CGROUP}/job{i}",))
        assert scopes.of(inside) == scope_of(inside, limits) == (0, 1)
        assert len(scopes) <= MAX_SCOPES
    outside = request("out", 2, cgroups=("/sys/fs/cgroup/pids/other",))
    assert scopes.of(outside) == (0,)

    def new() -> BudgetLedger:
        return ledger(*limits, cpus=64.0)

    def two_jobs(led: BudgetLedger) -> tuple[object, ...]:
        outside = led.acquire(request("out", 2, cgroups=("/sys/fs/cgroup/pids/other",)))
        inside = led.acquire(request("in", 2, cgroups=(f"{CGROUP}/job0",)))
        return outside, inside, led.statistics().free_tasks

    led = new()
    for i in range(MAX_SCOPES + 10):
        inside = request(f"h{i}", 2, cgroups=(f"{CGROUP}/job{i}",))
        led.release(led.acquire(inside).lease_id)
    fresh = new()
    assert two_jobs(led)[2] == two_jobs(fresh)[2]  # the same charges in the same limits
    free = fresh.statistics().free_tasks
    # "out" is charged on the host's limit only, so the cgroup is charged less than it
    assert 50 - free[f"cgroup:{CGROUP}"] < 10_000 - free["threads-max"]


# -- bursts -------------------------------------------------------------------------------


def test_a_newcomer_in_a_burst_is_held_until_the_burst_has_quieted_down() -> None:
    clock = FakeClock()
    led = BudgetLedger(config(burst_window=0.5), clock, sample(cpus=16.0))
    first = led.acquire(request("a", 4))  # into an empty ledger: others may follow
    assert (first.kind, first.workers, first.target) == ("sequential", 0, 0)
    assert first.reason == "burst: the first to ask, others may follow"
    assert first.retry_after == pytest.approx(0.5)  # a window after the last ask
    clock.advance(0.2)
    second = led.acquire(request("b", 4))
    assert (second.kind, second.workers, second.target) == ("sequential", 0, 0)
    assert second.reason == "burst: another job asked 0.20 s before"
    assert second.retry_after == pytest.approx(0.5)
    clock.advance(0.1)  # the burst asked 0.1 s ago: still held, until 0.5 s after it
    early = led.renew(first.lease_id, 0)
    early_grant: tuple[str, int, object] = (early.kind, early.workers, early.retry_after)
    assert early_grant == ("sequential", 0, pytest.approx(0.4))
    assert early.reason.startswith("burst: another job asked 0.10 s ago")
    clock.advance(0.4)
    grants = [led.renew(g.lease_id, 0) for g in (first, second)]
    assert [(g.kind, g.workers, g.retry_after) for g in grants] == [("process", 4, 0.0)] * 2
    clock.advance(1.0)
    third = led.acquire(request("c", 4))  # 1.0 s after the last one asked, others held
    assert (third.kind, third.workers, third.retry_after) == ("process", 4, 0.0)


def test_a_held_lease_the_burst_left_no_pool_is_let_go_at_its_next_renew() -> None:
    """Held, the first of four jobs on 2 CPUs would wait out the window only to be
    granted sequential: once the others' asks leave it a share under a pool, its next
    renew lets it go, while a held lease still owed a pool stays held."""
    clock = FakeClock()
    led = BudgetLedger(config(burst_window=0.5), clock, sample(cpus=2.0))
    first = led.acquire(request("a", 2))
    assert first.kind == "sequential" and first.retry_after == pytest.approx(0.5)
    clock.advance(0.05)
    others = [led.acquire(request(name, 2)) for name in "bcd"]  # a CPU or less each
    assert [(g.kind, g.retry_after) for g in others] == [("sequential", 0.0)] * 3
    clock.advance(0.05)
    let_go = led.renew(first.lease_id, 0)
    assert (let_go.kind, let_go.workers, let_go.retry_after) == ("sequential", 0, 0.0)
    assert not let_go.reason.startswith("burst:"), let_go
    wide = BudgetLedger(config(burst_window=0.5), clock, sample(cpus=16.0))
    held = wide.acquire(request("a", 2))
    wide.acquire(request("b", 2))  # 8 CPUs each: still a pool to wait for
    clock.advance(0.05)
    assert wide.renew(held.lease_id, 0).retry_after > 0


def test_a_burst_hold_ends_after_two_windows_even_while_newcomers_keep_asking() -> None:
    clock = FakeClock()
    led = BudgetLedger(config(burst_window=0.5), clock, sample(cpus=64.0))
    first = led.acquire(request("a", 2))
    for name in "bcd":  # one newcomer every 0.3 s, within the window of the one before
        clock.advance(0.3)
        held = led.acquire(request(name, 2))
        assert held.retry_after > 0
    assert led.renew(first.lease_id, 0).retry_after == pytest.approx(0.1)  # at 0.9 of 1.0 s
    clock.advance(0.1)
    assert (led.renew(first.lease_id, 0).kind, held.kind) == ("process", "sequential")


def test_without_a_burst_window_nothing_is_held() -> None:
    led = BudgetLedger(config(), FakeClock(), sample(cpus=16.0))
    grants = [led.acquire(request(name, 4)) for name in "ab"]
    assert [(g.kind, g.workers, g.retry_after) for g in grants] == [("process", 4, 0.0)] * 2


def test_leases_restored_after_a_reexec_are_not_held_for_a_burst() -> None:
    """The leases a re-executed or restarted daemon restores all arrive at once, but they
    are jobs that ran before it, not a burst of newcomers: held, each would drop to
    sequential while resuming (the upgrade test's jobs saw process, sequential, process).
    Nor do they count as asks: the newcomers after them are held only among themselves."""
    clock = FakeClock()
    led = BudgetLedger(config(burst_window=0.5), clock, sample(cpus=16.0))
    restored = [led.acquire(request(name, 2), restoring=True) for name in "abc"]
    assert [(g.kind, g.workers, g.retry_after) for g in restored] == [("process", 2, 0.0)] * 3
    first = led.acquire(request("d", 2))
    assert (first.kind, first.retry_after) == ("process", 0.0)
    clock.advance(0.1)
    second = led.acquire(request("e", 2))
    assert (second.kind, second.retry_after > 0) == ("sequential", True)
