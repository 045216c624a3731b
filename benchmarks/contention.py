"""K demo-like jobs at once in one pids cgroup: tasks done, failures, hangs, leaks, tasks/s.

    python benchmarks/contention.py [--jobs 8] [--tasks 6] [--samples 4] [--workers 2]
        [--min-ms 50 --max-ms 200] [--hang-timeout S] [--cells none,half,quarter]
        [--modes unguarded,heuristic,sequential,budget] [--alternate N] [--target R] [--json]

What is measured. Each cell is one mode x one pids.max. K jobs (benchmarks/contention_job.py,
seeds 0..K-1, the demo's CPU-bound scoring) start together inside one fresh pids cgroup
under a parent whose pids.max is the cell's limit. Modes: `unguarded` (a fresh loky pool of
W per task, as run_batt did), `heuristic` (the published `threading.active_count() > 50`
guard and process -> thread -> sequential fallback chain, per task), `sequential` (no pool)
and `budget` (lease + BudgetExecutor against a real daemon started here). Limits: `none`
(unlimited), `half` and `quarter` of the unguarded demand, where the demand is the peak
pids.current of the unlimited unguarded cell (measured first; --demand N skips that).

Per cell: tasks done (values reported by the jobs as they finish, so a killed job's work
counts), failed (tasks that raised or never finished), hung jobs (still running at the hang
deadline: their whole tree is SIGKILLed by pid), leaked processes (live processes left in
the cell's cgroup a grace period after every job exited or was killed; then killed),
zombies, refused (pids.events "max": creations the kernel refused), the peak
pids.current, wall time (first job started to last job gone), tasks/s = done / wall, and
for budget the ratio of its tasks/s to the best other mode's in the same cell. Every task
value is checked against the reference: the sequential cells' values, else demo.score run
here. Target: budget with no failures, hangs or leaks and >= 0.95 of the best other mode's
tasks/s, in every cell.

Alternating (--alternate N). On a shared host a mode's rate moves between runs by more
than the few percent a budget ratio must show, so one budget run against one sequential
run minutes apart measures the host. With --alternate, every cell runs N rounds of its
modes, every second round in the reverse order (sequential, budget, budget, sequential,
...), and the budget's ratio is the median over the rounds of its tasks/s over the same
round's tasks/s of the best other mode (the one whose median over the rounds is best),
reported with its range and the number of rounds (benchmarks/paired.py); the safety
counts are summed over every round as with --repeat, and the text and --json give every
round: each mode's figures, the load, and each job's timeline (interpreter up, grant,
first and last task, lease released, exit).

Zombies. This machine's PID 1 does not reap orphans, and a zombie still holds its pid in
the cgroup. So the benchmark makes itself a child subreaper (prctl): orphaned job
processes are re-parented to it and reaped at once, as a real init would. The `zombies`
column counts those orphans (each would have stayed a zombie here) plus anything still
charged to the cgroup once no live process is left; they are not counted as leaks.

Needs root and the cgroup v1 pids controller at /sys/fs/cgroup/pids. Every cgroup, job and
daemon started here is removed or killed by pid on exit, error, Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from types import FrameType
from typing import IO, Any

import psutil

from benchmarks.paired import Paired, best_arm, paired, round_order
from supervisord_batt.demo import ITERS_PER_MS, Task, score, spin

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
JOB = HERE / "contention_job.py"
PIDS_V1 = Path("/sys/fs/cgroup/pids")
PR_SET_CHILD_SUBREAPER = 36
MODES = ("unguarded", "heuristic", "sequential", "budget")
RUN_ORDER = ("sequential", "unguarded", "heuristic", "budget")  # reference and demand first
CELLS = ("none", "half", "quarter")
CELL_FRACTION = {"none": None, "half": 0.5, "quarter": 0.25}
POLL = 0.02  # seconds between reaps and pids.current reads while a cell runs
LEAK_GRACE = 3.0  # seconds for exiting resource trackers to go before we call them leaks
KILL_TIMEOUT = 10.0
TARGET_RATIO = 0.95
NOISY = 10.0  # bg% above which a tasks/s ratio says more about the host than the mode


# ------------------------------------------------------------------------ children


class Children:
    """Every child of ours, reaped with waitpid(-1): jobs, the daemon, adopted orphans."""

    def __init__(self) -> None:
        self.procs: dict[int, subprocess.Popen[bytes]] = {}
        self.ended: dict[int, float] = {}  # pid -> monotonic time it was reaped
        self.orphans = 0
        self.cpu_s = 0.0  # CPU of every child reaped so far, with the descendants it reaped

    @staticmethod
    def become_subreaper() -> bool:
        libc = ctypes.CDLL(None, use_errno=True)
        return int(libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)) == 0

    def adopt(self, proc: subprocess.Popen[bytes]) -> None:
        self.procs[proc.pid] = proc

    def reap(self) -> None:
        while True:
            try:
                pid, status, usage = os.wait4(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            self.cpu_s += usage.ru_utime + usage.ru_stime
            proc = self.procs.pop(pid, None)
            if proc is None:
                self.orphans += 1
                continue
            proc.returncode = os.waitstatus_to_exitcode(status)
            self.ended[pid] = time.monotonic()

    def alive(self, proc: subprocess.Popen[bytes]) -> bool:
        return proc.pid in self.procs

    def wait(self, procs: list[subprocess.Popen[bytes]], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while True:
            self.reap()
            if not any(self.alive(p) for p in procs):
                return True
            if time.monotonic() > deadline:
                return False
            time.sleep(POLL)


def kill_tree(pid: int) -> None:
    """SIGKILL a process and every descendant, each by pid (collected before the kill)."""
    try:
        root = psutil.Process(pid)
        victims = [root, *root.children(recursive=True)]
    except psutil.Error:
        return
    for proc in victims:
        with contextlib.suppress(psutil.Error):
            proc.kill()  # psutil checks the pid still names the process it collected


def host_busy_cpu_s() -> float:
    """CPU seconds the whole host has spent busy since boot (/proc/stat, all CPUs)."""
    with open("/proc/stat") as f:
        fields = [int(v) for v in f.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle, iowait
    guest = sum(fields[8:10])  # guest time is already counted in user and nice
    return (sum(fields) - idle - guest) / os.sysconf("SC_CLK_TCK")


def own_cpu_s(daemon_pid: int | None) -> float:
    """CPU seconds of this process and of the daemon (both outside the cell's jobs)."""
    t = os.times()
    total = t.user + t.system
    if daemon_pid is not None:
        with contextlib.suppress(psutil.Error):
            d = psutil.Process(daemon_pid).cpu_times()
            total += d.user + d.system
    return total


# -------------------------------------------------------------------------- cgroups


class PidsCgroup:
    """A cgroup v1 pids directory we made; remove() kills what is left (by pid) and rmdirs."""

    def __init__(self, path: Path, *, create: bool = True) -> None:
        if create:
            path.mkdir()
        self.path = path
        self.polled_peak = 0

    @classmethod
    def existing(cls, path: Path) -> PidsCgroup:
        return cls(path, create=False)

    @property
    def cgroup_path(self) -> str:
        """The path as /proc/<pid>/cgroup and the daemon's config name it."""
        return "/" + str(self.path.relative_to(PIDS_V1))

    def _read(self, name: str) -> str:
        return (self.path / name).read_text()

    def set_max(self, value: int | None) -> None:
        (self.path / "pids.max").write_text("max\n" if value is None else f"{value}\n")

    def current(self) -> int:
        value = int(self._read("pids.current"))
        self.polled_peak = max(self.polled_peak, value)
        return value

    def peak(self) -> int:
        with contextlib.suppress(OSError, ValueError):
            return max(self.polled_peak, int(self._read("pids.peak")))
        return self.polled_peak

    def events_max(self) -> int:
        for line in self._read("pids.events").splitlines():
            key, _, value = line.partition(" ")
            if key == "max":
                return int(value)
        return 0

    def procs(self) -> list[int]:
        return [int(p) for p in self._read("cgroup.procs").split()]

    def live_procs(self) -> list[int]:
        live = []
        for pid in self.procs():
            with contextlib.suppress(psutil.Error):
                if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                    live.append(pid)
        return live

    def preexec(self) -> Callable[[], None]:
        """A preexec_fn that moves the forked child into this cgroup before exec."""
        procs = str(self.path / "cgroup.procs")

        def move() -> None:
            with open(procs, "w") as f:
                f.write(str(os.getpid()))

        return move

    def kill_members(self, children: Children) -> None:
        deadline = time.monotonic() + KILL_TIMEOUT
        while True:
            members = self.procs()
            if not members:
                return
            for pid in members:
                kill_tree(pid)
            children.reap()
            if time.monotonic() > deadline:
                raise RuntimeError(f"cgroup {self.path} still has members {members}")
            time.sleep(POLL)

    def remove(self, children: Children) -> None:
        """Remove our child cgroups (made only by us), kill what is left inside, rmdir."""
        if not self.path.exists():
            return
        for sub in sorted(p for p in self.path.iterdir() if p.is_dir()):
            PidsCgroup.existing(sub).remove(children)
        self.kill_members(children)
        deadline = time.monotonic() + KILL_TIMEOUT
        while True:  # the last exit can be accounted a moment after cgroup.procs empties
            try:
                self.path.rmdir()
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(POLL)


# --------------------------------------------------------------------------- daemon


class Daemon:
    """A real supervisord-batt daemon watching the benchmark's cgroup (not inside it)."""

    def __init__(
        self, workdir: Path, cgroup_path: str, budget: dict[str, Any], children: Children
    ) -> None:
        self.socket = workdir / "d.sock"
        self.log = workdir / "daemon.log"
        self.budget = {"cgroups": [cgroup_path], **budget}
        config = workdir / "daemon.yaml"
        config.write_text(
            json.dumps(
                {  # JSON is YAML
                    "daemon": {
                        "socket": str(self.socket),
                        "log_format": "json",
                        "log_file": str(self.log),
                    },
                    "budget": self.budget,
                },
                indent=2,
            )
        )
        self.err_path = workdir / "daemon.err"
        self.children = children
        with self.err_path.open("wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "supervisord_batt", "run", "-c", str(config)],
                env=job_env(None),
                stdout=err,
                stderr=err,
                start_new_session=True,
            )
        children.adopt(self.proc)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            children.reap()
            if not children.alive(self.proc):
                break
            with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX) as s:
                s.connect(str(self.socket))
                return
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"the daemon did not start:\n{self.err_path.read_text()[-2000:]}")

    def stop(self) -> None:
        if not self.children.alive(self.proc):
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.proc.pid, signal.SIGTERM)
        if not self.children.wait([self.proc], KILL_TIMEOUT):
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGKILL)
            self.children.wait([self.proc], KILL_TIMEOUT)

    def events(self) -> Counter[str]:
        counts: Counter[str] = Counter()
        with contextlib.suppress(OSError):
            for line in self.log.read_text().splitlines():
                with contextlib.suppress(ValueError):
                    counts[str(json.loads(line).get("event"))] += 1
        return counts


