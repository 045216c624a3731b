"""Where the plain row's time goes: memory_proof.py's plain jobs in a memory cgroup at its
limit, traced with the kernel's own records (issue 24: the memory simulator's plain row).

    sudo python3 benchmarks/plain_trace.py [--reps 3] [--before sequential,hand]
        [--limit-bytes 2675056640] [--json]

Each run makes a fresh v1 memory cgroup (no swap), limited as the kept quiet run of
memory_proof.py was (`--limit-bytes`), runs the `--before` modes in it first as
memory_proof.py does before its plain row, then 4 plain jobs (loky pools of 3 workers,
each worker writing 400 MiB) with `memory_job.py --trace`. Sampling every ~10 ms on one
clock (CLOCK_MONOTONIC here, in the workers, and the kernel log's, whose offset is
measured each run as oom_stall.py does), it records:

- each OOM kill: its time and victim (the kernel's "Killed process" records, read with
  the daemon's parser, supervisord_batt/host/kmsg.py, from the log's end before the row);
- each task's start, data written and end in its worker, each job's first error
  (loky's TerminatedWorkerError: when the job noticed the kill), its pool closed, its exit;
- every process of the cgroup: its job, its role (as oom_stall.py names it), and from
  /proc/PID/stat its state, major faults and CPU time, per sample (so the survivors'
  major faults and CPU);
- the cgroup: memory.usage_in_bytes against its limit, and memory.stat's pgmajfault,
  pgpgin, pgpgout, cache and rss (hierarchical `total_*`), per sample.

The cgroup and the processes are removed or killed by pid on exit, error, Ctrl-C or
SIGTERM. Needs root, the v1 memory hierarchy and a readable /dev/kmsg.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout, not an install

from benchmarks.contention import sigterm_as_interrupt
from benchmarks.memory_proof import _autogroup, busy_sessions
from benchmarks.oom_stall import _role, clock_skew
from supervisord_batt.host.kmsg import KernelLog, parse_record
from tests.helpers import MemoryCgroup, memory_cgroup_root

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
JOB = HERE / "memory_job.py"
MIB = 1 << 20
POLL = 0.01  # seconds between samples
DEADLINE = 120.0  # seconds a row may take before its processes are killed
LIMIT = 2675056640  # the limit of the kept quiet run (benchmarks/results/...-quiet.json)
TICK = os.sysconf("SC_CLK_TCK")
STAT_KEYS = ("total_cache", "total_rss", "total_pgmajfault", "total_pgpgin", "total_pgpgout")


@dataclass
class Proc:
    """One process seen in the cgroup."""

    pid: int
    job: int  # the index of the job it belongs to (-1: not known)
    role: str  # "job", "worker", "tracker", "?"
    first: float  # seconds from the row's start it was first seen
    last: float = 0.0  # ... last seen
    majflt: int = 0  # at its last sample
    minflt: int = 0
    cpu: float = 0.0  # user + system seconds at its last sample
    states: dict[str, int] = field(default_factory=dict)  # samples in each state


@dataclass
class Row:
    """One traced plain row."""

    load: float
    limit: int
    clock_skew_ms: float
    kills: list[dict[str, Any]] = field(default_factory=list)  # at, pid, job, role, rss_mib
    tasks: list[dict[str, Any]] = field(default_factory=list)  # job, task, pid, start, ...
    jobs: list[dict[str, Any]] = field(default_factory=list)  # per job: errors, exit...
    procs: list[Proc] = field(default_factory=list)
    series: list[list[float]] = field(default_factory=list)  # t, usage, STAT_KEYS...
    before: dict[str, float] = field(default_factory=dict)  # --before modes' tasks/s
    polls: int = 0
    # other sessions with a runnable process, on average (memory_proof.py's `sessions`:
    # this kernel shares the CPUs among sessions first), sampled every 5th poll
    sessions: float = 0.0

    @property
    def done(self) -> int:
        return len(self.tasks)

    @property
    def wall(self) -> float:
        return max((j["exit"] for j in self.jobs if j.get("exit") is not None), default=0.0)


def _stat(cg: MemoryCgroup) -> dict[str, int]:
    out = {}
    for line in (cg.path / "memory.stat").read_text().splitlines():
        k, _, v = line.partition(" ")
        out[k] = int(v)
    return out


def _proc_stat(pid: int) -> tuple[str, int, int, int, float] | None:
    """State, ppid, minor and major faults, CPU seconds of a live process."""
    try:
        f = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return None
    return f[0], int(f[1]), int(f[7]), int(f[9]), (int(f[11]) + int(f[12])) / TICK


def _start(cg: MemoryCgroup, mode: str, trace: bool) -> subprocess.Popen[bytes]:
    argv = [sys.executable, str(JOB), "--mode", mode, "--hand", "1"]
    return subprocess.Popen(
        argv + (["--trace"] if trace else []),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env={"PYTHONPATH": f"{REPO}:{HERE}", "PATH": "/usr/bin:/bin"},
        preexec_fn=cg.preexec(),  # noqa: PLW1509 (no threads here)
    )


def _before(cg: MemoryCgroup, mode: str) -> float:
    """One of memory_proof.py's other rows in the cgroup first: its tasks/s."""
    start = time.monotonic()
    procs = [_start(cg, mode, False) for _ in range(4)]
    done = 0
    for p in procs:
        out, _ = p.communicate(timeout=DEADLINE)
        done += out.count(b'"value"')
    return done / (time.monotonic() - start)


