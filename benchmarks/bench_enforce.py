"""Wall-clock enforcement and exit detection, beside their floors, in one run.

Enforcement: a 4-process tree (a worker and 3 children) runs in a WorkerCgroup; a deadline
armed with loop.call_at starts kill_tree; the overshoot is the time from the deadline to
the whole tree verified gone, for (a) a tree that exits on SIGTERM and (b) one that ignores
it, so it needs SIGKILL after the grace (reported as overshoot minus grace). The floor is a
bare killpg(SIGKILL) of the same tree, then a blocking wait for each of its processes.

Exit detection: a child records CLOCK_MONOTONIC (system-wide on Linux, so comparable across
processes) just before os._exit and writes it to a pipe; the latency is the time until
ExitWatcher's callback runs. The floor is a blocking os.waitpid on the same kind of child.

Targets: overshoot p99 under 50 ms beyond the grace; exit detection p99 under 5 ms.

    python benchmarks/bench_enforce.py [--runs 50] [--grace 0.2]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import select
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from supervisord_batt.supervise.cgroups import WorkerCgroup, WorkerCgroups
from supervisord_batt.supervise.proctree import (
    ExitWatcher,
    become_subreaper,
    kill_tree,
    reap_adopted,
    spawn,
)

# worker + 3 children; argv[1] == "ignore": every process ignores SIGTERM
TREE = r"""
import os, signal, sys, time
if sys.argv[1] == "ignore":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
for _ in range(3):
    if os.fork() == 0:
        while True:
            time.sleep(60)
print("ready", flush=True)
while True:
    time.sleep(60)
"""
EXIT = "import os, time\nt = time.monotonic()\nos.write(1, repr(t).encode())\nos._exit(0)\n"
ENV = {"PATH": os.defpath}
LEAD_S = 0.02  # the deadline is armed this far after the tree is ready


class Bench:
    """Runs the measurements; owns every process and cgroup it makes."""

    def __init__(self, grace: float) -> None:
        self.grace = grace
        self.cgroups = WorkerCgroups.detect(f"bench-enforce-{os.getpid()}")
        self.procs: list[subprocess.Popen[bytes]] = []
        self.n = 0

    async def _start_tree(self, mode: str) -> tuple[subprocess.Popen[bytes], WorkerCgroup | None]:
        self.n += 1
        cg = self.cgroups.create(f"bench:{self.n}")
        proc = spawn(
            [sys.executable, "-c", TREE, mode],
            cwd=None,
            env=ENV,
            user=None,
            group=None,
            cgroup=cg,
            stdout=subprocess.PIPE,
            stderr=None,
        )
        self.procs.append(proc)
        assert proc.stdout is not None
        loop, ready = asyncio.get_running_loop(), asyncio.Event()
        loop.add_reader(proc.stdout.fileno(), ready.set)
        try:
            await asyncio.wait_for(ready.wait(), 30)
        finally:
            loop.remove_reader(proc.stdout.fileno())
        assert proc.stdout.readline() == b"ready\n"
        return proc, cg

    def _finish(self, proc: subprocess.Popen[bytes], cg: WorkerCgroup | None) -> None:
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
        self.procs.remove(proc)
        reap_adopted({p.pid for p in self.procs})
        if cg is not None:
            self.cgroups.forget(cg)

    async def enforce(self, mode: str) -> float:
        """Seconds from the deadline to the tree verified gone (minus the grace if KILLed)."""
        proc, cg = await self._start_tree(mode)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + LEAD_S
        done: asyncio.Future[float] = loop.create_future()

        def fire() -> None:
            task = loop.create_task(
                kill_tree(
                    proc.pid,
                    cgroup=cg,
                    stop_signal=signal.SIGTERM,
                    grace=self.grace,
                    reap=proc.poll,
                )
            )
            task.add_done_callback(lambda t: done.set_result(loop.time()))
            self.last = task

        loop.call_at(deadline, fire)
        gone_at = await done
        report = self.last.result()
        assert not report.survivors and len(report.pids) == 4, report
        assert report.needed_sigkill == (4 if mode == "ignore" else 0), report
        self._finish(proc, cg)
        return gone_at - deadline - (self.grace if mode == "ignore" else 0.0)

    async def enforce_floor(self) -> float:
        """A bare killpg(SIGKILL) of the same tree, then a blocking wait for all four."""
        proc, cg = await self._start_tree("ignore")
        pids = [proc.pid, *(cg.procs() if cg else [])]
        fds = [os.pidfd_open(p) for p in set(pids)]
        started = time.monotonic()
        os.killpg(proc.pid, signal.SIGKILL)
        os.waitpid(proc.pid, 0)
        _wait_all_readable(fds)
        took = time.monotonic() - started
        for fd in fds:
            os.close(fd)
        proc.returncode = -signal.SIGKILL
        self._finish(proc, cg)
        return took

    async def exit_latency(self) -> float:
        """ExitWatcher: from the child's last clock reading to our callback."""
        loop = asyncio.get_running_loop()
        fired: asyncio.Future[float] = loop.create_future()
        proc = self._spawn_exit()
        watcher = ExitWatcher()
        watcher.watch(proc, lambda code: fired.set_result(time.monotonic()))
        seen = await fired
        watcher.close()
        return seen - self._recorded(proc)

    def exit_floor(self) -> float:
        """A blocking os.waitpid on the same kind of child."""
        proc = self._spawn_exit()
        os.waitpid(proc.pid, 0)
        seen = time.monotonic()
        proc.returncode = 0
        return seen - self._recorded(proc)

    def _spawn_exit(self) -> subprocess.Popen[bytes]:
        proc = spawn(
            [sys.executable, "-c", EXIT],
            cwd=None,
            env=ENV,
            user=None,
            group=None,
            cgroup=None,
            stdout=subprocess.PIPE,
            stderr=None,
        )
        self.procs.append(proc)
        return proc

    def _recorded(self, proc: subprocess.Popen[bytes]) -> float:
        assert proc.stdout is not None
        recorded = float(proc.stdout.read())
        self._finish(proc, None)
        return recorded

    def close(self) -> None:
        for proc in self.procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        for problem in self.cgroups.cleanup():
            print("cleanup:", problem, file=sys.stderr)


