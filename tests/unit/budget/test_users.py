"""The budget shared per user first (`budget.hierarchy`): a user's share does not depend on
how many leases it holds, a lease that asked for no worker costs no CPU, weights split
in proportion, and what one user leaves goes to the others. By hand through the ledger,
then as properties of `entitle` and of `allocate_users` over random users and leases."""

from __future__ import annotations

import math
from dataclasses import replace
from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from supervisord_batt.budget.allocation import allocate
from supervisord_batt.budget.books import Book
from supervisord_batt.budget.costs import MIN_POOL, pool_cost
from supervisord_batt.budget.demand import cpu_only
from supervisord_batt.budget.hierarchy import (
    allocate_users,
    entitle,
    entitlements,
    keep_remainders,
    user_book,
)
from supervisord_batt.budget.hold import GROW_AFTER
from supervisord_batt.budget.ledger import BudgetLedger
from supervisord_batt.budget.records import Request
from supervisord_batt.budget.users import Weight, exact_weight
from supervisord_batt.config.records import BudgetConfig
from supervisord_batt.host.sample import Psi
from supervisord_batt.protocol import Kind
from tests.fakes import FakeClock
from tests.support.budget import (
    GIB,
    KIND_SETS,
    PRESSURE,
    QUIET,
    SETTINGS,
    Tracker,
    World,
    config,
    configs,
    ledger,
    limit,
    limits,
    request,
    roomy_limits,
    sample,
    weigher,
)

ROOT, ALICE, BOB = 0, 1000, 1001

# -- by hand, through the ledger ----------------------------------------------------------


def test_leases_that_ask_for_no_worker_hold_no_cpu() -> None:
    """The measured attack: one user holding two leases that asked for 0 workers on a
    2-CPU host made every other job sequential ("cpu cap: 2 CPUs, 2 in use")."""
    clock = FakeClock()
    led = ledger(cpus=2.0, clock=clock, lease_ttl=30.0)
    held = [led.acquire(request(holder, 0, uid=ALICE)).lease_id for holder in ("x1", "x2")]
    for _ in range(3):  # renewed every 10 s: they stay
        clock.advance(10.0)
        assert [led.renew(lease_id).workers for lease_id in held] == [0, 0]
        assert not led.expire()
    grant = led.acquire(request("root", 4, uid=ROOT))
    assert (grant.kind, grant.workers) == ("process", 2)
    # and its own user's jobs alike: one user, 0-worker leases beside a job that asks
    led = ledger(cpus=2.0)
    led.acquire(request("x1", 0, uid=ALICE))
    led.acquire(request("x2", 0, uid=ALICE))
    assert led.acquire(request("job", 4, uid=ALICE)).workers == 2


def test_a_sequential_lease_holds_a_cpu_of_its_own_users_share() -> None:
    """Leases that ask for one worker run sequential and hold a CPU each: 40 of them on
    32 CPUs are more than their user's half, and the other user still gets its half."""
    led = ledger(cpus=32.0, max_per_lease=64)
    for i in range(40):
        led.acquire(request(f"a{i}", 1, uid=ALICE))
    grant = led.acquire(request("b", 64, uid=BOB))
    assert (grant.kind, grant.workers) == ("process", 16)
    assert grant.reason == "user's cpu share: 16 CPUs, 0 in use"


def test_many_leases_get_one_share_against_a_few() -> None:
    """60 jobs of one user against 4 of another on 32 CPUs: 16 CPUs each, whatever the
    count. Each user's own leases share its part max-min, as a single user's always did:
    a user's next lease waits for its own pools to shrink, never for the other user's."""
    led = ledger(cpus=32.0, max_per_lease=8)
    many = [led.acquire(request(f"a{i}", 8, uid=ALICE)).lease_id for i in range(60)]
    few = [led.acquire(request(f"b{i}", 8, uid=BOB)).lease_id for i in range(4)]
    for lease_id in many + few:  # every holder renews and follows its target
        led.renew(lease_id, led.lease(lease_id).target)
    for lease_id in few:
        assert led.renew(lease_id).workers == 4
    stats = led.statistics()
    assert [lease.share for lease in stats.leases if lease.uid == BOB] == [4, 4, 4, 4]
    assert all(lease.share == 0 for lease in stats.leases if lease.uid == ALICE)


