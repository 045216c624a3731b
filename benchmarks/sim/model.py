"""The host, loky pools, the job policies and the daemon, on the engine's processes.

Tasks are kernel tasks (threads + processes) in the jobs' cgroup: every creation is
checked against the task limit at the moment it happens and refused at the limit, as a
pids cgroup does. What a loky pool creates, in order, and where a refusal surfaces, is
docs/FACTS.md: loky's resource tracker (constructor, once per job), multiprocessing's
resource tracker (first submit, once per job), the n workers, the ExecutorManagerThread,
the QueueFeederThread. The two trackers stay until the job exits.

How a refusal ends, per policy (docs/FACTS.md and the measured contention cells):
- a refused feeder thread with loky 3.6 is hang A: the job waits for its results forever
  (until the hang deadline kills it), holding its tasks;
- unguarded and the reused pool: the task (reused: every task left) fails, and what the
  pool had started goes away (the contention cells show no hang there);
- the heuristic: a pool that failed after spawning workers leaves them behind (nothing
  tells them to stop) and the job, busy on its fallback, hangs at exit (hang B);
- the budget executor kills a failed pool's workers by pid and falls back.

The budget policy drives the project's real `BudgetLedger` through its public API: the
daemon feeds it a `HostSample` every sample_interval (trees every scan_interval) and
expires leases; a job acquires at start, its executor renews between tasks (at most every
renew_interval), follows a shrink or a grow once its in-flight tasks are done, and
releases at the end.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from functools import partial

from benchmarks.sim.engine import Cpu, Kernel, Proc, ProcGen, Signal, Sleep, Step, Wait
from supervisord_batt.budget.costs import pool_cost, reserve_for
from supervisord_batt.budget.ledger import BudgetLedger
from supervisord_batt.budget.records import Grant, LeaseError, Request
from supervisord_batt.client.leases import held_sleep
from supervisord_batt.config.loader import DEFAULT_BURST_WINDOW
from supervisord_batt.config.records import DEFAULT_PRESSURE, BudgetConfig
from supervisord_batt.host.sample import HostSample, Limit, Psi
from supervisord_batt.protocol import Kind

POLICIES = ("unguarded", "heuristic", "sequential", "reused", "budget")
CGROUP = "sim"  # the jobs' cgroup as the simulated daemon names it
MIB = 1024 * 1024
GIB = 1024 * MIB
CHAIN = ("process", "thread", "sequential")  # the executor's fallback order


@dataclass(frozen=True)
class Costs:
    """What running Python costs on the host, in CPU seconds (calibrated: see cells.py)."""

    speed: float = 1.0  # CPU seconds per planned second of sample work
    job_start_cpu: float = 0.08  # interpreter start and imports of one job
    worker_spawn_cpu: float = 0.25  # one loky worker: a new interpreter and its imports
    tracker_cpu: float = 0.03  # one resource tracker process
    fork_cpu: float = 0.01  # the job's main thread starting one process (fork + exec)
    job_exit_cpu: float = 0.03  # interpreter teardown: the job's tasks are held until it ends
    process_rss: int = 40 * MIB  # one Python process: a job, a tracker or a worker


@dataclass(frozen=True)
class HostSpec:
    cores: float
    task_limit: int | None  # the jobs' cgroup pids.max; None: no cgroup limit
    mem_total: int
    threads_max: int
    pid_max: int
    other_tasks: int  # tasks outside the jobs' cgroup (system services)
    other_mem: int  # memory used outside the jobs
    cpu_per_user: bool = False  # CPU time shared per user first (`engine.Kernel.per_group`)

    @classmethod
    def vm(cls, cores: int, task_limit: int | None) -> HostSpec:
        """A VM of `cores` cores and 4 GiB a core, kernel defaults for its size."""
        mem = 4 * GIB * cores
        return cls(cores, task_limit, mem, mem // (128 * 1024), 4_194_304, 200 + 10 * cores, GIB)


@dataclass(frozen=True)
class DaemonSpec:
    budget: BudgetConfig
    sample_interval: float = 1.0
    scan_interval: float = 10.0
    renew_interval: float = 1.0  # the executor's
    poll_interval: float = 0.5  # the executor's wait slice
    per_user: bool = False  # each job's lease of its own user's uid; else all of one uid
    # whether the client, held for a burst, waits the grant's retry_after and renews
    # before it starts, as the project's client does (False: it starts sequential and
    # grows at its first renew, as a client before retry_after did)
    waits_held: bool = True


def default_budget(**changes: object) -> BudgetConfig:
    """The shipped defaults (config/loader.py), with `changes`."""
    fields: dict[str, object] = {
        "reserve_tasks": 64,
        "reserve_percent": 5.0,
        "max_per_lease": 8,
        "cpu_cap": None,
        "memory_per_slot": 512 * MIB,
        "lease_ttl": 60.0,
        "cgroups": (CGROUP,),
        "watch_users": (),
        "pressure": DEFAULT_PRESSURE,
        "burst_window": DEFAULT_BURST_WINDOW,
    }
    fields.update(changes)
    return BudgetConfig(**fields)  # type: ignore[arg-type]


@dataclass(frozen=True)
class Background:
    """Tasks in the jobs' cgroup that no budget sees (notebook kernels, other users' tools):
    `steady` threads held from the start, and bursts of `burst` threads arriving at `rate`
    a second (Poisson), each held `hold` seconds. They use no CPU. A refused creation is
    that program's failure (counted apart from the jobs')."""

    steady: int = 0
    burst: int = 0
    rate: float = 0.0
    hold: float = 5.0

    @property
    def active(self) -> bool:
        return self.steady > 0 or (self.burst > 0 and self.rate > 0)


@dataclass(frozen=True)
class Workload:
    """K jobs of T tasks of S samples; a sample's planned time is the demo's (seeded)."""

    jobs: int
    tasks: int = 6
    samples: int = 4
    workers: int = 2  # W: the pool each job wants
    min_ms: float = 50.0
    max_ms: float = 200.0
    seed: int = 0
    arrival_rate: float | None = None  # jobs a second (Poisson); None: all at once
    loky: str = "3.7"  # how a refused feeder thread ends: "3.6" hangs, "3.7" breaks
    background: Background = Background()


def planned_ms(seed: int, task: int, sample: int, lo: float, hi: float) -> float:
    """The planned length of one sample, exactly as supervisord_batt.demo draws it."""
    return random.Random(f"{seed}:{task}:{sample}").uniform(lo, hi)


@dataclass(eq=False)
class Job:
    index: int
    seed: int
    arrival: float
    costs: list[list[float]]  # CPU seconds per sample, per task
    tasks_held: int = 0
    loky_tracker: bool = False
    mp_tracker: bool = False
    done: int = 0  # tasks finished
    failed: int = 0  # tasks that raised, or were left when the job ended or was killed
    started: float | None = None
    ended: float | None = None
    hung: bool = False
    hang_at_exit: bool = False
    procs: list[Proc] = field(default_factory=list)
    processes: int = 0  # processes it holds (memory): main, trackers, workers
    lease: str | None = None
    user: int = 0  # whose job it is (0, 1, ...): its uid is 1000 + user

    @property
    def total(self) -> int:
        return len(self.costs)


@dataclass
class Tally:
    """What the run saw, per event where it matters (the conservation checks)."""

    peak_tasks: int = 0
    refused: int = 0  # creations the task limit refused
    out_of_memory: int = 0  # process creations refused for memory (the OOM killer's victims)
    over_limit: int = 0  # events with more tasks than the limit (never, or the model is wrong)
    over_capacity: int = 0  # budget: events with leased tasks or workers above capacity
    peak_leased_tasks: int = 0
    peak_leased_workers: int = 0
    levels: dict[str, int] = field(default_factory=dict)  # level -> samples at it
    # kind of first grant -> jobs (of a grant held for a burst: the one after the hold)
    grants: dict[str, int] = field(default_factory=dict)
    fallbacks: int = 0
    pools_made: int = 0
    timed_out: int = 0  # jobs still running (not hung) when the run gave up on them
    background_refused: int = 0  # the background's refused creations (of `refused`)


class Sim:
    """One run: a host, its jobs under one policy, and (budget) the daemon."""

    def __init__(
        self,
        host: HostSpec,
        work: Workload,
        policy: str,
        costs: Costs,
        *,
        daemon: DaemonSpec | None = None,
        psi_avg10: float = 0.0,
        daemon_phase: float | None = None,
    ) -> None:
        if policy not in POLICIES:
            raise ValueError(f"unknown policy {policy!r}")
        self.host, self.work, self.policy, self.costs = host, work, policy, costs
        self.kernel = Kernel(host.cores, psi_avg10, per_group=host.cpu_per_user)
        self.tasks = 0  # tasks in the jobs' cgroup now
        self.processes = 0  # processes the jobs hold now (memory)
        self.ended = 0  # jobs that have ended
        self.hanging = 0  # jobs waiting forever (killed at the hang deadline)
        self.others = Job(-1, 0, 0.0, [])  # the background's tasks (Workload.background)
        self.tally = Tally()
        self.jobs = make_jobs(work, costs)
        self.daemon: Daemon | None = None
        if policy == "budget":
            rng = random.Random(f"phase:{work.seed}")
            spec = daemon or DaemonSpec(default_budget())
            phase = rng.uniform(0, spec.sample_interval) if daemon_phase is None else daemon_phase
            self.daemon = Daemon(self, spec, phase)

    # -- tasks ------------------------------------------------------------------------------

    def take(self, job: Job, process: bool = False) -> bool:
        """Create one task for the job, unless the limit refuses it, or (a process) unless
        memory is out. The kernel overcommits and its OOM killer ends a process later; the
        model refuses the newcomer at once, which ends the same way for the job (a pool
        whose worker is killed is broken, its task fails)."""
        limit = self.host.task_limit
        if limit is not None and self.tasks >= limit:
            self.tally.refused += 1
            return False
        if process and self.mem_used() + self.costs.process_rss > self.host.mem_total:
            self.tally.out_of_memory += 1
            return False
        self.tasks += 1
        self.processes += process
        job.tasks_held += 1
        job.processes += process
        self.tally.peak_tasks = max(self.tally.peak_tasks, self.tasks)
        return True

    def give(self, job: Job, n: int, processes: int = 0) -> None:
        self.tasks -= n
        self.processes -= processes
        job.tasks_held -= n
        job.processes -= processes
        assert job.tasks_held >= 0 and self.tasks >= 0, "more tasks given back than taken"

    def start(self, job: Job, gen: ProcGen, name: str) -> Proc:
        proc = self.kernel.start(gen, f"job{job.index}:{name}", group=job.user)
        job.procs.append(proc)
        return proc

    def mem_used(self) -> int:
        """Memory in use: the host's own, and each process's resident set (O(1): it is
        checked at every process creation)."""
        return self.host.other_mem + self.processes * self.costs.process_rss

    def mem_available(self) -> int:
        return max(0, self.host.mem_total - self.mem_used())

    # -- the run ----------------------------------------------------------------------------

    def run(self, deadline: float, give_up: float | None = None) -> None:
        """Run every job to its end. A job that hangs (hang A or B) is killed at `deadline`,
        as contention.py's hang deadline does; one still running at `give_up` (default: the
        deadline, contention.py's rule) is killed there and counted hung too."""
        for job in self.jobs:
            self.kernel.at(job.arrival, partial(self._launch, job))
        if self.daemon is not None:
            self.daemon.begin()
        if self.work.background.active:
            self.kernel.start(self._background(), "background")
        self.kernel.run(max(deadline, give_up or deadline), stop=self._after_event)
        if self.hanging and self.kernel.now < deadline:
            self.kernel.run(deadline)  # the hung jobs hold their tasks until they are killed
        for job in self.jobs:
            if job.ended is None:
                if not job.hung:
                    self.tally.timed_out += 1
                    job.hung = True
                self.end(job, killed=True)

    def _background(self) -> ProcGen:
        bg, owner = self.work.background, self.others
        self._take_many(owner, bg.steady)
        rng = random.Random(f"background:{self.work.seed}")
        while bg.burst > 0 and bg.rate > 0:
            yield Sleep(rng.expovariate(bg.rate))
            self.kernel.start(self._burst(owner, bg), "burst")

    def _burst(self, owner: Job, bg: Background) -> ProcGen:
        got = self._take_many(owner, bg.burst)
        yield Sleep(bg.hold)
        self.give(owner, got)

    def _take_many(self, owner: Job, n: int) -> int:
        got = sum(self.take(owner) for _ in range(n))
        self.tally.background_refused += n - got
        return got

    def hang(self, job: Job) -> None:
        """The job will wait forever from now on (hang A or B)."""
        job.hung = True
        self.hanging += 1

    def _launch(self, job: Job) -> None:
        job.started = self.kernel.now
        if not self.take(job, process=True):  # the job's own process: refused, nothing runs
            job.failed = job.total
            self._ended(job)
            return
        body = POLICY_BODIES[self.policy]
        self.start(job, _job_main(self, job, body), "main")

    def end(self, job: Job, killed: bool = False) -> None:
        """The job's tree is gone (it exited, or was `killed`): every task it held is freed."""
        for proc in job.procs:
            self.kernel.kill(proc)
        if self.daemon is not None and job.lease is not None:
            self.daemon.release(job)
        self.give(job, job.tasks_held, job.processes)
        if killed:  # what it had left never finishes
            job.failed = job.total - job.done
        self._ended(job)

    def _ended(self, job: Job) -> None:
        if job.ended is None:
            job.ended = self.kernel.now
            self.ended += 1

    def _after_event(self) -> bool:
        limit = self.host.task_limit
        if limit is not None and self.tasks > limit:
            self.tally.over_limit += 1
        if self.daemon is not None:
            self.daemon.check_capacity()
        return self.ended + self.hanging >= len(self.jobs)


