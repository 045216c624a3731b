"""Memory beside tasks: jobs whose processes hold data, a memory cgroup limit, its OOM
killer, and the budget charging memory_per_slot or each job's learned worker size.

The shape is benchmarks/memory_proof.py's: each job runs `tasks` tasks; every process
that runs a task (a loky worker, or the job itself when it runs sequential) first
allocates and writes `mib` MiB (a step at a time, as the kernel faults pages in), kept
for its life, and each task then takes `cpu_ms` of CPU and waits `io_ms`. Processes
have a resident size: their interpreter's (`Mem`) and the data they wrote; the cgroup is
charged that less the interpreter's shared file pages, which the cgroup that first read
them was charged. An allocation that would take the cgroup past its limit has the OOM
killer end the process with the largest resident size there (the allocator included),
as the kernel's memory cgroup does; the victim's pages are freed by its exit, and
allocations wait for that before the OOM killer ends another.
Each process pays its start and its exit in CPU (`Mem`, measured by
benchmarks/process_costs.py): a job its interpreter and its mode's imports, a worker its
spawn, an exit the pages it frees; a pool its job shuts down has its workers exit
together and the job waits for the last.

What a kill does, as benchmarks/memory_proof.py saw it:
- a loky worker of a plain or hand-sized pool: the pool is broken
  (TerminatedWorkerError), every task of the job not done yet fails. As loky does it
  (benchmarks/loky_broken.py): once the victim's exit is done loky reads its exit code
  (`Mem.broken_notice_s`), the pool's other workers working on meanwhile, then kills
  them; they exit, and the job shuts down and exits (`Mem.broken_cpu`);
- a job's own process: the job is gone, its tasks not done fail, its workers exit;
- a worker of the budget executor's pool: the pool is broken and the executor falls back
  to sequential (the real one tries a thread pool first: one GIL, the data once in the
  job's process; sequential is the same memory) and runs the tasks left; the tasks in
  flight are lost (they fail).

The budget is the project's real BudgetLedger, fed a HostSample every `sample_interval`
whose memory limit is the cgroup's (limit, usage) and whose trees are the jobs' task
counts, with what a scan sees the working processes hold (a pool's workers, else the
job's own process): as in the daemon, memory not written yet is charged until then
(`budget.memory_unwritten`). The executor here follows the grant between tasks (renewing at most
every second), growing or shrinking its pool once the tasks in flight are done. The
daemon's learning (daemon/workersizes.py) is modelled by what it records: each job's
largest worker resident size seen at a scan, given to the ledger (`learn`) as the scans
see it, and its own process's largest size while it ran its tasks, once its run ends,
where no pool's figure counts (`figures`); `learned` carries the figures from an
earlier run. The daemon reads the kernel's report of each OOM kill
(daemon/oomkills.py): the victim's job alone has its run judged cut short, and a victim
that is a worker of its pool (or its own process running its tasks, or holding a pool
after it ran them) teaches it the victim's resident size at the kill: what it held, and
for the allocator what it wrote of its data until the cgroup was full
(`MemHost.kmsg` False: the daemon cannot read the kernel's log, and every job live at a
kill has its run judged, as the memory cgroups' oom_kill counts tell no more).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Generator
from dataclasses import dataclass, field

from benchmarks.sim.engine import Cpu, Kernel, Proc, ProcGen, Signal, Sleep, Step, Wait
from benchmarks.sim.model import GIB, MIB, default_budget
from supervisord_batt.budget.ledger import BudgetLedger
from supervisord_batt.budget.records import LeaseError, Request
from supervisord_batt.client.leases import held_sleep
from supervisord_batt.daemon.workersizes import KILL_MARGIN
from supervisord_batt.host.sample import HostSample, Limit

MODES = ("sequential", "hand", "plain", "budget")
CGROUP = "/simmem"
UID = 1000


@dataclass(frozen=True)
class Mem:
    """What processes cost (CPU seconds, bytes): measured on this machine, see
    docs/SIMULATION.md (Memory)."""

    # the job's interpreter and imports, and one loky worker more in its pool
    # (benchmarks/process_costs.py; docs/SIMULATION.md, Memory, has why these and not
    # the task model's 0.37 and 0.287, which stood in for a loaded host)
    job_start_cpu: float = 0.039
    worker_spawn_cpu: float = 0.106
    # a process's exit: its interpreter's, and freeing the pages it holds
    # (benchmarks/process_costs.py: 5 ms holding nothing, 30 ms holding 400 MiB)
    exit_cpu: float = 0.005
    exit_cpu_per_gib: float = 0.06
    # what a job's mode adds to its start and exit (the same script, medians of 11):
    # loky's import for a pool (33 ms); the client's import, with psutil loaded by its
    # executor (42 ms; 114 ms before the client imported structlog and psutil lazily,
    # as in the kept memory_proof run), and its modules torn down at exit (5 ms; 19 ms)
    pool_start_cpu: float = 0.033
    client_start_cpu: float = 0.042
    client_exit_cpu: float = 0.005
    # a pool's two resource trackers (loky's, multiprocessing's): their interpreters'
    # start and imports, spent beside the job (benchmarks/loky_broken.py, median of 40)
    tracker_cpu: float = 0.128
    touch_cpu_per_gib: float = 0.53  # writing 1 GiB of new pages (page faults)
    # the kernel faults a writer's pages in one by one: the model writes its data in
    # steps of this many bytes, each charged once its CPU is spent
    write_step: int = 16 * MIB
    job_rss: int = 30 * MIB  # a job's interpreter with the client imported
    # a plain or hand-sized job's, loky imported and its pool running (/proc/PID/status
    # of a live one: VmRSS 20 MiB, of which RssAnon 13, RssFile 7)
    loky_job_rss: int = 20 * MIB
    worker_rss: int = 19 * MIB  # a loky worker before its data
    tracker_rss: int = 33 * MIB  # loky's and multiprocessing's resource trackers
    # of those, the interpreter's shared file pages (RssFile in /proc/PID/status): a
    # memory cgroup charges a file page once, to the cgroup that first read it, so these
    # count in a process's resident size (the OOM killer's choice, what a scan sees) but
    # not in the cgroup's usage
    job_file: int = 7 * MIB
    worker_file: int = 7 * MIB
    tracker_file: int = 13 * MIB  # 7 and 6
    # a loky pool whose worker was killed (benchmarks/loky_broken.py): once the victim's
    # exit is done loky reads its exit code, at once (11 of 20) or after two 50 ms
    # sleeps (9 of 20: loky looked before the exit code was there), 45 ms on average;
    # its other workers work on until then. Then it kills them, and the job fails its
    # futures, shuts the pool down and exits: `broken_cpu` of the job's from the kill to
    # its exit (its threads', its own exit included; median of 20)
    broken_notice_s: float = 0.045
    broken_cpu: float = 0.021

    def exit_s(self, rss: int) -> float:
        """A process's exit holding `rss` bytes: the interpreter's, the pages it frees."""
        return self.exit_cpu + self.exit_cpu_per_gib * rss / GIB


@dataclass(frozen=True)
class JobSpec:
    tasks: int = 16
    workers: int = 3  # the pool the job wants
    mib: int = 400
    cpu_ms: float = 40.0
    io_ms: float = 160.0
    declared: int = 0  # bytes a worker, as its operator declared it (0: not declared)


@dataclass(frozen=True)
class MemHost:
    cores: float = 2.0
    limit: int = 2552 * MIB  # the memory cgroup's
    cpu_cap: int | None = None  # the daemon's budget.cpu_cap; None: the cores
    memory_per_slot: int = 512 * MIB
    learn: bool = True  # the daemon learns each job's worker size from its scans
    kmsg: bool = True  # ... and from the kernel's OOM-kill reports (daemon/oomkills.py)
    sample_interval: float = 1.0
    scan_interval: float = 1.0  # the daemon's default is 10 s: runs here last 5-11 s
    others: float = 0.0  # threads the host's other programs keep runnable (a measured run's)
    # other sessions with a runnable process, on average (a measured run's; 0: not known).
    # Given, the CPUs are shared among sessions first, as this kernel does (autogroup):
    # the run's processes are one session, each of the others one more, busy alone
    sessions: float = 0.0


@dataclass
class MemResult:
    mode: str
    done: int
    failed: int
    oom_kills: int
    wall_s: float
    peak: int
    grants: list[str] = field(default_factory=list)

    @property
    def tasks_per_s(self) -> float:
        return self.done / self.wall_s if self.wall_s > 0 else 0.0


@dataclass(eq=False)
class Box:
    """One process of a job: its resident bytes and what ends with it."""

    job: Job
    role: str  # "main", "worker", "tracker"
    rss: int = 0  # its resident size (what the OOM killer and a scan see)
    charged: int = 0  # of it, what is charged to the cgroup (not shared file pages)
    data: bool = False  # has written its data
    proc: Proc | None = None
    pool: Pool | None = None
    alive: bool = True


@dataclass(eq=False)
class Job:
    index: int
    spec: JobSpec
    done: int = 0
    failed: int = 0
    ended: float | None = None
    main: Box | None = None
    lease: str | None = None
    pool: Pool | None = None
    broken: bool = False  # its plain pool broke: loky's shutdown and exit (Mem.broken_*)
    boxes: list[Box] = field(default_factory=list)  # its processes, all gone when it ends


class Pool:
    """A loky pool of n workers over a queue of task indices."""

    def __init__(self, sim: MemSim, job: Job, n: int) -> None:
        self.sim, self.job, self.n = sim, job, n
        self.queue: deque[int] = deque()
        self.more, self.progress = Signal(), Signal()
        self.workers: list[Box] = []
        self.inflight = 0
        self.broken = False
        self.dead: Signal | None = None  # a killed worker's exit, done or not (plain loky)

    def start(self) -> Generator[Step, None, None]:
        for _ in range(self.n):
            box = Box(self.job, "worker", pool=self)
            self.workers.append(box)
            box.proc = self.sim.kernel.start(self._serve(box), f"job{self.job.index}:worker")
            yield Cpu(0.01)  # the job's thread starting one process

    def _serve(self, box: Box) -> ProcGen:
        sim, spec = self.sim, self.job.spec
        yield Cpu(sim.mem.worker_spawn_cpu)
        if not (yield from sim.charge(box, sim.mem.worker_rss, sim.mem.worker_file)):
            return
        while True:
            while self.queue:
                self.queue.popleft()
                self.inflight += 1
                if not (yield from sim.run_task(box, spec)):
                    return
                self.inflight -= 1
                if not self.broken:  # once loky is broken a result is not the job's
                    self.job.done += 1
                sim.kernel.fire(self.progress)
            if self.more.fired:
                self.more = Signal()
            yield Wait(self.more)

    def submit(self, task: int) -> None:
        self.queue.append(task)
        self.sim.kernel.fire(self.more)

    def wait(self, timeout: float | None = None) -> Wait:
        if self.progress.fired:
            self.progress = Signal()
        return Wait(self.progress, timeout)

    def close(self) -> None:
        for box in self.workers:
            self.sim.free(box)
        self.workers = []

    def shutdown(self) -> Generator[Step, None, None]:
        """A pool closed by its job (loky's shutdown(wait=True)): its workers exit
        together, each freeing what it holds, and the job waits for the last."""
        exits = [
            self.sim.kernel.start(_exit(self.sim.mem.exit_s(b.rss)), "exit")
            for b in self.workers
            if b.alive
        ]
        self.close()
        for proc in exits:
            yield Wait(proc.done)


def _exit(cpu: float) -> ProcGen:
    """A process that spends `cpu` and ends (an exit, a resource tracker's start)."""
    yield Cpu(cpu)


def _busy(share: float, period: float = 0.05) -> ProcGen:
    """Another program: busy `share` of the time, forever."""
    while True:
        yield Cpu(period * share)
        yield Sleep(period * (1 - share))


class MemSim:
    """One run of jobs in one memory cgroup, under one mode."""

    def __init__(
        self,
        jobs: list[JobSpec],
        mode: str,
        host: MemHost,
        *,
        mem: Mem = Mem(),
        learned: dict[str, int] | None = None,
        margins: dict[str, int] | None = None,
        hand: int = 1,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}")
        self.mode, self.host, self.mem, self.hand = mode, host, mem, hand
        self.kernel = Kernel(host.cores, per_group=host.sessions > 0)
        self.jobs = [Job(i, spec) for i, spec in enumerate(jobs)]
        self.boxes: list[Box] = []
        self.dying: dict[Box, Proc] = {}  # OOM victims' exits not done yet, in order
        self.used = self.peak = self.oom_kills = 0
        self.learned: dict[str, int] = dict(learned or {})
        # the least a job is charged since an OOM kill taught it (workersizes'
        # KILL_MARGIN times what the victim held), until a run charged that ends uncut
        self.margins: dict[str, int] = dict(margins or {})
        # the jobs whose margin was set in this run: sized before it, their charge is not
        # raised to it (workersizes' `_pinned`)
        self.pinned: set[str] = set()
        # the jobs' own processes while they ran their tasks (workersizes): the figure
        # where no pool's counts
        self.own: dict[str, int] = {}
        # what this run saw of each job (`learned`'s new peaks), the most bytes a worker
        # of it was charged, and the jobs live when an OOM kill happened (workersizes: a
        # run cut short teaches no size below its charge)
        self.seen: dict[str, int] = {}
        self.charged: dict[str, int] = {}
        self.hit: set[str] = set()
        # the last scan's time and what it saw (trees, pools' and own processes' bytes by
        # lease), given to the ledger at each sample until the next (the daemon's `_scan`)
        self.last_scan = -math.inf
        self.scanned: tuple[dict[str, int], dict[str, int], dict[str, int]] = ({}, {}, {})
        self.grants: list[str] = []
        self.ledger: BudgetLedger | None = None
        if mode == "budget":
            budget = default_budget(
                cgroups=(CGROUP,),
                cpu_cap=host.cpu_cap,
                memory_per_slot=host.memory_per_slot,
                max_per_lease=64,
                # the memory reserve and the burst window as shipped, as the real run this
                # model is checked against
            )
            self.ledger = BudgetLedger(budget, lambda: self.kernel.now, self.sample())
            self._teach()

    # -- memory -----------------------------------------------------------------------------

    def charge(self, box: Box, nbytes: int, shared: int = 0) -> Generator[Step, None, bool]:
        """Add `nbytes` to the box's process, of which `shared` are file pages charged
        elsewhere. Where the charge does not fit, the OOM killer ends the largest process
        (`oom`) and the allocation waits until the victim's exit has freed its pages: the
        kernel ends no other process while a victim is still exiting. False: the
        allocating process itself was killed (or ended meanwhile)."""
        if box not in self.boxes:
            self.boxes.append(box)
            box.job.boxes.append(box)
        charge = nbytes - shared
        while self.used + charge > self.host.limit:
            if not self.dying and self.oom(box, nbytes) is box:
                return False
            yield Wait(next(iter(self.dying.values())).done)
            if not box.alive:
                return False
        box.rss += nbytes
        box.charged += charge
        self.used += charge
        self.peak = max(self.peak, self.used)
        return True

    def oom(self, box: Box, nbytes: int) -> Box:
        """The OOM killer for `box`'s allocation of `nbytes`: the largest live process
        (the allocator counted with it) is killed."""
        live = (b for b in self.boxes if b.alive)
        victim = max(live, key=lambda b: b.rss + (nbytes if b is box else 0))
        self.oom_kills += 1
        # the allocator had written its data until the cgroup was full
        held = victim.rss + (max(0, self.host.limit - self.used) if victim is box else 0)
        self.reported(victim, held)
        self.kill(victim)
        return victim

    def free(self, box: Box) -> None:
        if box.alive:
            box.alive = False
            self.used -= box.charged
            if box.proc is not None:
                self.kernel.kill(box.proc)

    def kill(self, box: Box) -> None:
        """The OOM killer's SIGKILL, and what it breaks (see the module's docstring). The
        victim's pages are freed by its own exit, which takes the CPU freeing them takes
        (the kernel's OOM reaper waits 2 s for that before it steps in)."""
        job = box.job
        box.alive = False
        if box.proc is not None:
            self.kernel.kill(box.proc)
        dying = self.dying[box] = self.kernel.start(self._dying(box), "exit")
        if box.role == "main":
            self.end(job)
        elif box.pool is not None and not box.pool.broken:
            pool = box.pool
            pool.broken = True
            if self.mode == "budget":  # the executor kills the pool's workers by pid
                pool.close()
                job.failed += pool.inflight
            else:  # plain loky: sees the death once the victim's exit is done (`_broken`)
                pool.dead = dying.done
            self.kernel.fire(pool.progress)

    def _dying(self, box: Box) -> ProcGen:
        """An OOM victim's exit: its CPU, then its pages uncharged."""
        yield Cpu(self.mem.exit_s(box.rss))
        self.used -= box.charged
        box.charged = 0
        self.dying.pop(box, None)

    def end(self, job: Job) -> None:
        if job.ended is not None:
            return
        job.ended = self.kernel.now
        job.failed = job.spec.tasks - job.done
        name = f"job{job.index}"
        margin = self.margins.get(name, 0)
        size = max(self.seen.get(name, 0), self.own.get(name, 0))  # seen at its data
        uncut = margin > 0 and name not in self.hit and size >= margin // KILL_MARGIN
        if uncut and self.charged.get(name, 0) >= margin:
            del self.margins[name]  # a run charged the margin ended uncut: its size now
            if name in self.own and name in self.learned:  # its tasks' whole data, where
                # its pool's figure was a victim's (workersizes' `_observe_own`)
                self.seen[name] = max(self.seen.get(name, 0), self.own[name])
        for box in job.boxes:
            self.free(box)
        if self.ledger is not None and job.lease is not None:
            self.ledger.release(job.lease)
            job.lease = None

    def run_task(self, box: Box, spec: JobSpec) -> Generator[Step, None, bool]:
        """One task in the box's process: its data first (once). False: it was killed."""
        left = spec.mib * MIB
        while not box.data and left > 0:  # its data, written a step at a time
            step = min(left, self.mem.write_step)
            yield Cpu(self.mem.touch_cpu_per_gib * step / GIB)
            if not box.alive or not (yield from self.charge(box, step)):
                return False
            left -= step
        box.data = True
        yield Cpu(spec.cpu_ms / 1000)
        yield Sleep(spec.io_ms / 1000)
        return box.alive

    # -- the daemon -------------------------------------------------------------------------

    def sample(self) -> HostSample:
        big = 1 << 40
        return HostSample(
            taken_at=self.kernel.now,
            wall_time=self.kernel.now,
            threads_total=1000,
            threads_max=big,
            pid_max=4_194_304,
            cgroups=(),
            users=(),
            mem_available_bytes=big,
            mem_total_bytes=big,
            cpus=float(self.host.cores),
            psi=None,
            limits=(Limit("threads-max", "threads-max", None, big, 1000),),
            memory_limits=(
                Limit(f"memory:{CGROUP}", "memory", CGROUP, self.host.limit, self.used),
            ),
        )

    def _tick(self) -> None:
        assert self.ledger is not None
        scan = self.kernel.now - self.last_scan >= self.host.scan_interval - 1e-9
        if scan:  # the daemon's slow pass: between two, the ledger is given the last one's
            self.last_scan = self.kernel.now
            self.scanned = self._scan()
        self.ledger.update(self.sample(), *self.scanned)
        if scan and self.host.learn:
            self._learn(self.scanned[2])
        if any(j.ended is None for j in self.jobs):
            self.kernel.after(self.host.sample_interval, self._tick)

    def _scan(self) -> tuple[dict[str, int], dict[str, int], dict[str, int]]:
        """What a scan sees (the daemon's `_scan`), by lease: the trees' tasks, what a
        pool's live workers hold, else the job's own process, which runs its tasks."""
        trees = {j.lease: 3 + (len(j.pool.workers) if j.pool else 0) for j in self.jobs if j.lease}
        pools, holders = {}, {}
        for j in self.jobs:
            if j.lease is None:
                continue
            if j.pool is not None:
                pools[j.lease] = sum(b.rss for b in j.pool.workers if b.alive)
            elif j.main is not None and j.main.alive:
                holders[j.lease] = j.main.rss
        return trees, pools, holders

    def _learn(self, holders: dict[str, int]) -> None:
        """What the daemon learns at a scan (its `_learn`), `holders` the own processes'."""
        assert self.ledger is not None
        for job in self.jobs:
            name = f"job{job.index}"
            if job.lease is not None and name not in self.pinned:
                charge = self.ledger.worker_bytes(name, UID, job.spec.declared)
                self.charged[name] = max(charge, self.charged.get(name, 0))
            if job.pool is not None and job.lease is not None:
                sizes = [b.rss for b in job.pool.workers if b.alive]
                if sizes:  # a scan sees live workers only, their data written or not
                    self.seen[name] = max(self.seen.get(name, 0), *sizes)
            elif job.lease in holders:
                self.own[name] = max(self.own.get(name, 0), holders[job.lease])
        self._teach()

    def reported(self, victim: Box, held: int) -> None:
        """An OOM kill as the daemon sees it: with the kernel's report (`MemHost.kmsg`),
        the victim's job's run alone is judged cut short, and a worker of its pool, or its
        own process running its tasks, teaches it `held` (workersizes' `killed`); else
        every job live then has its run judged."""
        if not self.host.kmsg:
            self.hit.update(f"job{j.index}" for j in self.jobs if j.lease is not None)
            return
        job, name = victim.job, f"job{victim.job.index}"
        if not self.host.learn or self.ledger is None or job.lease is None:
            return
        self.hit.add(name)
        if name not in self.pinned:
            charge = self.ledger.worker_bytes(name, UID, job.spec.declared)
            self.charged[name] = max(charge, self.charged.get(name, 0))
        teaches = True
        if victim.role == "worker":
            self.seen[name] = max(self.seen.get(name, 0), held)
        elif victim.role == "main" and (job.pool is None or name in self.own):
            self.own[name] = max(self.own.get(name, 0), held)
        else:
            teaches = False
        if teaches and held >= self.charged[name]:  # killed mid-write: part of its data
            self.margins[name] = max(self.margins.get(name, 0), KILL_MARGIN * held)
            self.pinned.add(name)
        self._teach()

    def _teach(self) -> None:
        if self.host.learn and self.ledger is not None:
            # the jobs' own sizes are taught once their run ends: the next run's
            learned = self._learned()
            for name, margin in self.margins.items():
                learned[name] = max(learned.get(name, 0), margin)
            self.ledger.learn({(name, UID): b for name, b in learned.items()})

    def _teaches(self, name: str, size: int) -> bool:
        """Whether this run's figure of a job counts: not where an OOM kill happened while
        it was live and it is below what its workers were charged (workersizes)."""
        return name not in self.hit or size >= self.charged.get(name, 0)

    def _learned(self) -> dict[str, int]:
        """The figures from runs before, raised by what this run saw where it counts."""
        learned = dict(self.learned)
        for name, size in self.seen.items():
            if self._teaches(name, size):
                learned[name] = max(learned.get(name, 0), size)
        return learned

    @property
    def figures(self) -> dict[str, int]:
        """What the daemon learned of each job: its pool's workers, else its own process."""
        own = {name: b for name, b in self.own.items() if self._teaches(name, b)}
        return {**own, **self._learned()}

    # -- the run ----------------------------------------------------------------------------

    def run(self, deadline: float = 600.0) -> MemResult:
        for job in self.jobs:
            self.kernel.start(self._main(job), f"job{job.index}:main")
        if self.ledger is not None:
            self.kernel.after(self.host.sample_interval / 2, self._tick)
        if self.host.sessions > 0:  # each a session of its own, busy its share of the time
            groups = math.ceil(self.host.sessions)
            for g in range(groups):
                self.kernel.start(_busy(self.host.sessions / groups), "others", group=g + 1)
        else:
            hogs = math.ceil(self.host.others)
            for _ in range(hogs):
                self.kernel.start(_busy(self.host.others / hogs), "others")
        self.kernel.run(deadline, stop=lambda: all(j.ended is not None for j in self.jobs))
        for job in self.jobs:
            self.end(job)
        done = sum(j.done for j in self.jobs)
        failed = sum(j.failed for j in self.jobs)
        wall = max(j.ended or deadline for j in self.jobs)
        return MemResult(self.mode, done, failed, self.oom_kills, wall, self.peak, self.grants)

    def _main(self, job: Job) -> ProcGen:
        box = job.main = Box(job, "main")
        mem, client = self.mem, self.mode == "budget"
        pool = mem.pool_start_cpu if self.mode in {"hand", "plain"} else 0.0
        yield Cpu(mem.job_start_cpu + pool + (mem.client_start_cpu if client else 0.0))
        rss = mem.loky_job_rss if pool else mem.job_rss
        if not (yield from self.charge(box, rss, mem.job_file)):
            return
        if self.mode == "sequential":
            yield from self._sequential(job, deque(range(job.spec.tasks)))
        elif self.mode in {"hand", "plain"}:
            yield from self._pool(job, self.hand if self.mode == "hand" else job.spec.workers)
        else:
            yield from self._budget(job)
        if box.alive and not job.broken:  # its exit: the interpreter's, its pages, the client's
            yield Cpu(mem.exit_s(box.rss) + (mem.client_exit_cpu if client else 0.0))
        self.end(job)

    def _sequential(self, job: Job, pending: deque[int]) -> Generator[Step, None, None]:
        assert job.main is not None
        while pending:
            pending.popleft()
            if not (yield from self.run_task(job.main, job.spec)):
                return
            job.done += 1

    def _tracker(self, job: Job) -> Generator[Step, None, bool]:
        self.kernel.start(_exit(self.mem.tracker_cpu), f"job{job.index}:trackers")
        box = Box(job, "tracker")
        return (yield from self.charge(box, self.mem.tracker_rss, self.mem.tracker_file))

    def _pool(self, job: Job, n: int) -> Generator[Step, None, None]:
        if not (yield from self._tracker(job)):
            return
        pool = job.pool = Pool(self, job, n)
        yield from pool.start()
        for task in range(job.spec.tasks):
            pool.submit(task)
        while job.done < job.spec.tasks and pool.dead is None and job.ended is None:
            yield pool.wait()
        if pool.dead is not None:
            yield from self._broken(job, pool, pool.dead)
            return
        yield from pool.shutdown()

    def _broken(self, job: Job, pool: Pool, dead: Signal) -> Generator[Step, None, None]:
        """A plain pool one of whose workers was killed, as loky goes on (Mem.broken_*):
        its other workers work on until loky has the dead one's exit code, then are
        killed and exit, and the job fails its futures, shuts down and exits."""
        yield Wait(dead)
        yield Sleep(self.mem.broken_notice_s)
        yield from pool.shutdown()
        job.broken = True
        yield Cpu(self.mem.broken_cpu)

    def _budget(self, job: Job) -> Generator[Step, None, None]:
        """The client: a lease, then BudgetExecutor.map's loop (see the docstring)."""
        ledger = self.ledger
        assert ledger is not None and job.main is not None
        spec, i = job.spec, job.index
        req = Request(
            f"conn{i}",
            1000 + i,
            UID,
            f"job{i}",
            spec.workers,
            ("process", "sequential"),
            declared_bytes=spec.declared,
        )
        grant = ledger.acquire(req)
        waited = 0.0  # held for a burst: wait it out and renew, as client.leases.acquire
        while (wait := held_sleep(grant.retry_after, waited)) > 0:
            yield Sleep(wait)
            waited += wait
            grant = ledger.renew(grant.lease_id, 0)
        job.lease, renewed = grant.lease_id, self.kernel.now
        self.grants.append(f"{grant.kind}:{grant.workers}")
        kind, size, fallen, tracker = grant.kind, grant.target, False, False
        pending = deque(range(spec.tasks))
        while pending or (job.pool is not None and (job.pool.inflight or job.pool.queue)):
            pool = job.pool
            if pool is not None and pool.broken:  # fall back; the queued tasks are still to do
                pending.extendleft(pool.queue)
                job.pool, pool, fallen = None, None, True
            if job.lease is not None and self.kernel.now - renewed >= 1.0:
                try:
                    g = ledger.renew(job.lease, pool.n if pool is not None else 0)
                    kind, size = g.kind, g.target
                except LeaseError:
                    kind, job.lease = "sequential", None
                renewed = self.kernel.now
            n = 0 if fallen or kind != "process" else size
            if (pool.n if pool is not None else 0) != n:
                if pool is not None and (pool.inflight or pool.queue):
                    yield pool.wait(0.5)  # switch once the tasks in flight are done
                    continue
                if pool is not None:
                    yield from pool.shutdown()
                    job.pool = pool = None
                if n > 0:
                    if not tracker and not (yield from self._tracker(job)):
                        return
                    tracker = True
                    job.pool = pool = Pool(self, job, n)
                    yield from pool.start()
            if pool is None:
                if not pending:  # a pool that broke with nothing queued: all handed out
                    break
                pending.popleft()
                if not (yield from self.run_task(job.main, spec)):
                    return
                job.done += 1
                continue
            while pending and pool.inflight + len(pool.queue) < pool.n:
                pool.submit(pending.popleft())
            yield pool.wait(0.5)
        if job.pool is not None:
            yield from job.pool.shutdown()
