"""How long a memory cgroup at its limit stalls before its OOM killer acts, and what its
processes do meanwhile (issue 24: the memory simulator's plain row).

    sudo python3 benchmarks/oom_stall.py [--shapes 4x400:1100,12x400:2552,plain4x400:2552]
        [--reps 3] [--json]

Each run starts N writers together in a fresh v1 memory cgroup (no swap to escape to)
limited to L MiB < N * M: each a Python interpreter that allocates M MiB and writes every
page of it, as a loky worker of benchmarks/memory_job.py does, then holds it ("plainN":
N of memory_proof.py's plain jobs instead, each a loky pool of 3 such workers). On one
clock (CLOCK_MONOTONIC: time.monotonic here and in the writers, and the kernel log's
timestamps, whose offset is measured each run with a record this script writes to
/dev/kmsg) it records, sampling every ~10 ms: when the cgroup first reached its limit
(memory.max_usage_in_bytes; memory.failcnt stays 0 here, docs/FACTS.md) and the sample
before it, each OOM kill's time and victim (the kernel's "invoked oom-killer" and
"Killed process" records, the latter read with the daemon's parser,
supervisord_batt/host/kmsg.py), when each writer finished writing (a job: its first
task done), the file pages charged to the cgroup at the limit (what reclaim could take)
and its major faults (pages read back: thrashing). Each writer shape is also run with
no limit, interleaved: how long the writing takes when nothing is killed.

The stall is the time from the limit to the first kill (at most: from the last sample
below the limit), and between kills. Needs root, a v1 memory hierarchy and a readable
/dev/kmsg. The cgroup and the processes are removed or killed by pid on exit, error,
Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import select
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout, not an install

from benchmarks.contention import sigterm_as_interrupt
from supervisord_batt.host.kmsg import KernelLog, parse_record
from tests.helpers import MemoryCgroup, memory_cgroup_root

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
JOB = HERE / "memory_job.py"
MIB = 1 << 20
POLL = 0.01  # seconds between samples of the cgroup and the writers
DEADLINE = 60.0  # seconds a run may take before its writers are killed
# usage this close to the limit is at it: a charge takes 64 pages (256 KiB) a CPU at once
NEAR = 1 * MIB
MARK = b"oom_stall: clock"

# memory_job.py's worker: its buffer's every page written at once (a C loop), then held
# until stdin closes; it prints when it was up and when it finished writing
_WRITER = r"""
import sys, time
up = time.monotonic()
buf = bytearray(int(sys.argv[1]) << 20)
buf[::4096] = b"\x01" * (len(buf) // 4096)
print(up, time.monotonic(), flush=True)
sys.stdin.read()
"""


@dataclass
class Kill:
    at: float  # seconds from the run's start ("Killed process")
    invoked: float | None  # its "invoked oom-killer" record (the OOM begun)
    writer: int  # the victim's index among the processes started (-1: a child of one)
    role: str  # "writer", "job", "worker" (a loky worker), "tracker", "other"
    rss_mib: float


@dataclass
class Run:
    kind: str  # "writer": bare writers; "plain": memory_job.py's plain jobs
    writers: int
    mib: int
    limit_mib: int  # 0: no limit
    load: float  # the 1-minute load average at the start
    clock_skew_ms: float  # kernel log time less time.monotonic at the same moment
    limit_at: float | None = None  # first sample at the limit (its high-water mark)
    below_at: float | None = None  # the sample before it: the limit was hit in between
    kills: list[Kill] = field(default_factory=list)
    up: list[float | None] = field(default_factory=list)  # each writer's interpreter up
    # a writer: when it finished writing; a plain job: its first task done
    written: list[float | None] = field(default_factory=list)
    ended: list[float | None] = field(default_factory=list)  # each seen gone
    done: int = 0  # plain jobs: tasks done
    cache_mib: float = 0.0  # file pages charged to the cgroup at the limit
    majflt: int = 0  # major faults in the cgroup during the run (file pages read back)
    peak_mib: float = 0.0
    polls: int = 0  # samples taken (their spacing: the time resolution)

    @property
    def stall(self) -> float | None:
        if self.limit_at is None or not self.kills:
            return None
        return self.kills[0].at - self.limit_at

    @property
    def gaps(self) -> list[float]:
        return [b.at - a.at for a, b in zip(self.kills, self.kills[1:], strict=False)]


def _peak(cg: MemoryCgroup) -> int:
    """The cgroup's high-water mark: once at the limit it stays there, so a sample taken
    after the limit was hit sees it, a quick kill or not."""
    return int((cg.path / "memory.max_usage_in_bytes").read_text())


def _usec(record: bytes) -> float:
    """A kmsg record's timestamp, in seconds of CLOCK_MONOTONIC."""
    return int(record.partition(b";")[0].split(b",")[2]) / 1e6


def clock_skew(log: KernelLog) -> float:
    """The kernel log's clock less time.monotonic, from a record written here."""
    before = time.monotonic()
    with open("/dev/kmsg", "wb", buffering=0) as f:
        f.write(MARK + b"\n")
    after = time.monotonic()
    for _ in range(100):
        records, _ = log.read(64)
        for r in records:
            if MARK in r:
                return _usec(r) - (before + after) / 2
        time.sleep(POLL)  # the record reaches the ring at once; a bounded wait
    raise RuntimeError("the clock mark never reached /dev/kmsg")


def _argv(kind: str, mib: int) -> list[str]:
    if kind == "plain":  # memory_proof.py's plain job: a loky pool of 3, 16 tasks
        return [sys.executable, str(JOB), "--mode", "plain", "--mib", str(mib)]
    return [sys.executable, "-c", _WRITER, str(mib)]


def run_once(root: Path, kind: str, writers: int, mib: int, limit_mib: int) -> Run:
    """One run of `writers` writers (or plain jobs) in a fresh cgroup limited to
    `limit_mib` (0: none)."""
    cg = MemoryCgroup(root, 1, name=f"sbbench-stall-{os.getpid()}-{time.monotonic_ns()}")
    procs: list[subprocess.Popen[bytes]] = []
    log: KernelLog | None = None
    try:
        log = KernelLog()
        run = Run(kind, writers, mib, limit_mib, os.getloadavg()[0], 1000 * clock_skew(log))
        if limit_mib:
            cg.set_limit(limit_mib * MIB)
        start = time.monotonic()
        for _ in range(writers):
            procs.append(
                subprocess.Popen(
                    _argv(kind, mib),
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    preexec_fn=cg.preexec(),  # noqa: PLW1509 (no threads here)
                    env={"PYTHONPATH": f"{REPO}:{HERE}", "PATH": "/usr/bin:/bin"},
                )
            )
        _watch(run, cg, log, procs, start)
        if kind == "plain":
            for p in procs:
                p.wait(DEADLINE)
            _read_jobs(run, procs, start)
        return run
    finally:
        for p in procs:  # our writers only, by pid
            if p.poll() is None:
                p.kill()
            p.wait()
        if log is not None:
            log.close()
        cg.close()


def _watch(
    run: Run,
    cg: MemoryCgroup,
    log: KernelLog,
    procs: list[subprocess.Popen[bytes]],
    start: float,
) -> None:
    """Sample the cgroup and its processes until every started one is done (a writer:
    written or killed; a job: exited) or the deadline."""
    skew = run.clock_skew_ms / 1000
    index = {p.pid: i for i, p in enumerate(procs)}
    # every process seen in the cgroup; those started here known from the start
    roles = {p.pid: "job" if run.kind == "plain" else "writer" for p in procs}
    invoked: float | None = None
    majflt = _stat_of(cg, "total_pgmajfault")
    limit = run.limit_mib * MIB
    pending = set(range(len(procs)))
    run.up, run.written, run.ended = [None] * len(procs), [None] * len(procs), [None] * len(procs)
    while pending and time.monotonic() < start + DEADLINE:
        now = time.monotonic()
        run.polls += 1
        for pid in _members(cg):
            if pid not in roles or (roles[pid] in {"job", "other"} and pid not in index):
                roles[pid] = _role(pid)  # a job's child is the job until its exec
        if run.limit_at is None and limit:
            if _peak(cg) >= limit - NEAR:
                run.limit_at = now - start
                run.cache_mib = _stat_of(cg, "cache") / MIB
            else:
                run.below_at = now - start
        records, _ = log.read(256)
        for r in records:
            if b" invoked oom-killer: " in r:
                invoked = _usec(r) - skew - start
            rec = parse_record(r)
            if rec is None or rec.rss is None:
                continue
            if rec.pid in roles:  # not a kill in another cgroup
                at, victim = _usec(r) - skew - start, index.get(rec.pid, -1)
                run.kills.append(Kill(at, invoked, victim, roles[rec.pid], rec.rss / MIB))
            invoked = None
        for i in list(pending):
            if procs[i].poll() is not None:
                run.ended[i] = now - start
                pending.discard(i)
        if run.kind == "writer":
            _read_written(run, procs, pending, start)
        time.sleep(POLL)  # the poll interval, within the deadline above
    run.peak_mib = _peak(cg) / MIB
    run.majflt = _stat_of(cg, "total_pgmajfault") - majflt


def _members(cg: MemoryCgroup) -> list[int]:
    with contextlib.suppress(OSError):
        return [int(p) for p in (cg.path / "cgroup.procs").read_text().split()]
    return []


def _role(pid: int) -> str:
    """What a process in the cgroup is, by its command line."""
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return "?"
    if b"memory_job.py" in cmd:
        return "job"
    if b"resource_tracker" in cmd:
        return "tracker"
    if b"loky" in cmd or b"multiprocessing" in cmd:
        return "worker"
    return "writer" if _WRITER.encode() in cmd else "other"


def _stat_of(cg: MemoryCgroup, key: str) -> int:
    """One figure of the cgroup's memory.stat (v1: "cache" is its file pages, what reclaim
    can take without swap; "total_pgmajfault" its major faults, pages read back)."""
    for line in (cg.path / "memory.stat").read_text().splitlines():
        name, _, value = line.partition(" ")
        if name == key:
            return int(value)
    return 0


def _read_written(
    run: Run, procs: list[subprocess.Popen[bytes]], pending: set[int], start: float
) -> None:
    """Each writer's line (up, written), once it finished writing."""
    for i in list(pending):
        out = procs[i].stdout
        assert out is not None
        if select.select([out], [], [], 0)[0]:
            line = out.readline().split()
            if len(line) == 2:
                run.up[i] = float(line[0]) - start
                run.written[i] = float(line[1]) - start
            pending.discard(i)


def _read_jobs(run: Run, procs: list[subprocess.Popen[bytes]], start: float) -> None:
    """Each plain job's first task done (its "at" is wall time), once all have exited."""
    wall = time.time() - time.monotonic()
    for i, p in enumerate(procs):
        assert p.stdout is not None
        for line in p.stdout.read().splitlines():
            with contextlib.suppress(ValueError):  # a killed job's last line may be cut
                rec = json.loads(line)
                if "value" in rec:
                    run.done += 1
                    if run.written[i] is None:
                        run.written[i] = rec["at"] - wall - start


def _spread(values: list[float]) -> str:
    if not values:
        return "-"
    return f"{statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f})"


def summary(runs: list[Run]) -> dict[str, Any]:
    """Per shape: the stall (limit to first kill), the gaps between kills, the kills, the
    writers' CPU and major faults during the stall, and the writing time without a limit."""
    shapes: dict[tuple[str, int, int, int], list[Run]] = {}
    for r in runs:
        shapes.setdefault((r.kind, r.writers, r.mib, r.limit_mib), []).append(r)
    out = {}
    for (kind, n, mib, limit), rs in shapes.items():
        if not limit:
            continue
        free = shapes.get((kind, n, mib, 0), [])
        out[f"{'plain' if kind == 'plain' else ''}{n}x{mib}:{limit}"] = {
            "runs": len(rs),
            "limit_at": [r.limit_at for r in rs],
            "stall": [r.stall for r in rs],
            # the limit was hit after the sample before it: the stall's upper bound
            "stall_bound": [r.kills[0].at - r.below_at for r in rs if r.kills and r.below_at],
            "victims": [[k.role for k in r.kills] for r in rs],
            "kill_at": [[round(k.at, 3) for k in r.kills] for r in rs],
            "ended": [[e and round(e, 3) for e in r.ended] for r in rs],
            "gaps": [g for r in rs for g in r.gaps],
            "kills": [len(r.kills) for r in rs],
            "oom_dump": [k.at - k.invoked for r in rs for k in r.kills if k.invoked is not None],
            "cache_mib": [r.cache_mib for r in rs],
            "majflt": [r.majflt for r in rs],
            # plain jobs: tasks done, and per second of the last job's end
            "done": [r.done for r in rs],
            "tasks_per_s": [r.done / max(e for e in r.ended if e) for r in rs if any(r.ended)],
            "last_written": [
                max((w for w in r.written if w is not None), default=None) for r in rs
            ],
            "free_last_written": [max(w for w in r.written if w is not None) for r in free],
            "load": [r.load for r in rs + free],
            "clock_skew_ms": [r.clock_skew_ms for r in rs + free],
        }
    return out


def print_summary(sums: dict[str, Any]) -> None:
    def nums(values: list[Any]) -> list[float]:
        return [float(v) for v in values if v is not None]

    for shape, s in sums.items():
        kind = "plain" if shape.startswith("plain") else "writer"
        print(f"## {shape} (writers x MiB : limit MiB), {s['runs']} runs")
        print(f"limit reached at      {_spread(nums(s['limit_at']))} s")
        print(f"stall to first kill   {_spread(nums(s['stall']))} s")
        print(f"  at most             {_spread(nums(s['stall_bound']))} s (from the sample before)")
        print(f"kills at              {s['kill_at']} s")
        print(f"victims               {s['victims']}")
        print(f"between kills         {_spread(nums(s['gaps']))} s")
        print(f"kills                 {s['kills']}")
        dump = [1000 * v for v in nums(s["oom_dump"])]
        print(f"oom-killer to kill    {_spread(dump)} ms (its dump)")
        print(f"file pages at limit   {_spread(nums(s['cache_mib']))} MiB")
        print(f"major faults          {s['majflt']}")
        print(f"last write done       {_spread(nums(s['last_written']))} s (a job: first task)")
        print(f"processes ended       {s['ended']} s")
        if kind == "plain":
            print(f"tasks done            {s['done']}")
            print(f"tasks/s               {[round(v, 2) for v in s['tasks_per_s']]}")
        print(f"  without a limit     {_spread(nums(s['free_last_written']))} s")
        print(f"load (1 min)          {_spread(nums(s['load']))}")
        print(f"kmsg - monotonic      {_spread(nums(s['clock_skew_ms']))} ms\n")


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--shapes",
        default="4x400:1100,12x400:2552,plain4x400:2552",
        help="[plain]NxMIB:LIMIT_MIB,... (plain: memory_proof.py's plain jobs, N of them)",
    )
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    where = memory_cgroup_root()
    if where is None or where[1] != 1:
        raise SystemExit("needs root and the v1 memory hierarchy")
    shapes = []
    for spec in args.shapes.split(","):
        kind = "plain" if spec.startswith("plain") else "writer"
        nm, _, limit = spec.removeprefix("plain").partition(":")
        n, _, mib = nm.partition("x")
        shapes.append((kind, int(n), int(mib), int(limit)))
    runs = []
    with sigterm_as_interrupt():
        for _ in range(args.reps):  # interleaved: each shape limited, then not
            for kind, n, mib, limit in shapes:
                runs.append(run_once(where[0], kind, n, mib, limit))
                if kind == "writer":
                    runs.append(run_once(where[0], kind, n, mib, 0))
    sums = summary(runs)
    if args.json:
        print(json.dumps({"summary": sums, "runs": [asdict(r) for r in runs]}, indent=1))
    else:
        print_summary(sums)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
