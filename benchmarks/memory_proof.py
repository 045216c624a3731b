"""Jobs of big workers in a real memory cgroup: OOM kills, tasks done and tasks/s per mode.

    python benchmarks/memory_proof.py [--jobs 4] [--tasks 16] [--workers 3] [--mib 400]
        [--fraction 0.5] [--cpu-caps host,16] [--modes sequential,hand,plain]
        [--small-mib 50] [--small-workers 4] [--small-tasks 40] [--small-cpu-ms 5]
        [--small-io-ms 495] [--small-limit-mib 2048] [--small-rounds 5]
        [--alternate N] [--no-small | --no-big] [--json]

The big case. K jobs (benchmarks/memory_job.py) start together in one memory cgroup (v1
here, v2 where the memory controller is enabled); every process that runs a task holds
`mib` MiB it wrote. First one plain job runs alone (a safety limit well above its need)
and its peak usage times K is the demand of K plain loky pools; the cgroup is then limited
to `fraction` of that demand, and each mode runs in turn: `sequential`, `hand` (a pool
sized by hand to fit: limit / K / (mib + 30 MiB), at least 1), `plain` (a loky pool of W
per job), and `budget` twice (lease + the project's executor against a real daemon
watching the cgroup): once for jobs the daemon has never seen (charged memory_per_slot),
once more for the same jobs, now sized by what the daemon learned; once per daemon of
--cpu-caps ("host": the host's CPUs cap the grants, as shipped). Each row: tasks done
and failed, what ended them (exception names from the jobs, "SIGKILL" for a job killed
itself), the cgroup's OOM kills (memory.oom_control / memory.events oom_kill, read before
and after), the cgroup's peak usage, wall time from start to the last job's exit, tasks/s
and its ratio to the best mode other than the budget that finished every task, and
what ran beside it on the host: the CPUs other programs kept busy, the threads they kept
runnable, and the other sessions with a runnable process (this kernel shares CPUs among
sessions first; benchmarks/simulate_memory.py replays each row with those sessions).

Alternating (--alternate N). A shared host's load moves a mode's rate between runs more
than the 5% the budget's ratio must show. With --alternate the big case runs N rounds
(after the plain job alone): each round runs --modes and the budget's turn (each daemon
of --cpu-caps: a first run of jobs it has never seen, new names every round, then the
same jobs learned), every second round in the reverse order, each run SETTLE after the
last. Each budget row's ratio is then the median over the rounds of its tasks/s over the
same round's tasks/s of the best other mode (of those that finished every run, the one
whose median is best), with its range and the number of rounds (benchmarks/paired.py);
OOM kills and tasks done are checked in every run. Give the best other mode last in
--modes (`--modes hand,sequential`): it then runs next to the budget's turn.

The small case. K jobs of `small_mib` workers, wanting `small_workers` each, under a limit
that holds all of them but only a few 512 MiB slots: the budget of a daemon that charges
memory_per_slot only (it does not scan during the run, so it learns nothing), against
the same jobs under a daemon that scans every second and learned them in a first run.
Its tasks mostly wait (5 ms of CPU, 495 ms waiting: a fetch, a query): a pool's worker
starts cost CPU that a 2-core host shared with other work must find, which tasks of
20 ms CPU and 180 ms waiting in 4.8 s jobs did not pay back (docs/BENCHMARKS.md). Both
daemons live through the case, their runs alternate (`--small-rounds` pairs, which goes
first alternating too), and each row says the host's load average, the CPU the jobs and
the daemon used, and when the jobs' pools were up (grant to first task done).

The small case's daemons, and the big case's with a number in --cpu-caps, have their CPU
cap raised (16) so that memory, not this host's CPUs, decides the grants: a task spends
`io_ms` of its time waiting, so more workers than cores help. Pressure thresholds are off
(a shared host's load must not decide). Needs root. The cgroup, the jobs and the daemons
are removed or killed by pid on exit, error, Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout, not an install

from benchmarks.contention import (
    PR_SET_CHILD_SUBREAPER,
    Children,
    host_busy_cpu_s,
    kill_tree,
    sigterm_as_interrupt,
)
from benchmarks.daemonproc import spawn_daemon
from benchmarks.paired import Paired, best_arm, paired, round_order
from tests.helpers import CALM, MemoryCgroup, memory_cgroup_root

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
JOB = HERE / "memory_job.py"
MIB = 1 << 20
RUN_DEADLINE = 180.0  # seconds a run may take before its jobs are killed
WORKER_EXTRA = 30 * MIB  # a worker's interpreter and imports beside its buffer (hand sizing)
TARGET = 0.95
# the small case's pause before each run: its daemons sample every second, and a run
# that starts before they sampled the last run's pools gone is granted against memory
# that is about to be freed (pools of 2-3 grown to 4 a second later, a restart each)
SETTLE = 1.5


@dataclass(frozen=True)
class Shape:
    """K jobs of T tasks, each wanting a pool of W whose processes hold `mib` MiB."""

    jobs: int = 4
    tasks: int = 16
    workers: int = 3
    mib: int = 400
    cpu_ms: float = 40.0
    io_ms: float = 160.0


@dataclass
class Run:
    """One mode's run: what the jobs reported and what the cgroup counted."""

    label: str
    mode: str
    limit: int
    total: int
    done: int = 0
    failed: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    oom_kills: int = 0
    peak: int = 0
    wall: float = 0.0
    grants: list[str] = field(default_factory=list)
    cpu: float = 0.0  # CPU seconds of the jobs, their workers and trackers (all reaped)
    daemon_cpu: float = 0.0  # CPU seconds of the run's daemon during the run (its scans)
    load: float = 0.0  # the host's 1-minute load average when the run started
    others: float = 0.0  # CPUs busy outside the run's jobs, on average over its wall time
    runnable: float = 0.0  # threads runnable outside the cgroup, on average (the simulator's)
    # other sessions with a runnable process, on average: this kernel shares CPUs among
    # sessions first (`kernel.sched_autogroup_enabled`), and the simulator replays them
    sessions: float = 0.0
    # per job, seconds from the jobs' start: its interpreter up, its grant (budget), its
    # first and last task done, its exit (where a job's time goes, `phases`)
    timeline: list[dict[str, float]] = field(default_factory=list)
    round: int = 0  # --alternate: the round (from 1) the run belongs to

    @property
    def finished(self) -> bool:
        return self.done == self.total and not self.failed

    @property
    def tasks_per_s(self) -> float:
        return self.done / self.wall if self.wall > 0 else 0.0


