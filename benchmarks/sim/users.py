"""The per-user table simulate.py prints: users with unequal job counts on one host.

Each user keeps its K jobs running (a job that ends is followed at once by another of
the same user: a closed loop), every job the table's (W = cores workers wanted, 16 tasks
of 8 samples, about 17 s of CPU) or four times as long (64 tasks). After a warm-up, the
tasks each user completes are counted over a window.

- Per user, its tasks/s against an equal split: what the same user's K jobs complete
  alone on its equal part of the cores (the cores water-filled over the users by what
  they can use, K x max_per_lease each), budget included. Goal: 0.9 or more each.
- The host's total against the single-queue budget: the same jobs with every lease of
  one uid, which is what the ledger did before it split per user (max-min across
  leases). Goal: 0.97 or more.

Two ways the kernel shares CPU time among the users' threads, both printed: per thread
(every runnable thread alike: users in no cgroups of their own), and per user (each
user's processes in a cgroup of its own with the cpu controller, equal weights: a user
with more threads gets no more CPU). The budget decides how many workers a user may
run; only the kernel decides how much CPU a user's sequential jobs take.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass, replace
from functools import partial
from typing import Any

from benchmarks.sim.cells import budget_spec
from benchmarks.sim.model import Costs, DaemonSpec, HostSpec, Job, Sim, Workload, make_job
from benchmarks.sim.table import SAMPLES, TASKS

USER_GOAL = 0.9  # each user's tasks/s against its equal split
TOTAL_GOAL = 0.97  # the host's tasks/s against the single-queue budget
WARM_S, UNTIL_S = 20.0, 120.0  # the window counted, in simulated seconds
# (cores, jobs per user): two to eight users, unequal
USER_CELLS: tuple[tuple[int, tuple[int, ...]], ...] = (
    (32, (60, 4)),
    (32, (30, 10, 2)),
    (32, (40, 12, 4, 1)),
    (32, (40, 20, 10, 6, 4, 2, 1, 1)),
    (64, (120, 8)),
    (64, (60, 16, 4, 4, 2, 1)),
)
QUICK_USER_CELLS = USER_CELLS[:1]
JOB_TASKS = (TASKS, 4 * TASKS)  # tasks per job: the table's, and four times as many


class UsersSim(Sim):
    """The budget policy with every user's jobs in a closed loop until `until`."""

    def __init__(  # noqa: PLR0917 (Sim's, the jobs per user and the end)
        self,
        host: HostSpec,
        work: Workload,
        costs: Costs,
        jobs: tuple[int, ...],
        daemon: DaemonSpec,
        until: float,
    ) -> None:
        super().__init__(host, replace(work, jobs=sum(jobs)), "budget", costs, daemon=daemon)
        self.until = until
        users = [u for u, k in enumerate(jobs) for _ in range(k)]
        for job, user in zip(self.jobs, users, strict=True):
            job.user = user
        self.users = len(jobs)
        self._counted: list[int] = []

    def _ended(self, job: Job) -> None:
        super()._ended(job)
        now = self.kernel.now
        if now < self.until:  # the user starts its next job at once
            follow = make_job(self.work, self.costs, len(self.jobs), now, job.user)
            self.jobs.append(follow)
            self.kernel.at(now, lambda: self._launch(follow))

    def _checked(self) -> bool:
        """The run's checks after every event (`Sim._after_event`); it never stops early."""
        self._after_event()
        return False

    def done(self) -> list[int]:
        """Tasks each user's jobs have completed so far."""
        out = [0] * self.users
        for job in self.jobs:
            out[job.user] += job.done
        return out

    def window(self, warm: float) -> list[float]:
        """Run to `until` and return each user's tasks/s from `warm` on."""
        for job in self.jobs:
            self.kernel.at(job.arrival, partial(self._launch, job))
        assert self.daemon is not None
        self.daemon.begin()
        self.kernel.at(warm, lambda: self._counted.extend(self.done()))
        self.kernel.run(self.until, stop=self._checked)
        end = self.done()
        return [(b - a) / (self.until - warm) for a, b in zip(self._counted, end, strict=True)]


