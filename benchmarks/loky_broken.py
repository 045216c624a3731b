"""What a plain loky job does when one of its workers is killed, and what it costs: the
time and CPU from the kill to loky noticing (TerminatedWorkerError), to its pool closed,
to the job's exit, and how long its other workers live on (issue 24: the memory
simulator's plain row, docs/SIMULATION.md).

    sudo python3 benchmarks/loky_broken.py [--reps 5] [--mib 400] [--busy N] [--json]

One of memory_proof.py's plain jobs (benchmarks/memory_job.py --trace: a loky pool of 3
workers, each writing `mib` MiB, 16 tasks of 40 ms CPU and 160 ms waiting) runs alone
in a v1 memory cgroup with room for all of it (nothing is OOM-killed), on an otherwise
idle host. Once its workers have written their data (`held`), or while they write it
(`mid-write`: once the cgroup holds two thirds of the pool's data), this script SIGKILLs
one of them by pid, as the OOM killer would, and samples every 2 ms: the job's CPU
(/proc/PID/schedstat, nanoseconds) and its other workers' while they live. The job's
CPU at its exit is read from its zombie before it is reaped. Runs alternate between
the two cases. With --busy N, N busy loops run in the same cgroup and session beside
the job (as the other jobs' workers do beside a plain job in memory_proof.py's plain
row): the same steps with the CPUs shared. The cgroup and the processes are removed or
killed by pid on exit, error, Ctrl-C or SIGTERM. Needs root and a memory cgroup
hierarchy (v1 or v2).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
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
from tests.helpers import MemoryCgroup, memory_cgroup_root

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
JOB = HERE / "memory_job.py"
MIB = 1 << 20
POLL = 0.002  # seconds between samples
DEADLINE = 60.0


@dataclass
class Kill:
    """One run: times in seconds from the kill, CPU in seconds."""

    case: str  # "held" or "mid-write"
    load: float
    busy: int = 0  # busy loops beside it
    dead: float = 0.0  # the victim seen a zombie (or gone): its exit done
    noticed: float = 0.0  # the job's first TerminatedWorkerError record
    closed: float = 0.0  # its pool's shutdown returned
    exit: float = 0.0  # the job became a zombie
    cpu_to_exit: float = 0.0  # ... to its exit (its reaped workers' not included)
    wait_to_exit: float = 0.0  # the job's threads runnable but waiting for a CPU, meanwhile
    slices_to_exit: int = 0  # times its threads were put on a CPU, meanwhile
    others_gone: list[float] = field(default_factory=list)  # its other workers' last sight
    others_cpu: list[float] = field(default_factory=list)  # their CPU after the kill
    usage_mib: float = 0.0  # the cgroup's usage at the kill
    # the job's resource trackers' CPU, at their last sight (loky's, multiprocessing's)
    trackers_cpu: list[float] = field(default_factory=list)


def _cpu(pid: int) -> float | None:
    """CPU seconds of a process's main thread, live or a zombie not reaped yet."""
    try:
        return int(Path(f"/proc/{pid}/schedstat").read_text().split()[0]) / 1e9
    except (OSError, IndexError, ValueError):
        return None


def _threads(pid: int, last: dict[int, tuple[float, float, int]]) -> tuple[float, float, int]:
    """Of every thread of a process seen so far (/proc/PID/task/TID/schedstat): CPU
    seconds, seconds runnable but waiting for a CPU, and times it was put on one. `last`
    keeps each thread's latest figures, so a thread that ended counts what it had at its
    last sample."""
    with contextlib.suppress(OSError):
        for entry in os.scandir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError, IndexError, ValueError):
                run, wait, slices = Path(f"{entry.path}/schedstat").read_text().split()[:3]
                last[int(entry.name)] = (int(run) / 1e9, int(wait) / 1e9, int(slices))
    return (
        sum(v[0] for v in last.values()),
        sum(v[1] for v in last.values()),
        sum(v[2] for v in last.values()),
    )


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except (OSError, IndexError):
        return ""