# ------------------------------------------------------------------------------ cgroup


@dataclass
class Bench:
    """Where the runs happen: the memory cgroup, our children, a directory for outputs."""

    cg: MemoryCgroup
    children: Children
    workdir: Path
    daemons: dict[Path, int] = field(default_factory=dict)  # socket -> the daemon's pid


def _peak_file(cg: MemoryCgroup) -> Path:
    return cg.path / ("memory.max_usage_in_bytes" if cg.version == 1 else "memory.peak")


def reset_peak(cg: MemoryCgroup) -> None:
    """Start the cgroup's peak over (v1; v2 kernels that allow it)."""
    with contextlib.suppress(OSError):
        _peak_file(cg).write_text("0\n")


def peak(cg: MemoryCgroup) -> int:
    with contextlib.suppress(OSError, ValueError):
        return int(_peak_file(cg).read_text())
    return 0


def wait_watching(
    cg: MemoryCgroup, children: Children, procs: list[subprocess.Popen[bytes]]
) -> tuple[float, float]:
    """Wait for the jobs (to RUN_DEADLINE); the mean number of threads runnable on the
    host outside the cgroup meanwhile (/proc/stat procs_running, less ours in state R),
    and of other sessions with a runnable process (`busy_sessions`, every 4th sample)."""
    deadline = time.monotonic() + RUN_DEADLINE
    seen: list[int] = []
    sessions: list[int] = []
    ours = _autogroup(os.getpid())
    while any(children.alive(p) for p in procs) and time.monotonic() < deadline:
        children.reap()
        seen.append(max(0, _procs_running() - _ours_running(cg) - 1))  # - 1: this process
        if len(seen) % 4 == 1:  # about 3 ms a sample here: every 200 ms, not 50
            sessions.append(busy_sessions(ours))
        time.sleep(0.05)  # a sample every 50 ms, within the deadline above
    return (
        sum(seen) / len(seen) if seen else 0.0,
        sum(sessions) / len(sessions) if sessions else 0.0,
    )