def make_jobs(work: Workload, costs: Costs) -> list[Job]:
    rng = random.Random(f"arrivals:{work.seed}")
    jobs = []
    t = 0.0
    for j in range(work.jobs):
        if work.arrival_rate is not None and j > 0:
            t += rng.expovariate(work.arrival_rate)
        jobs.append(make_job(work, costs, j, t))
    return jobs


def make_job(work: Workload, costs: Costs, index: int, arrival: float, user: int = 0) -> Job:
    """Job `index` of the workload: its samples' CPU seconds, drawn from its seed."""
    seed = work.seed + index
    per_task = [
        [
            costs.speed * planned_ms(seed, i, s, work.min_ms, work.max_ms) / 1000.0
            for s in range(work.samples)
        ]
        for i in range(work.tasks)
    ]
    return Job(index, seed, arrival, per_task, user=user)


Body = Callable[["Sim", Job], Generator[Step, None, None]]


def _job_main(sim: Sim, job: Job, body: Body) -> ProcGen:
    yield Cpu(sim.costs.job_start_cpu)
    yield from body(sim, job)
    if job.hang_at_exit:  # hang B: multiprocessing joins the orphaned workers forever
        yield from _hang_forever(sim, job)
    yield Cpu(sim.costs.job_exit_cpu)
    sim.end(job)