def test_sequential_jobs_past_a_users_part_shrink_nobody_elses() -> None:
    """32 CPUs over three users: root asks for 2, so alice and bob have 15 each. Alice's
    20 sequential jobs hold 20: the 5 past her part are hers alone, bob keeps his 15."""
    led = ledger(cpus=32.0, max_per_lease=64)
    for i in range(20):
        led.acquire(request(f"a{i}", 1, uid=ALICE))
    b = led.acquire(request("b", 64, uid=BOB)).lease_id
    c = led.acquire(request("c", 2, uid=ROOT)).lease_id
    assert [led.lease(i).share for i in (b, c)] == [15, 2]


def test_weights_split_in_proportion() -> None:
    led = ledger(cpus=16.0, max_per_lease=64, weights={ALICE: 3.0})
    a = led.acquire(request("a", 64, uid=ALICE)).lease_id
    b = led.acquire(request("b", 64, uid=BOB)).lease_id
    assert [led.lease(i).share for i in (a, b)] == [12, 4]


def test_a_reload_weighs_the_users_holding_leases_again() -> None:
    led = ledger(cpus=16.0, max_per_lease=64)
    a = led.acquire(request("a", 64, uid=ALICE)).lease_id
    b = led.acquire(request("b", 64, uid=BOB)).lease_id
    assert [led.lease(i).share for i in (a, b)] == [8, 8]
    led.reconfigure(config(max_per_lease=64), weigher({BOB: 0.6}))
    assert [led.lease(i).share for i in (a, b)] == [10, 6]  # 16 * 1 / 1.6, 16 * 0.6 / 1.6
    led.reconfigure(config(max_per_lease=64))  # no weights given: they stay
    assert [led.lease(i).share for i in (a, b)] == [10, 6]


@pytest.mark.parametrize(
    ("weight", "exact"), [(1.0, 1), (2, 2), (0.1, Fraction(1, 10)), (2.5, Fraction(5, 2))]
)
def test_weights_are_exact_as_written(weight: float, exact: Weight) -> None:
    assert exact_weight(weight) == exact and type(exact_weight(weight)) is type(exact)


@pytest.mark.parametrize("weight", [0.0, -1.0, math.inf, math.nan])
def test_a_weight_must_be_a_positive_number(weight: float) -> None:
    with pytest.raises(ValueError, match="positive number"):
        exact_weight(weight)


def test_what_one_user_does_not_ask_for_goes_to_the_others() -> None:
    led = ledger(cpus=16.0, max_per_lease=64)
    a = led.acquire(request("a", 2, uid=ALICE)).lease_id
    b = led.acquire(request("b", 64, uid=BOB)).lease_id
    c = led.acquire(request("c", 64, uid=ROOT)).lease_id
    # 16 CPUs over 3: alice asks for 2, the other two split the 14 left
    assert [led.lease(i).share for i in (a, b, c)] == [2, 7, 7]


def test_what_a_user_cannot_use_of_its_share_goes_to_the_others() -> None:
    """Alice's RLIMIT_NPROC leaves her 8 tasks, a process pool of 4: of her 8 CPUs she
    uses 4, and the top-up gives the other 4 to bob, 12 in all."""
    nproc = limit(9, 1, "nproc", ALICE, name="nproc:alice")
    led = ledger(limit(), nproc, cpus=16.0, max_per_lease=64)
    a = led.acquire(request("a", 64, uid=ALICE, base_tasks=0)).lease_id
    b = led.acquire(request("b", 64, uid=BOB)).lease_id
    assert [led.lease(i).share for i in (a, b)] == [4, 12]


