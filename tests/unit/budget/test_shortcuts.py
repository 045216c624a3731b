"""The acquire shortcut against the full water-filling: for a newcomer after any traffic,
`newcomer_share(...)` is None (no shortcut) or the share `allocate(...)` gives it, and
where it gives the newcomer no pool, the fair share its refusal is explained with is
`allocate`'s too. Both are pure: the test builds their inputs from public parts."""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st

from supervisord_batt.budget.allocation import allocate
from supervisord_batt.budget.claims import seat_of
from supervisord_batt.budget.costs import MIN_POOL
from supervisord_batt.budget.hold import first_size
from supervisord_batt.budget.records import Request
from supervisord_batt.budget.shortcuts import newcomer_share, newcomer_user_share
from supervisord_batt.config.records import BudgetConfig
from supervisord_batt.host.sample import HostSample, Limit
from supervisord_batt.protocol import Kind
from tests.support.budget import (
    CGROUP,
    GIB,
    JOBS,
    KIND_SETS,
    LEARNED,
    QUIET,
    SETTINGS,
    UIDS,
    Held,
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
)

NEW = "newcomer"


def differ(tracker: Tracker, req: Request) -> str | None:
    """Where the shortcut and the full allocation disagree on `req` as a newcomer (None:
    they agree, or no shortcut applies); counts what it checked in `CHECKED`."""
    w = tracker.world(Held(NEW, req))
    others = [p for lease_id, _, p in w.planned if lease_id != NEW]
    quick = newcomer_share(w.profiles[NEW], w.footprints[NEW], others, w.idle, w.demand)
    if quick is None:
        CHECKED["none"] += 1
        return None
    full = allocate(w.planned, w.idle, w.demand)
    CHECKED["pool" if quick.share.workers else "no pool"] += 1
    if quick.share != full.share(NEW):
        return f"share {quick.share} != {full.share(NEW)}"
    if not quick.share.workers and quick.fair_share != full.fair_share:
        return f"fair share {quick.fair_share} != {full.fair_share}"
    return None


CHECKED: Counter[str] = Counter()


