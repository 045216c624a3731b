"""Cost of the budget ledger's calls with N live leases, without the daemon or a socket.

The daemon calls the ledger on every request, on its one asyncio thread, so each call
must stay far below a socket round trip (~60-100 us here). For N = 0, 8, 16, 32, 64 and
500 live leases (each a Request in /sys/fs/cgroup/pids wanting 2..8 workers) this times,
on four host samples:

- pair:   acquire + release of one more lease (what one client job costs the daemon)
- renew:  renew of a live lease, cycling through them
- update: update(sample, trees, pools, holders) with a measured tree for every lease and
  its workers (or its own process) seen at their size, as the scans see them in the
  steady state (once per sample)

"live" is HostMonitor().sample() of this machine with PSI dropped (so the level does not
flip between runs); "synthetic" adds a cgroup pids limit around the leases and an nproc
limit for their uid, so every lease is in scope of four limits. The budget config is the
shipped default with cpu_cap 64: from about 12 leases on the CPUs are contended, and from
64 on nobody gets a pool at all. So two more rows keep the water-filling busy at every N:
"cpu=4N" is synthetic with cpu_cap 4 N (the CPUs run out at a water level of about 4),
and "memory" is that with memory for one process worker per lease, plus two. The
ledger's acquire takes a closed form (`budget.shortcuts.newcomer_share`) while no task
limit can bind: the CPUs alone, or
the CPUs and memory (here "memory" at 0 leases, "cpu=4N" at 500 where memory binds in a
later round, and "live" at 32 leases on a host with 23 GiB free, where the first round
runs out of CPUs); where a task limit can, it runs the water-filling round by round
(`budget.allocation.allocate`).
Prints median and p99 in microseconds.

A second table, "interleaved", times what the daemon sees from N clients that each hold
one lease briefly: N leases are acquired (want 2, every kind, base task 1, in this
process's cgroups, uid 0), then released in the same order, round after round; it prints
the median and p99 over rounds of the round's time divided by N, so microseconds per
acquire + release pair. N = 1 releases each lease right after its acquire. The config is
the daemon's with cpu_cap 64 and max_per_lease 8, the sample "live" above, and the clock
time.monotonic, as in the daemon. The "random" rows are the same N clients in a random
(seeded) interleaving, as the daemon sees them: at each step a random client releases its
lease if it holds one, else acquires; they print the median and p99 of each acquire plus
its release, so an acquire that runs the water-filling shows in the p99 (with 64 clients
here memory binds first and some first pools fall back to threads).

A third table, "handle", times the interleaved clients through the daemon's handlers:
`Commands.handle` of each acquire and release, the messages as `protocol.decode` gives
them, one connection per client, the lease log at the daemon's default rate (its lines
to /dev/null). That is what one pair costs the daemon short of the socket and the JSON.

    python benchmarks/bench_ledger.py [--leases 0,8,16,32,64,500] [--seconds 1.0] [--json]
                                      [--mode all|rows|interleaved|handle]
                                      [--interleaved 1,16,64]

It times the checkout it is in, whatever supervisord_batt is installed.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import random
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout, not an install

from supervisord_batt import logs
from supervisord_batt.budget.costs import memory_reserve
from supervisord_batt.budget.ledger import BudgetLedger
from supervisord_batt.budget.records import Request
from supervisord_batt.config.loader import load_config_text
from supervisord_batt.config.records import BudgetConfig
from supervisord_batt.daemon.commands import Commands
from supervisord_batt.daemon.leaselog import LeaseLog
from supervisord_batt.daemon.peers import Peer
from supervisord_batt.daemon.server import Connection
from supervisord_batt.host.monitor import HostMonitor
from supervisord_batt.host.procinfo import cgroup_fs_paths
from supervisord_batt.host.sample import HostSample, Limit

CGROUP = "/sys/fs/cgroup/pids"
UID = os.getuid()
GIB = 1 << 30


def live_sample() -> HostSample:
    return replace(HostMonitor().sample(), psi=None)


def synthetic_sample() -> HostSample:
    limits = (
        Limit("threads-max", "threads-max", None, 192_000, 900),
        Limit("pid_max", "pid_max", None, 4_194_304, 900),
        Limit(f"cgroup:{CGROUP}", "cgroup", CGROUP, 6000, 300),
        Limit(f"nproc:{UID}", "nproc", UID, 8192, 400),
    )
    return HostSample(
        taken_at=time.monotonic(),
        wall_time=time.time(),
        threads_total=900,
        threads_max=192_000,
        pid_max=4_194_304,
        cgroups=(),
        users=(),
        mem_available_bytes=64 * GIB,
        mem_total_bytes=128 * GIB,
        cpus=64.0,
        psi=None,
        limits=limits,
    )


def memory_bound_sample(cfg: BudgetConfig, n: int) -> HostSample:
    """synthetic with memory for one process worker per lease, plus two, beyond the
    memory reserve: memory binds."""
    host = synthetic_sample()
    reserve = memory_reserve(host.mem_total_bytes, cfg)
    return replace(host, mem_available_bytes=(n + 2) * cfg.memory_per_slot + reserve)


Row = tuple[str, BudgetConfig, HostSample]


def rows_for(cfg: BudgetConfig, n: int) -> list[Row]:
    """The four (label, config, sample) a row of n leases is timed on."""
    wide = replace(cfg, cpu_cap=float(4 * max(n, 4)))
    return [
        ("live", cfg, live_sample()),
        ("synthetic", cfg, synthetic_sample()),
        ("cpu=4N", wide, synthetic_sample()),
        ("memory", wide, memory_bound_sample(wide, n)),
    ]


def request(i: int) -> Request:
    return Request(
        holder=f"h{i}",
        pid=10_000 + i,
        uid=UID,
        job="bench",
        want=2 + i % 7,
        cgroups=(CGROUP,),
        base_tasks=1,
    )


def _clock() -> float:
    return 1000.0  # frozen: nothing expires while we measure


def loaded(cfg: BudgetConfig, sample: HostSample, n: int) -> tuple[BudgetLedger, list[str]]:
    """A ledger holding n live leases, sampled once with their trees measured."""
    led = BudgetLedger(cfg, _clock, sample)
    ids = [led.acquire(request(i)).lease_id for i in range(n)]
    led.update(sample, trees(led, ids), *written(led, ids))
    return led, ids


def written(led: BudgetLedger, ids: list[str]) -> tuple[dict[str, int], dict[str, int]]:
    """What the daemon's scans see in its steady state: every pool's workers and every
    other holder at its worker size (nothing left to write: `claims.pending`)."""
    pools, holders = {}, {}
    for i in ids:
        lease = led.lease(i)
        unit = led.worker_bytes(lease.job, lease.uid)
        if lease.kind == "process" and lease.workers:
            pools[i] = lease.workers * unit
        else:
            holders[i] = unit
    return pools, holders


def trees(led: BudgetLedger, ids: list[str]) -> dict[str, int]:
    """Measured task counts as a sample would see them: base task plus the pool's cost."""
    return {i: led.lease(i).charge_tasks for i in ids}


