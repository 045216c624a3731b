"""Builders of the budget tests: configs, limits, samples, requests and ledgers, the
hypothesis strategies that draw them, and `world`, which builds the books, the demand and
the leases' records from public parts for the pure functions to be tested on.

Test modules import them from here (no test module imports another)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from supervisord_batt.budget.allocation import Allocation, Planned, allocate
from supervisord_batt.budget.books import Book
from supervisord_batt.budget.claims import (
    Footprint,
    Profile,
    cap_of,
    pending,
    pools_of,
    profile,
    sampled,
    scope_of,
    seat_of,
)
from supervisord_batt.budget.costs import PROCESS_POOL_OVERHEAD, PROCESS_WORKER_TASKS
from supervisord_batt.budget.demand import Demand
from supervisord_batt.budget.hierarchy import allocate_users
from supervisord_batt.budget.hold import GrowHold
from supervisord_batt.budget.ledger import BudgetLedger
from supervisord_batt.budget.records import Lease, Request
from supervisord_batt.budget.users import User, exact_weight
from supervisord_batt.config.records import BudgetConfig, PressureThresholds
from supervisord_batt.host.sample import HostSample, Limit, LimitKind, Psi
from supervisord_batt.protocol import Kind, Level
from tests.fakes import FakeClock

CGROUP = "/sys/fs/cgroup/pids/batt"
GIB = 1 << 30

# thresholds that never fire
QUIET = PressureThresholds(
    headroom_high_percent=-1000.0,
    headroom_extreme_percent=-1000.0,
    cpu_high=101.0,
    cpu_extreme=101.0,
    memory_high=101.0,
    memory_extreme=101.0,
)


def config(**overrides: object) -> BudgetConfig:
    base = BudgetConfig(
        reserve_tasks=0,
        reserve_percent=0.0,
        memory_reserve_percent=0.0,
        memory_unwritten=False,  # the tests of the slots' arithmetic; test_unwritten: on
        max_per_lease=64,
        cpu_cap=None,
        memory_per_slot=0,
        lease_ttl=30.0,
        cgroups=(),
        watch_users=(),
        pressure=QUIET,
    )
    return replace(base, **overrides)  # type: ignore[arg-type]


def limit(
    limit: int = 10_000,
    in_use: int = 0,
    kind: LimitKind = "threads-max",
    scope: str | int | None = None,
    name: str | None = None,
) -> Limit:
    if name is None:
        name = kind if scope is None else f"{kind}:{scope}"
    return Limit(name=name, kind=kind, scope=scope, limit=limit, in_use=in_use)


def sample(
    *limits: Limit,
    cpus: float = 64.0,
    mem: int = 64 * GIB,
    psi: Psi | None = None,
    taken_at: float = 0.0,
) -> HostSample:
    lims = limits or (limit(),)
    return HostSample(
        taken_at=taken_at,
        wall_time=taken_at,
        threads_total=0,
        threads_max=0,
        pid_max=0,
        cgroups=(),
        users=(),
        mem_available_bytes=mem,
        mem_total_bytes=mem,
        cpus=cpus,
        psi=psi,
        limits=lims,
    )


def request(
    holder: str = "h1",
    want: int = 4,
    *,
    kinds: tuple[Kind, ...] = ("process", "thread", "sequential"),
    uid: int = 1000,
    cgroups: tuple[str, ...] = (),
    base_tasks: int = 1,
    pid: int = 4242,
    job: str = "batt",
) -> Request:
    return Request(
        holder=holder,
        pid=pid,
        uid=uid,
        job=job,
        want=want,
        kinds=kinds,
        cgroups=cgroups,
        base_tasks=base_tasks,
    )


def ledger(
    *limits: Limit,
    clock: FakeClock | None = None,
    cpus: float = 64.0,
    mem: int = 64 * GIB,
    psi: Psi | None = None,
    weights: Mapping[int, float] | None = None,
    **cfg: object,
) -> BudgetLedger:
    """A ledger on one sample; `weights`: uid -> weight (1 for the others)."""
    return BudgetLedger(
        config(**cfg),
        clock or FakeClock(),
        sample(*limits, cpus=cpus, mem=mem, psi=psi),
        weigh=weigher(weights or {}),
    )


def weigher(weights: Mapping[int, float]) -> Callable[[int], float]:
    """The weigh function of a ledger: uid -> its weight, 1 if not in `weights`."""
    return lambda uid: weights.get(uid, 1.0)


PRESSURE = PressureThresholds(
    headroom_high_percent=20.0,
    headroom_extreme_percent=5.0,
    cpu_high=40.0,
    cpu_extreme=80.0,
    memory_high=30.0,
    memory_extreme=60.0,
)


SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
UIDS = (1000, 1001)
KIND_SETS: tuple[tuple[Kind, ...], ...] = (
    ("process", "thread", "sequential"),
    ("process", "sequential"),
    ("thread",),
    ("sequential",),
)


@st.composite
def limits(draw: st.DrawFn) -> tuple[Limit, ...]:
    out = []
    for kind, scope in (("threads-max", None), ("cgroup", CGROUP), ("nproc", 1000)):
        if kind != "threads-max" and not draw(st.booleans()):
            continue
        lim = draw(st.integers(5, 300))
        name = kind if scope is None else f"{kind}:{scope}"
        out.append(Limit(name, kind, scope, lim, draw(st.integers(0, lim + 10))))  # type: ignore[arg-type]
    return tuple(out)


@st.composite
def roomy_limits(draw: st.DrawFn) -> tuple[Limit, ...]:
    """Limits far above what the leases ask for: the CPUs (or memory) bind, not tasks."""
    out = []
    for kind, scope in (("threads-max", None), ("cgroup", CGROUP), ("nproc", 1000)):
        if kind != "threads-max" and not draw(st.booleans()):
            continue
        lim = draw(st.integers(2_000, 20_000))
        name = kind if scope is None else f"{kind}:{scope}"
        out.append(Limit(name, kind, scope, lim, draw(st.integers(0, lim // 4))))  # type: ignore[arg-type]
    return tuple(out)


@st.composite
def samples(draw: st.DrawFn, shape: tuple[Limit, ...] | None = None) -> HostSample:
    lims = (
        draw(limits())
        if shape is None
        else tuple(replace(lim, in_use=draw(st.integers(0, lim.limit + 10))) for lim in shape)
    )
    host = sample(
        *lims, cpus=draw(st.sampled_from([1.0, 2.0, 4.0, 16.0])), mem=draw(st.integers(0, 16)) * GIB
    )
    # a total beyond what is available: its reserve may be more than is left
    total = host.mem_available_bytes + draw(st.integers(0, 32)) * GIB
    return replace(host, mem_total_bytes=total)


@st.composite
def configs(draw: st.DrawFn) -> BudgetConfig:
    pressure = draw(st.sampled_from([QUIET, PressureThresholds(20.0, 5.0, 101, 101, 101, 101)]))
    return config(
        reserve_tasks=draw(st.integers(0, 10)),
        reserve_percent=draw(st.sampled_from([0.0, 5.0, 15.0])),
        max_per_lease=draw(st.integers(1, 16)),
        cpu_cap=draw(st.sampled_from([None, 2.0, 8.0])),
        memory_per_slot=draw(st.sampled_from([0, GIB // 2, GIB])),
        memory_reserve_percent=draw(st.sampled_from([0.0, 5.0, 15.0])),
        memory_unwritten=draw(st.booleans()),
        pressure=pressure,
    )


CONSTANT_TASKS = (PROCESS_WORKER_TASKS, PROCESS_POOL_OVERHEAD)  # a job never seen
TASKS = (CONSTANT_TASKS, (1, 5), (3, 6), (2, 0))  # tasks per worker and beyond, learned
JOBS = ("batt", "small")  # job names, for the sizes learned per (job, uid)
LEARNED = (GIB // 8, GIB // 2, 3 * GIB // 4, 2 * GIB)  # bytes per worker a daemon learned


@st.composite
def requests(draw: st.DrawFn) -> Request:
    return Request(
        holder=f"h{draw(st.integers(0, 4))}",
        pid=1,
        uid=draw(st.sampled_from(UIDS)),
        job=draw(st.sampled_from(JOBS)),
        want=draw(st.integers(0, 12)),
        kinds=draw(st.sampled_from(KIND_SETS)),
        cgroups=draw(st.sampled_from([(), (CGROUP + "/job",), ("/sys/fs/cgroup/pids/x",)])),
        base_tasks=draw(st.integers(0, 5)),
    )


@dataclass(frozen=True)
class Held:
    """A lease as a test knows it: its request, its pool, and what the last sample saw
    (its measured tree and the pool it held then)."""

    lease_id: str
    request: Request
    kind: Kind = "sequential"
    workers: int = 0
    measured: int | None = None
    sampled_kind: Kind = "sequential"
    sampled_workers: int = 0
    worker_bytes: int | None = None  # learned bytes per worker; None: memory_per_slot
    # its pool's resident bytes at the last sample, where the ledger measured it (memory
    # short of its reserve then: `BudgetLedger.update`)
    measured_bytes: int | None = None
    tasks: tuple[int, int] = CONSTANT_TASKS  # its job's tasks per process worker and beyond
    # memory its processes will still write (`claims.pending`); None: a newcomer's, its
    # seat at its worker bytes where the config charges it
    pending_bytes: int | None = None


@dataclass
class World:
    """The books, the demand and the leases' records of a ledger holding `held`, built
    from scratch from public parts (as the ledger builds them on a new sample)."""

    charged: Book
    idle: Book
    demand: Demand
    planned: list[Planned]
    footprints: dict[str, Footprint]
    profiles: dict[str, Profile]
    users: list[User]  # the leases by user, as `hierarchy.allocate_users` takes them

    def allocation(self) -> Allocation:
        """What a recompute gives: the single-user path with one user (or none), the
        per-user allocation with several."""
        if len(self.users) > 1:
            return allocate_users(self.users, self.idle)
        return allocate(self.planned, self.idle, self.demand)


def world(
    host: HostSample,
    cfg: BudgetConfig,
    level: Level,
    held: Sequence[Held],
    weights: Mapping[int, float] | None = None,
) -> World:
    charged = Book.of(host, cfg)
    idle = charged.copy()
    demand = Demand.empty(len(host.limits))
    planned: list[Planned] = []
    footprints: dict[str, Footprint] = {}
    profiles: dict[str, Profile] = {}
    users: dict[int, User] = {}
    for h in held:
        scope = scope_of(h.request, host.limits)
        seat = seat_of(h.request)
        unit = h.worker_bytes if h.worker_bytes is not None else cfg.memory_per_slot
        unit = unit if cfg.memory_per_slot > 0 else 0
        owed = h.pending_bytes
        if owed is None:
            owed = seat * unit if cfg.memory_unwritten else 0
        fp = sampled(
            scope,
            h.request.base_tasks,
            h.measured,
            h.sampled_kind,
            h.sampled_workers,
            seat,
            unit,
            h.measured_bytes,
            h.tasks,
            owed,
        )
        pools, cap = pools_of(h.request), cap_of(h.request, cfg)
        p = profile(fp, pools, cap, level, h.kind, h.workers)
        charged.move(fp, None, (h.kind, h.workers))
        idle.move(fp, None, ("sequential", 0))
        demand.count(scope, p, 1)
        planned.append((h.lease_id, fp, p))
        footprints[h.lease_id], profiles[h.lease_id] = fp, p
        if seat:
            uid = h.request.uid
            u = users.get(uid)
            if u is None:
                weight = exact_weight((weights or {}).get(uid, 1.0))
                u = users[uid] = User(uid, weight, demand=Demand.empty(len(host.limits)))
            u.seats += 1
            if p.kind is not None:
                u.planned.append((h.lease_id, fp, p))
                u.demand.count(scope, p, 1)
                if h.workers:
                    u.held[h.lease_id] = h.workers
    by_uid = [users[uid] for uid in sorted(users)]  # the ledger's order (`_per_user`)
    return World(charged, idle, demand, planned, footprints, profiles, by_uid)


class Tracker:
    """A ledger driven through its public API, with what a test needs to rebuild its
    books from scratch (`world`): every request, and per lease the tree the last sample
    measured and the pool it held then."""

    def __init__(
        self,
        cfg: BudgetConfig,
        host: HostSample,
        clock: FakeClock | None = None,
        weights: Mapping[int, float] | None = None,
    ):
        self.cfg, self.host = cfg, host
        self.clock = clock or FakeClock()
        self.weights = dict(weights or {})  # uid -> weight, 1 for the others
        self.ledger = BudgetLedger(cfg, self.clock, host, weigh=weigher(self.weights))
        self.requests: dict[str, Request] = {}
        self.measured: dict[str, tuple[int | None, Kind, int]] = {}
        self.learned: dict[tuple[str, int], int] = {}  # as given to `BudgetLedger.learn`
        self.learned_tasks: dict[tuple[str, int], tuple[int, int]] = {}  # alike
        self.units: dict[str, int] = {}  # per lease: its bytes per worker at its last sample
        self.tasks: dict[str, tuple[int, int]] = {}  # per lease: its pool's tasks, alike
        self.pools: dict[str, int] = {}  # per lease: its pool's bytes the ledger measured
        self.owed: dict[str, int] = {}  # per lease: its memory not written yet, alike
        # the pools that ended while several users held seats, as the ledger's hold keeps
        # them: a user's next job starts no larger pool than that (`hold.first_size`)
        self.ended = GrowHold()

    def unit(self, req: Request) -> int:
        """Bytes per worker the ledger charges `req` now: learned, else memory_per_slot."""
        return self.learned.get((req.job, req.uid), self.cfg.memory_per_slot)

    def tasks_of(self, req: Request) -> tuple[int, int]:
        """Tasks per process worker and beyond them the ledger charges `req` now."""
        return self.learned_tasks.get((req.job, req.uid), CONSTANT_TASKS)

    def learn(
        self,
        learned: dict[tuple[str, int], int],
        tasks: dict[tuple[str, int], tuple[int, int]] | None = None,
    ) -> None:
        self.ledger.learn(learned, tasks)
        self.learned = dict(learned)
        # the ledger charges the constants at least: a short run's scans miss threads
        self.learned_tasks = {
            key: (max(each, PROCESS_WORKER_TASKS), max(extra, PROCESS_POOL_OVERHEAD))
            for key, (each, extra) in (tasks or {}).items()
        }

    def acquire(self, req: Request) -> str:
        lease_id = self.ledger.acquire(req).lease_id
        self.requests[lease_id] = req
        self.units[lease_id] = self.unit(req)
        self.tasks[lease_id] = self.tasks_of(req)
        return lease_id

    def release(self, lease_id: str) -> None:
        seated = self.seated()
        lease = self.ledger.lease(lease_id)
        self.ledger.release(lease_id)
        self.removed([lease], seated)

    def expire(self) -> list[Lease]:
        seated = self.seated()
        gone = self.ledger.expire()
        self.removed(gone, seated)
        return gone

    def seated(self) -> dict[int, int]:
        """Per uid, its leases that hold a seat (the ledger splits while two uids do)."""
        seats: dict[int, int] = {}
        for lease in self.ledger.statistics().leases:
            req = self.requests[lease.lease_id]
            if seat_of(req):
                seats[req.uid] = seats.get(req.uid, 0) + 1
        return seats

    def removed(self, gone: Sequence[Lease], seated: dict[int, int]) -> None:
        """Leases the ledger removed, in its order: a pool that ended while several users
        held seats is one its user's next job may start as large as."""
        for lease in gone:
            req = self.requests[lease.lease_id]
            if sum(1 for n in seated.values() if n) > 1 and lease.workers:
                self.ended.ended(req.uid, lease.workers, self.clock())
            if seat_of(req):
                seated[req.uid] -= 1

    def update(
        self,
        host: HostSample,
        trees: dict[str, int],
        pool_bytes: dict[str, int] | None = None,
        holder_bytes: dict[str, int] | None = None,
    ) -> None:
        held = {lease.lease_id: lease for lease in self.ledger.statistics().leases}
        self.ledger.update(host, trees, pool_bytes, holder_bytes)
        self.host = host
        self.measured = {i: (trees.get(i), lease.kind, lease.workers) for i, lease in held.items()}
        self.units = {i: self.unit(self.requests[i]) for i in held if i in self.requests}
        self.tasks = {i: self.tasks_of(self.requests[i]) for i in held if i in self.requests}
        self.owed = {}
        if self.cfg.memory_unwritten and self.cfg.memory_per_slot > 0:
            for i, lease in held.items():
                process = lease.kind == "process" and lease.workers > 0
                seen = (pool_bytes if process else holder_bytes) or {}
                seat = seat_of(self.requests[i])
                owed = pending(lease.kind, lease.workers, seat, self.units[i], seen.get(i))
                self.owed[i] = owed
        self.pools = {}
        if not pool_bytes or self.cfg.memory_per_slot <= 0:  # no pool measured
            return
        charged = self.world().charged  # the pools are measured below the memory reserve
        if charged.mem_bytes < charged.mem_used:
            self.pools = {
                i: pool_bytes[i]
                for i, lease in held.items()
                if i in pool_bytes and lease.kind == "process" and lease.workers
            }

    def held(self) -> list[Held]:
        out = []
        for lease in self.ledger.statistics().leases:
            measured, kind, workers = self.measured.get(lease.lease_id, (None, "sequential", 0))
            req = self.requests[lease.lease_id]
            unit = self.units.get(lease.lease_id, self.unit(req))  # acquired directly: now
            pool = self.pools.get(lease.lease_id)
            tasks = self.tasks.get(lease.lease_id, self.tasks_of(req))
            # not sampled since its acquire: its seat in full (None), else as sampled
            owed = self.owed.get(lease.lease_id, 0) if lease.lease_id in self.measured else None
            out.append(
                Held(
                    lease.lease_id,
                    req,
                    lease.kind,
                    lease.workers,
                    measured,
                    kind,
                    workers,
                    unit,
                    pool,
                    tasks,
                    owed,
                )
            )
        return out

    def world(self, *newcomers: Held) -> World:
        """The books from scratch with the leases held and `newcomers` (charged what the
        ledger would charge them now, unless they say)."""
        fresh = [
            replace(h, worker_bytes=self.unit(h.request), tasks=self.tasks_of(h.request))
            if h.worker_bytes is None
            else h
            for h in newcomers
        ]
        held = [*self.held(), *fresh]
        return world(self.host, self.cfg, self.ledger.level, held, self.weights)