HOT = Psi(cpu_some_avg10=95.0, memory_some_avg10=0.0)  # CPU pressure extreme (PRESSURE)


def test_cpu_pressure_one_users_jobs_cause_does_not_stop_another_users_pools() -> None:
    """60 sequential jobs on 32 CPUs keep CPU pressure extreme: every other user's jobs
    ran sequential. The user over its part gets the level; the others, within theirs,
    the level of the other signals."""
    led = ledger(cpus=32.0, max_per_lease=8, pressure=PRESSURE)
    many = [led.acquire(request(f"a{i}", 1, uid=ALICE)).lease_id for i in range(60)]
    few = [led.acquire(request(f"b{i}", 8, uid=BOB)).lease_id for i in range(2)]
    led.update(sample(cpus=32.0, psi=HOT), {})
    assert led.level == "extreme"
    assert [led.renew(lease_id).target for lease_id in few] == [8, 8]
    assert led.acquire(request("a-pool", 8, uid=ALICE)).reason == "level extreme: sequential only"
    # what each user's level is put down to (the daemon's denial causes)
    assert led.level_signal(ALICE).startswith("psi cpu")
    assert not led.level_signal(BOB).startswith("psi cpu")
    # once the many are gone, the pressure is nobody's in particular: everyone's level
    for lease_id in many:
        led.release(lease_id)
    led.update(sample(cpus=32.0, psi=HOT), {})
    assert [led.renew(lease_id).target for lease_id in few] == [0, 0]


def test_cpu_pressure_no_user_explains_holds_every_user() -> None:
    """Pressure from outside the budget (both users within their parts) binds both."""
    led = ledger(cpus=32.0, max_per_lease=8, pressure=PRESSURE, psi=HOT)
    grants = [led.acquire(request(f"h{uid}", 8, uid=uid)) for uid in (ALICE, BOB)]
    assert [(g.kind, g.reason) for g in grants] == [
        ("sequential", "level extreme: sequential only")
    ] * 2


def test_a_user_holding_what_others_left_it_is_not_over_its_part() -> None:
    """12 CPUs over three users: root asks for 2, so alice and bob have 5 each, one more
    than an equal split of 4. Bob's 40 sequential jobs keep CPU pressure extreme; alice,
    holding her 5, is within her part and keeps her pools (judged against the equal
    split, she was over it and got the level: sequential at her next renew)."""
    led = ledger(cpus=12.0, max_per_lease=8, pressure=PRESSURE)
    led.acquire(request("root", 2, uid=ROOT))
    mine = [led.acquire(request(f"a{i}", 8, uid=ALICE)).lease_id for i in range(2)]
    for i in range(40):
        led.acquire(request(f"b{i}", 1, uid=BOB))
    for lease_id in mine:  # alice follows her targets: 3 and 2 of her 5
        led.renew(lease_id, led.lease(lease_id).target)
    assert sorted(led.renew(lease_id).workers for lease_id in mine) == [2, 3]
    led.update(sample(cpus=12.0, psi=HOT), {})
    assert led.level == "extreme"
    assert sorted(led.renew(lease_id).target for lease_id in mine) == [2, 3]
    assert led.level_signal(BOB).startswith("psi cpu")
    assert not led.level_signal(ALICE).startswith("psi cpu")


def settled(clock: FakeClock, cpus: float, bob: int) -> tuple[BudgetLedger, list[str]]:
    """Bob's one job asking `bob` workers, then alice's four asking 8 each, on `cpus`
    CPUs; every holder has renewed and followed its target. Alice's leases."""
    led = ledger(cpus=cpus, max_per_lease=8, clock=clock)
    led.acquire(request("b", bob, uid=BOB))
    jobs = [led.acquire(request(f"a{i}", 8, uid=ALICE)).lease_id for i in range(4)]
    for lease_id in jobs * 2:
        led.renew(lease_id, led.lease(lease_id).target)
    return led, jobs