def timed(op: Callable[[], object], seconds: float, at_least: int = 30) -> list[float]:
    """Latencies of op in microseconds, repeated for about `seconds`."""
    lat: list[float] = []
    end = time.perf_counter() + seconds
    while len(lat) < at_least or time.perf_counter() < end:
        t0 = time.perf_counter_ns()
        op()
        lat.append((time.perf_counter_ns() - t0) / 1000)
    return lat


Timings = dict[str, dict[str, float]]  # operation -> median, p99, runs


def measure(cfg: BudgetConfig, sample: HostSample, n: int, seconds: float) -> tuple[str, Timings]:
    """The level the ledger settles at with n leases, and the timings of each operation."""
    led, ids = loaded(cfg, sample, n)
    fresh = itertools.count(n)

    def pair() -> None:
        led.release(led.acquire(request(next(fresh))).lease_id)

    cycle = itertools.cycle(ids)

    def renew() -> None:
        if ids:  # with no lease there is nothing to renew: times the call overhead only
            led.renew(next(cycle))

    sizes, seen = trees(led, ids), written(led, ids)
    row: Timings = {}
    for name, op in (
        ("pair", pair),
        ("renew", renew),
        ("update", lambda: led.update(sample, sizes, *seen)),
    ):
        lat = sorted(timed(op, seconds))
        row[name] = {
            "median": statistics.median(lat),
            "p99": lat[min(len(lat) - 1, int(len(lat) * 0.99))],
            "n": len(lat),
        }
    return led.level, row


# the daemon's config of the interleaved rows (the daemon reads it with load_config)
DAEMON_CONFIG = """\
daemon:
  socket: /tmp/x/d.sock
budget:
  cpu_cap: 64
  max_per_lease: 8
"""


def interleaved(n: int, seconds: float) -> tuple[str, dict[str, float]]:
    """N clients each acquire one lease, then each releases it in the same order, round
    after round: the level and the time per acquire + release pair (round time / N)."""
    cfg = load_config_text(DAEMON_CONFIG).budget
    led = BudgetLedger(cfg, time.monotonic, live_sample())
    cgroups = tuple(cgroup_fs_paths(os.getpid()))
    reqs = [Request(f"c{i}", os.getpid(), 0, "bench", 2, cgroups=cgroups) for i in range(n)]

    def round_() -> None:
        ids = [led.acquire(r).lease_id for r in reqs]
        for lease_id in ids:
            led.release(lease_id)

    lat = sorted(x / n for x in timed(round_, seconds, at_least=100))
    p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))]
    return led.level, {"median": statistics.median(lat), "p99": p99, "n": len(lat)}