# -- pools ----------------------------------------------------------------------------------


@dataclass(eq=False)
class Item:
    cost: float
    on_done: Callable[[], None]


class Pool:
    """Workers serving a queue of CPU items: a loky pool (one process per worker) or a
    thread pool (its threads share one GIL: one item runs at a time)."""

    def __init__(self, sim: Sim, job: Job, kind: str, size: int) -> None:
        self.sim, self.job, self.kind, self.size = sim, job, kind, size
        self.queue: deque[Item] = deque()
        self.more = Signal()
        self.progress = Signal()  # fired when an item finishes; replaced by `wait_progress`
        self.workers: list[Proc] = []
        self.tasks = 0  # tasks this pool holds (workers, threads)
        self.processes = 0

    def add_worker(self, startup_cpu: float) -> None:
        proc = self.sim.start(self.job, self._serve(startup_cpu), f"{self.kind} worker")
        self.workers.append(proc)

    def _serve(self, startup_cpu: float) -> ProcGen:
        if startup_cpu > 0:
            yield Cpu(startup_cpu)
        while True:
            while self.queue:
                item = self.queue.popleft()
                yield Cpu(item.cost)
                item.on_done()
                self.sim.kernel.fire(self.progress)
            if self.more.fired:
                self.more = Signal()
            yield Wait(self.more)

    def submit(self, cost: float, on_done: Callable[[], None]) -> None:
        self.queue.append(Item(cost, on_done))
        self.sim.kernel.fire(self.more)

    def wait_progress(self, timeout: float | None = None) -> Wait:
        if self.progress.fired:
            self.progress = Signal()
        return Wait(self.progress, timeout)

    def close(self) -> None:
        """Shut down: the workers and threads exit and their tasks are freed."""
        for proc in self.workers:
            self.sim.kernel.kill(proc)
        self.workers = []
        self.sim.give(self.job, self.tasks, self.processes)
        self.tasks = self.processes = 0