def trace_row(root: Path, before: list[str], limit: int) -> Row:
    """One plain row in a fresh cgroup (after the `before` modes in it)."""
    cg = MemoryCgroup(root, 1, name=f"sbtest-plain-{uuid.uuid4().hex[:10]}")
    procs: list[subprocess.Popen[bytes]] = []
    log: KernelLog | None = None
    try:
        cg.set_limit(limit)
        done_before = {m: _before(cg, m) for m in before}
        log = KernelLog()  # from the log's end: kills from here on
        row = Row(os.getloadavg()[0], limit, 1000 * clock_skew(log), before=done_before)
        start = time.monotonic()
        procs = [_start(cg, "plain", True) for _ in range(4)]
        _watch(row, cg, log, procs, start)
        for i, p in enumerate(procs):
            out, _ = p.communicate(timeout=DEADLINE)
            _read_job(row, i, out, start)
        return row
    finally:
        for p in procs:  # ours only, by pid
            if p.poll() is None:
                p.kill()
                p.wait()
        if log is not None:
            log.close()
        cg.close()  # kills what is left inside (our jobs' processes), then rmdir


def _watch(
    row: Row, cg: MemoryCgroup, log: KernelLog, procs: list[subprocess.Popen[bytes]], t0: float
) -> None:
    skew = row.clock_skew_ms / 1000
    jobs = {p.pid: i for i, p in enumerate(procs)}
    seen: dict[int, Proc] = {}
    exits: dict[int, float] = {}
    ours, busy = _autogroup(os.getpid()), []
    while len(exits) < len(procs) and time.monotonic() < t0 + DEADLINE:
        now = time.monotonic() - t0
        row.polls += 1
        if row.polls % 5 == 1:
            busy.append(busy_sessions(ours))
        stat = _stat(cg)
        usage = int((cg.path / "memory.usage_in_bytes").read_text())
        row.series.append([now, usage, *(stat.get(k, 0) for k in STAT_KEYS)])
        with contextlib.suppress(OSError):
            for pid in map(int, (cg.path / "cgroup.procs").read_text().split()):
                _sample(seen, jobs, pid, now)
        records, _ = log.read(256)
        for r in records:
            rec = parse_record(r)
            if rec is None or rec.rss is None or rec.pid not in seen:
                continue
            at = int(r.partition(b";")[0].split(b",")[2]) / 1e6 - skew - t0
            v = seen[rec.pid]
            row.kills.append(
                {"at": at, "pid": rec.pid, "job": v.job, "role": v.role, "rss_mib": rec.rss / MIB}
            )
        for i, job in enumerate(procs):
            if i not in exits and job.poll() is not None:
                exits[i] = now
        time.sleep(POLL)  # the sampling interval, within the deadline above
    row.procs = list(seen.values())
    row.sessions = sum(busy) / len(busy) if busy else 0.0
    row.jobs = [{"exit": exits.get(i)} for i in range(len(procs))]


def _sample(seen: dict[int, Proc], jobs: dict[int, int], pid: int, now: float) -> None:
    st = _proc_stat(pid)
    if st is None:
        return
    state, ppid, minflt, majflt, cpu = st
    p = seen.get(pid)
    if p is None:
        job = jobs.get(pid, jobs.get(ppid, -1))
        p = seen[pid] = Proc(pid, job, "job" if pid in jobs else _role(pid), now)
    if pid not in jobs and p.role in {"?", "other", "job"}:  # a job's child, maybe not exec'd
        p.role = _role(pid)
    p.last, p.minflt, p.majflt, p.cpu = now, minflt, majflt, cpu
    p.states[state] = p.states.get(state, 0) + 1


