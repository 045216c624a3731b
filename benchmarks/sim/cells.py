"""One policy in one cell: run it, and the figures the tables show; the calibration and
the validation against benchmarks/contention.py's measured cells."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

from benchmarks.sim.model import (
    Costs,
    DaemonSpec,
    HostSpec,
    Sim,
    Workload,
    default_budget,
    make_jobs,
)

# The hang deadline, as contention.py sets it: 3 x the sequential cell's wall time + 30 s.
HANG_FACTOR, HANG_SLACK = 3.0, 30.0
# Interpreter start and the job's imports (contention_job, supervisord_batt.demo and with
# it the client): `python3 -c "import contention_job, supervisord_batt.demo"` used
# 0.37 s of CPU on this machine (user + sys). Measured once, not fitted.
JOB_START_CPU = 0.37
TRACKER_CPU = 0.05  # a resource tracker: a bare interpreter (guess; 16 per cell at most)
# The table's jobs are not killed for being slow: one still running at this many hang
# deadlines (after every other job ended) is counted hung, a guard against a model that
# never ends.
GIVE_UP_FACTOR = 50.0
# The idle gap between two measured cells (the leak grace, the cgroup's removal):
# PSI decays over it before the next cell starts.
CELL_GAP_S = 1.0


@dataclass(frozen=True)
class Result:
    policy: str
    cores: float
    jobs: int
    task_limit: int | None
    tasks_per_s: float
    done: int
    failed: int  # tasks that raised or never finished (a hung job's too), as contention.py
    hung: int
    peak_tasks: int
    p95_job_s: float
    wall_s: float
    cpu_s: float
    refused: int
    over_limit: int
    over_capacity: int
    peak_leased_tasks: int
    levels: dict[str, int] = field(default_factory=dict)
    grants: dict[str, int] = field(default_factory=dict)
    fallbacks: int = 0
    background_refused: int = 0
    out_of_memory: int = 0

    @property
    def outcome(self) -> str:
        return outcome(self.failed, self.hung)

    def row(self) -> dict[str, Any]:
        """The JSON row the brief asks for."""
        return {
            "cores": self.cores,
            "jobs": self.jobs,
            "task_limit": self.task_limit,
            "policy": self.policy,
            "tasks_per_s": round(self.tasks_per_s, 3),
            "failed": self.failed,
            "hung": self.hung,
            "peak_tasks": self.peak_tasks,
            "p95_job_s": round(self.p95_job_s, 2),
        }


def outcome(failed: int, hung: int) -> str:
    """The outcome class: finish, fail, hang or fail+hang."""
    if hung and failed:
        return "fail+hang"
    if hung:
        return "hang"
    return "fail" if failed else "finish"


def p95(values: list[float]) -> float:
    """The 95th percentile, nearest rank."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)]


def run_one(
    host: HostSpec,
    work: Workload,
    policy: str,
    costs: Costs,
    deadline: float,
    *,
    daemon: DaemonSpec | None = None,
    psi_avg10: float = 0.0,
    give_up: float | None = None,
) -> tuple[Result, Sim]:
    """Run one policy to its end (hung jobs killed at the hang deadline) and measure it."""
    sim = Sim(host, work, policy, costs, daemon=daemon, psi_avg10=psi_avg10)
    sim.run(deadline, give_up)
    jobs = sim.jobs
    starts = [j.started if j.started is not None else j.arrival for j in jobs]
    ends = [j.ended if j.ended is not None else deadline for j in jobs]
    wall = max(ends) - min(j.arrival for j in jobs)
    done = sum(j.done for j in jobs)
    t = sim.tally
    result = Result(
        policy=policy,
        cores=host.cores,
        jobs=work.jobs,
        task_limit=host.task_limit,
        tasks_per_s=done / wall if wall > 0 else 0.0,
        done=done,
        failed=sum(j.failed for j in jobs),
        hung=sum(j.hung for j in jobs),
        peak_tasks=t.peak_tasks,
        p95_job_s=p95([e - s for s, e in zip(starts, ends, strict=True)]),
        wall_s=wall,
        cpu_s=sim.kernel.busy_cpu_s,
        refused=t.refused,
        over_limit=t.over_limit,
        over_capacity=t.over_capacity,
        peak_leased_tasks=t.peak_leased_tasks,
        levels=dict(t.levels),
        grants=dict(t.grants),
        fallbacks=t.fallbacks,
        background_refused=t.background_refused,
        out_of_memory=t.out_of_memory,
    )
    return result, sim


def sequential_deadline(host: HostSpec, work: Workload, costs: Costs) -> tuple[float, Result]:
    """Run sequential first, as contention.py does: its wall time sets the hang deadline."""
    seq, _ = run_one(host, work, "sequential", costs, deadline=1e9)
    return HANG_FACTOR * seq.wall_s + HANG_SLACK, seq


def run_cell(
    host: HostSpec,
    work: Workload,
    policies: tuple[str, ...],
    costs: Costs,
    daemon: DaemonSpec | None = None,
) -> list[Result]:
    """Every policy in one cell, each on an idle host (PSI 0), in the order given. A job
    that hangs is killed at the hang deadline (3 x the sequential run + 30 s); a slow
    job runs to its end."""
    deadline, seq = sequential_deadline(host, work, costs)
    results = []
    for policy in policies:
        if policy == "sequential":
            results.append(seq)
            continue
        give_up = GIVE_UP_FACTOR * deadline
        result, _ = run_one(host, work, policy, costs, deadline, daemon=daemon, give_up=give_up)
        results.append(result)
    return results