def _autogroup(pid: int) -> str:
    """The scheduler's session group of a process ("" where the kernel has none)."""
    try:
        return Path(f"/proc/{pid}/autogroup").read_text().split()[0]
    except (OSError, IndexError):
        return ""


def busy_sessions(ours: str) -> int:
    """Other session groups (autogroups) with a process in state R now: the kernel shares
    the CPUs among those and this run's first. A process's main thread stands for it."""
    groups = set()
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError):
            stat = Path(f"/proc/{entry.name}/stat").read_text()
            if stat.rpartition(")")[2].split()[0] == "R":
                groups.add(_autogroup(int(entry.name)))
    return len(groups - {ours, ""})


def _procs_running() -> int:
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith("procs_running "):
                return int(line.split()[1])
    return 0


def _ours_running(cg: MemoryCgroup) -> int:
    running = 0
    with contextlib.suppress(OSError):
        for pid in (
            (cg.path / "tasks" if cg.version == 1 else cg.path / "cgroup.threads")
            .read_text()
            .split()
        ):
            with contextlib.suppress(OSError, IndexError):
                stat = Path(f"/proc/{pid}/stat").read_text()
                running += stat.rpartition(")")[2].split()[0] == "R"
    return running


def kill_members(cg: MemoryCgroup, children: Children, timeout: float = 10.0) -> None:
    """Kill what is left in our cgroup (our jobs and their workers), each by pid."""
    deadline = time.monotonic() + timeout
    while members := [int(p) for p in (cg.path / "cgroup.procs").read_text().split()]:
        for pid in members:
            kill_tree(pid)
        children.reap()
        if time.monotonic() > deadline:
            raise RuntimeError(f"cgroup {cg.path} still has members {members}")
        time.sleep(0.02)  # the kills to land, within the deadline above


@contextlib.contextmanager
def reaping() -> Iterator[Children]:
    """Our children, and the orphans of killed jobs re-parented to us and reaped here
    (this host's PID 1 does not reap them), for the block only."""
    children = Children()
    children.become_subreaper()
    try:
        yield children
    finally:
        children.reap()
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0)


# ------------------------------------------------------------------------------ daemon


@contextlib.contextmanager
def daemon(
    bench: Bench,
    *,
    scan: str,
    cpu_cap: int | None,
    name: str,
) -> Iterator[Path]:
    """A real daemon budgeting the cgroup (outside it); yields its socket."""
    cg, children, workdir = bench.cg, bench.children, bench.workdir
    sock = workdir / f"{name}.sock"
    config = workdir / f"{name}.yaml"
    config.write_text(
        json.dumps(  # JSON is YAML
            {
                "daemon": {
                    "socket": str(sock),
                    "log_format": "json",
                    "log_file": str(workdir / f"{name}.log"),
                    "sample_interval": "1s",
                    "scan_interval": scan,
                },
                "budget": {
                    "cgroups": [cg.cgroup_path],
                    "max_per_lease": 64,
                    "memory_per_slot": "512MiB",
                    "pressure": CALM,
                    **({"cpu_cap": cpu_cap} if cpu_cap is not None else {}),
                },
            }
        )
    )
    proc = spawn_daemon(config, sock)
    children.adopt(proc)
    bench.daemons[sock] = proc.pid
    try:
        yield sock
    finally:
        bench.daemons.pop(sock, None)
        proc.terminate()
        if not children.wait([proc], 10.0):
            proc.kill()
            children.wait([proc], 10.0)


# -------------------------------------------------------------------------------- runs