def _read_job(row: Row, i: int, out: bytes, t0: float) -> None:
    """Job i's tasks (each traced in its worker) and when it saw its first error and
    closed its pool (its "at" is wall time, converted to the monotonic clock)."""
    wall = time.time() - time.monotonic()
    job = row.jobs[i]
    for line in out.splitlines():
        with contextlib.suppress(ValueError, TypeError, KeyError):
            rec = json.loads(line)
            at = rec.get("at", 0.0) - wall - t0
            if isinstance(rec.get("value"), list):
                _v, pid, s, w, e = rec["value"]
                row.tasks.append(
                    {
                        "job": i,
                        "task": rec["task"],
                        "pid": int(pid),
                        "start": s - t0,
                        "written": w - t0,
                        "end": e - t0,
                        "seen": at,
                    }
                )
            elif "error" in rec:
                job.setdefault("error", at)
                job["errors"] = job.get("errors", 0) + 1
            elif "started" in rec:
                job["started"] = at
            elif "closed" in rec:
                job["closed"] = at


# ------------------------------------------------------------------------------ report


def survivors(row: Row) -> list[int]:
    return [i for i, j in enumerate(row.jobs) if "error" not in j]


def limit_at(row: Row) -> float | None:
    return next((s[0] for s in row.series if s[1] >= row.limit - MIB), None)


def describe(row: Row) -> dict[str, Any]:
    """What one row says: kills, each job's phases, the survivors' faults and CPU."""
    alive = survivors(row)
    first = {i: min((t["end"] for t in row.tasks if t["job"] == i), default=None) for i in alive}
    by_pid: dict[int, float] = {}
    for t in sorted(row.tasks, key=lambda t: t["start"]):
        by_pid.setdefault(t["pid"], t["written"])  # its first task wrote its data
    written = list(by_pid.values())
    s0, s1 = row.series[0], row.series[-1]
    delta = {k: s1[2 + n] - s0[2 + n] for n, k in enumerate(STAT_KEYS)}
    return {
        "load": row.load,
        "sessions": row.sessions,
        "done": row.done,
        "wall": row.wall,
        "tasks_per_s": row.done / row.wall if row.wall else 0.0,
        "survivors": len(alive),
        "limit_at": limit_at(row),
        "kills": [(round(k["at"], 3), k["job"], k["role"], round(k["rss_mib"])) for k in row.kills],
        "jobs": [{k: round(v, 3) for k, v in j.items() if v is not None} for j in row.jobs],
        "survivors_first_task": first,
        "survivors_written": sorted(round(w, 3) for w in written),
        "majflt": {r: sum(p.majflt for p in row.procs if p.role == r) for r in ("job", "worker")},
        "survivor_majflt": sum(p.majflt for p in row.procs if p.job in alive),
        "cpu": {
            "survivors": sum(p.cpu for p in row.procs if p.job in alive),
            "killed": sum(p.cpu for p in row.procs if p.job not in alive),
        },
        "cgroup": delta,
        "max_cache_mib": max(s[2] for s in row.series) / MIB,
        "before": row.before,
    }


def _spread(values: list[float]) -> str:
    if not values:
        return "-"
    return f"{statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f})"


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--before", default="sequential,hand", help="modes run first in the cgroup")
    p.add_argument("--limit-bytes", type=int, default=LIMIT)
    p.add_argument("--alternate", action="store_true", help="every second run without --before")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    where = memory_cgroup_root()
    if where is None or where[1] != 1:
        raise SystemExit("needs root and the v1 memory hierarchy")
    before = [m for m in args.before.split(",") if m]
    rows = []
    with sigterm_as_interrupt():
        for i in range(args.reps):
            first = before if not (args.alternate and i % 2) else []
            rows.append(trace_row(where[0], first, args.limit_bytes))
            if not args.json:
                print(json.dumps(describe(rows[-1])), flush=True)
    if args.json:
        print(json.dumps({"rows": [asdict(r) for r in rows]}, indent=1))
    else:
        rates = [describe(r)["tasks_per_s"] for r in rows]
        print(f"tasks/s {_spread(rates)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
