"""Many short joblib calls: the leasing backend against plain joblib, in one run.

    python benchmarks/joblib_calls.py [--rounds 3] [--calls 40] [--tasks 8] [--n-jobs 2]
        [--task-ms 2] [--modes plain,batt,batt-per-call] [--kinds script,kernel] [--json]

A notebook that loops over hyperparameters runs many short `Parallel` calls. Plain joblib
reuses its loky executor across them; the leasing backend built a new pool per call
(issue 24: 11.2 s against 2.0 s for 40 calls of 8 tasks on 2 workers). This runs the
same loop under each mode, each in a fresh interpreter (so that every mode pays for its
first pool), alternating the modes round after round, and prints per round the wall time
of the calls and the CPU time of the process and its workers, and the ratio to plain
joblib's in the same round, and the wall time of the first call alone (which starts the
pool, and where a burst hold would be paid: `first_extra_s`, over plain's first call in
the same round); then the medians.

Modes: `plain` (joblib's default loky backend, no daemon), `batt` (the backend
"supervisord-batt", leasing from a daemon started here, its pool kept between calls),
`batt-per-call` (the same with $SUPERVISORD_BATT_KEEP_ALIVE=0: a pool per call, as
before issue 24).

With `--kinds kernel` (or `script,kernel`), the same loop as a notebook: a real IPython
kernel (jupyter_client and ipykernel), one cell per call, plain against a kernel whose
config loads the extension (docs/NOTEBOOKS.md, operator's line), timed from the first
call's cell to the last's.

The daemon's budget cannot be decided by the host's load (pressure thresholds at 99 and
100%, as in the tests): the benchmark measures the backend, not the budget's answer.
Every process started here is stopped by pid before the benchmark exits.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository, for benchmarks.*

from benchmarks.daemonproc import spawn_daemon

REPO = Path(__file__).resolve().parents[1]

# the loop's task and imports, the same in a script and in a kernel's first cell
SETUP = textwrap.dedent(
    """
    import json, sys, time
    import joblib

    def task(x, ms):
        end = time.process_time() + ms / 1000
        while time.process_time() < end:
            pass
        return x * x
    """
)

JOB = SETUP + textwrap.dedent(
    """
    mode, calls, tasks, n_jobs, ms = sys.argv[1], *map(int, sys.argv[2:5]), float(sys.argv[5])
    if mode != "plain":
        import supervisord_batt.joblib as batt
        joblib.parallel_config(backend=batt.BACKEND_NAME)  # for this process, as %load_ext
    start = time.perf_counter()
    for i in range(calls):
        out = joblib.Parallel(n_jobs=n_jobs)(joblib.delayed(task)(x, ms) for x in range(tasks))
        assert out == [x * x for x in range(tasks)], out
        if i == 0:
            first = time.perf_counter() - start
    print(json.dumps({"wall_s": time.perf_counter() - start, "first_s": first}))
    """
)


def start_daemon(workdir: Path) -> tuple[subprocess.Popen[bytes], Path]:
    sock = workdir / "d.sock"
    (workdir / "c.yaml").write_text(
        f"daemon:\n  socket: {sock}\n  log_format: json\n  log_file: {workdir / 'd.log'}\n"
        "budget:\n  max_per_lease: 8\n  memory_per_slot: 1MiB\n  pressure:\n"
        "    cpu_high: 99\n    cpu_extreme: 100\n    memory_high: 99\n    memory_extreme: 100\n"
    )
    return spawn_daemon(workdir / "c.yaml", sock), sock


def stop(proc: subprocess.Popen[Any]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def mode_env(mode: str, sock: Path) -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=str(REPO), SUPERVISORD_BATT_SOCKET=str(sock))
    for name in ("SUPERVISORD_BATT_FALLBACK", "SUPERVISORD_BATT_NOTEBOOK"):
        env.pop(name, None)
    env.pop("SUPERVISORD_BATT_KEEP_ALIVE", None)
    if mode == "batt-per-call":
        env["SUPERVISORD_BATT_KEEP_ALIVE"] = "0"
    return env


def run_script(mode: str, sock: Path, args: argparse.Namespace) -> dict[str, float]:
    """One fresh interpreter running the loop; its wall time, and the CPU of it and its
    workers (both reaped by the time it exits, so RUSAGE_CHILDREN has them)."""
    argv = [str(x) for x in (mode, args.calls, args.tasks, args.n_jobs, args.task_ms)]
    before = os.times()
    proc = subprocess.run(
        [sys.executable, "-c", JOB, *argv],
        env=mode_env(mode, sock),
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    after = os.times()
    if proc.returncode != 0:
        raise RuntimeError(f"{mode}: exit {proc.returncode}\n{proc.stderr}")
    out: dict[str, float] = json.loads(proc.stdout.strip().splitlines()[-1])
    out["cpu_s"] = (after.children_user - before.children_user) + (
        after.children_system - before.children_system
    )
    return out


@contextmanager
def kernel(env: dict[str, str]) -> Iterator[Any]:
    from jupyter_client.manager import KernelManager

    # Any: kernel_cmd is a trait of jupyter_client < 7 only (7.0 removed it)
    km: Any = KernelManager(kernel_name="python3")
    km.kernel_cmd = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    km.start_kernel(env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    kc = km.client()
    kc.start_channels()
    try:
        kc.wait_for_ready(timeout=60)
        yield kc
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)


def run_cell(kc: Any, code: str) -> str:
    out: list[str] = []

    def hook(msg: dict[str, Any]) -> None:
        if msg["msg_type"] == "stream":
            out.append(msg["content"]["text"])

    reply = kc.execute_interactive(code, timeout=120, output_hook=hook)
    if reply["content"]["status"] != "ok":
        raise RuntimeError(f"cell failed: {code!r}: {reply['content']}")
    return "".join(out)


def run_kernel(mode: str, sock: Path, args: argparse.Namespace, workdir: Path) -> dict[str, float]:
    """A kernel (the extension loaded by its config, unless plain), one cell per call."""
    env = mode_env(mode, sock)
    if mode != "plain":
        profile = workdir / f"ipython-{mode}" / "profile_default"
        profile.mkdir(parents=True, exist_ok=True)
        (profile / "ipython_kernel_config.py").write_text(
            'c.InteractiveShellApp.extensions.append("supervisord_batt")\n'
        )
        env["IPYTHONDIR"] = str(profile.parent)
    cell = (
        f"out = joblib.Parallel(n_jobs={args.n_jobs})("
        f"joblib.delayed(task)(x, {args.task_ms}) for x in range({args.tasks}))\n"
        f"assert out == [x * x for x in range({args.tasks})]"
    )
    with kernel(env) as kc:
        run_cell(kc, SETUP)
        pid = int(run_cell(kc, "import os; print(os.getpid())"))
        cpu0 = _tree_cpu(pid)
        start = time.perf_counter()
        run_cell(kc, cell)
        first = time.perf_counter() - start
        for _ in range(args.calls - 1):
            run_cell(kc, cell)
        wall = time.perf_counter() - start
        cpu = _tree_cpu(pid) - cpu0
    return {"wall_s": wall, "first_s": first, "cpu_s": cpu}


def _tree_cpu(pid: int) -> float:
    """CPU seconds of a process, its reaped children and its live ones."""
    import psutil

    me = psutil.Process(pid)
    total = sum(me.cpu_times()[:4])
    for child in me.children(recursive=True):
        try:
            total += sum(child.cpu_times()[:2])
        except psutil.Error:
            continue
    return total


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--calls", type=int, default=40)
    ap.add_argument("--tasks", type=int, default=8)
    ap.add_argument("--n-jobs", type=int, default=2)
    ap.add_argument("--task-ms", type=float, default=2.0, help="CPU per task")
    ap.add_argument("--modes", default="plain,batt,batt-per-call")
    ap.add_argument("--kinds", default="script", help="script, kernel (notebook cells) or both")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    modes = args.modes.split(",")
    if "plain" not in modes:
        modes.insert(0, "plain")
    kinds = args.kinds.split(",")
    if not set(kinds) <= {"script", "kernel"}:
        ap.error(f"--kinds: script and/or kernel, not {args.kinds!r}")
    rounds: dict[str, list[dict[str, dict[str, float]]]] = {k: [] for k in kinds}
    with tempfile.TemporaryDirectory(prefix="batt-calls-") as tmp:
        proc, sock = start_daemon(Path(tmp))
        try:
            for r in range(args.rounds):
                for kind in kinds:
                    order = modes if r % 2 == 0 else modes[::-1]
                    row = {}
                    for mode in order:
                        if kind == "script":
                            row[mode] = run_script(mode, sock, args)
                        else:
                            row[mode] = run_kernel(mode, sock, args, Path(tmp))
                    for mode in modes:
                        row[mode]["wall_ratio"] = row[mode]["wall_s"] / row["plain"]["wall_s"]
                        row[mode]["cpu_ratio"] = row[mode]["cpu_s"] / row["plain"]["cpu_s"]
                        row[mode]["first_extra_s"] = row[mode]["first_s"] - row["plain"]["first_s"]
                    rounds[kind].append(row)
                    if not args.json:
                        print_round(kind, r, modes, row)
        finally:
            stop(proc)
    summary = {
        kind: {
            mode: {
                key: statistics.median(row[mode][key] for row in rows)
                for key in (
                    "wall_s",
                    "cpu_s",
                    "wall_ratio",
                    "cpu_ratio",
                    "first_s",
                    "first_extra_s",
                )
            }
            for mode in modes
        }
        for kind, rows in rounds.items()
    }
    if args.json:
        print(json.dumps({"args": vars(args), "rounds": rounds, "median": summary}, indent=1))
        return 0
    print(
        f"\nmedian of {args.rounds} round(s): {args.calls} calls x {args.tasks} tasks "
        f"of {args.task_ms:g} ms CPU, n_jobs={args.n_jobs}"
    )
    for kind, per_mode in summary.items():
        for mode, fig in per_mode.items():
            print(
                f"  {kind:6} {mode:14} wall {fig['wall_s']:6.2f} s ({fig['wall_ratio']:.2f}x plain)"
                f"  cpu {fig['cpu_s']:6.2f} s ({fig['cpu_ratio']:.2f}x plain)"
                f"  first call {fig['first_s']:5.2f} s ({fig['first_extra_s']:+.2f} s)"
            )
    return 0


def print_round(kind: str, r: int, modes: list[str], row: dict[str, dict[str, float]]) -> None:
    parts = [
        f"{mode} {row[mode]['wall_s']:.2f}s/{row[mode]['wall_ratio']:.2f}x"
        f" cpu {row[mode]['cpu_s']:.2f}s/{row[mode]['cpu_ratio']:.2f}x"
        f" first {row[mode]['first_s']:.2f}s"
        for mode in modes
    ]
    print(f"{kind} round {r + 1}: " + "; ".join(parts), flush=True)


if __name__ == "__main__":
    sys.exit(main())