# ---------------------------------------------------------------------------- cells


@dataclass
class Params:
    jobs: int
    tasks: int
    samples: int
    workers: int
    min_ms: float
    max_ms: float
    seed: int


@dataclass
class JobResult:
    seed: int
    returncode: int | None
    hung: bool
    values: dict[int, int]
    errors: list[str]
    summary: dict[str, Any] | None
    # seconds from the cell's start: the job's interpreter up, its grant (budget), its
    # first and last task done, its lease released (budget), its exit
    timeline: dict[str, float] = field(default_factory=dict)


@dataclass
class Row:
    cell: str
    pids_max: int | None
    mode: str
    tasks: int
    done: int = 0
    failed: int = 0
    hung: int = 0
    leaked: int = 0
    zombies: int = 0
    refused: int = 0
    peak: int = 0
    wall_s: float = 0.0
    tasks_per_s: float = 0.0
    cpu_s: float = 0.0  # CPU the cell's processes used (jobs, workers, trackers)
    background_cpu_pct: float = 0.0  # CPU the rest of the host used during the cell
    load: float = 0.0  # the host's 1-minute load average when the cell started
    bad: int = 0  # task values or job checksums that differ from the reference
    ratio: float | None = None  # budget only: tasks/s over the best other mode's
    repeats: int = 1
    notes: str = ""
    errors: dict[str, int] = field(default_factory=dict)
    jobs: list[JobResult] = field(default_factory=list, repr=False)