def four_and_one(clock: FakeClock) -> tuple[BudgetLedger, list[str]]:
    """16 CPUs: bob's one job holds 8, alice's four jobs 2 each of her 8."""
    led, jobs = settled(clock, 16.0, 8)
    assert [led.lease(lease_id).workers for lease_id in jobs] == [2, 2, 2, 2]
    return led, jobs


def test_a_users_next_job_takes_the_room_of_the_one_that_ended() -> None:
    """One of alice's jobs ends and her next asks half a second later (a user keeping her
    jobs running): her other jobs' shares rose meanwhile, and had they grown into them,
    each would have started a new pool and started another when the next job shrank
    them. They keep their pools, and the next job gets the 2 the last one had."""
    clock = FakeClock()
    led, jobs = four_and_one(clock)
    led.release(jobs[0])
    clock.advance(0.25)
    grant = led.renew(jobs[1])
    assert (grant.workers, grant.reason) == (2, f"share 3 taken once it has stood {GROW_AFTER:g} s")
    clock.advance(0.25)
    assert led.acquire(request("a4", 8, uid=ALICE)).workers == 2
    clock.advance(GROW_AFTER)
    assert [led.renew(lease_id).workers for lease_id in jobs[1:]] == [2, 2, 2]


def test_room_that_lasts_is_taken_once_it_has_stood() -> None:
    """Alice's job ends and no other follows: her others grow into its room once their
    larger shares have stood GROW_AFTER seconds. A user alone grows at once, as ever."""
    clock = FakeClock()
    led, jobs = four_and_one(clock)
    led.release(jobs[0])
    assert [led.renew(lease_id).workers for lease_id in jobs[1:]] == [2, 2, 2]  # of 3, 3, 2
    clock.advance(GROW_AFTER - 0.5)
    assert [led.renew(lease_id).workers for lease_id in jobs[1:]] == [2, 2, 2]
    clock.advance(0.5)
    assert [led.renew(lease_id).workers for lease_id in jobs[1:]] == [3, 3, 2]
    alone = ledger(cpus=16.0, max_per_lease=8)
    first = [alone.acquire(request(f"a{i}", 8, uid=ALICE)).lease_id for i in range(2)]
    for lease_id in first:
        alone.renew(lease_id, alone.lease(lease_id).target)
    alone.release(first[0])
    assert alone.renew(first[1]).workers == 8


def eleven_over_four(clock: FakeClock) -> tuple[BudgetLedger, list[str]]:
    """16 CPUs: bob's one job holds 5, alice's four jobs 3, 3, 3 and 2 of her 11."""
    led, jobs = settled(clock, 16.0, 5)
    assert [led.lease(lease_id).workers for lease_id in jobs] == [3, 3, 3, 2]
    return led, jobs


def test_a_remainder_stays_with_the_pools_that_hold_it() -> None:
    """Alice's part does not divide evenly (11 CPUs over 4 jobs). A job holding one of
    the extra workers ends and her next asks: the newcomer, which starts a pool anyway,
    takes the extra worker, and her pool of 2 keeps its size, even once the room has
    stood (given to it in the leases' order, it grew: a new pool for one worker more)."""
    clock = FakeClock()
    led, jobs = eleven_over_four(clock)
    led.release(jobs[0])
    clock.advance(0.5)
    assert led.acquire(request("a4", 8, uid=ALICE)).workers == 3
    clock.advance(GROW_AFTER)
    assert [led.renew(lease_id).workers for lease_id in jobs[1:]] == [3, 3, 2]
    assert [led.lease(lease_id).share for lease_id in jobs[1:]] == [3, 3, 2]


def test_a_remainder_goes_to_a_pool_that_changes_anyway() -> None:
    """Alice's 3, 3, 3, 2 lose a job of 3 and none follows: of her 11 over three, the
    two extra workers go first to the pool of 2 (it grows in any case) and then to one
    of the pools of 3; the other keeps its pool."""
    clock = FakeClock()
    led, jobs = eleven_over_four(clock)
    led.release(jobs[0])
    assert [led.lease(lease_id).share for lease_id in jobs[1:]] == [4, 3, 4]


