"""The experiments simulate.py runs: the operators' table and the tuning sweep.

The table's workload is the incident's at the VM's size: every job wants a pool of
`W = cores` (what `n_jobs=-1` and loky's `cpu_count()` give), runs 16 tasks of 8 samples
(50-200 ms each, drawn as the demo draws them) and all of a cell's jobs start at once.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any

from benchmarks.sim.cells import (
    GIVE_UP_FACTOR,
    Result,
    budget_spec,
    run_cell,
    run_one,
    sequential_deadline,
)
from benchmarks.sim.model import POLICIES, Background, Costs, DaemonSpec, HostSpec, Workload
from supervisord_batt.config.records import DEFAULT_PRESSURE

TABLE_CORES = (8, 32, 64)
TABLE_JOBS = (16, 64, 256)
TABLE_LIMITS: tuple[int | None, ...] = (512, 4096, None)
QUICK_CELLS: tuple[tuple[int, int, int | None], ...] = (
    (8, 16, 512),
    (32, 64, 4096),
    (64, 256, None),
)
TASKS, SAMPLES = 16, 8
GOAL = 0.95  # the budget's tasks/s against the best other policy's, with 0 failed, 0 hung


def table_workload(cores: int, jobs: int, seed: int = 0) -> Workload:
    return Workload(jobs=jobs, tasks=TASKS, samples=SAMPLES, workers=cores, seed=seed)


@dataclass(frozen=True)
class Cell:
    cores: int
    jobs: int
    task_limit: int | None
    results: tuple[Result, ...]

    @property
    def budget(self) -> Result:
        return next(r for r in self.results if r.policy == "budget")

    @property
    def best_other(self) -> Result:
        others = [r for r in self.results if r.policy != "budget"]
        return max(others, key=lambda r: r.tasks_per_s)

    @property
    def ratio(self) -> float:
        best = self.best_other.tasks_per_s
        return self.budget.tasks_per_s / best if best > 0 else float("inf")

    @property
    def meets_goal(self) -> bool:
        b = self.budget
        return self.ratio >= GOAL and b.failed == 0 and b.hung == 0

    def label(self) -> str:
        return f"{self.cores} cores, {self.jobs} jobs, limit {self.task_limit or 'none'}"

    def summary(self) -> dict[str, Any]:
        return {
            "cores": self.cores,
            "jobs": self.jobs,
            "task_limit": self.task_limit,
            "budget_over_best_other": round(self.ratio, 3),
            "best_other": self.best_other.policy,
            "meets_goal": self.meets_goal,
        }


def table_cells(quick: bool) -> list[tuple[int, int, int | None]]:
    if quick:
        return list(QUICK_CELLS)
    return list(itertools.product(TABLE_CORES, TABLE_JOBS, TABLE_LIMITS))


def run_table(
    costs: Costs, cells: list[tuple[int, int, int | None]], seed: int = 0
) -> Iterator[Cell]:
    for cores, jobs, limit in cells:
        host = HostSpec.vm(cores, limit)
        results = run_cell(host, table_workload(cores, jobs, seed), POLICIES, costs)
        yield Cell(cores, jobs, limit, tuple(results))


# -- the sweep ------------------------------------------------------------------------------

SWEEP_CELL = (32, 64, 2048)
# Two conditions at the sweep's cell: the table's burst of jobs alone in the cgroup, and
# jobs arriving at 4 a second beside programs the budget does not see (notebook kernels:
# 1,300 threads held, and loky pools of 32 workers, 36 tasks, starting twice a second for
# 5 s each), which take the cgroup to its limit on their own.
OTHERS = Background(steady=1300, burst=36, rate=2.0, hold=5.0)
CONDITIONS: tuple[tuple[str, float | None, Background], ...] = (
    ("burst, jobs alone", None, Background()),
    ("4 jobs/s, others at the limit", 4.0, OTHERS),
)


@dataclass(frozen=True)
class SweepPoint:
    condition: str
    knob: str  # "reserve_tasks", "sample_interval", "headroom_high/extreme", ...
    value: str
    result: Result

    def row(self) -> dict[str, Any]:
        r = self.result
        return {
            "condition": self.condition,
            "knob": self.knob,
            "value": self.value,
            "policy": r.policy,
            "tasks_per_s": round(r.tasks_per_s, 3),
            "failed": r.failed,
            "hung": r.hung,
            "fallbacks": r.fallbacks,
            "others_refused": r.background_refused,
            "peak_tasks": r.peak_tasks,
            "p95_job_s": round(r.p95_job_s, 2),
        }


def sweep_specs() -> Iterator[tuple[str, str, DaemonSpec]]:
    """Each knob moved alone from the shipped defaults (the default value is included)."""
    for reserve in (0, 8, 16, 32, 64, 128, 256, 512):
        spec = budget_spec(reserve_tasks=reserve, reserve_percent=0.0)
        yield "reserve_tasks", str(reserve), spec
    for interval in (0.25, 1.0, 2.0, 5.0, 10.0, 30.0):
        yield "sample_interval", f"{interval:g} s", budget_spec(sample_interval=interval)
    for high, extreme in ((50.0, 25.0), (25.0, 10.0), (10.0, 5.0), (5.0, 2.0), (0.0, 0.0)):
        pressure = replace(
            DEFAULT_PRESSURE, headroom_high_percent=high, headroom_extreme_percent=extreme
        )
        yield "headroom_high/extreme", f"{high:g}/{extreme:g} %", budget_spec(pressure=pressure)
    for high, extreme in ((30.0, 60.0), (60.0, 90.0), (90.0, 99.0), (100.0, 100.0)):
        pressure = replace(DEFAULT_PRESSURE, cpu_high=high, cpu_extreme=extreme)
        yield "cpu_high/extreme", f"{high:g}/{extreme:g}", budget_spec(pressure=pressure)
    for most in (2, 4, 8, 16, 32):
        yield "max_per_lease", str(most), budget_spec(max_per_lease=most)


def run_sweep(costs: Costs, seed: int = 0) -> Iterator[SweepPoint]:
    """The budget at every knob value, and the other policies once, in each condition."""
    cores, jobs, limit = SWEEP_CELL
    host = HostSpec.vm(cores, limit)
    for condition, rate, others in CONDITIONS:
        work = replace(table_workload(cores, jobs, seed), arrival_rate=rate, background=others)
        deadline, _seq = sequential_deadline(host, work, costs)
        give_up = GIVE_UP_FACTOR * deadline
        for policy in POLICIES:
            if policy != "budget":
                result, _ = run_one(host, work, policy, costs, deadline, give_up=give_up)
                yield SweepPoint(condition, "policy", policy, result)
        for knob, value, spec in sweep_specs():
            result, _ = run_one(host, work, "budget", costs, deadline, daemon=spec, give_up=give_up)
            yield SweepPoint(condition, knob, value, result)
        if others.active:
            yield from _others_load(host, work, costs, condition)
    yield from run_fewer_jobs(costs, seed)
    yield from run_arrivals(costs, seed)


FEWER_JOBS_CELL = (64, 16, 4096)


def run_fewer_jobs(costs: Costs, seed: int) -> Iterator[SweepPoint]:
    """max_per_lease where it binds: fewer jobs than cores, so the first jobs take the
    largest pools and the rest wait for a rebalance (each shrink or grow drains a pool and
    starts another)."""
    cores, jobs, limit = FEWER_JOBS_CELL
    host = HostSpec.vm(cores, limit)
    work = table_workload(cores, jobs, seed)
    deadline, _ = sequential_deadline(host, work, costs)
    condition = f"{cores} cores, {jobs} jobs, limit {limit}: fewer jobs than cores"
    for most in (2, 4, 8, 16, 32):
        result, _ = run_one(
            host,
            work,
            "budget",
            costs,
            deadline,
            daemon=budget_spec(max_per_lease=most),
            give_up=GIVE_UP_FACTOR * deadline,
        )
        yield SweepPoint(condition, "max_per_lease", str(most), result)


OTHERS_STEADY = (1300, 1500, 1600, 1700, 1800, 1900)


def _others_load(
    host: HostSpec, work: Workload, costs: Costs, condition: str
) -> Iterator[SweepPoint]:
    """The others' steady load moved up: where the jobs start to fail, with the budget at
    its defaults and with no pool at all (sequential)."""
    for steady in OTHERS_STEADY:
        loaded = replace(work, background=replace(work.background, steady=steady))
        deadline, seq = sequential_deadline(host, loaded, costs)
        yield SweepPoint(condition, "others_steady_tasks", str(steady), seq)
        result, _ = run_one(
            host, loaded, "budget", costs, deadline, give_up=GIVE_UP_FACTOR * deadline
        )
        yield SweepPoint(condition, "others_steady_tasks", str(steady), result)


ARRIVALS_CELL = (64, 64, 4096)


def run_arrivals(costs: Costs, seed: int) -> Iterator[SweepPoint]:
    """The table's one short cell (64 cores, 64 jobs) with the jobs arriving over time
    instead of all at once: whether its shortfall is the burst's first-come grants (the
    first jobs take pools of 8 before the rest arrive, then shrink) or the budget's."""
    cores, jobs, limit = ARRIVALS_CELL
    host = HostSpec.vm(cores, limit)
    condition = f"{cores} cores, {jobs} jobs, limit {limit}: arrivals"
    for rate in (None, 8.0, 2.0):
        work = replace(table_workload(cores, jobs, seed), arrival_rate=rate)
        deadline, _ = sequential_deadline(host, work, costs)
        value = "burst" if rate is None else f"{rate:g} jobs/s"
        for policy in ("sequential", "reused", "budget"):
            result, _ = run_one(
                host, work, policy, costs, deadline, give_up=GIVE_UP_FACTOR * deadline
            )
            yield SweepPoint(condition, "arrivals", value, result)