def job_env(socket_path: Path | None) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(REPO), str(HERE), env.get("PYTHONPATH", "")) if p
    )
    if socket_path is not None:
        env["SUPERVISORD_BATT_SOCKET"] = str(socket_path)
    return env


def parse_job(
    seed: int, out_path: Path, returncode: int | None, hung: bool, epoch: float
) -> JobResult:
    """A job's output; its timeline in seconds from `epoch` (the cell's start)."""
    values: dict[int, int] = {}
    errors: list[str] = []
    summary: dict[str, Any] | None = None
    timeline: dict[str, float] = {}
    for line in out_path.read_text(errors="replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        at = float(record.get("at", epoch)) - epoch
        for key in ("started", "granted", "released"):
            if key in record:
                timeline[key] = at
        if "summary" in record:
            summary = record["summary"]
        elif "value" in record:
            values[int(record["task"])] = int(record["value"], 16)
            timeline.setdefault("first", at)
            timeline["last"] = at
        elif "error" in record:
            errors.append(str(record["error"]).split(":")[0])
    return JobResult(seed, returncode, hung, values, errors, summary, timeline)


class Cell:
    """One mode at one pids.max: start K jobs in a fresh child cgroup, wait, count, clean."""

    def __init__(
        self,
        name: str,
        pids_max: int | None,
        mode: str,
        *,
        params: Params,
        parent: PidsCgroup,
        children: Children,
        socket_path: Path | None,
        daemon_pid: int | None,
        hang_timeout: float,
        workdir: Path,
    ) -> None:
        self.row = Row(name, pids_max, mode, params.jobs * params.tasks)
        self.params, self.parent, self.children = params, parent, children
        self.socket_path, self.hang_timeout = socket_path, hang_timeout
        self.daemon_pid = daemon_pid
        self.outdir = Path(tempfile.mkdtemp(prefix=f"{name}-{mode}-", dir=workdir))
        self.procs: list[subprocess.Popen[bytes]] = []

    def command(self, seed: int) -> list[str]:
        p = self.params
        return [
            sys.executable,
            str(JOB),
            "--mode",
            self.row.mode,
            "--tasks",
            str(p.tasks),
            "--samples",
            str(p.samples),
            "--workers",
            str(p.workers),
            "--seed",
            str(seed),
            "--min-ms",
            str(p.min_ms),
            "--max-ms",
            str(p.max_ms),
        ]

    def run(self) -> Row:
        row, p = self.row, self.params
        self.parent.set_max(row.pids_max)
        cg = PidsCgroup(self.parent.path / f"{row.cell}-{row.mode}")
        refused0, orphans0 = self.parent.events_max(), self.children.orphans
        # v1 counts a refusal in the cgroup that forked (the cell's), v2 where the limit is
        cpu0, busy0, own0 = self.children.cpu_s, host_busy_cpu_s(), own_cpu_s(self.daemon_pid)
        env = job_env(self.socket_path)
        seeds = [p.seed + j for j in range(p.jobs)]
        hung: set[int] = set()
        row.load = os.getloadavg()[0]
        try:
            start, epoch = time.monotonic(), time.time()
            for seed in seeds:
                self.procs.append(self._launch(seed, cg, env))
            ends = self._wait(start, cg, hung)
            row.wall_s = max(ends, default=start) - start
            busy = host_busy_cpu_s() - busy0
            row.cpu_s = self.children.cpu_s - cpu0
            other = busy - row.cpu_s - (own_cpu_s(self.daemon_pid) - own0)
            ncpu = len(os.sched_getaffinity(0))
            row.background_cpu_pct = 100 * max(0.0, other) / max(1e-9, row.wall_s * ncpu)
            row.leaked, row.zombies = self._drain(cg)
            row.zombies += self.children.orphans - orphans0
            row.refused = cg.events_max() + self.parent.events_max() - refused0
            row.peak = cg.peak()
        finally:
            for proc in self.procs:
                if self.children.alive(proc):
                    kill_tree(proc.pid)
            self.children.wait(self.procs, KILL_TIMEOUT)
            cg.remove(self.children)
            self.parent.set_max(None)
        for seed, proc in zip(seeds, self.procs, strict=True):
            out = self.outdir / f"{seed}.out"
            job = parse_job(seed, out, proc.returncode, proc.pid in hung, epoch)
            if proc.pid in self.children.ended:
                job.timeline["exit"] = self.children.ended[proc.pid] - start
            row.jobs.append(job)
        self._tally()
        return row

    def _launch(self, seed: int, cg: PidsCgroup, env: dict[str, str]) -> subprocess.Popen[bytes]:
        out: IO[bytes]
        with (
            (self.outdir / f"{seed}.out").open("wb") as out,
            (self.outdir / f"{seed}.err").open("wb") as err,
        ):
            # preexec_fn is safe here (no threads in this process); the move must precede exec
            proc = subprocess.Popen(
                self.command(seed),
                stdout=out,
                stderr=err,
                env=env,
                preexec_fn=cg.preexec(),  # noqa: PLW1509
                start_new_session=True,
            )
        self.children.adopt(proc)
        return proc

    def _wait(self, start: float, cg: PidsCgroup, hung: set[int]) -> list[float]:
        """Until every job is gone; past the hang deadline, kill the trees still running."""
        deadline = start + self.hang_timeout
        while True:
            self.children.reap()
            with contextlib.suppress(OSError, ValueError):
                cg.current()
            running = [proc for proc in self.procs if self.children.alive(proc)]
            if not running:
                break
            if time.monotonic() > deadline and not hung:
                for proc in running:
                    hung.add(proc.pid)
                    kill_tree(proc.pid)
            time.sleep(POLL)
        return [self.children.ended[proc.pid] for proc in self.procs]

    def _drain(self, cg: PidsCgroup) -> tuple[int, int]:
        """(live processes left after the grace period, pids still charged with none live)."""
        deadline = time.monotonic() + LEAK_GRACE
        while True:
            self.children.reap()
            live = cg.live_procs()
            if not live or time.monotonic() > deadline:
                break
            time.sleep(POLL)
        for pid in live:
            kill_tree(pid)
        cg.kill_members(self.children)
        self.children.reap()
        with contextlib.suppress(OSError, ValueError):
            return len(live), cg.current()
        return len(live), 0

    def _tally(self) -> None:
        row = self.row
        row.done = sum(len(job.values) for job in row.jobs)
        row.failed = row.tasks - row.done
        row.hung = sum(job.hung for job in row.jobs)
        row.tasks_per_s = row.done / row.wall_s if row.wall_s > 0 else 0.0
        errors: Counter[str] = Counter()
        notes: Counter[str] = Counter()
        for job in row.jobs:
            errors.update(job.errors)
            s = job.summary or {}
            if job.summary is None:
                notes["no summary"] += 1
            for path, count in (s.get("paths") or {}).items():
                notes[path] += int(count)
            if s.get("kinds"):
                notes["+".join(s["kinds"])] += 1
            grant = s.get("grant") or {}
            if grant.get("degraded"):
                notes["degraded"] += 1
            elif grant:
                notes[f"level {grant.get('level')}"] += 1
            if s.get("fallbacks"):
                notes["fallbacks"] += len(s["fallbacks"])
        row.errors = dict(errors)
        row.notes = ", ".join(f"{k} {v}" for k, v in notes.most_common())
        if errors:
            row.notes += "; errors: " + ", ".join(f"{k} {v}" for k, v in errors.most_common(3))


# ------------------------------------------------------------------------- the run


def check_values(rows: list[Row], params: Params) -> dict[tuple[int, int], int]:
    """Reference values (sequential cells, else demo.score here); count mismatches."""
    from benchmarks.contention_job import fold_tasks

    ref: dict[tuple[int, int], int] = {}
    for row in rows:
        if row.mode == "sequential":
            for job in row.jobs:
                for index, value in job.values.items():
                    ref.setdefault((job.seed, index), value)
    for j in range(params.jobs):
        seed = params.seed + j
        for i in range(params.tasks):
            if (seed, i) not in ref:
                ref[(seed, i)] = score(Task(i, seed, params.samples, params.min_ms, params.max_ms))
    for row in rows:
        row.bad = 0
        for job in row.jobs:
            row.bad += sum(ref[(job.seed, i)] != v for i, v in job.values.items())
            checksum = (job.summary or {}).get("checksum")
            if checksum is not None:
                want = fold_tasks([ref[(job.seed, i)] for i in range(params.tasks)])
                row.bad += int(checksum, 16) != want
    return ref


def estimate_sequential_wall(params: Params) -> float:
    """Seconds the sequential cell should take here, from a short calibration."""
    t0 = time.perf_counter()
    spin(200_000, 1)
    ms_per_planned_ms = (time.perf_counter() - t0) * 1000 / (200_000 / ITERS_PER_MS)
    mean_ms = (params.min_ms + params.max_ms) / 2
    cpu_s = params.jobs * params.tasks * params.samples * mean_ms * ms_per_planned_ms / 1000
    return cpu_s / max(1, len(os.sched_getaffinity(0)))


def plan(
    cells: list[str], modes: list[str], repeats: int, alternate: bool = False
) -> list[tuple[str, str]]:
    """(cell, mode) in run order: limits as given, then each repeat of every mode in turn
    (sequential and unguarded first: they give the reference, hang deadline and demand);
    alternating, every second round runs the modes in the reverse order."""
    order = [m for m in RUN_ORDER if m in modes]
    return [
        (c, m)
        for c in cells
        for i in range(repeats)
        for m in (round_order(i, order) if alternate else order)
    ]


def pair_rounds(runs: dict[tuple[str, str], list[Row]], cell: str) -> tuple[str, Paired]:
    """The best other mode of `cell` (best median tasks/s over the rounds), and per
    round the budget's tasks/s over that mode's in the same round."""
    others = {
        m: [r.tasks_per_s for r in rows]
        for (c, m), rows in runs.items()
        if c == cell and m != "budget"
    }
    budget = runs.get((cell, "budget"), [])
    best = best_arm(others)
    if best is None or not budget:
        return "", paired([], [])
    return best, paired(others[best], [r.tasks_per_s for r in budget])


def round_report(runs: dict[tuple[str, str], list[Row]], cell: str) -> list[dict[str, Any]]:
    """Each round of `cell`: its modes' figures, the order they ran in, and each job's
    timeline (seconds from the cell's start), for --json."""
    mine = {m: rows for (c, m), rows in runs.items() if c == cell}
    rounds = []
    for i in range(min(len(rows) for rows in mine.values())):
        order = [m for m in RUN_ORDER if m in mine]
        row = {m: mine[m][i] for m in mine}
        rounds.append(
            {
                "round": i + 1,
                "order": round_order(i, order),
                "modes": {
                    m: {
                        **{k: v for k, v in asdict(r).items() if k != "jobs"},
                        "timelines": [job.timeline for job in r.jobs],
                    }
                    for m, r in row.items()
                },
            }
        )
    return rounds


def merge(runs: list[Row]) -> Row:
    """Repeats of one cell: safety counts summed over all, throughput from the fastest."""
    best = max(runs, key=lambda r: r.tasks_per_s)
    errors: Counter[str] = Counter()
    for r in runs:
        errors.update(r.errors)
    return replace(
        best,
        tasks=sum(r.tasks for r in runs),
        done=sum(r.done for r in runs),
        failed=sum(r.failed for r in runs),
        hung=sum(r.hung for r in runs),
        leaked=sum(r.leaked for r in runs),
        zombies=sum(r.zombies for r in runs),
        refused=sum(r.refused for r in runs),
        peak=max(r.peak for r in runs),
        errors=dict(errors),
        jobs=[job for r in runs for job in r.jobs],
        repeats=len(runs),
    )


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    def handler(_signum: int, _frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run(args: argparse.Namespace, params: Params) -> dict[str, Any]:
    started = time.monotonic()
    children = Children()
    subreaper = children.become_subreaper()
    workdir = Path(tempfile.mkdtemp(prefix="sbc-", dir="/tmp"))  # short: a socket lives here
    parent: PidsCgroup | None = None
    daemon: Daemon | None = None
    rows: list[Row] = []
    budget_overrides = {
        k: v
        for k, v in (
            ("reserve_tasks", args.reserve_tasks),
            ("reserve_percent", args.reserve_percent),
            ("cpu_cap", args.cpu_cap),
            ("burst_window", args.burst_window),
        )
        if v is not None
    }
    if args.no_cpu_pressure:  # the CPUs alone decide, not the host's other load
        budget_overrides["pressure"] = {"cpu_high": "off", "cpu_extreme": "off"}
    demand: int | None = args.demand
    seq_wall: float | None = None
    try:
        parent = PidsCgroup(PIDS_V1 / f"sbbench-{uuid.uuid4().hex[:10]}")
        if "budget" in args.modes:
            daemon = Daemon(workdir, parent.cgroup_path, budget_overrides, children)
        socket_path = daemon.socket if daemon is not None else None
        daemon_pid = daemon.proc.pid if daemon is not None else None

        def timeout() -> float:
            if args.hang_timeout is not None:
                return float(args.hang_timeout)
            return 3 * (seq_wall or estimate_sequential_wall(params)) + 30

        def cell(name: str, pids_max: int | None, mode: str) -> Row:
            assert parent is not None
            row = Cell(
                name,
                pids_max,
                mode,
                params=params,
                parent=parent,
                children=children,
                socket_path=socket_path,
                daemon_pid=daemon_pid,
                hang_timeout=timeout(),
                workdir=workdir,
            ).run()
            log(
                f"{name:>7} pids.max={pids_max or 'max':<4} {mode:<10} done {row.done}/"
                f"{row.tasks} hung {row.hung} leaked {row.leaked} wall {row.wall_s:.1f}s "
                f"cpu {row.cpu_s:.1f}s bg {row.background_cpu_pct:.0f}% "
                f"{row.tasks_per_s:.2f} tasks/s  {row.notes}"
            )
            return row

        limited = any(CELL_FRACTION[c] is not None for c in args.cells)
        if (
            limited
            and demand is None
            and ("none" not in args.cells or "unguarded" not in args.modes)
        ):
            demand = cell("demand", None, "unguarded").peak  # measured, not reported
        runs: dict[tuple[str, str], list[Row]] = {}
        repeats = args.alternate or args.repeat
        for name, mode in plan(args.cells, args.modes, repeats, bool(args.alternate)):
            fraction = CELL_FRACTION[name]
            pids_max: int | None = None
            if fraction is not None:
                if demand is None:
                    raise RuntimeError("no unguarded demand measured before a limited cell")
                pids_max = max(1, round(demand * fraction))
            if args.settle > 0:
                time.sleep(args.settle)
            row = cell(name, pids_max, mode)
            runs.setdefault((name, mode), []).append(row)
            if mode == "sequential" and seq_wall is None:
                seq_wall = row.wall_s
            if name == "none" and mode == "unguarded" and demand is None:
                demand = row.peak
        check_values([r for group in runs.values() for r in group], params)  # per round
        rows = [merge(group) for group in runs.values()]
        daemon_events = daemon.events() if daemon is not None else Counter()
    finally:
        for proc in list(children.procs.values()):
            if daemon is None or proc is not daemon.proc:
                kill_tree(proc.pid)
        if parent is not None:
            parent.remove(children)
        if daemon is not None:
            daemon.stop()
        children.reap()
        shutil.rmtree(workdir, ignore_errors=True)
    check_values(rows, params)
    pairs: dict[str, tuple[str, Paired]] = {}
    for name in args.cells:
        cell_rows = [r for r in rows if r.cell == name]
        others = [r.tasks_per_s for r in cell_rows if r.mode != "budget"]
        if args.alternate:
            pairs[name] = pair_rounds(runs, name)
        for r in cell_rows:
            if r.mode == "budget" and args.alternate:
                r.ratio = pairs[name][1].median if pairs[name][1].rounds else None
            elif r.mode == "budget" and others and max(others) > 0:
                r.ratio = r.tasks_per_s / max(others)
    return {
        "params": asdict(params),
        "modes": args.modes,
        "cells": args.cells,
        "demand_peak_pids": demand,
        "hang_timeout_s": round(timeout(), 1),
        "daemon_budget": {"cgroups": ["/<unique>"], **budget_overrides} if daemon else None,
        "daemon_events": dict(daemon_events),
        "subreaper": subreaper,
        "repeat": args.repeat,
        "settle_s": args.settle,
        "run_time_s": round(time.monotonic() - started, 1),
        "rows": [{k: v for k, v in asdict(r).items() if k != "jobs"} for r in rows],
        "alternate": args.alternate,
        "target": args.target,
        "paired": {
            c: {"baseline": mode, **asdict(p), "rounds": p.rounds} for c, (mode, p) in pairs.items()
        },
        "rounds": {c: round_report(runs, c) for c in pairs},
    }


def verdict(report: dict[str, Any]) -> list[str]:
    budget = [r for r in report["rows"] if r["mode"] == "budget"]
    lines = []
    for r in budget:
        misses = [
            what
            for what, bad in (
                ("failures", r["failed"]),
                ("hangs", r["hung"]),
                ("leaks", r["leaked"]),
                ("wrong values", r["bad"]),
                (
                    f"tasks/s ratio {r['ratio'] or 0:.2f} < {report['target']}",
                    r["ratio"] is not None and r["ratio"] < report["target"],
                ),
            )
            if bad
        ]
        line = f"  {r['cell']}: " + ("met" if not misses else "MISSED: " + ", ".join(misses))
        others = [o for o in report["rows"] if o["cell"] == r["cell"] and o["mode"] != "budget"]
        best = max(others, key=lambda o: o["tasks_per_s"], default=None)
        if best is not None and max(r["background_cpu_pct"], best["background_cpu_pct"]) > NOISY:
            line += (
                f" (noisy: the rest of the host used {r['background_cpu_pct']:.0f}% of the CPUs"
                f" during budget, {best['background_cpu_pct']:.0f}% during {best['mode']})"
            )
        lines.append(line)
    return lines


def print_table(report: dict[str, Any], modes: list[str]) -> None:
    header = (
        f"{'cell':<8}{'pids.max':>8}  {'mode':<10}{'done':>8}{'failed':>7}{'hung':>5}"
        f"{'leaked':>7}{'zomb':>5}{'refused':>8}{'peak':>5}{'wall s':>7}{'cpu s':>6}"
        f"{'bg%':>4}{'tasks/s':>8}"
        f"{'budget/best':>12}  {'values':<7}notes"
    )
    print(header)
    print("-" * len(header))
    for name in report["cells"]:
        for mode in modes:
            for r in (r for r in report["rows"] if r["cell"] == name and r["mode"] == mode):
                ratio = f"{r['ratio']:.2f}" if r["ratio"] is not None else ""
                print(
                    f"{name:<8}{r['pids_max'] or 'max':>8}  {mode:<10}"
                    f"{r['done']:>4}/{r['tasks']:<3}{r['failed']:>7}{r['hung']:>5}"
                    f"{r['leaked']:>7}{r['zombies']:>5}{r['refused']:>8}{r['peak']:>5}"
                    f"{r['wall_s']:>7.1f}{r['cpu_s']:>6.1f}{r['background_cpu_pct']:>4.0f}"
                    f"{r['tasks_per_s']:>8.2f}{ratio:>12}  "
                    f"{'ok' if not r['bad'] else str(r['bad']) + ' bad':<7}{r['notes']}"
                )
    p = report["params"]
    print(
        f"\nK={p['jobs']} jobs x {p['tasks']} tasks x {p['samples']} samples "
        f"({p['min_ms']:g}-{p['max_ms']:g} ms planned), W={p['workers']}; unguarded demand "
        f"(peak pids.current, no limit) {report['demand_peak_pids']}; hang deadline "
        f"{report['hang_timeout_s']}s; daemon budget {report['daemon_budget']}; "
        + (
            f"alternating {report['alternate']} rounds (a row: safety summed, tasks/s the "
            "fastest round, budget/best the rounds' median)"
            if report["alternate"]
            else f"repeat {report['repeat']}"
        )
        + f", settle {report['settle_s']:g}s; "
        f"run time {report['run_time_s']}s"
    )
    print(
        "zomb: orphans reaped by this benchmark (zombies under this PID 1); refused: "
        "pids.events max; peak: pids.peak; cpu s: CPU of the cell's processes; bg%: CPU the "
        "rest of the host used meanwhile"
    )
    if report["alternate"]:
        print_rounds(report)
    print(
        f"target: budget with 0 failed, 0 hung, 0 leaked and >= {report['target']} of the best "
        "other mode's tasks/s in every cell"
        + (" (the median of the rounds' paired ratios)" if report["alternate"] else "")
    )
    for line in verdict(report):
        print(line)


def print_rounds(report: dict[str, Any]) -> None:
    """Each round's tasks/s per mode, budget over the best other, and where the jobs'
    time went (means over the jobs, seconds from the cell's start; the slowest grant)."""
    for name, rounds in report["rounds"].items():
        print(f"\n{name}: rounds in the order run")
        for rnd in rounds:
            modes = rnd["modes"]
            base = modes.get(report["paired"][name]["baseline"], {}).get("tasks_per_s", 0.0)
            ratio = modes["budget"]["tasks_per_s"] / base if "budget" in modes and base else 0
            print(
                f"  round {rnd['round']}: "
                + ", ".join(
                    f"{m} {modes[m]['tasks_per_s']:.2f} tasks/s ({modes[m]['wall_s']:.2f} s, "
                    f"bg {modes[m]['background_cpu_pct']:.0f}%, load {modes[m]['load']:.1f})"
                    for m in rnd["order"]
                )
                + (f"; budget/{report['paired'][name]['baseline']} {ratio:.3f}" if ratio else "")
            )
            for m in rnd["order"]:
                print(f"    {m:<10} {phases(modes[m]['timelines'])}")
        p = report["paired"][name]
        print(
            f"{name}: budget / {p['baseline']} (the best other mode's median), paired per round:"
            f" median {p['median']:.3f} "
            f"({p['low']:.3f}-{p['high']:.3f}), {p['rounds']} rounds"
        )


def phases(timelines: list[dict[str, float]]) -> str:
    """The jobs' mean seconds from the cell's start to each mark, the slowest in brackets."""
    parts = []
    for key in ("started", "granted", "first", "last", "released", "exit"):
        seen = [t[key] for t in timelines if key in t]
        if seen:
            parts.append(f"{key} {sum(seen) / len(seen):.2f} [{max(seen):.2f}]")
    return ", ".join(parts)


def log(message: str) -> None:
    sys.stderr.write(message + "\n")
    sys.stderr.flush()


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--jobs", type=int, default=8, help="K: jobs running at once")
    p.add_argument("--tasks", type=int, default=6, help="tasks per job")
    p.add_argument("--samples", type=int, default=4, help="samples per task")
    p.add_argument("--workers", type=int, default=2, help="W: pool size each job wants")
    p.add_argument("--min-ms", type=float, default=50.0)
    p.add_argument("--max-ms", type=float, default=200.0)
    p.add_argument("--seed", type=int, default=0, help="seed of job 0 (job j: seed + j)")
    p.add_argument(
        "--hang-timeout",
        type=float,
        default=None,
        metavar="S",
        help="a job still running S s after its cell started is hung "
        "(default: 3 x the sequential cell's wall time + 30)",
    )
    p.add_argument("--cells", default=",".join(CELLS), help="among none,half,quarter")
    p.add_argument("--modes", default=",".join(MODES), help="among " + ",".join(MODES))
    p.add_argument(
        "--demand",
        type=int,
        default=None,
        metavar="PIDS",
        help="unguarded demand to take as given instead of measuring it",
    )
    p.add_argument("--reserve-tasks", type=int, default=None, help="daemon budget override")
    p.add_argument("--reserve-percent", type=float, default=None, help="daemon budget override")
    p.add_argument("--cpu-cap", type=float, default=None, help="daemon budget override")
    p.add_argument(
        "--burst-window",
        type=float,
        default=None,
        metavar="S",
        help="daemon budget override (0: off; the issue-24 case: --jobs 4 --workers 3)",
    )
    p.add_argument(
        "--no-cpu-pressure",
        action="store_true",
        help="turn the daemon's CPU pressure levels off: on a host busy with other work, "
        "PSI would make every grant sequential and hide what the budget decides",
    )
    p.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="runs of every cell; failures, hangs and leaks are summed, tasks/s is the best",
    )
    p.add_argument(
        "--settle",
        type=float,
        default=0.0,
        metavar="S",
        help="idle seconds before each cell (lets CPU pressure decay: the daemon reads PSI)",
    )
    p.add_argument(
        "--alternate",
        type=int,
        default=0,
        metavar="N",
        help="N rounds of every mode, every second round in the reverse order (ABBA); the "
        "budget's ratio is the median of each round's budget over that round's figure of "
        "the best other mode, with its range and the rounds in --json (instead of --repeat)",
    )
    p.add_argument(
        "--target",
        type=float,
        default=TARGET_RATIO,
        help="the budget's goal, of the best other mode's tasks/s (issue 24's 4-job case: 0.97)",
    )
    p.add_argument("--json", action="store_true", help="print the report as JSON instead")
    return p


def main() -> int:
    args = build_parser().parse_args()
    args.cells = [c.strip() for c in args.cells.split(",") if c.strip()]
    args.modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = sorted(set(args.cells) - set(CELLS)) + sorted(set(args.modes) - set(MODES))
    if unknown:
        build_parser().error(f"unknown cell or mode: {', '.join(unknown)}")
    if os.geteuid() != 0 or not (PIDS_V1 / "cgroup.procs").exists():
        log("needs root and the cgroup v1 pids controller at /sys/fs/cgroup/pids")
        return 2
    params = Params(
        args.jobs, args.tasks, args.samples, args.workers, args.min_ms, args.max_ms, args.seed
    )
    sys.path.insert(0, str(REPO))  # benchmarks.contention_job, for the reference checksums
    with sigterm_as_interrupt():
        report = run(args, params)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_table(report, args.modes)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
