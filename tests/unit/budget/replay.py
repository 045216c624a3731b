"""A seeded replay of random traffic through `BudgetLedger`, digested per seed.

Recorded against one ledger and checked against every later one: the same seed must
drive the same calls and get the same answers, so equal digests mean identical grants,
renews, releases, updates and statistics. Only the public API and records are used, and
nothing here depends on the time, the hash seed or the iteration order of anything
unordered: a digest is a pure function of its seed.

Two recordings, both made by the ledger before it split the budget per user (commit
4f7aee1), which must go on answering one user as it did (`VERSION` names this generator:
change the traffic, bump it and record again):

- `tests/unit/budget/data/ledger_replay.json`, the mixed traffic: three uids, and leases
  that ask for no worker. Recorded before the ledger's rewrite by composition. Since the
  split per user, a sequence in which two uids held leases that asked for workers at the
  same time, or a lease asked for no worker (it now holds no CPU), is answered
  differently, as it should be; every other one (`Replay.one_user`) must match.
- `tests/unit/budget/data/ledger_replay_single_user.json`, the single-user traffic: the
  same random draws, every request of one uid and asking for at least one worker
  (`single=True`). Every sequence must match.

`replay(seed, single)` runs one sequence; `python benchmarks/replay_ledger.py` checks them
all (or records them afresh).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import random
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

from supervisord_batt.budget.ledger import BudgetLedger
from supervisord_batt.budget.records import Grant, Lease, LeaseError, Request
from supervisord_batt.config.records import BudgetConfig, PressureThresholds
from supervisord_batt.host.sample import HostSample, Limit, Psi
from supervisord_batt.protocol import Kind

VERSION = 1
SEQUENCES = 12_000
DATA = Path(__file__).parent / "data" / "ledger_replay.json"
DATA_SINGLE = Path(__file__).parent / "data" / "ledger_replay_single_user.json"
SINGLE_UID = 1000

GIB = 1 << 30
CGROUP = "/sys/fs/cgroup/pids/batt"
QUIET = PressureThresholds(-1000.0, -1000.0, 101.0, 101.0, 101.0, 101.0)
PRESSURE = PressureThresholds(20.0, 5.0, 40.0, 80.0, 30.0, 60.0)
KIND_SETS: tuple[tuple[Kind, ...], ...] = (
    ("process", "thread", "sequential"),
    ("process", "thread", "sequential"),
    ("process", "thread"),
    ("process", "sequential"),
    ("process",),
    ("thread", "sequential"),
    ("thread",),
    ("sequential",),
    (),
)
CGROUP_SETS: tuple[tuple[str, ...], ...] = (
    (),
    (CGROUP + "/job1",),
    (CGROUP + "/job2",),
    (CGROUP,),
    (CGROUP + "2",),  # a sibling whose name only starts like the scope
    ("/sys/fs/cgroup/pids/other",),
    ("/sys/fs/cgroup/pids/other", CGROUP + "/job3/"),
)
UIDS = (0, 1000, 1001)
OPS = (
    *("acquire", "release", "release", "renew", "renew", "renew", "pair", "pair"),
    *("update", "update", "statistics", "beat", "expire", "lease", "holder", "misc"),
)


_FIELDS: dict[type, tuple[str, ...]] = {
    # retry_after came after the recordings; the replayed ledgers hold no burst (it is 0)
    Grant: tuple(f.name for f in dataclasses.fields(Grant) if f.name != "retry_after"),
    # declared_bytes alike: the replayed requests declare no size (it is 0)
    Lease: tuple(f.name for f in dataclasses.fields(Lease) if f.name != "declared_bytes"),
}


def canon(value: object) -> object:
    """A value as plain, ordered data: records as (type, *field values), mappings sorted.

    Its repr is what is hashed: the repr of ints, strs, None and floats is exact and
    does not depend on the run (a float's repr round-trips)."""
    kind = type(value)
    names = _FIELDS.get(kind)
    if names is None and dataclasses.is_dataclass(value):
        names = _FIELDS[kind] = tuple(f.name for f in dataclasses.fields(value))
    if names is not None:
        return (kind.__name__, *[canon(getattr(value, name)) for name in names])
    if isinstance(value, Mapping):
        return ("map", *sorted((str(k), canon(v)) for k, v in value.items()))
    if isinstance(value, (list, tuple)):
        return tuple(canon(v) for v in value)
    if value is None or isinstance(value, (bool, int, str, float)):
        return value
    raise TypeError(f"cannot canonicalise {kind.__name__}")


class _Recorder:
    def __init__(self) -> None:
        self.hash = hashlib.sha256()
        self.calls = 0

    def call(self, name: str, fn: Callable[[], object]) -> object:
        """Call and record what it returned, or the LeaseError it raised."""
        self.calls += 1
        try:
            result = fn()
        except LeaseError as err:
            self.add(name, ("LeaseError", err.code, str(err)))
            return None
        self.add(name, canon(result))
        return result

    def add(self, name: str, data: object) -> None:
        self.hash.update(repr((name, data)).encode())
        self.hash.update(b"\n")


class Replay(NamedTuple):
    """One sequence's digest, and whether only one user held leases in it: never two uids
    with leases that asked for workers at once, and no lease that asked for none."""

    digest: str
    one_user: bool


class _Traffic:
    """One seeded sequence: a config, a host whose limits, CPUs, memory and PSI move, and
    a mix of calls sized by the sequence's target number of leases."""

    def __init__(self, seed: int, single: bool = False) -> None:
        self.single = single
        r = self.r = random.Random(seed)
        size = r.random()
        # many short sequences of 1-8 leases, some of up to 24, a few of up to 64
        self.target = r.randint(1, 8) if size < 0.6 else r.randint(9, 24) if size < 0.85 else 64
        self.steps = r.randint(10, 40) + 3 * self.target
        # which bound is meant to bind: CPUs only, memory, task limits, or all at once
        self.regime = r.choice(["cpu", "cpu", "memory", "memory", "tasks", "tasks", "mixed"])
        self.now = 1000.0
        self.config = self.new_config()
        self.shape = self.new_shape()
        self.live: list[str] = []
        self.ledger_cpus = 0.0
        self.holding: dict[str, tuple[int, int]] = {}  # lease id -> (uid, want) held
        self.one_user = True

    def clock(self) -> float:
        return self.now

    def new_config(self) -> BudgetConfig:
        r = self.r
        mem_slot = [0, GIB // 4, GIB // 2, GIB]
        return BudgetConfig(
            reserve_tasks=r.choice([0, 0, 2, 10, 64]),
            reserve_percent=r.choice([0.0, 0.0, 5.0, 15.0]),
            max_per_lease=r.choice([1, 2, 3, 4, 6, 8, 8, 16, 64]),
            cpu_cap=r.choice([None, None, None, 2.0, 8.0, 16.5, 64.0]),
            memory_per_slot=r.choice(mem_slot[1:] if self.regime == "memory" else mem_slot),
            lease_ttl=r.choice([10.0, 30.0]),
            cgroups=(),
            watch_users=(),
            pressure=r.choice([QUIET, QUIET, PRESSURE]),
            # recorded before the memory reserve and the charge of memory not written
            # yet: neither keeps its answers comparable
            memory_reserve_percent=0.0,
            memory_unwritten=False,
        )

    def new_shape(self) -> tuple[Limit, ...]:
        r = self.r
        tight = self.regime == "tasks" or (self.regime == "mixed" and r.random() < 0.5)

        def size() -> int:
            return r.randint(5, 40 + 6 * self.target) if tight else r.randint(2000, 40_000)

        out = [Limit("threads-max", "threads-max", None, size(), 0)]
        if r.random() < 0.3:
            out.append(Limit("pid_max", "pid_max", None, size(), 0))
        if r.random() < 0.5:
            out.append(Limit(f"cgroup:{CGROUP}", "cgroup", CGROUP, size(), 0))
        if r.random() < 0.4:
            uid = r.choice(UIDS[1:])
            out.append(Limit(f"nproc:{uid}", "nproc", uid, size(), 0))
        return tuple(out)

    def new_sample(self) -> HostSample:
        r = self.r
        if r.random() < 0.1:  # the limits change shape: scopes are found again
            self.shape = self.new_shape()
        limits = tuple(
            dataclasses.replace(
                lim, in_use=r.randint(0, lim.limit // 4 if r.random() < 0.7 else lim.limit + 10)
            )
            for lim in self.shape
        )
        if self.regime == "cpu":
            cpus = r.choice([16.0, 32.0, 64.0, 128.0, 3.5])
            mem = r.randint(8, 64) * GIB
        else:
            cpus = r.choice([1.0, 2.0, 4.0, 16.0, 64.0, 64.0, 128.0, 3.5])
            mem = r.randint(0, 16) * GIB
        psi = None
        if r.random() < 0.3:
            psi = Psi(r.choice([None, 0.0, 10.0, 45.0, 90.0]), r.choice([None, 0.0, 35.0, 70.0]))
        self.now += r.choice([0.0, 0.5, 1.0])
        return HostSample(
            taken_at=self.now,
            wall_time=self.now,
            threads_total=0,
            threads_max=0,
            pid_max=0,
            cgroups=(),
            users=(),
            mem_available_bytes=mem + r.choice([0, GIB // 3]),
            mem_total_bytes=64 * GIB,
            cpus=cpus,
            psi=psi,
            limits=limits,
        )

    def acquire(self, rec: _Recorder, led: BudgetLedger, req: Request) -> Grant | None:
        """Acquire, recorded, and note who holds leases now."""
        grant = rec.call("acquire", lambda: led.acquire(req))
        if isinstance(grant, Grant):
            self.holding[grant.lease_id] = (req.uid, req.want)
            askers = {uid for uid, want in self.holding.values() if want}
            self.one_user = self.one_user and req.want > 0 and len(askers) < 2
            return grant
        return None

    def ended(self, leases: object) -> None:
        """The leases a release, release_holder or expire returned are no longer held."""
        for lease in leases if isinstance(leases, list) else [leases]:
            if isinstance(lease, Lease):
                self.holding.pop(lease.lease_id, None)

    def new_request(self) -> Request:
        r = self.r
        req = Request(
            holder=f"h{r.randint(0, 5)}",
            pid=r.randint(100, 110),
            uid=r.choice(UIDS),
            job=r.choice(["batt", "fit"]),
            want=r.choice([0, 1, 2, 2, 2, 3, 4, 4, 6, 8, 12, 16, 100]),
            kinds=r.choice(KIND_SETS),
            cgroups=r.choice(CGROUP_SETS),
            base_tasks=r.choice([0, 1, 1, 1, 2, 5]),
        )
        if self.single:  # the same draws: one user, and a worker asked for at least
            req = dataclasses.replace(req, uid=SINGLE_UID, want=max(1, req.want))
        return req

    def op(self) -> str:
        r = self.r
        if len(self.live) < self.target and r.random() < 0.55:
            return "acquire"
        return r.choice(OPS)

    def trees(self) -> dict[str, int]:
        r = self.r
        return {i: r.randint(0, 40) for i in self.live if r.random() < 0.6}

    def run(self, rec: _Recorder) -> None:
        r = self.r
        first = None if r.random() < 0.05 else self.new_sample()
        led = BudgetLedger(self.config, self.clock, first)
        rec.add("level", led.level)
        for _ in range(self.steps):
            self.step(led, rec, self.op())
        rec.call("statistics", led.statistics)
        rec.call("expire", led.expire)

    def step(self, led: BudgetLedger, rec: _Recorder, op: str) -> None:
        r, live = self.r, self.live
        self.now += r.choice([0.0, 0.0, 0.25, 1.0])
        if op == "acquire":
            grant = self.acquire(rec, led, self.new_request())
            if grant is not None:
                live.append(grant.lease_id)
        elif op == "pair":
            grant = self.acquire(rec, led, self.new_request())
            if grant is not None:
                lease_id = grant.lease_id
                self.ended(rec.call("release", lambda: led.release(lease_id)))
        elif op == "release":
            if live and r.random() < 0.95:
                lease_id = live.pop(r.randrange(len(live)))
            else:
                lease_id = f"L{r.randint(0, 200)}"  # maybe held, maybe not
                if lease_id in live:
                    live.remove(lease_id)
            self.ended(rec.call("release", lambda: led.release(lease_id)))
        elif op == "renew" and live:
            lease_id = r.choice(live)
            held = led.lease(lease_id)
            rec.add("held", canon(held))
            ack = r.choice(
                [None, None, held.target, held.workers, 0, r.randint(0, held.workers + 1)]
            )
            rec.call("renew", lambda: led.renew(lease_id, ack))
        elif op == "beat" and live:
            lease_id = r.choice(live)
            rec.call("heartbeat", lambda: led.heartbeat(lease_id))
        elif op == "expire":
            self.now += r.choice([1.0, 5.0, 12.0, 31.0])
            gone = rec.call("expire", led.expire)
            self.ended(gone)
            for lease in gone or ():  # type: ignore[attr-defined]
                live.remove(lease.lease_id)
        elif op == "update":
            sampled, trees = self.new_sample(), self.trees()
            rec.call("update", lambda: led.update(sampled, trees))
        elif op == "statistics":
            rec.call("statistics", led.statistics)
        elif op == "lease" and live:
            lease_id = r.choice(live)
            rec.call("lease", lambda: led.lease(lease_id))
        elif op == "holder" and live:
            lease_id = r.choice(live)
            rec.call("holder_of", lambda: led.holder_of(lease_id))
            rec.add("level", led.level)
        elif op == "misc":
            self.misc(led, rec)

    def misc(self, led: BudgetLedger, rec: _Recorder) -> None:
        r, live = self.r, self.live
        what = r.choice(["holder", "reconfigure", "invalid", "invalid", "burst"])
        if what == "holder":
            holder = f"h{r.randint(0, 5)}"
            gone = rec.call("release_holder", lambda: led.release_holder(holder))
            self.ended(gone)
            for lease in gone or ():  # type: ignore[attr-defined]
                live.remove(lease.lease_id)
        elif what == "reconfigure":
            self.config = self.new_config()
            cfg = self.config
            rec.call("reconfigure", lambda: led.reconfigure(cfg))
        elif what == "invalid":
            # deliberately out of range or of an unknown kind: Any, past the field types
            invalid: list[dict[str, Any]] = [{"want": -1}, {"base_tasks": -2}, {"kinds": ("fork",)}]
            bad = dataclasses.replace(self.new_request(), **r.choice(invalid))
            rec.call("acquire", lambda: led.acquire(bad))
        else:  # a burst of clients that each acquire and then release, in order
            ids = []
            for _ in range(r.randint(2, 12)):
                grant = self.acquire(rec, led, self.new_request())
                ids.append(grant.lease_id)  # type: ignore[union-attr]
            for lease_id in ids:
                self.ended(rec.call("release", lambda: led.release(lease_id)))  # noqa: B023


def replay(seed: int, single: bool = False) -> Replay:
    """One seeded sequence (`single`: its single-user traffic): the sha256 of everything
    its calls returned, in order, and whether only one user held leases in it."""
    rec = _Recorder()
    rec.add("version", VERSION)
    traffic = _Traffic(seed, single)
    traffic.run(rec)
    return Replay(rec.hash.hexdigest(), traffic.one_user)


def digest(seed: int, single: bool = False) -> str:
    """`replay(seed, single).digest`."""
    return replay(seed, single).digest


def replay_single(seed: int) -> Replay:
    """`replay(seed, single=True)`, for a process pool's map."""
    return replay(seed, single=True)


def recorded(single: bool = False) -> list[str]:
    """The recorded digests, seed by seed (seed i at index i)."""
    path = DATA_SINGLE if single else DATA
    data = json.loads(path.read_text())
    if data["version"] != VERSION:
        raise ValueError(f"{path} was recorded by generator {data['version']}, not {VERSION}")
    digests: list[str] = data["digests"]
    return digests
