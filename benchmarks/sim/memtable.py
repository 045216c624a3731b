"""The memory table (jobs of different worker sizes under a memory limit: plain pools,
sequential, the budget charging memory_per_slot, the budget with each job's learned
size, and the budget with each job's declared size in its first run) and the memory
model's validation against benchmarks/memory_proof.py's run."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any

from benchmarks.sim.memory import JobSpec, Mem, MemHost, MemResult, MemSim
from benchmarks.sim.model import GIB, MIB

TOLERANCE = 0.15  # the validation's: simulated tasks/s within 15% of the measured
POLICIES = ("plain", "sequential", "budget memory_per_slot", "budget learned", "budget declared")


@dataclass(frozen=True)
class MemCell:
    """A host (cores, memory limit) and its jobs: `count` jobs of each (mib, tasks)."""

    name: str
    cores: int
    limit: int
    mix: tuple[tuple[int, int], ...]  # (jobs, MiB per worker)
    workers: int = 4  # the pool each job wants
    tasks: int = 32

    def jobs(self, *, declared: bool = False) -> list[JobSpec]:
        """The cell's jobs; `declared`: each declares what one of its workers holds, its
        data and its interpreter, as `ps` shows a worker of it (a program's worker_memory)."""
        return [
            JobSpec(tasks=self.tasks, workers=self.workers, mib=mib, declared=declared_size(mib))
            if declared
            else JobSpec(tasks=self.tasks, workers=self.workers, mib=mib)
            for count, mib in self.mix
            for _ in range(count)
        ]


def declared_size(mib: int) -> int:
    """What an operator declares for workers that write `mib` MiB: their resident size."""
    return mib * MIB + Mem().worker_rss


CELLS = (
    MemCell("small workers", 16, 4 * GIB, ((16, 50),)),
    MemCell("mixed sizes", 16, 16 * GIB, ((4, 50), (4, 400), (4, 2048))),
    MemCell("big workers", 16, 16 * GIB, ((8, 1536),)),
    MemCell("the proof's shape", 2, 2552 * MIB, ((4, 400),), workers=3, tasks=16),
)


def run_policy(cell: MemCell, policy: str, *, kmsg: bool = True) -> MemResult:
    """One policy in one cell. "budget learned": a first run teaches the daemon each
    job's size, the second (the figure) starts from it; memory_per_slot: no learning;
    "budget declared": every job declares its size, in the run that first sees it.
    `kmsg` False: the daemon cannot read the kernel's OOM-kill reports (`MemHost.kmsg`)."""
    # tasks wait on I/O 80% of the time: the CPU cap of 4 per core lets memory bind
    host = MemHost(cores=cell.cores, limit=cell.limit, cpu_cap=4 * cell.cores, kmsg=kmsg)
    jobs = cell.jobs()
    if policy == "budget memory_per_slot":
        return MemSim(jobs, "budget", replace(host, learn=False)).run()
    if policy == "budget declared":
        return MemSim(cell.jobs(declared=True), "budget", host).run()
    if policy == "budget learned":
        first = MemSim(jobs, "budget", host)
        first.run()
        return MemSim(jobs, "budget", host, learned=first.figures, margins=first.margins).run()
    return MemSim(jobs, policy, host).run()


def run_table(cells: tuple[MemCell, ...] = CELLS) -> Iterator[tuple[MemCell, list[MemResult]]]:
    for cell in cells:
        yield cell, [run_policy(cell, p) for p in POLICIES]


# -- validation ---------------------------------------------------------------------------


@dataclass(frozen=True)
class MemCheck:
    row: str
    measured: float  # tasks/s
    simulated: float
    measured_oom: int
    simulated_oom: int
    measured_done: str
    simulated_done: str

    @property
    def error(self) -> float:
        return abs(self.simulated - self.measured) / self.measured if self.measured else 1.0

    @property
    def same_outcome(self) -> bool:
        return (self.measured_oom > 0) == (self.simulated_oom > 0) and (
            self.measured_done.split("/")[0] == self.measured_done.split("/")[1]
        ) == (self.simulated_done.split("/")[0] == self.simulated_done.split("/")[1])

    @property
    def ok(self) -> bool:
        return self.error <= TOLERANCE and self.same_outcome


def client_of(report: dict[str, Any]) -> Mem:
    """The costs of the client the run used: a run whose timelines do not mark the
    lease's release was made before the client imported structlog and psutil lazily
    (both came in one change), whose start and exit cost more (Mem)."""
    rows = report["big"]["rows"]
    if any("released" in t for row in rows for t in row.get("timeline", [])):
        return Mem()
    return Mem(client_start_cpu=0.114, client_exit_cpu=0.019)


def validate(report: dict[str, Any]) -> list[MemCheck]:
    """Each row of memory_proof.py's big case (its --json output) simulated with the same
    jobs, limit, daemon and client: tasks/s and the OOM outcome beside the measured ones."""
    shape, big, mem = report["shape"], report["big"], client_of(report)
    spec = JobSpec(shape["tasks"], shape["workers"], shape["mib"], shape["cpu_ms"], shape["io_ms"])
    jobs = [spec] * shape["jobs"]
    host = MemHost(cores=report["cores"], limit=big["limit"])
    checks = []
    learned: dict[str, dict[str, int]] = {}
    margins: dict[str, dict[str, int]] = {}
    for row in big["rows"]:
        host = replace(host, others=row.get("runnable", 0.0), sessions=row.get("sessions", 0.0))
        if row["mode"] == "budget":
            cap = row["label"].split(",")[0].removeprefix("budget ")
            h = replace(host, cpu_cap=None if cap == "host CPUs" else int(cap.split()[-1]))
            sim = MemSim(
                jobs, "budget", h, mem=mem, learned=learned.get(cap), margins=margins.get(cap)
            )
            result = sim.run()
            learned[cap], margins[cap] = sim.figures, sim.margins
        else:
            result = MemSim(jobs, row["mode"], host, mem=mem, hand=big["hand"]).run()
        checks.append(
            MemCheck(
                row["label"],
                row["done"] / row["wall"],
                result.tasks_per_s,
                row["oom_kills"],
                result.oom_kills,
                f"{row['done']}/{row['total']}",
                f"{result.done}/{row['total']}",
            )
        )
    return checks


# -- the plain row, traced ------------------------------------------------------------------


@dataclass(frozen=True)
class PlainCheck:
    """One traced plain row (benchmarks/plain_trace.py) beside its simulation with the
    same limit and the sessions busy beside it."""

    sessions: float
    measured: float  # tasks/s
    simulated: float
    measured_done: int
    simulated_done: int
    measured_kills: int
    simulated_kills: int

    @property
    def same_outcome(self) -> bool:
        """The same jobs' worth of tasks done: as many jobs survived."""
        return self.measured_done == self.simulated_done

    @property
    def error(self) -> float:
        return abs(self.simulated - self.measured) / self.measured if self.measured else 1.0


def validate_plain(trace: dict[str, Any], mem: Mem | None = None) -> list[PlainCheck]:
    """Each traced plain row simulated: 4 of memory_proof.py's plain jobs in the row's
    limit, beside the sessions it recorded."""
    checks = []
    for row in trace["rows"]:
        host = MemHost(cores=2, limit=row["limit"], sessions=row["sessions"])
        result = MemSim([JobSpec()] * 4, "plain", host, mem=mem or Mem()).run()
        wall = max(j["exit"] for j in row["jobs"] if j.get("exit") is not None)
        done = len(row["tasks"])
        checks.append(
            PlainCheck(
                row["sessions"],
                done / wall,
                result.tasks_per_s,
                done,
                result.done,
                len(row["kills"]),
                result.oom_kills,
            )
        )
    return checks