def run_jobs(
    bench: Bench,
    shape: Shape,
    mode: str,
    label: str,
    *,
    names: Sequence[str],
    sock: Path | None = None,
    hand: int = 1,
) -> Run:
    """The jobs `names` started together in the cgroup in `mode`, run to their end."""
    cg, children, workdir = bench.cg, bench.children, bench.workdir
    run = Run(label, mode, int((cg.path / _limit_name(cg)).read_text()), len(names) * shape.tasks)
    kill_members(cg, children)
    oom_before = cg.oom_kills()
    reset_peak(cg)
    env = {"PYTHONPATH": f"{REPO}:{HERE}", "PATH": "/usr/bin:/bin"}
    if sock is not None:
        env["SUPERVISORD_BATT_SOCKET"] = str(sock)
    procs, outs = [], []
    run.load = os.getloadavg()[0]
    daemon_pid = bench.daemons.get(sock) if sock is not None else None
    daemon_cpu = _cpu_of(daemon_pid)
    busy, ours = host_busy_cpu_s(), children.cpu_s
    started, epoch = time.monotonic(), time.time()
    for name in names:
        out = workdir / f"{label}-{name}.out".replace(" ", "_")
        outs.append(out)
        argv = [sys.executable, str(JOB), "--mode", mode, "--job", name, "--hand", str(hand)]
        for key in ("tasks", "workers", "mib", "cpu_ms", "io_ms"):
            argv += [f"--{key.replace('_', '-')}", str(getattr(shape, key))]
        with out.open("wb") as f:
            proc = subprocess.Popen(
                argv,
                stdout=f,
                stderr=subprocess.DEVNULL,
                env=env,
                preexec_fn=cg.preexec(),  # noqa: PLW1509 (no threads here)
            )
        children.adopt(proc)
        procs.append(proc)
    run.runnable, run.sessions = wait_watching(cg, children, procs)
    run.wall = max(children.ended.get(p.pid, time.monotonic()) for p in procs) - started
    elapsed = time.monotonic() - started
    run.others = max(0.0, host_busy_cpu_s() - busy - (children.cpu_s - ours)) / elapsed
    run.daemon_cpu = _cpu_of(daemon_pid) - daemon_cpu
    kill_members(cg, children)  # a job past the deadline, workers it left behind
    run.cpu = children.cpu_s - ours
    run.oom_kills = cg.oom_kills() - oom_before
    run.peak = peak(cg)
    errors: Counter[str] = Counter()
    for proc, out in zip(procs, outs, strict=True):
        times: dict[str, float] = {}
        done = _read_job(out, errors, run.grants, times)
        run.timeline.append({k: v - epoch for k, v in times.items()})
        if proc.pid in children.ended:
            run.timeline[-1]["exit"] = children.ended[proc.pid] - started
        run.done += done
        run.failed += shape.tasks - done
        if proc.returncode is None or proc.returncode < 0:
            errors["SIGKILL" if proc.returncode == -9 else f"job ended {proc.returncode}"] += 1
    run.errors = dict(errors)
    return run


def _cpu_of(pid: int | None) -> float:
    """CPU seconds a live process has used (0 for None or a process gone)."""
    if pid is None:
        return 0.0
    with contextlib.suppress(OSError, IndexError, ValueError):
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return 0.0


def _limit_name(cg: MemoryCgroup) -> str:
    return "memory.limit_in_bytes" if cg.version == 1 else "memory.max"


def _read_job(out: Path, errors: Counter[str], grants: list[str], times: dict[str, float]) -> int:
    """Tasks the job finished (each value checked), its errors, its first grant and when
    (epoch seconds) it started, was granted, finished its first and last task, and
    released its lease (the client's end, before the interpreter's)."""
    done = 0
    for line in out.read_text().splitlines():
        with contextlib.suppress(ValueError):
            record = json.loads(line)
            at = record.get("at", 0.0)
            for key in ("started", "granted", "released"):
                if key in record:
                    times[key] = at
            if "value" in record:
                times.setdefault("first", at)
                times["last"] = at
                done += record["value"] == record["task"]
            elif "error" in record:
                errors[record["error"]] += 1
            elif "grant" in record.get("summary", {}):
                g = record["summary"]["grant"]
                used = "+".join(record["summary"].get("kinds", []))
                grants.append(f"{g['kind']}:{g['workers']} ({used})")
    return done


# ------------------------------------------------------------------------------- cases


@dataclass
class Args:
    shape: Shape
    fraction: float = 0.5
    small: Shape = Shape(tasks=40, workers=4, mib=50, cpu_ms=5.0, io_ms=495.0)
    small_limit: int = 2048 * MIB
    small_rounds: int = 5  # memory_per_slot and learned pairs, alternating
    cpu_cap: int = 16
    big_caps: tuple[int | None, ...] = (None, 16)  # None: the host's CPUs decide
    modes: tuple[str, ...] = ("sequential", "hand", "plain")
    rounds: int = 0  # the big case's rounds, alternating (0: one run of each row)