@dataclass
class Made:
    """What creating a loky pool came to: the pool, or the stage that was refused."""

    pool: Pool | None
    stage: str = ""  # "constructor", "worker", "manager", "feeder"
    spawned: int = 0  # workers spawned before the refusal


def _tracker(sim: Sim, job: Job) -> Generator[Step, None, bool]:
    yield Cpu(sim.costs.fork_cpu)
    if not sim.take(job, process=True):
        return False
    sim.start(job, _burn(sim.costs.tracker_cpu), "tracker")
    return True


def _burn(seconds: float) -> ProcGen:
    yield Cpu(seconds)
    yield Wait(Signal())  # then it waits, holding its task, until the job exits


def make_loky(sim: Sim, job: Job, n: int) -> Generator[Step, None, Made]:
    """Create a loky pool of n step by step (docs/FACTS.md), each step a task; starting
    a process costs the job's main thread `fork_cpu`, so jobs creating pools at once
    interleave their steps (and, under a limit, collide) as they do for real."""
    sim.tally.pools_made += 1
    if not job.loky_tracker:
        if not (yield from _tracker(sim, job)):
            return Made(None, "constructor")
        job.loky_tracker = True
    if not job.mp_tracker:
        if not (yield from _tracker(sim, job)):
            return Made(None, "tracker")
        job.mp_tracker = True
    pool = Pool(sim, job, "process", n)
    for k in range(n):
        yield Cpu(sim.costs.fork_cpu)
        if not sim.take(job, process=True):
            return _partial(pool, "worker", k)
        pool.tasks += 1
        pool.processes += 1
        pool.add_worker(sim.costs.worker_spawn_cpu)
    if not sim.take(job):
        return _partial(pool, "manager", n)
    pool.tasks += 1
    if not sim.take(job):
        return _partial(pool, "feeder", n)
    pool.tasks += 1
    return Made(pool)


