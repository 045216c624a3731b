"""Issue 22: which instance a peer belongs to, found without reading every instance.

A real Supervisor in this process spawns real workers into real pids cgroups (it is not
`start()`ed: that would make pytest a child subreaper for the rest of the run); programs
come in through `reload`, as a reload adds them. Each worker forks a child that stays
in its tree and one that leaves it (a new session, its parent gone): both, and the
worker itself, must be found; this process must not. Every instance's cgroup.procs was
read for each such question: the count of those reads is what the test holds at zero.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import pytest

from supervisord_batt.config.loader import load_config_text
from supervisord_batt.supervise.cgroups import WorkerCgroup, WorkerCgroups
from supervisord_batt.supervise.states import State
from supervisord_batt.supervise.supervisor import TERMINAL, Supervisor
from tests.helpers import pids_v1_writable, wait_until

T = TypeVar("T")
INSTANCES = 12
# main: an exec'd sleep whose child stays its child; the subshell's setsid'd sleep is
# orphaned at once (re-parented away from the tree), in a session of its own
WORKER = "(setsid sleep 600 &); sleep 600 & exec sleep 600"
# without a cgroup nothing would find and kill such an orphan: no orphan there
PLAIN_WORKER = "sleep 600 & exec sleep 600"


def _config(command: str = "", numprocs: int = 0) -> str:
    programs = ""
    if numprocs:
        programs = (
            f"programs:\n  w:\n    command: [sh, -c, {command!r}]\n"
            f"    numprocs: {numprocs}\n    output: {{mode: daemon}}\n"
        )
    return f"daemon:\n  log_format: json\n{programs}"


def _run(supervisor: Supervisor, scenario: Callable[[], Awaitable[T]]) -> T:
    """The scenario, then every tree stopped and every cgroup removed, on one loop."""

    async def main() -> T:
        try:
            return await scenario()
        finally:
            await supervisor.shutdown(10.0)

    return asyncio.run(main())


def _children(pid: int) -> list[int]:
    text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    return [int(p) for p in text.split()]


def _session_of(pid: int) -> int:
    return os.getsid(pid)


@pytest.mark.usefixtures("needs_root")
def test_issue_22_a_peers_instance_is_found_without_reading_each_instances_cgroup(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not pids_v1_writable():
        pytest.skip("needs a writable cgroup v1 pids hierarchy for worker cgroups")
    reads: list[Path] = []
    real_procs = WorkerCgroup.procs

    def counted(cg: WorkerCgroup) -> list[int]:
        reads.append(cg.path)
        return real_procs(cg)

    empty = load_config_text(_config(), "empty.yaml")
    full = load_config_text(_config(WORKER, INSTANCES), "full.yaml")
    supervisor = Supervisor(empty, tmp_path / "s.sock", lambda *_: None, dict)
    assert supervisor.cgroups.enabled, supervisor.cgroups.reason

    async def scenario() -> dict[str, str | None]:
        await supervisor.reload(full)
        names = list(supervisor.instances)
        assert await supervisor.wait_for(names, (State.RUNNING, *TERMINAL), 20)
        insts = [supervisor.instances[n] for n in names]
        assert {i.state for i in insts} == {State.RUNNING}, [i.snapshot(0) for i in insts]
        target = insts[INSTANCES // 2]
        main = target.pid
        assert main is not None
        child = wait_until(lambda: _children(main), what="the worker's child")[0]
        # the orphan: in the worker's cgroup, in a session of its own, not a descendant
        cg = supervisor.runs[target.name].cgroup
        assert cg is not None
        orphan = wait_until(
            lambda: [p for p in cg.procs() if _session_of(p) == p],
            what="the orphaned descendant",
        )[0]
        monkeypatch.setattr(WorkerCgroup, "procs", counted)
        try:
            return {
                "main": supervisor.instance_of(main),
                "child": supervisor.instance_of(child),
                "orphan": supervisor.instance_of(orphan),
                "stranger": supervisor.instance_of(os.getpid()),
                "progress": supervisor.progress(child),
                "target": target.name,
            }
        finally:
            monkeypatch.undo()

    found = _run(supervisor, scenario)
    name = found.pop("target")
    assert found == {
        "main": name,
        "child": name,
        "orphan": name,
        "stranger": None,
        "progress": name,
    }
    assert reads == [], f"{len(reads)} reads of instances' cgroup.procs for 5 questions"


def test_without_cgroups_the_ancestry_finds_a_workers_descendants(tmp_path: Path) -> None:
    """Where no worker cgroup can be made, a worker and its child are found by their
    ancestry (the orphan cannot be: it left the tree), and a stranger is not."""
    empty = load_config_text(_config(), "empty.yaml")
    full = load_config_text(_config(PLAIN_WORKER, 2), "full.yaml")
    supervisor = Supervisor(empty, tmp_path / "s.sock", lambda *_: None, dict)
    root = supervisor.cgroups.root
    supervisor.cgroups.cleanup()
    supervisor.cgroups = WorkerCgroups(None, "disabled by the test")

    async def scenario() -> tuple[str, dict[str, str | None]]:
        await supervisor.reload(full)
        names = list(supervisor.instances)
        assert await supervisor.wait_for(names, (State.RUNNING, *TERMINAL), 20)
        inst = supervisor.instances[names[1]]
        assert inst.state is State.RUNNING and inst.pid is not None
        main = inst.pid
        child = wait_until(lambda: _children(main), what="the worker's child")[0]
        return inst.name, {
            "main": supervisor.instance_of(main),
            "child": supervisor.instance_of(child),
            "stranger": supervisor.instance_of(os.getpid()),
        }

    name, found = _run(supervisor, scenario)
    assert root is None or not root.exists()
    assert found == {"main": name, "child": name, "stranger": None}
