"""Property tests of the budget ledger over random samples and random lease traffic,
through its public API, with the pure allocation (`allocate`) as the oracle of what a
recompute gives."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field, replace

from hypothesis import given
from hypothesis import strategies as st

from supervisord_batt.budget.costs import MIN_POOL, pool_cost
from supervisord_batt.budget.ledger import BudgetLedger
from supervisord_batt.budget.records import LedgerStats, Request
from supervisord_batt.config.records import BudgetConfig
from supervisord_batt.host.sample import HostSample, Limit
from tests.fakes import FakeClock
from tests.support.budget import (
    GIB,
    QUIET,
    SETTINGS,
    Tracker,
    config,
    configs,
    limit,
    limits,
    random_calls,
    request,
    requests,
    roomy_limits,
    sample,
    samples,
)


def in_scope(lim: Limit, req: Request) -> bool:
    if lim.kind == "cgroup":
        return any(p.startswith(str(lim.scope)) for p in req.cgroups)
    if lim.kind == "nproc":
        return req.uid == lim.scope
    return True


@dataclass
class Model:
    """What the test remembers to state the properties."""

    tracker: Tracker
    shape: tuple[Limit, ...]
    since_sample: set[str] = field(default_factory=set)
    free_at_sample: dict[str, int] = field(default_factory=dict)

    @property
    def ledger(self) -> BudgetLedger:
        return self.tracker.ledger

    @property
    def clock(self) -> FakeClock:
        return self.tracker.clock

    @property
    def requests(self) -> dict[str, Request]:
        return self.tracker.requests

    def after_update(self) -> None:
        self.since_sample.clear()
        self.free_at_sample = dict(self.ledger.statistics().free_tasks)

    def check_never_over(self) -> None:
        """(1) Grants never push usage over limit - reserve unless the sample did.

        Free tasks may only fall below min(0, free at the sample) by the base tasks of
        the leases acquired since, which are charged in full (they are in in_use too).
        """
        stats = self.ledger.statistics()
        live = {lease.lease_id for lease in stats.leases}
        for lim in self.shape:
            bases = sum(
                self.requests[i].base_tasks
                for i in self.since_sample & live
                if in_scope(lim, self.requests[i])
            )
            floor = min(0, self.free_at_sample[lim.name]) - bases
            assert stats.free_tasks[lim.name] >= floor, (lim.name, stats)


def snapshot(stats: LedgerStats) -> tuple[object, ...]:
    return (
        stats.leased,
        stats.leased_tasks,
        dict(stats.free_tasks),
        [(lease.lease_id, lease.workers, lease.target) for lease in stats.leases],
    )


def check_fairness(model: Model, cfg: BudgetConfig) -> None:
    """(3) If a holder that asked got no share, nobody of its user is shared more than a
    first pool (across users, each user's share is its own: `hierarchy.allocate_users`)."""
    stats = model.ledger.statistics()
    if stats.level != "normal" or cfg.max_per_lease < MIN_POOL:
        return
    for lease in stats.leases:
        assert lease.target <= lease.share <= stats.fair_share
    starved = {
        lease.uid
        for lease in stats.leases
        if lease.share == 0
        and lease.wanted >= MIN_POOL
        and set(model.requests[lease.lease_id].kinds) - {"sequential"}
    }
    for lease in stats.leases:
        assert lease.uid not in starved or lease.share <= MIN_POOL, stats


def run_ops(model: Model, cfg: BudgetConfig, data: st.DataObject, steps: int) -> None:
    led = model.ledger
    for _ in range(steps):
        op = data.draw(
            st.sampled_from(["acquire", "acquire", "release", "renew", "update", "expire", "pair"])
        )
        live = [lease.lease_id for lease in led.statistics().leases]
        if op == "acquire":
            lease_id = model.tracker.acquire(data.draw(requests()))
            model.since_sample.add(lease_id)
            check_fairness(model, cfg)
        elif op == "pair":  # (2) release gives back exactly what acquire took
            was = snapshot(led.statistics())
            grant = led.acquire(data.draw(requests()))
            freed = led.release(grant.lease_id)
            assert (freed.workers, freed.kind) == (grant.workers, grant.kind)
            stats = led.statistics()
            now = snapshot(stats)
            assert now[:3] == was[:3]  # what is leased and charged: always the same
            assert [x[:2] for x in now[3]] == [x[:2] for x in was[3]]  # type: ignore[attr-defined]
            # and the allocation is what a recompute gives: the one before the pair when
            # that was (the pair undone), else computed again (a renew that grew a lease
            # leaves the allocation as it was until the next change, by design)
            assert_allocated(model.tracker, stats)
        elif op == "release" and live:
            lease_id = data.draw(st.sampled_from(live))
            before = led.statistics()
            freed = led.release(lease_id)
            after = led.statistics()
            assert after.leased == before.leased - freed.workers
            assert after.leased_tasks == before.leased_tasks - freed.cost_tasks
        elif op == "renew" and live:
            lease_id = data.draw(st.sampled_from(live))
            held = led.lease(lease_id)
            ack = data.draw(st.sampled_from([None, held.target, held.workers]))
            grant = led.renew(lease_id, ack)
            assert grant.workers <= max(held.workers, grant.target)
        elif op == "update":
            trees = {i: data.draw(st.integers(0, 30)) for i in live if data.draw(st.booleans())}
            model.tracker.update(data.draw(samples(model.shape)), trees)
            model.after_update()
        elif op == "expire":
            model.clock.advance(data.draw(st.sampled_from([1.0, 20.0, 40.0])))
            led.expire()
        model.check_never_over()


def new_model(cfg: BudgetConfig, first: HostSample) -> Model:
    model = Model(Tracker(cfg, first), first.limits)
    model.after_update()
    return model


def assert_allocated(tracker: Tracker, stats: LedgerStats) -> None:
    """The shares and fair share the ledger reports are `allocate`'s over its leases as
    they are, rebuilt from scratch."""
    full = tracker.world().allocation()
    if stats.level == "extreme":
        assert [lease.share for lease in stats.leases] == [0] * len(stats.leases)
        return
    assert [lease.share for lease in stats.leases] == [
        full.share(lease.lease_id).workers for lease in stats.leases
    ]
    assert stats.fair_share == full.fair_share


@SETTINGS
@given(cfg=configs(), first=samples(), data=st.data())
def test_random_traffic_keeps_the_invariants(
    cfg: BudgetConfig, first: HostSample, data: st.DataObject
) -> None:
    run_ops(new_model(cfg, first), cfg, data, steps=data.draw(st.integers(1, 25)))


@SETTINGS
@given(cfg=configs(), first=samples(), data=st.data())
def test_less_headroom_never_yields_a_larger_grant(
    cfg: BudgetConfig, first: HostSample, data: st.DataObject
) -> None:
    """(4) Same state, same request, a sample with more in use, and the other holders'
    planned pools unchanged by it: no larger grant at the same pressure level, and never
    a better kind when the level rises.

    Across levels the pool size is not monotonic, by design: at normal a process share
    that does not fit falls back to threads capped at the *process* share, while at high
    (no processes) the share itself is counted in threads, which cost fewer tasks, so it
    can be larger (found by this test: thread:2 at normal, thread:3 at high). Either
    grant fits the charged book; only the fairness basis differs.

    Nor is it when the tighter sample changes another holder's plan, by design too: a
    holder that takes only processes, planned a process pool of 2 (6 of 6 tasks) while
    it runs sequential, leaves the newcomer nothing; one task more in use, or the level
    at high, and that pool is no longer possible, so the room it was planned in is free
    and the newcomer gets thread:2 (found by this test). Pools are whole: a plan that no
    longer fits frees all of its room at once."""
    cfg = replace(cfg, memory_per_slot=0)  # memory caps processes only: see the report
    model = new_model(cfg, first)
    run_ops(model, cfg, data, steps=data.draw(st.integers(0, 10)))
    roomy = data.draw(samples(model.shape))
    tight = replace(
        roomy,
        limits=tuple(
            replace(lim, in_use=lim.in_use + data.draw(st.integers(0, 40))) for lim in roomy.limits
        ),
    )
    live = [lease.lease_id for lease in model.ledger.statistics().leases]
    trees = {i: data.draw(st.integers(0, 30)) for i in live if data.draw(st.booleans())}
    req = data.draw(requests())
    grants, plans = [], []
    for host in (roomy, tight):
        tracker = copy.deepcopy(model.tracker)
        tracker.update(host, trees)
        plan = tracker.world().allocation()
        plans.append([plan.share(lease_id) for lease_id in live])
        grant = tracker.ledger.acquire(req)
        grants.append((pool_cost(grant.kind, grant.workers), grant, tracker.ledger.level))
    if plans[0] != plans[1]:
        return  # another holder's plan moved (see above): nothing to compare
    (roomy_cost, roomy_grant, roomy_level), (tight_cost, tight_grant, tight_level) = grants
    if roomy_level == tight_level:
        assert tight_cost <= roomy_cost, grants
    rank = {"process": 2, "thread": 1, "sequential": 0}
    assert rank[tight_grant.kind] <= rank[roomy_grant.kind], grants


@SETTINGS
@given(cfg=configs(), data=st.data())
def test_random_traffic_where_only_cpus_bind_keeps_the_invariants(
    cfg: BudgetConfig, data: st.DataObject
) -> None:
    """The traffic of the first test, with task limits to spare and more CPUs, so that the
    water-filling mostly runs in closed form and acquire mostly takes its shortcut."""
    cfg = replace(cfg, cpu_cap=data.draw(st.sampled_from([None, 8.0, 16.0, 32.0])))
    first = sample(*data.draw(roomy_limits()), cpus=64.0, mem=data.draw(st.integers(0, 16)) * GIB)
    run_ops(new_model(cfg, first), cfg, data, steps=data.draw(st.integers(1, 40)))


@SETTINGS
@given(cfg=configs(), data=st.data())
def test_books_and_demand_kept_call_by_call_equal_a_recount(
    cfg: BudgetConfig, data: st.DataObject
) -> None:
    """acquire, resizes and releases update the books and the demand's sums in place:
    after random traffic they grant what a twin grants whose books and sums were rebuilt
    from scratch (reconfigure with the same config recounts every lease; the quiet
    thresholds keep the level from moving with it)."""
    cfg = replace(cfg, pressure=QUIET)
    tracker = random_calls(cfg, data, data.draw(st.integers(1, 30)))
    kept = tracker.ledger
    recounted = copy.deepcopy(kept)
    recounted.reconfigure(cfg)
    for _ in range(data.draw(st.integers(1, 3))):
        req = data.draw(requests())
        assert kept.acquire(req) == recounted.acquire(req)
        a, b = kept.statistics(), recounted.statistics()
        assert (a.leased, a.leased_tasks, a.free_tasks, a.capacity) == (
            b.leased,
            b.leased_tasks,
            b.free_tasks,
            b.capacity,
        )


def test_a_newcomer_granted_a_pool_moves_ahead_of_a_sequential_asker() -> None:
    """d's acquire simulates (a task limit may bind), and its grant makes it a live pool,
    served before c, which asks for threads but holds none: the allocation the acquire
    computed is then not what a recompute gives, and the ledger must not take it back
    after the next pair as if it were."""
    cfg = config(max_per_lease=11, cpu_cap=8.0)
    tracker = Tracker(cfg, sample(limit(55, 28), cpus=16.0))
    led = tracker.ledger
    a = tracker.acquire(request("a", 7, kinds=("thread",), base_tasks=0))
    tracker.acquire(request("b", 1, kinds=("process", "sequential"), base_tasks=2))
    c = tracker.acquire(request("c", 11, kinds=("thread",)))
    assert led.lease(c).workers == 0
    led.release(a)
    d = tracker.acquire(request("d", 12, kinds=("process", "sequential")))
    assert (led.lease(d).kind, led.lease(d).workers) == ("process", 3)
    led.release(led.acquire(request("x", 2)).lease_id)
    assert_allocated(tracker, led.statistics())


@SETTINGS
@given(cfg=configs(), data=st.data())
def test_lazy_recompute_answers_as_a_recompute_after_every_change(
    cfg: BudgetConfig, data: st.DataObject
) -> None:
    """The ledger recomputes the allocation only when a call reads it; release, expiry and
    heartbeats never do. Beside a twin that reads it after every call (the eager ledger it
    replaced), random traffic gets the same answers, and the same statistics whenever
    they are read (reading recomputes, so they are read only now and then)."""
    lims = data.draw(st.one_of(limits(), roomy_limits()))
    cpus = data.draw(st.sampled_from([4.0, 16.0, 64.0]))
    first = sample(*lims, cpus=cpus, mem=data.draw(st.integers(0, 12)) * GIB)
    clock = FakeClock()
    lazy = BudgetLedger(cfg, clock, first)
    eager = BudgetLedger(cfg, clock, first)
    live: list[str] = []
    for _ in range(data.draw(st.integers(1, 40))):
        op = data.draw(
            st.sampled_from(
                ["acquire", "acquire", "release", "renew", "beat", "expire", "update", "read"]
            )
        )
        if op == "acquire":
            req = data.draw(requests())
            grant = lazy.acquire(req)
            assert grant == eager.acquire(req)
            live.append(grant.lease_id)
        elif op == "release" and live:
            lease_id = live.pop(data.draw(st.integers(0, len(live) - 1)))
            assert lazy.release(lease_id) == eager.release(lease_id)
        elif op == "renew" and live:
            lease_id = data.draw(st.sampled_from(live))
            held = eager.lease(lease_id)
            ack = data.draw(st.sampled_from([None, held.target, held.workers]))
            assert lazy.renew(lease_id, ack) == eager.renew(lease_id, ack)
        elif op == "beat" and live:
            lease_id = data.draw(st.sampled_from(live))
            assert lazy.heartbeat(lease_id) == eager.heartbeat(lease_id)
        elif op == "expire":
            clock.advance(data.draw(st.sampled_from([1.0, 20.0, 40.0])))
            ended = lazy.expire()
            assert ended == eager.expire()
            live = [i for i in live if i not in {lease.lease_id for lease in ended}]
        elif op == "update":
            trees = {i: data.draw(st.integers(0, 30)) for i in live if data.draw(st.booleans())}
            host = data.draw(samples(lims))
            assert lazy.update(host, trees) == eager.update(host, trees)
        elif op == "read":
            assert lazy.statistics() == eager.statistics()
        eager.statistics()  # the twin recomputes after every call, as the ledger once did
    assert lazy.statistics() == eager.statistics()