def _partial(pool: Pool, stage: str, spawned: int) -> Made:
    return Made(pool if spawned or pool.tasks else None, stage, spawned)


def make_threads(sim: Sim, job: Job, n: int) -> Pool | None:
    """A thread pool of n, all started up front (None: a thread was refused)."""
    pool = Pool(sim, job, "thread", n)
    for _ in range(n):
        if not sim.take(job):
            pool.close()
            return None
        pool.tasks += 1
    pool.add_worker(0.0)  # the GIL: one of its threads computes at a time
    return pool


def run_items(pool: Pool, costs: list[float]) -> Generator[Step, None, None]:
    """Map CPU items over a pool and wait for all of them."""
    left = [len(costs)]
    all_done = Signal()

    def one_done() -> None:
        left[0] -= 1
        if left[0] == 0:
            pool.sim.kernel.fire(all_done)

    for cost in costs:
        pool.submit(cost, one_done)
    yield Wait(all_done)


def _hang_forever(sim: Sim, job: Job) -> Generator[Step, None, None]:
    sim.hang(job)
    yield Wait(Signal())


# -- policies -------------------------------------------------------------------------------


def sequential_body(sim: Sim, job: Job) -> Generator[Step, None, None]:
    for samples in job.costs:
        yield Cpu(sum(samples))
        job.done += 1


def unguarded_body(sim: Sim, job: Job) -> Generator[Step, None, None]:
    """A fresh loky pool of W per task; a refusal fails the task."""
    for samples in job.costs:
        made = yield from make_loky(sim, job, sim.work.workers)
        if made.stage == "feeder" and sim.work.loky == "3.6":
            yield from _hang_forever(sim, job)  # hang A
        if made.stage:
            if made.pool is not None:
                made.pool.close()
            job.failed += 1  # the task raised (BrokenProcessPool, "can't start new thread")
            continue
        assert made.pool is not None
        yield from run_items(made.pool, samples)
        made.pool.close()
        job.done += 1