def _workers(job: int, trackers: bool = False) -> list[int]:
    """The loky workers of a job: its children running loky's popen (or its trackers)."""
    out = []
    with contextlib.suppress(OSError):
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            with contextlib.suppress(OSError, IndexError):
                stat = Path(f"/proc/{entry.name}/stat").read_text()
                if int(stat.rpartition(")")[2].split()[1]) != job:
                    continue
                cmd = Path(f"/proc/{entry.name}/cmdline").read_bytes()
                if (b"resource_tracker" in cmd) == trackers and (trackers or b"loky" in cmd):
                    out.append(int(entry.name))
    return out


def run_once(cg: MemoryCgroup, case: str, mib: int, busy: int = 0) -> Kill:
    """One job, one of its workers killed when `case` says; its phases after."""
    usage0 = cg.usage()
    proc = subprocess.Popen(
        [sys.executable, str(JOB), "--mode", "plain", "--mib", str(mib), "--trace"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env={"PYTHONPATH": f"{REPO}:{HERE}", "PATH": "/usr/bin:/bin"},
        preexec_fn=cg.preexec(),  # noqa: PLW1509 (no threads here)
    )
    try:
        # mid-write: each worker about 2/3 written, as the plain row's victims are (231-420
        # MiB of their 400, docs/FACTS.md)
        want = usage0 + (3 if case == "held" else 2) * mib * MIB
        deadline = time.monotonic() + DEADLINE
        workers: list[int] = []
        while time.monotonic() < deadline:
            workers = _workers(proc.pid)
            if len(workers) == 3 and cg.usage() >= want:
                break
            time.sleep(POLL)  # sampling, within the deadline above
        else:
            raise RuntimeError(f"the job's workers never wrote {want} bytes")
        victim, others = workers[0], workers[1:]
        trackers = dict.fromkeys(_workers(proc.pid, trackers=True), 0.0)
        run = Kill(case, os.getloadavg()[0], busy, usage_mib=cg.usage() / MIB)
        threads: dict[int, tuple[float, float, int]] = {}
        cpu0, wait0, slices0 = _threads(proc.pid, threads)
        ocpu0 = {p: _cpu(p) or 0.0 for p in others}
        ocpu = dict(ocpu0)
        seen = dict.fromkeys(others, 0.0)
        os.kill(victim, signal.SIGKILL)
        t0 = time.monotonic()
        while _state(proc.pid) not in {"Z", ""} and time.monotonic() < deadline:
            _threads(proc.pid, threads)
            if not run.dead and _state(victim) in {"Z", ""}:
                run.dead = time.monotonic() - t0
            for p in others:
                c = _cpu(p)
                if c is not None:
                    ocpu[p], seen[p] = c, time.monotonic() - t0
            for p in trackers:
                trackers[p] = _cpu(p) or trackers[p]
            time.sleep(POLL)  # sampling, within the deadline above
        run.exit = time.monotonic() - t0
        cpu, wait, slices = _threads(proc.pid, threads)
        run.cpu_to_exit, run.wait_to_exit, run.slices_to_exit = (
            cpu - cpu0,
            wait - wait0,
            slices - slices0,
        )
        run.others_gone = [seen[p] for p in others]
        run.others_cpu = [ocpu[p] - ocpu0[p] for p in others]
        run.trackers_cpu = sorted(trackers.values())
        out, _ = proc.communicate(timeout=DEADLINE)
        _phases(run, out, t0)
        return run
    finally:
        if proc.poll() is None:  # ours only, by pid
            proc.kill()
            proc.wait()


def _phases(run: Kill, out: bytes, t0: float) -> None:
    """When the job recorded its first error and its pool closed (wall time in its
    records, converted to the monotonic clock)."""
    wall = time.time() - time.monotonic()
    for line in out.splitlines():
        with contextlib.suppress(ValueError):
            rec = json.loads(line)
            at = rec.get("at", 0.0) - wall - t0
            if "error" in rec and not run.noticed:
                run.noticed = at
            elif "closed" in rec:
                run.closed = at


def _spread(values: list[float], scale: float = 1000.0) -> str:
    if not values:
        return "-"
    v = [x * scale for x in values]
    return f"{statistics.median(v):.0f} ({min(v):.0f}-{max(v):.0f})"


def summary(runs: list[Kill]) -> dict[str, Any]:
    out = {}
    for case in ("held", "mid-write"):
        rs = [r for r in runs if r.case == case]
        if not rs:
            continue
        out[case] = {
            "runs": len(rs),
            "dead_ms": [r.dead * 1000 for r in rs],
            "noticed_ms": [r.noticed * 1000 for r in rs],
            "dead_to_noticed_ms": [(r.noticed - r.dead) * 1000 for r in rs],
            "closed_ms": [r.closed * 1000 for r in rs],
            "exit_ms": [r.exit * 1000 for r in rs],
            "cpu_to_exit_ms": [r.cpu_to_exit * 1000 for r in rs],
            "wait_to_exit_ms": [r.wait_to_exit * 1000 for r in rs],
            "slices_to_exit": [float(r.slices_to_exit) for r in rs],
            "others_gone_ms": [g * 1000 for r in rs for g in r.others_gone],
            "others_cpu_ms": [c * 1000 for r in rs for c in r.others_cpu],
            "trackers_cpu_ms": [sum(r.trackers_cpu) * 1000 for r in rs],
            "load": [r.load for r in rs],
        }
    return out


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--reps", type=int, default=5, help="runs of each case, alternating")
    p.add_argument("--mib", type=int, default=400)
    p.add_argument("--busy", type=int, default=0, help="busy loops beside the job")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    where = memory_cgroup_root()
    if where is None:
        raise SystemExit("needs root and a memory cgroup hierarchy")
    cg = MemoryCgroup(*where, name=f"sbtest-lokykill-{uuid.uuid4().hex[:10]}")
    runs = []
    hogs: list[subprocess.Popen[bytes]] = []
    try:
        cg.set_limit(3 * (args.mib + 100) * MIB + 300 * MIB)  # room for the whole job
        with sigterm_as_interrupt():
            hogs = [
                subprocess.Popen(
                    [sys.executable, "-c", "while True: pass"],
                    preexec_fn=cg.preexec(),  # noqa: PLW1509 (no threads here)
                )
                for _ in range(args.busy)
            ]
            for i in range(args.reps):
                for case in ("held", "mid-write")[:: -1 if i % 2 else 1]:
                    runs.append(run_once(cg, case, args.mib, args.busy))
    finally:
        for h in hogs:  # ours, by pid
            h.kill()
            h.wait()
        cg.close()
    if args.json:
        print(json.dumps({"runs": [asdict(r) for r in runs], "summary": summary(runs)}))
        return 0
    for case, s in summary(runs).items():
        print(
            f"## {case}, {s['runs']} runs, {args.busy} busy loops beside,"
            f" load {min(s['load']):.2f}-{max(s['load']):.2f}"
        )
        print(f"  kill to the victim's exit done  {_spread(s['dead_ms'], 1)} ms")
        print(f"  kill to TerminatedWorkerError   {_spread(s['noticed_ms'], 1)} ms")
        print(f"  ... from the victim's exit      {_spread(s['dead_to_noticed_ms'], 1)} ms")
        print(f"  kill to pool closed             {_spread(s['closed_ms'], 1)} ms")
        print(f"  kill to exit                    {_spread(s['exit_ms'], 1)} ms")
        print(f"  the job's CPU, kill to exit     {_spread(s['cpu_to_exit_ms'], 1)} ms")
        print(f"  ... waiting for a CPU           {_spread(s['wait_to_exit_ms'], 1)} ms")
        print(f"  ... times put on a CPU          {_spread(s['slices_to_exit'], 1)}")
        print(f"  its other workers live          {_spread(s['others_gone_ms'], 1)} ms")
        print(f"  ... and use CPU                 {_spread(s['others_cpu_ms'], 1)} ms")
        print(f"  its resource trackers' CPU      {_spread(s['trackers_cpu_ms'], 1)} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
