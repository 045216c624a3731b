"""`supervisord-batt cleanup`: what the unit runs after the daemon stopped (ExecStopPost).

The unit keeps workers alive when the daemon dies (KillMode=process), so that a crash
costs no job: systemd restarts the daemon, which adopts them from its state record. A
stop must still stop every worker. The daemon does that itself on SIGTERM and removes
its record; this is for a stop that did not end that way (the daemon was killed at
TimeoutStopSec, or died during its stop): every process the record names, and every
member of their worker cgroups, gets SIGKILL, those cgroups (and their cpu counterparts)
are removed, and the record goes.

After a crash (systemd's $SERVICE_RESULT says signal, core-dump, watchdog, oom-kill or
exit-code) it does nothing: the restart that follows adopts the workers.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path
from typing import Any

from supervisord_batt.daemon.staterecord import StateRecord
from supervisord_batt.supervise.proctree import identity

# systemd.exec(5), $SERVICE_RESULT: the daemon crashed, and Restart=on-failure brings it
# back to adopt its workers
CRASHED = frozenset({"signal", "core-dump", "watchdog", "oom-kill", "exit-code"})


def cleanup(socket: Path, result: str | None) -> list[str]:
    """Kill what the daemon of `socket` left (see the module); one line per action."""
    if result in CRASHED:
        return [f"the daemon crashed ({result}): its workers are kept for the restart"]
    record = StateRecord(socket, dict)
    data = record.load()
    if data is None:
        return []
    said = []
    parents = set()
    for name, inst in (data.get("instances") or {}).items():
        killed = _kill_instance(inst)
        if killed:
            said.append(f"{name}: SIGKILL to {', '.join(map(str, sorted(killed)))}")
        for key in ("cgroup", "cpu_cgroup"):
            if cgroup := (inst.get("run") or {}).get(key):
                parents.add(Path(cgroup).parent)
    for parent in parents:  # the workers' roots, once empty
        with contextlib.suppress(OSError):
            os.rmdir(parent)
    record.remove()
    return said


def _kill_instance(inst: dict[str, Any]) -> set[int]:
    """SIGKILL to the instance's main process (if it is still the one recorded) and every
    member of its cgroup and its cpu cgroup, until each is empty; both removed."""
    run = inst.get("run") or {}
    killed: set[int] = set()
    pid, start = inst.get("pid"), run.get("pid_start")
    if isinstance(pid, int) and identity((pid,)).get(pid) == start:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
            killed.add(pid)
    for key in ("cgroup", "cpu_cgroup"):
        killed |= _kill_members(run.get(key))
    return killed


def _kill_members(cgroup: str | None) -> set[int]:
    """SIGKILL every member of `cgroup` until it is empty (a few seconds at most), then
    remove it; the pids signalled."""
    killed: set[int] = set()
    if not cgroup or not Path(cgroup).parent.name.endswith(".workers"):  # not a worker's
        return killed
    procs = Path(cgroup) / "cgroup.procs"
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline:
        try:
            members = [int(p) for p in procs.read_text().split()]
        except OSError:
            break
        if not members:
            break
        for member in members:
            with contextlib.suppress(ProcessLookupError):
                os.kill(member, signal.SIGKILL)
                killed.add(member)
        time.sleep(0.01)
    with contextlib.suppress(OSError):
        os.rmdir(cgroup)
    return killed