def heuristic_body(sim: Sim, job: Job) -> Generator[Step, None, None]:
    """The original per-process guard: `threading.active_count() > 50` never fires (the
    job sees its own 1-3 threads), so: a loky pool of W, else threads, else sequential."""
    w = sim.work.workers
    for samples in job.costs:
        made = yield from make_loky(sim, job, w)
        if made.stage == "feeder" and sim.work.loky == "3.6":
            yield from _hang_forever(sim, job)  # hang A
        if not made.stage:
            assert made.pool is not None
            yield from run_items(made.pool, samples)
            made.pool.close()
            job.done += 1
            continue
        sim.tally.fallbacks += 1
        if made.pool is not None:
            if made.spawned and made.stage != "feeder":
                job.hang_at_exit = True  # hang B: its workers are left running
                made.pool.tasks -= made.spawned  # they stay charged to the job, not the pool
                made.pool.processes -= made.spawned
                made.pool.workers = []
            made.pool.close()
        threads = make_threads(sim, job, w)
        if threads is not None:
            yield from run_items(threads, [sum(samples)])
            threads.close()
        else:
            sim.tally.fallbacks += 1
            yield Cpu(sum(samples))
        job.done += 1


def reused_body(sim: Sim, job: Job) -> Generator[Step, None, None]:
    """One loky pool of W for the whole job, its tasks mapped over it."""
    made = yield from make_loky(sim, job, sim.work.workers)
    if made.stage == "feeder" and sim.work.loky == "3.6":
        yield from _hang_forever(sim, job)
    if made.stage:
        if made.pool is not None:
            made.pool.close()
        job.failed = job.total - job.done  # the map raises: every task left fails
        return
    pool = made.pool
    assert pool is not None

    def one_done() -> None:
        job.done += 1

    for samples in job.costs:
        pool.submit(sum(samples), one_done)
    while job.done < job.total:
        yield pool.wait_progress()
    pool.close()


# -- the budget -----------------------------------------------------------------------------


@dataclass
class ClientGrant:
    """client.leases.Grant as the executor reads it."""

    kind: str
    workers: int
    target: int
    lease: str | None
    renewed_at: float

    @property
    def size(self) -> int:
        return 1 if self.kind == "sequential" else max(0, self.target)

    def take(self, grant: Grant, now: float) -> None:
        self.kind, self.workers, self.target = grant.kind, grant.workers, grant.target
        self.renewed_at = now
        if self.kind != "sequential" and self.size < 1:
            self.kind = "sequential"


class Executor:
    """client.executor.BudgetExecutor's loop: at most `size` tasks in flight; between
    tasks renew when due and, once idle, switch to the pool the grant wants."""

    def __init__(self, sim: Sim, job: Job, grant: ClientGrant) -> None:
        self.sim, self.job, self.grant = sim, job, grant
        self.backend: Pool | None = None  # None with `sequential`: the calling thread
        self.backend_kind = ""  # "" : no backend yet
        self.failed: set[str] = set()
        self.failed_at = 0
        self.grow_retry_used = False

    def wanted(self) -> tuple[str, int]:
        g = self.grant
        kind = g.kind if g.kind in CHAIN else "sequential"
        if kind != "sequential" and g.size < 1:
            kind = "sequential"
        for candidate in CHAIN[CHAIN.index(kind) :]:
            if candidate not in self.failed:
                kind = candidate
                break
        return kind, 1 if kind == "sequential" else g.size

    def in_use(self) -> int:
        if self.backend is None:
            return 0
        return self.backend.size

    def renew(self) -> None:
        daemon = self.sim.daemon
        assert daemon is not None
        daemon.renew(self.job, self.grant, self.in_use())

    def make(self) -> Generator[Step, None, None]:
        kind, n = self.wanted()
        sim, job = self.sim, self.job
        while True:
            if kind == "process":
                made = yield from make_loky(sim, job, n)
                if not made.stage:
                    self.backend, self.backend_kind = made.pool, kind
                    return
                if made.pool is not None:
                    made.pool.close()  # killed by pid and reaped: nothing is left
            elif kind == "thread":
                pool = make_threads(sim, job, n)
                if pool is not None:
                    self.backend, self.backend_kind = pool, kind
                    return
            else:
                self.backend, self.backend_kind = None, "sequential"
                return
            self.failed.add(kind)
            self.failed_at = max(self.failed_at, self.grant.size)
            sim.tally.fallbacks += 1
            kind = CHAIN[CHAIN.index(kind) + 1]

    def current(self) -> tuple[str, int]:
        if self.backend_kind == "sequential":
            return "sequential", 1
        assert self.backend is not None
        return self.backend_kind, self.backend.size

    def follow(self, busy: bool) -> Generator[Step, None, bool]:
        """Renew when due; switch pools once idle. True: stop submitting (switching)."""
        now = self.sim.kernel.now
        daemon = self.sim.daemon
        assert daemon is not None
        if self.grant.lease is not None and now - self.grant.renewed_at >= min(
            daemon.spec.renew_interval, daemon.spec.budget.lease_ttl / 3
        ):
            self.renew()
        if self.grant.size > self.failed_at and self.failed and not self.grow_retry_used:
            self.grow_retry_used = True
            self.failed.clear()
        if not self.backend_kind or self.current() == self.wanted():
            return False
        if busy:
            return True
        self.close()
        yield from self.make()
        self.renew()
        return False

    def close(self) -> None:
        if self.backend is not None:
            self.backend.close()
        self.backend, self.backend_kind = None, ""

    def map(self) -> Generator[Step, None, None]:
        job = self.job
        poll = self.sim.daemon.spec.poll_interval if self.sim.daemon else 0.5
        pending = deque(range(job.total))
        inflight = [0]

        def one_done() -> None:
            inflight[0] -= 1
            job.done += 1

        while pending or inflight[0]:
            switching = yield from self.follow(busy=inflight[0] > 0)
            if not self.backend_kind:
                yield from self.make()
                self.renew()
            if self.backend_kind == "sequential":
                if pending and not switching:
                    yield Cpu(sum(job.costs[pending.popleft()]))
                    job.done += 1
                continue
            pool = self.backend
            assert pool is not None
            while pending and not switching and inflight[0] < pool.size:
                pool.submit(sum(job.costs[pending.popleft()]), one_done)
                inflight[0] += 1
            if inflight[0]:
                yield pool.wait_progress(poll)