def equal_parts(cores: int, jobs: tuple[int, ...], most: int) -> list[float]:
    """The cores water-filled over the users by what each can use (K x `most` workers)."""
    wants = [k * most for k in jobs]
    parts = [0.0] * len(jobs)
    left, rest = float(cores), sorted(range(len(jobs)), key=lambda u: wants[u])
    for i, u in enumerate(rest):
        parts[u] = min(float(wants[u]), left / (len(rest) - i))
        left -= parts[u]
    return parts


@dataclass(frozen=True)
class UserCell:
    cores: int
    jobs: tuple[int, ...]
    tasks: int  # per job
    cpu: str  # "per thread" or "per user"
    equal: list[float]  # each user's tasks/s alone on its equal part
    split: list[float]  # each user's tasks/s, the budget split per user
    single: list[float]  # each user's tasks/s, the single-queue budget

    @property
    def ratios(self) -> list[float]:
        return _over(self.split, self.equal)

    @property
    def single_ratios(self) -> list[float]:
        return _over(self.single, self.equal)

    @property
    def total(self) -> float:
        return sum(self.split) / sum(self.single) if sum(self.single) > 0 else float("inf")

    @property
    def meets_goal(self) -> bool:
        return min(self.ratios) >= USER_GOAL and self.total >= TOTAL_GOAL

    def row(self) -> dict[str, Any]:
        return {
            "cores": self.cores,
            "jobs": list(self.jobs),
            "tasks_per_job": self.tasks,
            "cpu_shared": self.cpu,
            "equal_split_tasks_per_s": [round(x, 3) for x in self.equal],
            "per_user_tasks_per_s": [round(x, 3) for x in self.split],
            "single_queue_tasks_per_s": [round(x, 3) for x in self.single],
            "per_user_over_equal_split": [round(x, 3) for x in self.ratios],
            "single_queue_over_equal_split": [round(x, 3) for x in self.single_ratios],
            "total_over_single_queue": round(self.total, 3),
            "meets_goal": self.meets_goal,
        }


def _over(rates: list[float], equal: list[float]) -> list[float]:
    return [r / e if e > 0 else float("inf") for r, e in zip(rates, equal, strict=True)]


def run_users(costs: Costs, quick: bool = False, seed: int = 0) -> Iterator[UserCell]:
    """Every cell, for each job length, in both ways of sharing CPU time."""
    cells = QUICK_USER_CELLS if quick else USER_CELLS
    for (cores, jobs), tasks in itertools.product(cells, JOB_TASKS[:1] if quick else JOB_TASKS):
        work = Workload(jobs=0, tasks=tasks, samples=SAMPLES, workers=cores, seed=seed)
        spec = budget_spec()
        most = spec.budget.max_per_lease
        equal = [
            _alone(replace(HostSpec.vm(cores, None), cores=part), k, work, costs, spec)
            for part, k in zip(equal_parts(cores, jobs, most), jobs, strict=True)
        ]
        for cpu_per_user in (False, True):
            host = replace(HostSpec.vm(cores, None), cpu_per_user=cpu_per_user)
            split = _run(host, work, costs, jobs, replace(spec, per_user=True))
            single = _run(host, work, costs, jobs, spec)
            cpu = "per user" if cpu_per_user else "per thread"
            yield UserCell(cores, jobs, tasks, cpu, equal, split, single)


def _run(
    host: HostSpec, work: Workload, costs: Costs, jobs: tuple[int, ...], spec: DaemonSpec
) -> list[float]:
    return UsersSim(host, work, costs, jobs, spec, UNTIL_S).window(WARM_S)


def _alone(host: HostSpec, jobs: int, work: Workload, costs: Costs, spec: DaemonSpec) -> float:
    """One user's K jobs alone on `host`: the whole one but for the cores, its part."""
    (rate,) = _run(host, work, costs, (jobs,), spec)
    return rate