# -- calibration and validation ---------------------------------------------------------------


def measured_rows(report: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(r["cell"], r["mode"]): r for r in report["rows"]}


def workload_of(report: dict[str, Any], loky: str = "3.7") -> Workload:
    p = report["params"]
    return Workload(
        jobs=p["jobs"],
        tasks=p["tasks"],
        samples=p["samples"],
        workers=p["workers"],
        min_ms=p["min_ms"],
        max_ms=p["max_ms"],
        seed=p["seed"],
        loky=loky,
    )


def calibrate(report: dict[str, Any]) -> Costs:
    """Fit three CPU costs to the measured cells' CPU seconds (not to their tasks/s):

    - a job's start (interpreter and imports), from the cell where every job fails at
      once (the tightest limit, unguarded): its CPU is K job starts and exits, the
      failed attempts costing next to nothing (else the import time measured here);
    - speed (CPU seconds per planned second of sample work), from the sequential cell with
      no limit: its CPU is K job starts and exits plus the samples;
    - a loky worker's start, from the unguarded cell with no limit: its CPU beyond the
      sequential cell's is K x T pools of W workers and 2K resource trackers.
    """
    rows = measured_rows(report)
    work = workload_of(report)
    base = Costs(job_start_cpu=JOB_START_CPU, tracker_cpu=TRACKER_CPU)
    start = JOB_START_CPU
    tightest = report["cells"][-1]
    failing = rows.get((tightest, "unguarded"))
    if failing is not None and failing["done"] == 0:
        start = failing["cpu_s"] / work.jobs - base.job_exit_cpu
    per_job = start + base.job_exit_cpu
    planned = sum(sum(sum(t) for t in job.costs) for job in make_jobs(work, base))
    seq_cpu = rows[("none", "sequential")]["cpu_s"]
    speed = (seq_cpu - work.jobs * per_job) / planned
    unguarded_cpu = rows[("none", "unguarded")]["cpu_s"]
    pools = work.jobs * work.tasks
    extra = unguarded_cpu - seq_cpu - 2 * work.jobs * TRACKER_CPU
    spawn = extra / (pools * work.workers)
    return replace(base, job_start_cpu=start, speed=speed, worker_spawn_cpu=spawn)


def validation_host(cores: int, task_limit: int | None) -> HostSpec:
    """This machine as the measured cells saw it (kernel figures read from it)."""
    return HostSpec(
        cores=cores,
        task_limit=task_limit,
        mem_total=24 * 1024**3,
        threads_max=192_736,
        pid_max=32_768,
        other_tasks=90,
        other_mem=1024**3,
    )


RUN_ORDER = ("sequential", "unguarded", "heuristic", "budget")  # contention.py's


@dataclass(frozen=True)
class Check:
    cell: str  # "none/sequential", "28/heuristic", ...
    measured: float
    simulated: float
    measured_outcome: str
    simulated_outcome: str
    sim: Result

    @property
    def error(self) -> float:
        """Relative error of tasks/s (0 when both are 0)."""
        if self.measured == 0:
            return 0.0 if self.simulated == 0 else math.inf
        return abs(self.simulated - self.measured) / self.measured

    @property
    def ok(self) -> bool:
        return self.error <= 0.15 and self.measured_outcome == self.simulated_outcome

    def row(self) -> dict[str, Any]:
        return {
            "cell": self.cell,
            "measured": round(self.measured, 3),
            "simulated": round(self.simulated, 3),
            "measured_outcome": self.measured_outcome,
            "simulated_outcome": self.simulated_outcome,
            "within_15pct": self.error <= 0.15,
        }


def validate(report: dict[str, Any], costs: Costs, cores: int = 2) -> list[Check]:
    """Simulate the measured cells in the order contention.py ran them, PSI carried over
    from one to the next (the daemon reads the host's PSI: a budget cell starts where the
    heuristic cell left the CPU pressure), with the measured hang deadline."""
    rows = measured_rows(report)
    work = workload_of(report)
    deadline = float(report["hang_timeout_s"])
    checks = []
    psi = 0.0
    for cell in report["cells"]:
        limit = next(r["pids_max"] for (c, _m), r in rows.items() if c == cell)
        host = validation_host(cores, limit)
        for policy in RUN_ORDER:
            if (cell, policy) not in rows:
                continue
            result, sim = run_one(host, work, policy, costs, deadline, psi_avg10=psi)
            psi = _decayed(sim.kernel.psi_avg10, CELL_GAP_S)
            m = rows[(cell, policy)]
            checks.append(
                Check(
                    f"{limit or 'none'}/{policy}",
                    m["tasks_per_s"],
                    result.tasks_per_s,
                    outcome(m["failed"], m["hung"]),
                    result.outcome,
                    result,
                )
            )
    return checks


def _decayed(avg10: float, seconds: float) -> float:
    return avg10 * math.exp(-seconds / 10.0)


def budget_spec(**changes: Any) -> DaemonSpec:
    """The daemon with the shipped defaults; `changes` to its budget config, except
    `sample_interval`, which is the daemon's."""
    interval = changes.pop("sample_interval", 1.0)
    return DaemonSpec(default_budget(**changes), sample_interval=interval)