def budget_body(sim: Sim, job: Job) -> Generator[Step, None, None]:
    daemon = sim.daemon
    assert daemon is not None
    grant, retry_after = daemon.acquire(job)
    waited = 0.0
    while daemon.spec.waits_held and (wait := held_sleep(retry_after, waited)) > 0:
        yield Sleep(wait)  # as client.leases waits
        waited += wait
        retry_after = daemon.renew(job, grant, 0)
    ex = Executor(sim, job, grant)
    yield from ex.map()
    ex.close()
    daemon.release(job)


POLICY_BODIES: dict[str, Body] = {
    "unguarded": unguarded_body,
    "heuristic": heuristic_body,
    "sequential": sequential_body,
    "reused": reused_body,
    "budget": budget_body,
}


# -- the daemon -----------------------------------------------------------------------------


class Daemon:
    """The daemon's use of the ledger: a sample every tick, trees every scan, expiry."""

    def __init__(self, sim: Sim, spec: DaemonSpec, phase: float) -> None:
        self.sim, self.spec, self.phase = sim, spec, phase
        self.trees: dict[str, int] = {}
        self.last_scan = -spec.scan_interval
        kernel = sim.kernel
        self.ledger = BudgetLedger(spec.budget, lambda: kernel.now, self.sample())
        self.charged: dict[str, tuple[Kind, int]] = {}  # lease -> (kind, workers) granted
        self.held: set[str] = set()  # leases held for a burst, not tallied in grants yet
        self.leased_tasks = 0  # what the charged pools cost in tasks
        self.leased_workers = 0  # and in pool workers
        self.capacity_tasks = 1 << 62  # the cgroup's limit less its reserve
        for lim in self.sample().limits:
            if lim.kind == "cgroup":
                self.capacity_tasks = lim.limit - reserve_for(lim, spec.budget)

    def begin(self) -> None:
        self.sim.kernel.at(self.phase, self.tick)

    def sample(self) -> HostSample:
        sim, host = self.sim, self.sim.host
        now = sim.kernel.now
        in_use = host.other_tasks + sim.tasks
        limits = [
            Limit("threads-max", "threads-max", None, host.threads_max, in_use),
            Limit("pid_max", "pid_max", None, host.pid_max, in_use),
        ]
        if host.task_limit is not None:
            limits.append(Limit(f"cgroup:/{CGROUP}", "cgroup", CGROUP, host.task_limit, sim.tasks))
        return HostSample(
            taken_at=now,
            wall_time=now,
            threads_total=in_use,
            threads_max=host.threads_max,
            pid_max=host.pid_max,
            cgroups=(),
            users=(),
            mem_available_bytes=sim.mem_available(),
            mem_total_bytes=host.mem_total,
            cpus=float(host.cores),
            psi=Psi(sim.kernel.psi_avg10, 0.0),
            limits=tuple(limits),
        )

    def tick(self) -> None:
        now = self.sim.kernel.now
        if now - self.last_scan >= self.spec.scan_interval:
            self.last_scan = now
            self.trees = {
                job.lease: job.tasks_held for job in self.sim.jobs if job.lease is not None
            }
        result = self.ledger.update(self.sample(), self.trees)
        levels = self.sim.tally.levels
        levels[result.level] = levels.get(result.level, 0) + 1
        for lease in self.ledger.expire():
            self.charge(lease.lease_id, None)
            for job in self.sim.jobs:
                if job.lease == lease.lease_id:
                    job.lease = None
        self.sim.kernel.after(self.spec.sample_interval, self.tick)

    def acquire(self, job: Job) -> tuple[ClientGrant, float]:
        """The client's grant, and the ledger's retry_after (> 0: held for a burst)."""
        req = Request(
            holder=f"conn{job.index}",
            pid=1000 + job.index,
            uid=1000 + job.user if self.spec.per_user else 1000,
            job=f"job{job.index}",
            want=self.sim.work.workers,
            kinds=("process", "sequential"),
            cgroups=(f"{CGROUP}/job{job.index}",),
            base_tasks=job.tasks_held,
        )
        grant = self.ledger.acquire(req)
        job.lease = grant.lease_id
        self.charge(grant.lease_id, grant)
        self._first(grant)
        client = ClientGrant("sequential", 1, 1, grant.lease_id, self.sim.kernel.now)
        client.take(grant, self.sim.kernel.now)
        return client, grant.retry_after

    def renew(self, job: Job, client: ClientGrant, in_use: int) -> float:
        """Renew the job's lease into `client`; the grant's retry_after."""
        if job.lease is None:
            client.kind, client.workers, client.target, client.lease = "sequential", 1, 1, None
            return 0.0
        try:
            grant = self.ledger.renew(job.lease, in_use)
        except LeaseError:  # expired: the client runs sequential from now on
            self.charge(job.lease, None)
            job.lease = None
            client.kind, client.workers, client.target, client.lease = "sequential", 1, 1, None
            return 0.0
        self.charge(grant.lease_id, grant)
        if grant.lease_id in self.held:
            self._first(grant)
        client.take(grant, self.sim.kernel.now)
        return grant.retry_after

    def _first(self, grant: Grant) -> None:
        """Tally a lease's first grant, or hold it back while the lease is held for a burst."""
        if grant.retry_after > 0:
            self.held.add(grant.lease_id)
            return
        self.held.discard(grant.lease_id)
        grants = self.sim.tally.grants
        first = grant.kind if grant.kind == "sequential" else f"{grant.kind}:{grant.workers}"
        grants[first] = grants.get(first, 0) + 1

    def release(self, job: Job) -> None:
        if job.lease is not None:
            lease_id, job.lease = job.lease, None
            self.charge(lease_id, None)
            self.ledger.release(lease_id)

    def charge(self, lease_id: str, grant: Grant | None) -> None:
        """Keep what the ledger has granted, and its running totals (checked per event)."""
        old = self.charged.pop(lease_id, None)
        if old is not None:
            self.leased_tasks -= pool_cost(*old)
            self.leased_workers -= old[1] if old[0] != "sequential" else 0
        if grant is not None:
            self.charged[lease_id] = (grant.kind, grant.workers)
            self.leased_tasks += pool_cost(grant.kind, grant.workers)
            self.leased_workers += grant.workers if grant.kind != "sequential" else 0

    def check_capacity(self) -> None:
        """At every event: the pools the ledger has leased cost no more tasks than the task
        limit less its reserve, and hold no more pool workers than the CPUs (from the
        grants the ledger returned)."""
        tally = self.sim.tally
        tally.peak_leased_tasks = max(tally.peak_leased_tasks, self.leased_tasks)
        tally.peak_leased_workers = max(tally.peak_leased_workers, self.leased_workers)
        if self.leased_tasks > self.capacity_tasks or self.leased_workers > self.sim.host.cores:
            tally.over_capacity += 1
