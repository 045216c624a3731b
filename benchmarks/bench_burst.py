"""What the burst window costs a lone job: the time from its acquire to a grant it can
start its pool at, with `budget.burst_window` off and on, against real daemons.

    python benchmarks/bench_burst.py [--rounds 10] [--window 0.25]

A lone job asks into an empty ledger. With the window on, a process the daemon has not
seen asking alone is held once ("the first to ask, others may follow") and the client
(client.leases) sleeps `retry_after` and renews before `acquire()` returns; one it has
seen asking alone (no other newcomer within the window of its last first ask:
budget/lone.py, by job name, uid and pid) is not held. So three arms: `off`; `on, new`,
a job name not asked before in each round (a new asker, as a new process is); `on,
seen`, the same job name every round from this process (seen alone after the first).
Each round asks each arm once, their order turning round by round (the host is shared:
all see the same load), a window apart; the figures are the median and the largest of
the rounds, in ms, and the extra wait of each arm with the window on over off.

`--together N` (0: skip) measures a burst instead: N jobs ask at once (threads of this
process, new job names each round) of a daemon whose `cpu_cap` is 2, a 2-core host, so
that from the second ask on no job's share is a pool. The first to ask is held; the
figure is its acquire to grant (median and largest over the rounds) and the burst's last
grant. Run it from two checkouts to compare them.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script: the repository root, for benchmarks.*
    sys.path.insert(0, str(ROOT))

from benchmarks.daemonproc import spawn_daemon  # noqa: E402
from supervisord_batt.client.leases import acquire  # noqa: E402

CALM = {"cpu_high": "off", "cpu_extreme": "off", "memory_high": "off", "memory_extreme": "off"}


def _config(workdir: Path, name: str, window: float, cpu_cap: int = 8) -> tuple[Path, Path]:
    sock = workdir / f"{name}.sock"
    config = workdir / f"{name}.yaml"
    budget = {"burst_window": window, "cpu_cap": cpu_cap, "pressure": CALM}
    config.write_text(json.dumps({"daemon": {"socket": str(sock)}, "budget": budget}))
    return config, sock


def _ask(sock: Path, job: str) -> tuple[float, str]:
    """Milliseconds until the grant is in hand, and what it was."""
    t0 = time.perf_counter()
    grant = acquire(3, job=job, socket_path=sock)
    took = (time.perf_counter() - t0) * 1000
    grant.release()
    return took, grant.describe()


ARMS = ("off", "on, new", "on, seen")


def _burst(sock: Path, jobs: list[str]) -> list[tuple[float, str]]:
    """`jobs` asking at once, each from its own thread, each lease kept until all have
    their grants: each one's milliseconds to its grant, and the grant."""
    results: list[tuple[float, str]] = [(0.0, "")] * len(jobs)
    start, granted = threading.Barrier(len(jobs)), threading.Barrier(len(jobs))

    def ask(i: int) -> None:
        start.wait()
        t0 = time.perf_counter()
        grant = acquire(3, job=jobs[i], socket_path=sock)
        results[i] = ((time.perf_counter() - t0) * 1000, grant.describe())
        granted.wait()
        grant.release()

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def together(workdir: Path, n: int, rounds: int, window: float) -> None:
    """`--together`: the held first ask's and the last grant's times, printed."""
    config, sock = _config(workdir, "together", window, cpu_cap=2)
    proc = spawn_daemon(config, sock)
    slowest: list[float] = []
    grants: set[str] = set()
    try:
        for i in range(rounds):
            results = _burst(sock, [f"b{i}-{k}" for k in range(n)])
            slowest.append(max(ms for ms, _ in results))
            grants.update(g for _, g in results)
            time.sleep(window)  # the next round is no burst with this one
    finally:
        proc.terminate()
        proc.wait(timeout=15)
    print(
        f"{n} jobs at once, cpu_cap 2, window {window:g} s: the slowest to its grant "
        f"{statistics.median(slowest):.1f} ms median, {max(slowest):.1f} ms most "
        f"({rounds} rounds), grants {sorted(grants)}"
    )


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--window", type=float, default=0.25, help="seconds, the window on")
    p.add_argument("--together", type=int, default=0, help="jobs asking at once (0: skip)")
    args = p.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="sbb-", dir="/tmp"))  # short: sockets live here
    if args.together:
        try:
            together(workdir, args.together, args.rounds, args.window)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
        return 0
    procs = []
    try:
        socks = {}
        for name, window in (("off", 0.0), ("on", args.window)):
            config, sock = _config(workdir, name, window)
            procs.append(spawn_daemon(config, sock))
            socks[name] = sock
        times: dict[str, list[float]] = {arm: [] for arm in ARMS}
        grants: dict[str, set[str]] = {arm: set() for arm in ARMS}
        for i in range(args.rounds):
            for arm in ARMS[i % 3 :] + ARMS[: i % 3]:
                sock = socks["off" if arm == "off" else "on"]
                job = f"new{i}" if arm == "on, new" else "lone"
                took, grant = _ask(sock, job)
                times[arm].append(took)
                grants[arm].add(grant)
                time.sleep(args.window)  # the next ask is no burst with this one
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(timeout=15)
        shutil.rmtree(workdir, ignore_errors=True)
    for arm in ARMS:
        ms = times[arm]
        print(
            f"window {arm:>8}: acquire to pool {statistics.median(ms):7.1f} ms median, "
            f"{max(ms):7.1f} ms most, grants {sorted(grants[arm])}"
        )
    for arm in ARMS[1:]:
        extra = statistics.median(times[arm]) - statistics.median(times["off"])
        print(f"{arm}: a lone job waits {extra:.0f} ms more with a {args.window:g} s window")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
