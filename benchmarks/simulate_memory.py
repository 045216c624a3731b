"""The simulator's memory table, and its memory model checked against a real run.

    python benchmarks/simulate_memory.py [--results FILE] [--plain FILE] [--json]

1. Validation: each row of benchmarks/memory_proof.py's big case (its --json output,
   default benchmarks/results/memory-proof-2core-quiet.json: jobs of 400 MiB workers in
   a real memory cgroup on this 2-core machine, nothing else busy) simulated with the
   same jobs, limit, daemon and the sessions (else threads) other programs kept
   runnable during that row: tasks/s within 15% and the same OOM outcome (kills or
   none; every task done or not), or the model is not trusted.
   benchmarks/results/memory-proof-2core-loaded.json
   was made beside four busy sessions, which the model replays (`--results` it);
   memory-proof-2core.json, on a loaded host before the sessions were recorded, it does
   not (docs/SIMULATION.md).
2. The plain row, traced: each run of benchmarks/plain_trace.py (--plain, default
   benchmarks/results/plain-trace-2core.json: the proof's plain jobs with the kernel's
   record of every OOM kill, each task's times and the sessions busy beside) simulated
   beside the same sessions; the outcome (jobs surviving) and tasks/s of each, and the
   error over the runs whose outcome the model reproduced.
3. The table (benchmarks/sim/memtable.py): cells of jobs with different worker sizes under
   a memory limit; plain pools, sequential, the budget charging memory_per_slot (512 MiB),
   the budget with each job's learned size, and the budget in the first run of jobs that
   declare their workers' size: tasks/s, OOM kills, failed tasks.
What the memory model is: benchmarks/sim/memory.py and docs/SIMULATION.md (Memory).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script: the repository root, for benchmarks.sim
    sys.path.insert(0, str(ROOT))

from benchmarks.sim.memtable import (  # noqa: E402
    POLICIES,
    TOLERANCE,
    MemCheck,
    PlainCheck,
    run_table,
    validate,
    validate_plain,
)
from benchmarks.sim.model import GIB, MIB  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "memory-proof-2core-quiet.json"
PLAIN = ROOT / "benchmarks" / "results" / "plain-trace-2core.json"


def print_validation(checks: list[MemCheck]) -> None:
    print("## Memory: validation against a real memory cgroup (memory_proof.py)\n")
    print("| row | measured tasks/s | simulated | error | OOM kills (measured / sim) | done |")
    print("|---|---:|---:|---:|---|---|")
    for c in checks:
        flag = "" if c.ok else " **off**"
        print(
            f"| {c.row} | {c.measured:.2f} | {c.simulated:.2f} | {c.error:.1%}{flag} |"
            f" {c.measured_oom} / {c.simulated_oom} | {c.measured_done} / {c.simulated_done} |"
        )
    ok = sum(c.ok for c in checks)
    print(f"\n{ok} of {len(checks)} rows within 15% with the same OOM outcome.\n")


def print_plain(checks: list[PlainCheck]) -> None:
    print("## Memory: the plain row, traced (plain_trace.py), simulated beside its sessions\n")
    print("| sessions | measured: done, kills, tasks/s | simulated | error |")
    print("|---:|---|---|---:|")
    for c in checks:
        flag = "" if c.same_outcome else " (outcome differs)"
        print(
            f"| {c.sessions:.2f} | {c.measured_done}, {c.measured_kills}, {c.measured:.2f} |"
            f" {c.simulated_done}, {c.simulated_kills}, {c.simulated:.2f} | {c.error:.1%}{flag} |"
        )
    same = sorted(c.error for c in checks if c.same_outcome)
    if same:
        ok = sum(e <= TOLERANCE for e in same)
        print(
            f"\nsame outcome in {len(same)} of {len(checks)} runs: error median"
            f" {same[len(same) // 2]:.1%} ({same[0]:.1%}-{same[-1]:.1%}), {ok} within 15%.\n"
        )


def _size(nbytes: int) -> str:
    return f"{nbytes // GIB} GiB" if nbytes % GIB == 0 else f"{nbytes // MIB} MiB"


def table_rows() -> list[dict[str, Any]]:
    rows = []
    for cell, results in run_table():
        mix = ", ".join(f"{n} x {_size(mib * MIB)}" for n, mib in cell.mix)
        for policy, r in zip(POLICIES, results, strict=True):
            rows.append(
                {
                    "cell": cell.name,
                    "cores": cell.cores,
                    "limit": _size(cell.limit),
                    "jobs": mix,
                    "policy": policy,
                    "tasks_per_s": round(r.tasks_per_s, 2),
                    "oom_kills": r.oom_kills,
                    "failed": r.failed,
                    "first_grants": sorted(set(r.grants)),
                }
            )
    return rows


def print_table(rows: list[dict[str, Any]]) -> None:
    print("## Memory: jobs of different worker sizes under a memory limit\n")
    print(
        "Each job wants a pool of 4 (3 in the proof's shape) and runs 32 tasks (16) of 40 ms"
        " CPU and 160 ms waiting; every process that runs a task holds its worker size.\n"
    )
    print("tasks/s (OOM kills, failed tasks)\n")
    print("| cell | cores | limit | jobs x worker size | " + " | ".join(POLICIES) + " |")
    print("|---|---:|---:|---|" + "---:|" * len(POLICIES))
    cells: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        cells.setdefault(row["cell"], []).append(row)
    for name, rs in cells.items():
        cols = " | ".join(f"{r['tasks_per_s']:.2f} ({r['oom_kills']}, {r['failed']})" for r in rs)
        print(f"| {name} | {rs[0]['cores']} | {rs[0]['limit']} | {rs[0]['jobs']} | {cols} |")
    print()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--results", default=str(RESULTS), help="memory_proof.py --json output")
    p.add_argument("--plain", default=str(PLAIN), help="plain_trace.py --json output")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    checks = validate(json.loads(Path(args.results).read_text()))
    plain = validate_plain(json.loads(Path(args.plain).read_text()))
    rows = table_rows()
    if args.json:
        valid = [{**c.__dict__, "error": round(c.error, 3), "ok": c.ok} for c in checks]
        traced = [{**c.__dict__, "error": round(c.error, 3)} for c in plain]
        print(json.dumps({"validation": valid, "plain": traced, "table": rows}, indent=1))
        return 0
    print_validation(checks)
    print_plain(plain)
    print_table(rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