def big_case(bench: Bench, args: Args) -> dict[str, Any]:
    shape = args.shape
    need = shape.workers * (shape.mib * MIB + 100 * MIB) + 300 * MIB
    bench.cg.set_limit(need)  # a safety limit: one job alone, well above what it uses
    alone = run_jobs(bench, replace(shape, jobs=1), "plain", "alone", names=["a"])
    if not alone.finished or alone.oom_kills:
        raise RuntimeError(f"one plain job did not finish alone under {need} bytes: {alone}")
    demand = alone.peak * shape.jobs
    limit = int(demand * args.fraction)
    bench.cg.set_limit(limit)
    hand = max(1, (limit // shape.jobs - 100 * MIB) // (shape.mib * MIB + WORKER_EXTRA))
    names = [f"mem-{i}" for i in range(shape.jobs)]
    if args.rounds:
        rows = big_rounds(bench, args, hand)
        baseline, pairs = pair_rounds(rows)
        return {
            "demand": demand,
            "limit": limit,
            "hand": hand,
            "rows": rows,
            "baseline": baseline,
            "paired": pairs,
        }
    rows = [run_jobs(bench, shape, m, m, names=names, hand=hand) for m in args.modes]
    for cap in args.big_caps:
        with daemon(bench, scan="1s", cpu_cap=cap, name=f"big{cap}") as sock:
            for run in ("first run", "learned"):
                label = budget_label(cap, run)
                rows.append(run_jobs(bench, shape, "budget", label, names=names, sock=sock))
    return {"demand": demand, "limit": limit, "hand": hand, "rows": rows}


def budget_label(cap: int | None, run: str) -> str:
    return f"budget {f'cpu_cap {cap}' if cap is not None else 'host CPUs'}, {run}"


def big_rounds(bench: Bench, args: Args, hand: int) -> list[Run]:
    """--alternate: rounds of the other modes and the budget, the order reversed every
    second round. The budget's turn is each daemon of --cpu-caps in turn, a first run of
    jobs it has never seen (new names each round) then the same jobs again (learned); the
    daemons live through every round. Every run waits SETTLE first (the daemons sample
    every second: the last run's memory gone from their view)."""
    shape, rows = args.shape, []
    with contextlib.ExitStack() as stack:
        socks = {
            cap: stack.enter_context(daemon(bench, scan="1s", cpu_cap=cap, name=f"big{cap}"))
            for cap in args.big_caps
        }
        for i in range(args.rounds):
            names = [f"mem-{i + 1}-{j}" for j in range(shape.jobs)]
            for arm in round_order(i, [*args.modes, "budget"]):
                turn = (
                    [(arm, arm, None)]
                    if arm != "budget"
                    else [
                        ("budget", budget_label(cap, run), sock)
                        for cap, sock in socks.items()
                        for run in ("first run", "learned")
                    ]
                )
                for mode, label, sock in turn:
                    time.sleep(SETTLE)  # a fixed pause: see SETTLE and above
                    r = run_jobs(bench, shape, mode, label, names=names, sock=sock, hand=hand)
                    r.round = i + 1
                    rows.append(r)
    return rows


def pair_rounds(rows: list[Run]) -> tuple[str, dict[str, Paired]]:
    """The best other mode (of those that finished every run, the best median tasks/s
    over the rounds), and per budget row (label) its tasks/s over that mode's in the
    same round."""
    rounds = sorted({r.round for r in rows})
    others = {r.mode for r in rows if r.mode != "budget"}
    finishing = {
        m: [r.tasks_per_s for r in rows if r.mode == m]
        for m in others
        if all(r.finished for r in rows if r.mode == m)
    }
    best = best_arm(finishing) or ""
    base = {r.round: r.tasks_per_s for r in rows if r.mode == best}
    out = {}
    for label in dict.fromkeys(r.label for r in rows if r.mode == "budget"):
        mine = {r.round: r.tasks_per_s for r in rows if r.label == label}
        out[label] = paired([base.get(i, 0.0) for i in rounds], [mine.get(i, 0.0) for i in rounds])
    return best, out


def small_case(bench: Bench, args: Args) -> dict[str, Any]:
    """`small_rounds` pairs of (memory_per_slot, learned) runs, rows in that order per
    pair whichever ran first (every second round runs the learned daemon first)."""
    shape = replace(args.small, jobs=args.shape.jobs)
    bench.cg.set_limit(args.small_limit)
    names = [f"small-{i}" for i in range(shape.jobs)]
    rows = []
    cap = args.cpu_cap
    with (
        daemon(bench, scan="3600s", cpu_cap=cap, name="fixed") as fixed,
        daemon(bench, scan="1s", cpu_cap=cap, name="small") as learned,
    ):
        run_jobs(bench, shape, "budget", "learning", names=names, sock=learned)
        for i in range(args.small_rounds):
            pair = {}
            order = [("memory_per_slot", fixed), ("learned", learned)]
            for label, sock in order[:: -1 if i % 2 else 1]:
                time.sleep(SETTLE)  # a fixed pause: see SETTLE
                pair[label] = run_jobs(
                    bench, shape, "budget", f"{label}, round {i + 1}", names=names, sock=sock
                )
            rows += [pair["memory_per_slot"], pair["learned"]]
    return {"limit": args.small_limit, "shape": asdict(shape), "rows": rows}


def prove(args: Args, small: bool = True, big: bool = True) -> dict[str, Any]:
    """Both cases (or one) in one fresh memory cgroup, removed (its members killed) at
    the end."""
    where = memory_cgroup_root()
    if where is None:
        raise SystemExit("needs root and a memory cgroup hierarchy (v1, or v2 with memory)")
    workdir = Path(tempfile.mkdtemp(prefix="sbm-", dir="/tmp"))  # short: sockets live here
    cg = MemoryCgroup(*where, name=f"sbbench-mem-{uuid.uuid4().hex[:10]}")
    try:
        with reaping() as children:
            bench = Bench(cg, children, workdir)
            report: dict[str, Any] = {
                "version": cg.version,
                "cores": len(os.sched_getaffinity(0)),
                "shape": asdict(args.shape),
            }
            if big:
                report["big"] = big_case(bench, args)
            if small:
                report["small"] = small_case(bench, args)
            return report
    finally:
        cg.close()  # kills what is left inside (our jobs' processes only), then rmdir
        shutil.rmtree(workdir, ignore_errors=True)


# ------------------------------------------------------------------------------ report


def best_other(rows: list[Run]) -> Run | None:
    """The fastest mode other than the budget that finished every task."""
    done = [r for r in rows if r.mode != "budget" and r.finished]
    return max(done, key=lambda r: r.tasks_per_s, default=None)


def verdict(report: dict[str, Any]) -> list[str]:
    """What missed its goal (empty: every goal met)."""
    missed = []
    rows = report["big"]["rows"] if "big" in report else []
    best = best_other(rows)
    pairs = report["big"].get("paired") if "big" in report else None
    for r in rows:
        if r.mode != "budget":
            continue
        if r.oom_kills or not r.finished:
            what = f"{r.label}, round {r.round}" if r.round else r.label
            missed.append(f"{what}: {r.oom_kills} OOM kills, {r.done}/{r.total} done")
        if pairs is None and best is not None and r.tasks_per_s < TARGET * best.tasks_per_s:
            missed.append(f"{r.label}: {r.tasks_per_s / best.tasks_per_s:.2f} of {best.label}")
    for label, p in (pairs or {}).items():
        if not p.met(TARGET):
            missed.append(f"{label}: paired median {p} of the best other mode")
    if "small" in report:
        missed += small_verdict(report["small"]["rows"])
    return missed


def small_verdict(rows: list[Run]) -> list[str]:
    """Each round: both finished with no OOM kill, memory decided (the learned daemon
    granted more workers), and the learned run was the faster."""
    missed = []
    for fixed, learned in zip(rows[0::2], rows[1::2], strict=True):
        for r in (fixed, learned):
            if r.oom_kills or not r.finished:
                missed.append(f"{r.label}: {r.oom_kills} OOM kills, {r.done}/{r.total} done")
        if granted(learned) <= granted(fixed):
            missed.append(f"{learned.label}: granted no more workers than memory_per_slot")
        if learned.tasks_per_s <= fixed.tasks_per_s:
            ratio = learned.tasks_per_s / fixed.tasks_per_s if fixed.tasks_per_s else 0.0
            missed.append(f"{learned.label}: {ratio:.2f}x of memory_per_slot")
    return missed


def granted(r: Run) -> int:
    """Workers of the jobs' first grants, together ("process:4 (process:4)" is 4)."""
    return sum(int(g.split()[0].partition(":")[2] or 0) for g in r.grants)


def print_report(report: dict[str, Any]) -> None:
    print(f"memory cgroup v{report['version']}, {report['cores']} CPUs")
    if "big" in report:
        big = report["big"]
        print(
            f"plain demand {big['demand'] / MIB:.0f} MiB,"
            f" limit {big['limit'] / MIB:.0f} MiB, hand-sized pool {big['hand']}"
        )
        if "paired" in big:
            print_rounds(big["rows"], big["baseline"], big["paired"])
        else:
            _table(big["rows"], best_other(big["rows"]))
    if "small" in report:
        print_small(report["small"])
    missed = verdict(report)
    print("\n" + ("every goal met" if not missed else "MISSED: " + "; ".join(missed)))


def print_rounds(rows: list[Run], baseline: str, pairs: dict[str, Paired]) -> None:
    """--alternate: each round's rows against that round's run of the baseline (the best
    other mode), then each budget row's paired ratios and the load through the rounds."""
    for i in sorted({r.round for r in rows}):
        mine = [r for r in rows if r.round == i]
        order = list(dict.fromkeys(r.mode for r in mine))
        print(f"\nround {i} ({', '.join(order)}), load average {_spread([r.load for r in mine])}")
        _table(mine, next((r for r in mine if r.mode == baseline), None))
    print()
    for label, p in pairs.items():
        print(f"{label}: / {baseline or '-'} of its round, paired: {p}")
    print(f"load average through the rounds: {_spread([r.load for r in rows])}")


def print_small(small: dict[str, Any]) -> None:
    """The small case's rows, then per daemon the medians and ranges over the rounds."""
    sh, rows = small["shape"], small["rows"]
    print(
        f"\nsmall workers, limit {small['limit'] / MIB:.0f} MiB: {sh['jobs']} jobs of"
        f" {sh['tasks']} tasks ({sh['cpu_ms']:g} ms CPU, {sh['io_ms']:g} ms waiting), each"
        f" wanting {sh['workers']} workers of {sh['mib']} MiB; {len(rows) // 2} rounds"
    )
    _table(rows, None)
    print(f"  {'':30} {'tasks/s':>18} {'jobs CPU s':>17} {'grant to 1st task s':>19}")
    for label in ("memory_per_slot", "learned"):
        mine = [r for r in rows if r.label.startswith(label)]
        starts = [t["first"] - t["granted"] for r in mine for t in r.timeline if "granted" in t]
        print(
            f"  {label:30} {_spread([r.tasks_per_s for r in mine]):>18}"
            f" {_spread([r.cpu for r in mine]):>17} {_spread(starts):>19}"
            f"  daemon CPU {_spread([r.daemon_cpu for r in mine])} s per run"
        )
    pairs = list(zip(rows[0::2], rows[1::2], strict=True))
    ratios = [b.tasks_per_s / a.tasks_per_s for a, b in pairs if a.tasks_per_s]
    faster = sum(b.tasks_per_s > a.tasks_per_s for a, b in pairs)
    print(
        f"  learned / memory_per_slot, per round: {_spread(ratios)}, faster in {faster} of"
        f" {len(pairs)}; load average {_spread([r.load for r in rows])}, CPUs busy"
        f" outside the jobs {_spread([r.others for r in rows])}"
    )


def _spread(values: list[float]) -> str:
    """Median (smallest-largest), or '-' for none."""
    if not values:
        return "-"
    return f"{statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f})"


def phases(r: Run) -> str:
    """The jobs' mean seconds from their start to: interpreter up, grant, first task done,
    last task done, lease released, exit (where the time goes)."""
    keys = ("started", "granted", "first", "last", "released", "exit")
    parts = []
    for key in keys:
        seen = [t[key] for t in r.timeline if key in t]
        if seen:
            parts.append(f"{key} {sum(seen) / len(seen):.2f}")
    return ", ".join(parts)


def _table(rows: list[Run], base: Run | None) -> None:
    print(
        f"{'mode':32} {'done':>7} {'failed':>6} {'oom':>4} {'peak MiB':>8} {'wall s':>7}"
        f" {'tasks/s':>7} {'ratio':>6} {'others':>6}  errors / grants"
    )
    for r in rows:
        ratio = f"{r.tasks_per_s / base.tasks_per_s:.2f}" if base and base.tasks_per_s else "-"
        what = ", ".join(f"{k} x{v}" for k, v in sorted(r.errors.items()))
        grants = ", ".join(sorted(r.grants))
        print(
            f"{r.label:32} {r.done:>3}/{r.total:<3} {r.failed:>6} {r.oom_kills:>4}"
            f" {r.peak / MIB:>8.0f} {r.wall:>7.2f} {r.tasks_per_s:>7.2f} {ratio:>6}"
            f" {r.others:>6.2f}"
            f"  {what}{' / ' if what and grants else ''}{grants}"
        )
    for r in rows:
        print(f"  {r.label:30} mean s: {phases(r)}")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    d, s = Shape(), Args(Shape()).small
    p.add_argument("--jobs", type=int, default=d.jobs)
    p.add_argument("--tasks", type=int, default=d.tasks)
    p.add_argument("--workers", type=int, default=d.workers)
    p.add_argument("--mib", type=int, default=d.mib)
    p.add_argument("--fraction", type=float, default=0.5, help="of the plain pools' demand")
    p.add_argument("--small-mib", type=int, default=s.mib)
    p.add_argument("--small-workers", type=int, default=s.workers)
    p.add_argument("--small-tasks", type=int, default=s.tasks)
    p.add_argument("--small-cpu-ms", type=float, default=s.cpu_ms)
    p.add_argument("--small-io-ms", type=float, default=s.io_ms)
    p.add_argument("--small-limit-mib", type=int, default=2048)
    p.add_argument("--small-rounds", type=int, default=Args(Shape()).small_rounds)
    p.add_argument(
        "--cpu-caps",
        default="host,16",
        help="the big case's budget daemons: their cpu_cap, 'host' for the host's CPUs",
    )
    p.add_argument("--modes", default="sequential,hand,plain", help="the big case's others")
    p.add_argument(
        "--alternate",
        type=int,
        default=0,
        metavar="N",
        help="the big case in N rounds of --modes and the budget rows, every second round in "
        "the reverse order; each budget row's ratio is the median of its tasks/s over the "
        "same round's figure of the best other mode that finished (range and rounds beside)",
    )
    which = p.add_mutually_exclusive_group()
    which.add_argument("--no-small", action="store_true", help="the big case only")
    which.add_argument("--no-big", action="store_true", help="the small case only")
    p.add_argument("--json", action="store_true")
    return p


def main() -> int:
    a = build_parser().parse_args()
    shape = Shape(a.jobs, a.tasks, a.workers, a.mib)
    small = Shape(
        tasks=a.small_tasks,
        workers=a.small_workers,
        mib=a.small_mib,
        cpu_ms=a.small_cpu_ms,
        io_ms=a.small_io_ms,
    )
    caps = tuple(None if c == "host" else int(c) for c in a.cpu_caps.split(",") if c)
    modes = tuple(m for m in a.modes.split(",") if m)
    args = Args(
        shape,
        a.fraction,
        small,
        a.small_limit_mib * MIB,
        a.small_rounds,
        big_caps=caps,
        modes=modes,
        rounds=a.alternate,
    )
    with sigterm_as_interrupt():  # SIGTERM too removes the cgroup and kills what ran
        report = prove(args, small=not a.no_small, big=not a.no_big)
    if a.json:
        out = dict(report)
        for case in ("big", "small"):
            if case in report:
                out[case] = {**report[case], "rows": [asdict(r) for r in report[case]["rows"]]}
        if "paired" in report.get("big", {}):
            out["big"]["paired"] = {
                label: {**asdict(p), "rounds": p.rounds}
                for label, p in report["big"]["paired"].items()
            }
        print(json.dumps(out, indent=2))
    else:
        print_report(report)
    return 0 if not verdict(report) else 1


if __name__ == "__main__":
    sys.exit(main())