def test_a_newcomer_starts_no_larger_pool_than_its_users_until_its_share_has_stood() -> None:
    """24 CPUs: bob's one job holds 8, alice's four 4 each of her 16. Two of her jobs end
    and her next two ask one after the other. The first one's share is 5 (16 over the
    three she holds then) for as long as the second takes to ask: had it started a pool
    of 5, the second would have got the 3 left and both changed pools once the shares
    were 4 again. It starts a pool of 4, as her others run, and the second too; a newcomer
    whose larger share lasts takes it once it has stood GROW_AFTER."""
    clock = FakeClock()
    led, jobs = settled(clock, 24.0, 8)
    assert [led.lease(lease_id).workers for lease_id in jobs] == [4, 4, 4, 4]
    led.release(jobs[0])
    led.release(jobs[1])
    clock.advance(0.5)
    first = led.acquire(request("a4", 8, uid=ALICE))
    assert (first.workers, led.lease(first.lease_id).share) == (4, 5)
    clock.advance(0.5)
    second = led.acquire(request("a5", 8, uid=ALICE))
    assert second.workers == 4
    clock.advance(GROW_AFTER)
    held = [*jobs[2:], first.lease_id, second.lease_id]
    assert [led.renew(lease_id).workers for lease_id in held] == [4, 4, 4, 4]
    led.release(second.lease_id)
    # the room of the job not followed is taken once it has stood
    assert [led.renew(lease_id).workers for lease_id in held[:3]] == [4, 4, 4]
    clock.advance(GROW_AFTER)
    assert sorted(led.renew(lease_id).workers for lease_id in held[:3]) == [5, 5, 6]


def test_one_user_on_its_own_has_the_whole_budget() -> None:
    led = ledger(cpus=8.0, max_per_lease=64)
    assert led.acquire(request("a", 64, uid=ALICE)).workers == 8


# -- entitle: the water-filling of one resource ----------------------------------------------


def test_entitle_by_hand() -> None:
    assert entitle(10, [3, 10, 10], [1, 1, 1]) == [3, 4, 3]  # 7 over two: the spare unit first
    assert entitle(12, [100, 100], [Fraction(1), Fraction(2)]) == [4, 8]
    assert entitle(5, [1, 2], [1, 1]) == [1, 2]  # everyone fits
    assert entitle(0, [3, 4], [1, 1]) == [0, 0]
    assert entitle(7, [0, 9, 9], [1, 1, 1]) == [0, 4, 3]


WEIGHTS = st.sampled_from([Fraction(1), Fraction(2), Fraction(1, 2), Fraction(3), Fraction(7, 10)])