@SETTINGS
@given(cfg=configs(), data=st.data())
def test_the_shortcut_gives_the_full_share_after_random_traffic(
    cfg: BudgetConfig, data: st.DataObject
) -> None:
    """Where memory, the CPUs or task limits bind."""
    cfg = replace(cfg, memory_per_slot=data.draw(st.sampled_from([0, GIB // 2, GIB])))
    tracker = random_calls(cfg, data, data.draw(st.integers(0, 20)))
    for _ in range(data.draw(st.integers(1, 3))):
        req = data.draw(requests())
        assert differ(tracker, req) is None
        tracker.acquire(req)


@SETTINGS
@given(cfg=configs(), data=st.data())
def test_the_shortcut_gives_the_full_share_when_the_first_round_falls_back_to_threads(
    cfg: BudgetConfig, data: st.DataObject
) -> None:
    """Memory runs out in the first round, no task limit binds and the CPUs are plenty:
    a newcomer that accepts threads falls back to them, and its share is decided by the
    later rounds, where it needs no memory."""
    cfg = replace(
        cfg,
        pressure=QUIET,
        memory_per_slot=GIB,
        max_per_lease=data.draw(st.integers(MIN_POOL, 16)),
        cpu_cap=data.draw(st.sampled_from([None, 16.0, 32.0])),
    )
    first = sample(*data.draw(roomy_limits()), cpus=64.0, mem=data.draw(st.integers(0, 12)) * GIB)
    tracker = Tracker(cfg, first)
    fallback: tuple[Kind, ...] = ("process", "thread", "sequential")
    kinds = st.sampled_from([fallback, fallback, ("process", "sequential"), ("thread",)])
    for _ in range(data.draw(st.integers(0, 12))):
        tracker.acquire(replace(data.draw(requests()), kinds=data.draw(kinds)))
    if data.draw(st.booleans()):  # some pools sampled: they need memory only past that
        live = [lease.lease_id for lease in tracker.ledger.statistics().leases]
        tracker.update(first, {i: data.draw(st.integers(0, 30)) for i in live})
    for _ in range(data.draw(st.integers(1, 6))):  # once memory runs out, each falls back
        req = replace(data.draw(requests()), kinds=fallback, want=data.draw(st.integers(2, 12)))
        assert differ(tracker, req) is None
        tracker.acquire(req)


def seeded_traffic(seed: int, steps: int = 120, learn: bool = False) -> str | None:
    """One seeded run of the daemon's kind of traffic (many short leases, memory for some
    of their first pools, now and then 16 CPUs, renews and new samples), checking the
    shortcut before every acquire; the first disagreement, or None. With `learn`, two
    jobs whose bytes per worker the daemon learns now and then, one figure for both or
    one each (`BudgetLedger.learn`)."""
    r = random.Random(seed)
    cfg = config(
        memory_per_slot=r.choice([GIB // 4, GIB // 2, GIB]),
        max_per_lease=r.randint(2, 8),
        cpu_cap=r.choice([None, 32.0, 64.0]),
        pressure=QUIET,
    )
    lims = [Limit("threads-max", "threads-max", None, r.randint(2000, 20000), 0)]
    if r.random() < 0.5:
        lims.append(Limit(f"cgroup:{CGROUP}", "cgroup", CGROUP, r.randint(2000, 20000), 0))

    def host() -> HostSample:
        return sample(
            *(replace(lim, in_use=r.randint(0, lim.limit // 4)) for lim in lims),
            cpus=r.choice([64.0, 64.0, 16.0]),
            mem=r.randint(0, 12) * GIB,
        )

    tracker = Tracker(cfg, host())
    led = tracker.ledger
    kinds: list[tuple[Kind, ...]] = [KIND_SETS[0]] * 3 + [KIND_SETS[1], KIND_SETS[2]]
    ops = ["acquire"] * 8 + ["release"] * 4 + ["pair"] * 3 + ["update", "renew", "renew"]
    ops += ["learn"] * learn
    live: list[str] = []
    for step in range(steps):
        op = r.choice(ops)
        if op in ("acquire", "pair"):
            req = Request(
                f"h{r.randint(0, 4)}",
                1,
                r.choice(UIDS),
                r.choice(JOBS) if learn else "batt",
                r.choice([2, 3, 4, 8]),
                r.choice(kinds),
                r.choice([(), (CGROUP + "/job",)]),
                r.randint(0, 5),
            )
            why = differ(tracker, req)
            if why:
                return f"seed {seed} step {step}: {why}"
            lease_id = tracker.acquire(req)
            if op == "acquire":
                live.append(lease_id)
            else:
                led.release(lease_id)
        elif op == "release" and live:
            led.release(live.pop(r.randrange(len(live))))
        elif op == "renew" and live:
            lease_id = r.choice(live)
            held = led.lease(lease_id)
            led.renew(lease_id, r.choice([None, held.target, held.workers]))
        elif op == "update":
            tracker.update(host(), {i: r.randint(0, 30) for i in live if r.random() < 0.5})
        elif op == "learn":
            sizes = [r.choice(LEARNED)] * 2 if r.random() < 0.5 else r.sample(LEARNED, 2)
            learned = dict(zip(JOBS, sizes, strict=True))
            tracker.learn({(job, uid): learned[job] for job in JOBS for uid in UIDS})
    return None


def test_the_shortcut_gives_the_full_share_in_seeded_daemon_traffic() -> None:
    """Fixed seeds of many-client traffic, where memory for only some first pools makes
    the others fall back to threads (`Demand.fallen`): repeatable where the random tests
    above reach such a case only now and then. The shortcut must apply in most of them,
    with and without a pool, or this tests nothing."""
    CHECKED.clear()
    found = [why for why in map(seeded_traffic, range(60)) if why]
    assert not found, found
    assert CHECKED["pool"] > 1000 and CHECKED["no pool"] > 100, CHECKED
    assert CHECKED["none"] < CHECKED["pool"], CHECKED


def test_the_shortcut_gives_the_full_share_where_jobs_learned_their_worker_size() -> None:
    """The same traffic with each job's bytes per worker learned: where the planned
    process pools' sizes differ, memory slots are no one figure and the later rounds have
    no closed form (`Demand.unit`), so the shortcut must give way there or agree."""
    CHECKED.clear()
    found = [why for why in (seeded_traffic(seed, learn=True) for seed in range(60)) if why]
    assert not found, found
    assert CHECKED["pool"] > 1000 and CHECKED["no pool"] > 100, CHECKED


@settings(SETTINGS, max_examples=100)
@given(cfg=configs(), data=st.data())
def test_the_shortcut_gives_the_full_share_to_many_clients(
    cfg: BudgetConfig, data: st.DataObject
) -> None:
    """The daemon's traffic with many clients: up to dozens of live leases, memory for only
    some of their first pools, so that the first round walks them and some fall back to
    threads, no task limit binding and CPUs to spare; acquires, releases, renews and new
    samples interleave at random."""
    cfg = replace(
        cfg,
        pressure=QUIET,
        memory_per_slot=data.draw(st.sampled_from([GIB // 4, GIB // 2, GIB])),
        max_per_lease=data.draw(st.integers(MIN_POOL, 8)),
        # CPUs that bind in the later rounds too: only there do the fallen-back others
        # (threads, no memory slot) differ from what the plan counted (process pools)
        cpu_cap=data.draw(st.sampled_from([None, 16.0, 32.0, 64.0])),
    )
    cpus = data.draw(st.sampled_from([16.0, 32.0, 64.0]))
    first = sample(*data.draw(roomy_limits()), cpus=cpus, mem=data.draw(st.integers(0, 12)) * GIB)
    tracker = Tracker(cfg, first)
    led = tracker.ledger
    fallback: tuple[Kind, ...] = ("process", "thread", "sequential")
    kinds = st.sampled_from([fallback, fallback, fallback, ("process", "sequential"), ("thread",)])
    wants = st.sampled_from([2, 3, 4, 8])
    live: list[str] = []

    def acquire() -> None:
        req = replace(data.draw(requests()), kinds=data.draw(kinds), want=data.draw(wants))
        assert differ(tracker, req) is None
        live.append(tracker.acquire(req))

    for _ in range(data.draw(st.integers(4, 48))):
        acquire()
    for _ in range(data.draw(st.integers(1, 30))):
        op = data.draw(st.integers(0, 5))
        if live and op < 2:
            led.release(live.pop(data.draw(st.integers(0, len(live) - 1))))
        elif live and op == 2:  # a renew acknowledges or grows: pools change size
            lease_id = data.draw(st.sampled_from(live))
            held = led.lease(lease_id)
            led.renew(lease_id, data.draw(st.sampled_from([None, held.target, held.workers])))
        elif op == 3:  # a new sample: CPUs and memory move
            host = replace(
                first,
                cpus=data.draw(st.sampled_from([8.0, 16.0, 32.0, 64.0])),
                mem_available_bytes=data.draw(st.integers(0, 12)) * GIB,
            )
            trees = {i: data.draw(st.integers(0, 30)) for i in live if data.draw(st.booleans())}
            tracker.update(host, trees)
        else:
            acquire()


def differ_users(tracker: Tracker, req: Request) -> str | None:
    """Where `newcomer_user_share` and `allocate_users` disagree on `req` as a newcomer,
    share or its user's CPUs (None: they agree, or no shortcut applies); counts what it
    checked in `CHECKED_USERS`."""
    w = tracker.world(Held(NEW, req))
    if len(w.users) < 2 or not seat_of(req):
        return None
    mine = [u.uid for u in w.users].index(req.uid)
    pools = Counter(w.users[mine].held.values())  # the user's pools, the newcomer's none
    found = newcomer_user_share(w.profiles[NEW], w.footprints[NEW], mine, w.users, w.idle, pools)
    if found is None:
        CHECKED_USERS["none"] += 1
        return None
    quick, held = found
    full = w.allocation()
    CHECKED_USERS["pool" if quick.share.workers else "no pool"] += 1
    if quick.share != full.share(NEW):
        return f"share {quick.share} != {full.share(NEW)}"
    if held != full.cpus[req.uid]:
        return f"its user's CPUs {held} != {full.cpus[req.uid]}"
    return None


CHECKED_USERS: Counter[str] = Counter()
WEIGHTS = st.sampled_from([1.0, 1.0, 2.0, 0.5, 3.0])


@SETTINGS
@given(cfg=configs(), data=st.data())
def test_the_per_user_shortcut_gives_the_full_share_after_random_traffic(
    cfg: BudgetConfig, data: st.DataObject
) -> None:
    """Two to four users with weights, their leases acquired, renewed, released and
    sampled at random, on limits that bind or not; each acquire checked first."""
    uids = data.draw(st.lists(st.sampled_from([0, 1000, 1001, 1002]), min_size=2, unique=True))
    weights = {uid: data.draw(WEIGHTS) for uid in uids}
    lims = data.draw(st.one_of(roomy_limits(), roomy_limits(), limits()))
    host = sample(*lims, cpus=data.draw(st.sampled_from([4.0, 16.0, 64.0])), mem=64 * GIB)
    tracker = Tracker(cfg, host, weights=weights)
    live: list[str] = []
    for _ in range(data.draw(st.integers(2, 40))):
        op = data.draw(st.integers(0, 5))
        if op < 3 or not live:
            req = replace(data.draw(requests()), uid=data.draw(st.sampled_from(uids)))
            assert differ_users(tracker, req) is None
            live.append(tracker.acquire(req))
        elif op == 3:
            tracker.ledger.release(live.pop(data.draw(st.integers(0, len(live) - 1))))
        elif op == 4:
            lease_id = data.draw(st.sampled_from(live))
            tracker.ledger.renew(lease_id, tracker.ledger.lease(lease_id).target)
        else:
            trees = {i: data.draw(st.integers(0, 30)) for i in live if data.draw(st.booleans())}
            tracker.update(host, trees)


def test_the_per_user_shortcut_applies_where_only_the_cpus_bind() -> None:
    """60 jobs of one user and 4 of another on 32 CPUs, then a newcomer of each, and of
    a third user: the shortcut applies to all of them, and agrees with `allocate_users`."""
    CHECKED_USERS.clear()
    tracker = Tracker(config(max_per_lease=8), sample(cpus=32.0))
    for i in range(64):
        req = request(f"h{i}", 8, uid=1000 if i < 60 else 1001)
        assert differ_users(tracker, req) is None
        tracker.acquire(req)
    for uid in (1000, 1001, 0):
        assert differ_users(tracker, request("n", 8, uid=uid)) is None
    assert CHECKED_USERS["none"] == 0 and CHECKED_USERS["pool"] > 3, CHECKED_USERS


def test_the_per_user_shortcut_gives_way_where_the_newcomer_may_take_a_remainder() -> None:
    """16 CPUs: bob's job holds 5, alice's four 3, 3, 3 and 2 of her 11. A newcomer of
    hers beside them contests no remainder (11 over five: 3 and four 2s, the 3 kept by a
    pool of 3): the shortcut applies. With a job of 3 gone, the newcomer goes ahead of her
    pool of 2 for the third extra worker (`hierarchy.keep_remainders`), which the sums do
    not say: the shortcut gives way, and the full allocation gives it 3."""
    CHECKED_USERS.clear()
    tracker = Tracker(config(max_per_lease=8), sample(cpus=16.0))
    tracker.acquire(request("b", 5, uid=1001))
    jobs = [tracker.acquire(request(f"a{i}", 8, uid=1000)) for i in range(4)]
    for lease_id in jobs * 2:
        tracker.ledger.renew(lease_id, tracker.ledger.lease(lease_id).target)
    assert [tracker.ledger.lease(lease_id).workers for lease_id in jobs] == [3, 3, 3, 2]
    assert differ_users(tracker, request("n", 8, uid=1000)) is None
    assert dict(CHECKED_USERS) == {"pool": 1}, CHECKED_USERS
    tracker.ledger.release(jobs[0])
    assert differ_users(tracker, request("n", 8, uid=1000)) is None
    assert dict(CHECKED_USERS) == {"pool": 1, "none": 1}, CHECKED_USERS
    assert tracker.world(Held(NEW, request("n", 8, uid=1000))).allocation().share(NEW).workers == 3


@SETTINGS
@given(cfg=configs(), data=st.data())
def test_with_several_users_acquire_grants_the_full_per_user_share(
    cfg: BudgetConfig, data: st.DataObject
) -> None:
    """With several users holding leases the ledger gives the newcomer its share in the
    allocation across users (`hierarchy.allocate_users`, or `newcomer_user_share` where
    it agrees). The newcomer is granted no more than that share, and all of its start
    unless the charged book cannot hold it now (its user's CPUs as that allocation counts
    them, every limit, the memory): the share, or no larger than the pools its user runs
    or ran in a job that ended lately (`hold.first_size`)."""
    tracker = random_calls(cfg, data, data.draw(st.integers(0, 20)))
    for _ in range(data.draw(st.integers(1, 4))):
        req = data.draw(requests())
        w = tracker.world(Held(NEW, req))
        full = w.allocation()
        grant = tracker.ledger.acquire(req)
        tracker.requests[grant.lease_id] = req
        if len(w.users) < 2:
            continue
        mine = full.share(NEW)
        assert grant.workers <= mine.workers, (grant, mine)
        siblings = [
            h for h in tracker.held() if h.request.uid == req.uid and h.lease_id != grant.lease_id
        ]
        pools = [h.workers for h in siblings if h.workers]
        start = first_size(mine, max(*pools, tracker.ended.recent(req.uid, tracker.clock()), 0))
        if start.workers and grant.workers < start.workers:
            used = sum(h.workers if h.workers > 1 else seat_of(h.request) for h in siblings)
            cpu = (full.cpus[req.uid], used)
            fp = w.footprints[NEW]
            assert not w.charged.fits(fp, start.kind, start.workers, ("sequential", 0), cpu)


def test_the_shortcut_gives_way_while_a_pool_grown_into_the_memory_reserve_is_planned() -> None:
    """Issue 24: a process pool measured below the memory reserve gives back its share of
    what its workers hold, which no count of memory slots of one size says (`Demand.unit`):
    newcomers of every kind, before and after it shrinks, get the full allocation's share
    (the CPUs bind too: what the pool takes of them is what the newcomer gets)."""
    cfg = config(memory_per_slot=GIB // 2, max_per_lease=16, memory_reserve_percent=5, cpu_cap=12)
    mem_cg = Limit("memory:/batt", "memory", "/sys/fs/cgroup/memory/batt", 10 * GIB, GIB)
    host = replace(sample(limit(), mem=64 * GIB), memory_limits=(mem_cg,))
    tracker = Tracker(cfg, host)
    held = tracker.acquire(request("a", 8, kinds=("process",)))
    grown = replace(mem_cg, in_use=GIB + 8 * GIB + 3 * GIB // 4)  # 256 MiB into the reserve
    tracker.update(replace(host, memory_limits=(grown,)), {held: 13}, {held: 8 * GIB})
    assert tracker.pools == {held: 8 * GIB}, "the ledger measured no pool: nothing is tested"
    for ack in (None, 7):
        if ack is not None:
            tracker.ledger.renew(held, workers_in_use=ack)
        for kinds in KIND_SETS:
            for want in (2, 4, 8):
                req = request("n", want, kinds=kinds, job="small")
                assert differ(tracker, req) is None, (ack, kinds, want)
