"""A simulated host of 8-64 cores and 16-256 jobs, driving the project's real BudgetLedger.

    python benchmarks/simulate.py [--quick] [--json] [--seed N] [--results FILE]

These machines have 2 cores; the VMs the daemon runs on have more. This answers, by a
seeded discrete-event simulation (benchmarks/sim/), what the 2-core measurements cannot:
does the budget still beat a fixed pool per job and the per-process heuristic on 32 cores
with 64 jobs, with no failure and no hang, and how should the budget be tuned there?

1. Validation first. The model's three CPU costs are fitted to the CPU seconds (not the
   tasks/s) that benchmarks/contention.py measured on this machine, in the results file it
   wrote (`--results`, default benchmarks/results/contention-2core.json); then every
   measured cell is simulated and printed beside the measurement: tasks/s within 15% and
   the same outcome (finish, fail, hang) in every cell, or the model is not trusted.
2. The table: cores {8, 32, 64} x jobs {16, 64, 256} x task limit {512, 4096, none}, every
   policy (unguarded, heuristic, sequential, reused pool, budget): tasks/s, failed tasks,
   hung jobs, peak tasks, p95 job time, and the budget over the best other policy.
3. The sweep at 32 cores / 64 jobs / 2048 tasks: reserve_tasks, sample_interval, the
   pressure thresholds and max_per_lease, each moved alone, and the load of programs
   outside the budget moved up until jobs fail.
4. Users: two to eight users with unequal job counts on 32 or 64 cores (60 jobs against
   4, ...), each keeping its jobs running: each user's tasks/s against an equal split,
   and the host's total against the single-queue budget (every lease of one uid, as
   before the budget was split per user), with CPU time shared per user and per thread
   (benchmarks/sim/users.py).

`--quick` runs the validation, 3 cells of the table and 1 of the users' (seconds);
`--json` prints one JSON object: `calibration`, `validation` (cell, measured,
simulated), `cells` (one row per cell and policy), `summary` (per cell, the budget over
the best other), `sweep` and `users`. What the model is and what it leaves out:
docs/SIMULATION.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script: the repository root, for benchmarks.sim
    sys.path.insert(0, str(ROOT))

from benchmarks.sim.cells import Check, calibrate, validate  # noqa: E402
from benchmarks.sim.model import POLICIES, Costs  # noqa: E402
from benchmarks.sim.table import (  # noqa: E402
    GOAL,
    SAMPLES,
    SWEEP_CELL,
    TASKS,
    Cell,
    SweepPoint,
    run_sweep,
    run_table,
    table_cells,
)
from benchmarks.sim.users import TOTAL_GOAL, USER_GOAL, UserCell, run_users  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "contention-2core.json"


def run(args: argparse.Namespace) -> dict[str, Any]:
    report = json.loads(Path(args.results).read_text())
    costs = calibrate(report)
    t0 = time.perf_counter()
    checks = validate(report, costs)
    cells = list(run_table(costs, table_cells(args.quick), args.seed))
    sweep = [] if args.quick else list(run_sweep(costs, args.seed))
    users = list(run_users(costs, args.quick, args.seed))
    return {
        "params": {
            "seed": args.seed,
            "quick": args.quick,
            "results": _shown(Path(args.results)),
            "table_workload": f"W = cores, {TASKS} tasks x {SAMPLES} samples, all jobs at once",
            "goal": GOAL,
            "run_s": round(time.perf_counter() - t0, 1),
        },
        "calibration": asdict(costs),
        "validation": [c.row() for c in checks],
        "cells": [r.row() for cell in cells for r in cell.results],
        "summary": [cell.summary() for cell in cells],
        "sweep": [p.row() for p in sweep],
        "users": [u.row() for u in users],
        "_objects": (costs, checks, cells, sweep, users),
    }


def _shown(path: Path) -> str:
    """The results file as the repository names it (never a path outside it)."""
    try:
        return str(path.resolve().relative_to(ROOT))
    except ValueError:
        return path.name


# -- text output (markdown tables, for a terminal and for docs/SIMULATION.md) -----------


def print_validation(costs: Costs, checks: list[Check], source: str) -> None:
    print(f"## Validation against this machine's measured cells ({source})\n")
    print(
        f"Fitted to the measured CPU seconds: speed {costs.speed:.3f} CPU s per planned s, "
        f"job start {costs.job_start_cpu:.3f} s, loky worker start "
        f"{costs.worker_spawn_cpu:.3f} s.\n"
    )
    print("| pids.max / policy | measured tasks/s | simulated | error | outcome (measured / sim) |")
    print("|---|---:|---:|---:|---|")
    for c in checks:
        err = "-" if c.error == float("inf") else f"{c.error:.1%}"
        flag = "" if c.ok else " **off**"
        print(
            f"| {c.cell} | {c.measured:.2f} | {c.simulated:.2f} | {err}{flag} | "
            f"{c.measured_outcome} / {c.simulated_outcome} |"
        )
    ok = sum(c.ok for c in checks)
    print(f"\n{ok} of {len(checks)} cells within 15% with the same outcome.\n")


def _fh(r: Any) -> str:
    bad = []
    if r.failed:
        bad.append(f"{r.failed} failed")
    if r.hung:
        bad.append(f"{r.hung} hung")
    return f"{r.tasks_per_s:.1f}" + (f" ({', '.join(bad)})" if bad else "")


def print_table(cells: list[Cell]) -> None:
    print(
        f"## The table: every job wants W = cores workers, {TASKS} tasks x {SAMPLES} "
        "samples, all jobs at once\n"
    )
    print("tasks/s (failed tasks, hung jobs); budget / best other policy, goal >= 0.95\n")
    print("| cores | jobs | limit | " + " | ".join(POLICIES) + " | budget / best |")
    print("|---:|---:|---:|" + "---:|" * (len(POLICIES) + 1))
    for cell in cells:
        cols = " | ".join(_fh(r) for r in cell.results)
        mark = "" if cell.meets_goal else " **short**"
        print(
            f"| {cell.cores} | {cell.jobs} | {cell.task_limit or 'none'} | {cols} | "
            f"{cell.ratio:.2f} vs {cell.best_other.policy}{mark} |"
        )
    print("\npeak tasks / p95 job time (s)\n")
    print("| cores | jobs | limit | " + " | ".join(POLICIES) + " |")
    print("|---:|---:|---:|" + "---:|" * len(POLICIES))
    for cell in cells:
        cols = " | ".join(f"{r.peak_tasks} / {r.p95_job_s:.0f}" for r in cell.results)
        print(f"| {cell.cores} | {cell.jobs} | {cell.task_limit or 'none'} | {cols} |")
    met = sum(c.meets_goal for c in cells)
    print(
        f"\nbudget >= {GOAL} of the best other policy with 0 failed, 0 hung: "
        f"{met} of {len(cells)} cells\n"
    )


def print_sweep(points: list[SweepPoint]) -> None:
    cores, jobs, limit = SWEEP_CELL
    print(f"## The sweep at {cores} cores, {jobs} jobs, {limit} tasks\n")
    condition = None
    for p in points:
        if p.condition != condition:
            condition = p.condition
            print(f"\n### {condition}\n")
            print(
                "| knob | value | policy | tasks/s | failed | hung | pool fallbacks "
                "| others refused | peak tasks | p95 job s |"
            )
            print("|---|---|---|---:|---:|---:|---:|---:|---:|---:|")
        r = p.result
        print(
            f"| {p.knob} | {p.value} | {r.policy} | {r.tasks_per_s:.2f} | {r.failed} | "
            f"{r.hung} | {r.fallbacks} | {r.background_refused} | {r.peak_tasks} | "
            f"{r.p95_job_s:.1f} |"
        )
    print()


def print_users(cells: list[UserCell]) -> None:
    print("## Users with unequal job counts\n")
    print(
        "Each user keeps its jobs running (W = cores wanted each, 8 samples a task). Per "
        "user, its tasks/s against an equal split (its jobs alone on its equal part of the "
        "cores), with the budget split per user and, in brackets, the single-queue budget "
        "(every lease of one uid); the host's total, per-user budget over single-queue. "
        f"Goal: every user >= {USER_GOAL}, total >= {TOTAL_GOAL}.\n"
    )
    for cpu in ("per user", "per thread"):
        print(f"CPU time shared {cpu}\n")
        print("| cores | jobs per user | tasks per job | each user / equal split | total |")
        print("|---:|---|---:|---|---:|")
        for c in cells:
            if c.cpu != cpu:
                continue
            pairs = zip(c.ratios, c.single_ratios, strict=True)
            each = ", ".join(f"{r:.2f} ({q:.2f})" for r, q in pairs)
            mark = "" if c.meets_goal else " **short**"
            jobs = ", ".join(map(str, c.jobs))
            print(f"| {c.cores} | {jobs} | {c.tasks} | {each} | {c.total:.3f}{mark} |")
        met = sum(c.meets_goal for c in cells if c.cpu == cpu)
        print(f"\ngoal met: {met} of {sum(c.cpu == cpu for c in cells)}\n")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--quick", action="store_true", help="validation and 3 cells only")
    p.add_argument("--json", action="store_true", help="print everything as one JSON object")
    p.add_argument("--seed", type=int, default=0, help="seed of the workload (default 0)")
    p.add_argument("--results", default=str(RESULTS), help="contention.py --json output")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    out = run(args)
    costs, checks, cells, sweep, users = out.pop("_objects")
    if args.json:
        print(json.dumps(out, indent=1))
        return 0
    print_validation(costs, checks, out["params"]["results"])
    print_table(cells)
    if sweep:
        print_sweep(sweep)
    print_users(users)
    print(f"simulated in {out['params']['run_s']} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