@SETTINGS
@given(
    capacity=st.integers(0, 200),
    asks=st.lists(st.tuples(st.integers(0, 120), WEIGHTS), min_size=1, max_size=8),
)
def test_entitle_is_weighted_max_min(capacity: int, asks: list[tuple[int, Fraction]]) -> None:
    """Nobody gets more than it asks; together min(capacity, what all ask); each at least
    min(what it asks, floor(capacity * w / W)); and max-min within a unit: for one short
    of what it asks, nobody else holds more than a unit above its level (for their
    weights). Not exactly max-min: in whole units that can conflict with the floor."""
    demands = [d for d, _ in asks]
    weights = [w for _, w in asks]
    got = entitle(capacity, demands, weights)
    assert all(0 <= g <= d for g, d in zip(got, demands, strict=True))
    assert sum(got) == min(capacity, sum(demands))
    total = sum(weights)
    for g, d, w in zip(got, demands, weights, strict=True):
        assert g >= min(d, capacity * w // total)
    for g, d, w in zip(got, demands, weights, strict=True):
        if g < d:  # short: nobody holds a unit more than a unit above its level
            for g2, w2 in zip(got, weights, strict=True):
                assert Fraction(g2 - 1) / w2 < Fraction(g + 1) / w


# -- allocate_users over random users and leases --------------------------------------------

UIDS = (ALICE, BOB, 1002, 1003, 1004)


@st.composite
def user_requests(draw: st.DrawFn, uids: list[int]) -> Request:
    """A request of one of the users."""
    uid = draw(st.sampled_from(uids))
    return Request(
        holder=f"h{draw(st.integers(0, 9))}",
        pid=1,
        uid=uid,
        job="batt",
        want=draw(st.sampled_from([0, 1, 2, 3, 4, 6, 8, 12, 64])),
        kinds=draw(st.sampled_from(KIND_SETS)),
        cgroups=draw(st.sampled_from([(), ("/sys/fs/cgroup/pids/batt/job",)])),
        base_tasks=draw(st.integers(0, 3)),
    )


def random_users(cfg: BudgetConfig, data: st.DataObject, cpus: float, roomy: bool) -> Tracker:
    """Users with weights, and their leases acquired (some renewed) on one sample."""
    uids = data.draw(st.lists(st.sampled_from(UIDS), min_size=2, max_size=5, unique=True))
    weights = {uid: data.draw(st.sampled_from([1.0, 1.0, 2.0, 0.5, 3.0])) for uid in uids}
    lims = data.draw(roomy_limits() if roomy else limits())
    mem = data.draw(st.integers(0, 16)) * GIB
    tracker = Tracker(cfg, sample(*lims, cpus=cpus, mem=mem), weights=weights)
    live = []
    for _ in range(data.draw(st.integers(2, 40))):
        live.append(tracker.acquire(data.draw(user_requests(uids))))
        if data.draw(st.integers(0, 4)) == 0:
            lease_id = data.draw(st.sampled_from(live))
            tracker.ledger.renew(lease_id, tracker.ledger.lease(lease_id).target)
    return tracker


def cpus_held(w: World, shares: dict[str, int]) -> dict[int, int]:
    """CPUs each user holds at the allocation: a pool's workers, else its seat."""
    held: dict[int, int] = {}
    for u in w.users:
        held[u.uid] = u.seats + sum(shares.get(i, 0) - 1 for i, _, _ in u.planned if shares.get(i))
    return held


@SETTINGS
@given(cfg=configs(), data=st.data())
def test_where_only_cpus_bind_each_user_holds_its_part(
    cfg: BudgetConfig, data: st.DataObject
) -> None:
    """The guarantee, where neither a task limit nor memory binds: each of the U users
    holding leases holds at least min(the CPUs it asks for, floor(C * w / W)) (C the CPUs,
    W the sum of the users' weights; a user asks for a CPU per lease that asked for a
    worker and, per lease that may hold a pool, its workers beyond it), and at least its
    water-filled part (`entitle`) where it asks for that much; no more pool workers than
    CPUs; nothing left that a user asks for (the users hold at least min(C, what they
    ask)); and no more than C held but for the sequential leases past their own users'
    parts (those are their users' alone: nobody else's part shrinks for them)."""
    cfg = replace(cfg, pressure=QUIET, memory_per_slot=0)
    cpus = data.draw(st.sampled_from([2.0, 4.0, 8.0, 16.0, 32.0, 64.0]))
    w = random_users(cfg, data, cpus, roomy=True).world()
    if len(w.users) < 2:
        return
    alloc = w.allocation()
    shares = {i: alloc.share(i).workers for i, _, _ in w.planned}
    held = cpus_held(w, shares)
    c = w.idle.cpus
    total = sum(u.weight for u in w.users)
    parts = entitlements(w.users, w.idle).cpus
    for u, part in zip(w.users, parts, strict=True):
        asks = u.cpu_demand()
        assert held[u.uid] >= min(asks, c * u.weight // total), (u.uid, held, alloc)
        assert held[u.uid] >= min(asks, part), (u.uid, held, parts, alloc)
        assert alloc.cpus[u.uid] == held[u.uid]
    assert sum(shares.values()) <= c
    assert sum(held.values()) >= min(c, sum(u.cpu_demand() for u in w.users))
    beyond = sum(max(0, u.seats - part) for u, part in zip(w.users, parts, strict=True))
    assert sum(held.values()) <= c + beyond


@SETTINGS
@given(cfg=configs(), data=st.data())
def test_each_user_gets_at_least_its_own_max_min_within_its_entitlements(
    cfg: BudgetConfig, data: st.DataObject
) -> None:
    """Wherever anything binds: every resource is split by `entitle` (so each user's part
    of each is at least min(what it asks, floor(R * w / W))), each user's leases get at
    least the sizes `allocate` gives them on the book of its parts (its remainder may go
    to other leases of the user: `keep_remainders`), the top-up only adds, and the shares
    together stay within every limit's headroom, the memory and the CPUs."""
    cpus = data.draw(st.sampled_from([2.0, 4.0, 16.0, 64.0]))
    tracker = random_users(cfg, data, cpus, roomy=data.draw(st.booleans()))
    w = tracker.world()
    if len(w.users) < 2 or tracker.ledger.level == "extreme":
        return
    idle, users = w.idle, w.users
    ent = entitlements(users, idle)
    total = sum(u.weight for u in users)
    for k, u in enumerate(users):
        assert ent.cpus[k] >= min(u.cpu_demand(), idle.cpus * u.weight // total)
        for i, room in enumerate(ent.rooms[k]):
            asked = u.demand.tasks[i]
            whole = idle.caps[i] - idle.usage[i]
            if whole > 0 and asked:  # the weights of those that ask for this limit only
                part = whole * u.weight // sum(v.weight for v in users if v.demand.tasks[i])
                assert room >= min(asked, part)
    alloc = allocate_users(users, idle)
    for k, u in enumerate(users):
        own = allocate(
            u.planned, user_book(idle, u, ent.cpus[k], ent.rooms[k], ent.mem[k]), u.demand
        )
        got = sorted(alloc.share(lease_id).workers for lease_id, _, _ in u.planned)
        given = sorted(own.share(lease_id).workers for lease_id, _, _ in u.planned)
        assert all(g >= o for g, o in zip(got, given, strict=True)), (got, given)
    assert_within(
        idle, w, {i: (alloc.share(i).kind, alloc.share(i).workers) for i, _, _ in w.planned}
    )


@SETTINGS
@given(cfg=configs(), data=st.data())
def test_a_remainder_goes_by_the_pools_the_leases_run(
    cfg: BudgetConfig, data: st.DataObject
) -> None:
    """Where only the CPUs bind inside a user's part, `keep_remainders` gives out the
    sizes `allocate` gave the user's leases, the same number of each, and of two leases
    that contest the remainder, one gets the larger size before the other gets the
    smaller only if its pool is of the larger size, or the other's of the smaller."""
    cfg = replace(cfg, pressure=QUIET, memory_per_slot=0)
    cpus = data.draw(st.sampled_from([8.0, 16.0, 32.0, 64.0]))
    if data.draw(st.booleans()):
        w = random_users(cfg, data, cpus, roomy=True).world()
    else:  # jobs that settled, then some ended and others came: remainders that moved
        tracker = Tracker(replace(cfg, max_per_lease=8), sample(cpus=cpus))
        jobs = [tracker.acquire(request("b", data.draw(st.integers(1, 8)), uid=BOB))]
        jobs += [tracker.acquire(request(f"a{i}", 8, uid=ALICE)) for i in range(7)]
        for lease_id in jobs * 2:
            tracker.ledger.renew(lease_id, tracker.ledger.lease(lease_id).target)
        for lease_id in data.draw(st.lists(st.sampled_from(jobs[1:]), unique=True)):
            tracker.ledger.release(lease_id)
        for i in range(data.draw(st.integers(0, 3))):
            tracker.acquire(request(f"n{i}", 8, uid=ALICE))
        w = tracker.world()
    ent = entitlements(w.users, w.idle)
    for k, u in enumerate(w.users):
        book = user_book(w.idle, u, ent.cpus[k], ent.rooms[k], ent.mem[k])
        given = allocate(u.planned, book, u.demand).shares
        kept = keep_remainders(given, u, book)
        assert sorted(s.workers for s in kept.values()) == sorted(s.workers for s in given.values())
        if not cpu_only(u.demand, book):
            assert kept == given
            continue
        level, bonus, winners = u.demand.level(book.cpus - book.cpu_used)
        if not winners or level < MIN_POOL:
            assert kept == given
            continue
        contested = [i for i, _, p in u.planned if p.kind is not None and p.cap > level]
        ranks = {i: rank_of(u.held.get(i, 0), level, bonus) for i in contested}
        larger = [ranks[i] for i in contested if kept[i].workers == bonus]
        smaller = [ranks[i] for i in contested if kept[i].workers == level]
        assert len(larger) == winners
        assert max(larger) <= min(smaller, default=2), (contested, u.held, kept)


def rank_of(pool: int, level: int, bonus: int) -> int:
    """Who gets a remainder first: 0 a pool of the larger size, 2 one of the smaller, 1 any
    other (a newcomer's none)."""
    return 0 if pool == bonus else 2 if pool == level else 1


def assert_within(idle: Book, w: World, pools: dict[str, tuple[str, int]]) -> None:
    """The planned leases at `pools` on the idle book: no limit past its cap by more than
    it was already, memory within its slots (or no further past them than it was), and no
    more pool workers than CPUs."""
    book = idle.copy()
    for lease_id, fp, _ in w.planned:
        kind, workers = pools[lease_id]
        if workers:
            book.move(fp, ("sequential", 0), (kind, workers))  # type: ignore[arg-type]
    for i, cap in enumerate(book.caps):
        assert book.usage[i] <= max(cap, idle.usage[i]), (i, book.usage, book.caps)
    # memory as the limits: no more past it than the idle book was (the memory its leases
    # will still write in their own processes: `claims.pending`)
    assert book.mem_used <= max(book.mem_bytes, 0, idle.mem_used)
    assert sum(workers for _, workers in pools.values()) <= idle.cpus


def test_a_part_too_small_for_a_first_pool_is_left_to_the_others() -> None:
    """Parts are in tasks, pools in whole steps: of a cgroup's 11 tasks, bob's part of 5
    holds no first process pool (6 tasks), so the top-up gives them to alice, whose first
    pool of 2 grows to 7. (One queue would have kept her at 2, nobody using the 5.)"""
    assert pool_cost("process", MIN_POOL) == 6
    cg = limit(11, 0, "cgroup", "/sys/fs/cgroup/pids/batt", name="cgroup:/batt")
    led = ledger(limit(), cg, cpus=64.0, max_per_lease=8)
    inside = ("/sys/fs/cgroup/pids/batt/job",)
    kinds: tuple[Kind, ...] = ("process",)
    a = led.acquire(request("a", 8, uid=ALICE, cgroups=inside, base_tasks=0, kinds=kinds))
    b = led.acquire(request("b", 8, uid=BOB, cgroups=inside, base_tasks=0, kinds=kinds))
    assert [led.lease(g.lease_id).share for g in (a, b)] == [7, 0]


def test_single_user_allocation_is_the_one_allocate_gives() -> None:
    """One user: `allocate_users` is `allocate` on the whole book (the path it was)."""
    tracker = Tracker(config(), sample(limit(), cpus=8.0))
    for i in range(5):
        tracker.acquire(request(f"h{i}", 4, uid=ALICE))
    w = tracker.world()
    assert len(w.users) == 1
    assert allocate_users(w.users, w.idle) == allocate(w.planned, w.idle, w.demand)
