"""An instance as a JSON record, and back: what a re-executed or restarted daemon needs to
go on supervising a worker the previous one started.

The daemon keeps the record of every instance current (`daemon.staterecord`) and hands
the whole of it to the new code on `reexec`. A record holds the state machine's fields
(state, pid, start and deadline on the monotonic clock, which a new process of the same
boot shares; restarts and backoff) and the run's (its cgroups, the main pid's start time
to tell it from a reused pid, the processes seen in its tree, what it was started as).
Pure: no I/O; `supervisor` opens what the record names.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from supervisord_batt.config.records import ProgramConfig
from supervisord_batt.supervise.changes import IDENTITY
from supervisord_batt.supervise.states import ExitInfo, Instance, State

VERSION = 1


@dataclass(frozen=True)
class RunRecord:
    """What the previous daemon knew of an instance's current run."""

    pid: int | None
    pid_start: int | None  # the main pid's start time (clock ticks after boot)
    cgroup: Path | None
    last_progress: float
    tasks_max: int | None
    known: dict[int, int] = field(default_factory=dict)  # pid -> start time
    spawned: dict[str, Any] = field(default_factory=dict)  # IDENTITY field -> value
    offsets: dict[str, int] = field(default_factory=dict)  # stream -> bytes seen
    cpu_cgroup: Path | None = None  # its own cgroup in the cpu hierarchy (cgroup v1)


def _exit_json(info: ExitInfo | None) -> dict[str, Any] | None:
    if info is None:
        return None
    return {
        "code": info.code,
        "signal": info.signal,
        "reason": info.reason,
        "runtime": info.runtime,
        "detail": info.detail,
    }


def _exit_of(data: dict[str, Any] | None) -> ExitInfo | None:
    if data is None:
        return None
    return ExitInfo(data["code"], data["signal"], data["reason"], data["runtime"], data["detail"])


def identity_of(program: ProgramConfig) -> dict[str, Any]:
    """The fields of what a worker is, as JSON (tuples become lists)."""
    out = {}
    for name in sorted(IDENTITY):
        value = getattr(program, name)
        if isinstance(value, Path):
            value = str(value)
        elif isinstance(value, tuple):
            value = [list(v) if isinstance(v, tuple) else v for v in value]
        out[name] = value
    return out


def spawned_as(program: ProgramConfig, identity: dict[str, Any]) -> ProgramConfig:
    """`program` with the recorded identity put back: what the run was started as."""
    if not identity:
        return program
    values: dict[str, Any] = {}
    for name, value in identity.items():
        if name == "cwd":
            values[name] = Path(value) if value is not None else None
        elif name in ("command",):
            values[name] = tuple(value)
        elif name == "environment":
            values[name] = tuple((k, v) for k, v in value)
        elif name in IDENTITY:
            values[name] = value
    return replace(program, **values)


def to_json(inst: Instance, run: RunRecord) -> dict[str, Any]:
    """One instance and its run, as the state record keeps it."""
    return {
        "state": inst.state.value,
        "pid": inst.pid,
        "started_at": inst.started_at,
        "restarts": inst.restarts,
        "last_exit": _exit_json(inst.last_exit),
        "delay": inst.delay,
        "failures": list(inst.failures),
        "wake_at": inst.wake_at,
        "deadline_at": inst.deadline_at,
        "stop_reason": inst.stop_reason,
        "wanted": inst.wanted,
        "run": {
            "pid_start": run.pid_start,
            "cgroup": str(run.cgroup) if run.cgroup is not None else None,
            "cpu_cgroup": str(run.cpu_cgroup) if run.cpu_cgroup is not None else None,
            "last_progress": run.last_progress,
            "tasks_max": run.tasks_max,
            "known": {str(k): v for k, v in run.known.items()},
            "spawned": run.spawned,
            "offsets": run.offsets,
        },
    }


def run_record(data: dict[str, Any]) -> RunRecord:
    run = data.get("run") or {}
    cgroup, cpu_cgroup = run.get("cgroup"), run.get("cpu_cgroup")
    return RunRecord(
        pid=data.get("pid"),
        pid_start=run.get("pid_start"),
        cgroup=Path(cgroup) if cgroup else None,
        cpu_cgroup=Path(cpu_cgroup) if cpu_cgroup else None,
        last_progress=float(run.get("last_progress", 0.0)),
        tasks_max=run.get("tasks_max"),
        known={int(k): int(v) for k, v in (run.get("known") or {}).items()},
        spawned=dict(run.get("spawned") or {}),
        offsets={str(k): int(v) for k, v in (run.get("offsets") or {}).items()},
    )


def restore(inst: Instance, data: dict[str, Any]) -> None:
    """Put the recorded state machine fields back into a fresh `inst` (its program is the
    current config's). Restarts, backoff and the start limit's history carry over."""
    inst.state = State(data["state"])
    inst.pid = data.get("pid")
    inst.started_at = data.get("started_at")
    inst.restarts = int(data.get("restarts", 0))
    inst.last_exit = _exit_of(data.get("last_exit"))
    inst.delay = float(data.get("delay", inst.delay))
    inst.failures = deque(float(t) for t in data.get("failures", ()))
    inst.wake_at = data.get("wake_at")
    inst.deadline_at = data.get("deadline_at")
    inst.stop_reason = data.get("stop_reason")
    inst.wanted = bool(data.get("wanted", False))