def _wait_all_readable(fds: list[int]) -> None:
    left = set(fds)
    poller = select.poll()
    for fd in fds:
        poller.register(fd, select.POLLIN)
    while left:
        for fd, _ in poller.poll(-1):
            poller.unregister(fd)
            left.discard(fd)


def _pct(values: list[float], q: int) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] * 1000


async def _measure(bench: Bench, runs: int) -> dict[str, list[float]]:
    rows: dict[str, list[float]] = {k: [] for k in ROWS}
    steps: dict[str, Callable[[], object]] = {
        "enforce: tree exits on SIGTERM": lambda: bench.enforce("exit"),
        "enforce: ignores SIGTERM (- grace)": lambda: bench.enforce("ignore"),
        "floor: bare killpg(KILL) + waitpid": bench.enforce_floor,
        "exit detection: ExitWatcher": bench.exit_latency,
        "floor: blocking os.waitpid": bench.exit_floor,
    }
    for _ in range(runs):
        for name, step in steps.items():
            result = step()
            value = await result if asyncio.iscoroutine(result) else result
            assert isinstance(value, float)
            rows[name].append(value)
    return rows


ROWS = {
    "enforce: tree exits on SIGTERM": "p99 < 50 ms",
    "enforce: ignores SIGTERM (- grace)": "p99 < 50 ms",
    "floor: bare killpg(KILL) + waitpid": "",
    "exit detection: ExitWatcher": "p99 < 5 ms",
    "floor: blocking os.waitpid": "",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--grace", type=float, default=0.2, help="seconds (default 0.2)")
    args = parser.parse_args()
    subreaper = become_subreaper()
    bench = Bench(args.grace)
    try:
        rows = asyncio.run(_measure(bench, args.runs))
    finally:
        bench.close()
    print(
        f"runs={args.runs} grace={args.grace}s subreaper={subreaper} cgroups: "
        f"{bench.cgroups.reason}"
    )
    print(f"{'measurement':38} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}  target")
    for name, target in ROWS.items():
        v = rows[name]
        print(f"{name:38} {_pct(v, 50):8.2f} {_pct(v, 99):8.2f} {max(v) * 1000:8.2f}  {target}")


if __name__ == "__main__":
    main()