def random_calls(cfg: BudgetConfig, data: st.DataObject, steps: int) -> Tracker:
    """A tracked ledger after `steps` random calls that change it, with nothing read in
    between: acquire, release, renew, expire and update, on random limits."""
    lims = data.draw(st.one_of(limits(), roomy_limits()))
    cpus = data.draw(st.sampled_from([4.0, 16.0, 64.0]))
    tracker = Tracker(cfg, sample(*lims, cpus=cpus, mem=data.draw(st.integers(0, 12)) * GIB))
    led = tracker.ledger
    live: list[str] = []
    ops = st.sampled_from(
        ["acquire", "acquire", "acquire", "release", "renew", "expire", "update", "learn"]
    )
    for _ in range(steps):
        op = data.draw(ops)
        if op == "acquire":
            live.append(tracker.acquire(data.draw(requests())))
        elif op == "release" and live:
            tracker.release(live.pop(data.draw(st.integers(0, len(live) - 1))))
        elif op == "renew" and live:
            lease_id = data.draw(st.sampled_from(live))
            ack = data.draw(st.sampled_from([None, 0, data.draw(st.integers(0, 16))]))
            if ack is None or ack <= led.lease(lease_id).workers:
                led.renew(lease_id, ack)
        elif op == "expire":
            tracker.clock.advance(data.draw(st.sampled_from([1.0, 20.0, 40.0])))
            gone = {lease.lease_id for lease in tracker.expire()}
            live = [i for i in live if i not in gone]
        elif op == "update":
            trees = {i: data.draw(st.integers(0, 30)) for i in live if data.draw(st.booleans())}
            # what each pool's workers hold: some grew past their figure, some did not
            pools = {i: data.draw(st.integers(0, 24)) * GIB // 4 for i in trees}
            # what the holders of the others hold (memory not written yet: `pending`)
            holders = {i: data.draw(st.integers(0, 8)) * GIB // 4 for i in trees}
            tracker.update(data.draw(samples(lims)), trees, pools, holders)
        elif op == "learn":  # sizes per (job, uid), as the daemon learns them from its scans
            keys = st.tuples(st.sampled_from(JOBS), st.sampled_from(UIDS))
            tracker.learn(
                data.draw(st.dictionaries(keys, st.sampled_from(LEARNED), max_size=4)),
                data.draw(st.dictionaries(keys, st.sampled_from(TASKS), max_size=4)),
            )
    return tracker