def shuffled(n: int, seconds: float) -> tuple[str, dict[str, float]]:
    """The clients of `interleaved` acquiring and releasing in a random order: the level
    and the time of each acquire plus that lease's release."""
    cfg = load_config_text(DAEMON_CONFIG).budget
    led = BudgetLedger(cfg, time.monotonic, live_sample())
    cgroups = tuple(cgroup_fs_paths(os.getpid()))
    reqs = [Request(f"c{i}", os.getpid(), 0, "bench", 2, cgroups=cgroups) for i in range(n)]
    rnd = random.Random(1)
    held: dict[int, tuple[str, float]] = {}  # client -> its lease, the acquire's time
    lat: list[float] = []
    end = time.perf_counter() + seconds
    while len(lat) < 1000 or time.perf_counter() < end:
        i = rnd.randrange(n)
        t0 = time.perf_counter_ns()
        if i in held:
            lease_id, took = held.pop(i)
            led.release(lease_id)
            lat.append(took + (time.perf_counter_ns() - t0) / 1000)
        else:
            lease_id = led.acquire(reqs[i]).lease_id
            held[i] = lease_id, (time.perf_counter_ns() - t0) / 1000
    lat.sort()
    p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))]
    return led.level, {"median": statistics.median(lat), "p99": p99, "n": len(lat)}


async def _no_reload(**_: object) -> dict[str, list[str]]:
    raise NotImplementedError


def handled(n: int, seconds: float) -> tuple[str, dict[str, float]]:
    """The clients of `interleaved` through `Commands.handle`: the level and the time per
    acquire + release pair (round time / N)."""
    config = load_config_text(DAEMON_CONFIG)
    led = BudgetLedger(config.budget, time.monotonic, live_sample())
    commands = Commands(
        ledger=led,
        lease_log=LeaseLog(config.daemon.lease_log_rate),
        supervisor=None,  # type: ignore[arg-type]  # acquire and release never read it
        reload=_no_reload,
        accepting=lambda: True,
        connections=lambda: n,
        sample=lambda: None,
    )
    peer = Peer(os.getpid(), os.getuid(), os.getgid())
    conns = [Connection(i + 1, peer, None, 0.0) for i in range(n)]  # type: ignore[arg-type]
    handle = commands.handle

    def round_() -> None:
        ids = [handle(c, {"op": "acquire", "want": 2, "job": "bench"})["lease"] for c in conns]  # type: ignore[index]
        for conn, lease_id in zip(conns, ids, strict=True):
            handle(conn, {"op": "release", "lease": lease_id})

    with open(os.devnull, "w") as sink:
        logs.configure("json", stream=sink)
        try:
            lat = sorted(x / n for x in timed(round_, seconds, at_least=100))
        finally:
            logs.configure("json", stream=sys.stdout)
    p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))]
    return led.level, {"median": statistics.median(lat), "p99": p99, "n": len(lat)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--leases", default="0,8,16,32,64,500")
    ap.add_argument("--seconds", type=float, default=1.0, help="per operation and row")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--mode", choices=("all", "rows", "interleaved", "handle"), default="all")
    ap.add_argument("--interleaved", default="1,16,64", help="clients of the interleaved rows")
    args = ap.parse_args()
    cfg = load_config_text("budget:\n  cpu_cap: 64\n").budget
    rows: list[tuple[str, int, str, Timings]] = []
    if args.mode in ("all", "rows"):
        counts = [int(x) for x in args.leases.split(",")]
        for kind in range(4):
            for n in counts:
                label, config, sample = rows_for(cfg, n)[kind]
                rows.append((label, n, *measure(config, sample, n, args.seconds)))
    pairs: list[tuple[str, int, str, dict[str, float]]] = []
    orders = {"interleaved": interleaved, "random": shuffled, "handle": handled}
    if args.mode == "interleaved":
        del orders["handle"]
    elif args.mode == "handle":
        orders = {"handle": handled}
    if args.mode != "rows":
        for label, order in orders.items():
            for n in (int(x) for x in args.interleaved.split(",")):
                pairs.append((label, n, *order(n, args.seconds)))
    if args.json:
        keys = ("sample", "leases", "level", "timings")
        out = [dict(zip(keys, row, strict=True)) for row in rows]
        for label, n, level, t in pairs:
            out.append({"sample": label, "leases": n, "level": level, "timings": {"pair": t}})
        print(json.dumps(out, indent=2))
        return
    if rows:
        print_rows(rows)
    if pairs:
        print(f"{'sample':<11} {'leases':>6} {'level':<7} {'pair p50/p99 us':>22}")
        for label, n, level, t in pairs:
            print(f"{label:<11} {n:>6} {level:<7} {t['median']:>10.1f} /{t['p99']:>9.1f}")


def print_rows(rows: list[tuple[str, int, str, Timings]]) -> None:
    ops = ("pair", "renew", "update")
    print(
        f"{'sample':<10} {'leases':>6} {'level':<7} "
        + " ".join(f"{o + ' p50/p99 us':>22}" for o in ops)
    )
    for label, n, level, timings in rows:
        cells = " ".join(f"{timings[o]['median']:>10.1f} /{timings[o]['p99']:>9.1f}" for o in ops)
        print(f"{label:<10} {n:>6} {level:<7} {cells}")


if __name__ == "__main__":
    main()
