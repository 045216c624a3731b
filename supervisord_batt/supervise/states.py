"""The life of one worker instance: named states and one transition function.

`Instance.handle(event, now)` is the whole state machine. It does no I/O and reads no
clock: the daemon passes `now` (monotonic seconds), feeds back what happened (a spawn, an
exit, a timer, a verified kill) as events, and executes the actions returned. Every state
change returns exactly one `Transition` record, first in the list, for the daemon to log.

Edges (state + event -> new state [actions]); any pair not listed changes nothing and
returns [] (a stale Wake, a Deadline after the kill began, a Start while running):

    STOPPED/EXITED + Start      -> STARTING [Spawn]
    FATAL + Start               -> STARTING [Spawn]   failures cleared, delay reset
    STARTING + Spawned(pid)     -> RUNNING [SetDeadline(now + wall_clock_limit)]
                                   (or STOPPING [KillTree "stopped"] if Stop came first)
    STARTING + SpawnFailed      -> BACKOFF [SetTimer] | FATAL (start limit) | STOPPED
    STARTING + Stop             -> STARTING, wanted=False (acted on at Spawned/SpawnFailed)
    BACKOFF + Wake              -> STARTING [Spawn]
    BACKOFF + Stop              -> STOPPED [CancelTimer]
    RUNNING + Deadline(reason)  -> STOPPING [KillTree reason, SetDeadline(None)]
    RUNNING + Stop              -> STOPPING [KillTree "stopped", SetDeadline(None)]
    RUNNING + Exited(rc)        -> STOPPING [KillTree "leftovers", SetDeadline(None)]
    STOPPING + Exited(rc)       -> STOPPING, exit recorded (first one only)
    STOPPING + Stop             -> STOPPING, wanted=False
    STOPPING + TreeGone         -> STOPPED if not wanted, else by the restart policy:
                                   BACKOFF [SetTimer] | EXITED | FATAL (start limit)
    STOPPED/EXITED/FATAL + Stop -> same state, wanted=False

`wanted` is the operator's intent (Start sets it, Stop clears it); EXITED and FATAL keep
it, so a status can tell "stopped by an operator" from "gave up".
"""

# Why the main pid's exit is not the end of a run. A batch job's tree outlives its main
# process: loky workers, resource trackers, grandchildren that called setsid. So an exit
# only moves RUNNING to STOPPING and asks for the tree to be killed ("leftovers"); the
# run ends at TreeGone, once the kill executor has seen every task of the tree gone. A
# restart therefore never overlaps with the previous run's survivors, which would hold
# the very pid and thread budget the new run needs.
#
# Why the Transition record is computed in `handle` and not by each edge. Edges only call
# `_goto(state, reason)`; `handle` compares the state before and after and emits one
# record when it differs. One record per state change holds by construction.

from __future__ import annotations

import signal
from collections import deque
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from supervisord_batt import protocol
from supervisord_batt.config.records import ProgramConfig

# the limits a run is killed for; each is also the name of the program's config key that
# sets it (`programs.<name>.wall_clock_limit`), which `report` names in its advice
LIMIT_REASONS = ("wall_clock_limit", "progress_timeout")
# how a run ended, as the supervisor's tally, the stats lines, the metrics and `report`
# count it: completed (exit 0), failed (non-zero or a signal of its own), killed (at a
# limit), stopped (by an operator or a reload); "unknown" is counted only where it
# happened (a worker adopted after a crash that ended before anyone could see how)
RUN_OUTCOMES = ("completed", "failed", "killed", "stopped")


class State(str, Enum):
    STOPPED = "STOPPED"  # not running, nobody wants it running
    STARTING = "STARTING"  # Spawn asked for, no pid yet
    RUNNING = "RUNNING"  # main pid alive
    STOPPING = "STOPPING"  # tree being killed (stop, limit, or leftovers after an exit)
    BACKOFF = "BACKOFF"  # waiting for the timer before an automatic restart
    EXITED = "EXITED"  # ended, and the restart policy says no
    FATAL = "FATAL"  # too many failed starts; only an operator Start recovers it


# ------------------------------------------------------------------------ exit status


def decode_wait_status(returncode: int | None) -> tuple[int | None, int | None]:
    """(exit code, signal number) from a subprocess returncode (negative = signal; None:
    not known, for a worker adopted after a crash whose status went to its new parent)."""
    if returncode is None:
        return None, None
    if returncode < 0:
        return None, -returncode
    return returncode, None


def signal_name(number: int) -> str:
    """'SIGTERM' for 15; 'signal 99' for a number with no name."""
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


@dataclass(frozen=True)
class ExitInfo:
    """How a run ended. `reason`: exited, killed, wall_clock_limit, progress_timeout,
    stopped or spawn_failed; `detail` carries the spawn error."""

    code: int | None
    signal: int | None
    reason: str
    runtime: float
    detail: str | None = None

    @property
    def killed_by_limit(self) -> bool:
        return self.reason in LIMIT_REASONS

    def describe(self) -> str:
        """'exit 3', 'killed by SIGKILL', 'killed by SIGTERM at wall_clock_limit after 600.0s'."""
        if self.reason == "spawn_failed":
            return f"spawn failed: {self.detail}"
        if self.code is not None:
            status = f"exit {self.code}"
        elif self.signal is not None:
            status = f"killed by {signal_name(self.signal)}"
        else:
            status = "exit status unknown"
        if self.killed_by_limit:
            return f"{status} at {self.reason} after {self.runtime:.1f}s"
        if self.reason == "stopped":
            return f"{status} after stop"
        return status

    def to_json(self) -> protocol.ExitRow:
        return {
            "code": self.code,
            "signal": None if self.signal is None else signal_name(self.signal),
            "reason": self.reason,
            "runtime_s": round(self.runtime, 3),
            "by_limit": self.killed_by_limit,
            "detail": self.detail,
        }


# ---------------------------------------------------------------------------- events


@dataclass(frozen=True)
class Start:
    """An operator's start, or autostart."""


@dataclass(frozen=True)
class Stop:
    """An operator's stop, or daemon shutdown."""


@dataclass(frozen=True)
class Spawned:
    pid: int


@dataclass(frozen=True)
class SpawnFailed:
    errno: int
    message: str


@dataclass(frozen=True)
class Exited:
    """The main pid exited (the daemon reaped it); its tree may live on. None: its status
    is not known (adopted after a crash, reaped by its new parent)."""

    returncode: int | None


@dataclass(frozen=True)
class Deadline:
    reason: str  # "wall_clock_limit" or "progress_timeout"


@dataclass(frozen=True)
class TreeGone:
    """The kill executor verified that every task of the tree is gone."""

    tasks_at_kill: int
    needed_sigkill: int


@dataclass(frozen=True)
class Wake:
    """The backoff timer fired."""


Event = Start | Stop | Spawned | SpawnFailed | Exited | Deadline | TreeGone | Wake


# --------------------------------------------------------------------------- actions


@dataclass(frozen=True)
class Transition:
    """One state change, for the daemon to log."""

    program: str
    instance: str
    pid: int | None
    old: State
    new: State
    reason: str

    def fields(self) -> dict[str, Any]:
        return {
            "program": self.program,
            "instance": self.instance,
            "pid": self.pid,
            "from": self.old.value,
            "to": self.new.value,
            "reason": self.reason,
        }


@dataclass(frozen=True)
class Spawn:
    """Start the program's command; answer Spawned or SpawnFailed."""


@dataclass(frozen=True)
class KillTree:
    """Signal the whole tree, wait `grace`, SIGKILL what is left, verify; answer TreeGone."""

    signal: signal.Signals
    grace: float
    reason: str


@dataclass(frozen=True)
class SetTimer:
    """Arm (or replace) this instance's one timer; answer Wake when it fires."""

    at: float


@dataclass(frozen=True)
class CancelTimer:
    pass


@dataclass(frozen=True)
class SetDeadline:
    """Arm the wall-clock deadline (answer Deadline) at `at`; None disarms it."""

    at: float | None


Action = Transition | Spawn | KillTree | SetTimer | CancelTimer | SetDeadline


# -------------------------------------------------------------------------- instance


@dataclass
class Instance:
    """One instance ("batt:0") of a program and its state."""

    program: ProgramConfig
    index: int
    name: str = field(init=False)
    state: State = State.STOPPED
    pid: int | None = None
    started_at: float | None = None
    restarts: int = 0
    last_exit: ExitInfo | None = None
    delay: float = field(init=False)  # the wait before the next automatic restart
    failures: deque[float] = field(default_factory=deque)  # times of failed starts
    wake_at: float | None = None
    deadline_at: float | None = None
    stop_reason: str | None = None
    wanted: bool = False
    _exit_seen: bool = field(default=False, repr=False)  # this run's exit is in last_exit
    _reason: str = field(default="", repr=False)  # set by _goto for handle's record

    def __post_init__(self) -> None:
        self.name = f"{self.program.name}:{self.index}"
        self.delay = self.program.backoff.initial

    def handle(self, event: Event, now: float) -> list[Action]:
        """Apply one event; return a Transition (if the state changed), then the actions."""
        old, old_pid = self.state, self.pid
        actions = self._dispatch(event, now)
        if self.state is old:
            return actions
        pid = self.pid if self.pid is not None else old_pid
        record = Transition(self.program.name, self.name, pid, old, self.state, self._reason)
        return [record, *actions]

    # complexity kept: the state machine's edges as one match, in the order of the module
    # docstring's table; split, the table would be spread over several methods
    def _dispatch(self, event: Event, now: float) -> list[Action]:  # noqa: C901, PLR0912
        """The edges; see the module docstring's table."""
        match self.state, event:
            case ((State.STOPPED | State.EXITED), Start()):
                # idle, and wanted now: spawn
                return self._spawn("start")
            case State.FATAL, Start():
                # operator recovery: forget the failed starts and the grown delay
                self.failures.clear()
                self.delay = self.program.backoff.initial
                return self._spawn("start after FATAL")
            case State.STARTING, Spawned(pid=pid):
                # the command runs: arm the wall clock, or kill at once if Stop came first
                return self._spawned(pid, now)
            case State.STARTING, SpawnFailed(errno=errno, message=message):
                # nothing runs: a failed start (fork refused, bad command, ...)
                return self._spawn_failed(errno, message, now)
            case State.STARTING, Stop():
                # no pid to kill yet: remembered, acted on at Spawned or SpawnFailed
                self.wanted = False
                return []
            case State.BACKOFF, Wake():
                # the wait is over: automatic restart
                self.wake_at = None
                return self._spawn("backoff over")
            case State.BACKOFF, Stop():
                # operator gives up waiting: drop the timer
                self.wanted, self.wake_at, self.stop_reason = False, None, "stopped"
                self._goto(State.STOPPED, "stopped")
                return [CancelTimer()]
            case State.RUNNING, Deadline(reason=reason):
                # a limit ran out: kill the tree, and remember why for the restart policy
                return self._kill(reason, reason, reason)
            case State.RUNNING, Stop():
                # operator stop or shutdown: kill the tree, no restart
                self.wanted = False
                return self._kill("stopped", "stopped", "stopped")
            case State.RUNNING, Exited(returncode=rc):
                # the main pid is gone but its tree may not be: kill the leftovers
                info = self._record_exit(rc, now)
                return self._kill("leftovers", None, info.describe())
            case State.STOPPING, Exited(returncode=rc):
                # the kill (or the job itself) ended the main pid: record it, keep waiting
                if not self._exit_seen:
                    self._record_exit(rc, now)
                return []
            case State.STOPPING, Stop():
                # the kill in progress suffices; only the restart is called off
                self.wanted = False
                return []
            case State.STOPPING, TreeGone():
                # the run is over: stay down, or apply the restart policy
                return self._tree_gone(now)
            case _, Stop():
                # STOPPED, EXITED, FATAL: already down
                self.wanted = False
                return []
            case _:
                # stale or unexpected (a Wake outside BACKOFF, a Deadline while stopping,
                # a Start while up, an unknown object): ignored, never raised
                return []

    # ------------------------------------------------------------------------- edges

    def _goto(self, state: State, reason: str) -> None:
        self.state, self._reason = state, reason

    def _spawn(self, reason: str) -> list[Action]:
        self.wanted, self.stop_reason = True, None
        self._goto(State.STARTING, reason)
        return [Spawn()]

    def _spawned(self, pid: int, now: float) -> list[Action]:
        self.pid, self.started_at, self._exit_seen = pid, now, False
        if not self.wanted:
            return self._kill("stopped", "stopped", "stopped before it ran")
        limit = self.program.wall_clock_limit
        self._goto(State.RUNNING, "spawned")
        if limit is None:
            return []
        self.deadline_at = now + limit
        return [SetDeadline(self.deadline_at)]

    def _spawn_failed(self, errno: int, message: str, now: float) -> list[Action]:
        detail = message if message.startswith("[Errno") else f"[Errno {errno}] {message}"
        self.last_exit = ExitInfo(None, None, "spawn_failed", 0.0, detail)
        if not self.wanted:
            self._goto(State.STOPPED, "stopped; " + self.last_exit.describe())
            return []
        return self._restart(self.last_exit, now)

    def _kill(self, kill_reason: str, stop_reason: str | None, why: str) -> list[Action]:
        """RUNNING (or STARTING) to STOPPING: kill the tree and disarm the deadline."""
        if stop_reason is not None:
            self.stop_reason = stop_reason
        self.deadline_at = None
        self._goto(State.STOPPING, why)
        program = self.program
        return [KillTree(program.stop_signal, program.stop_grace, kill_reason), SetDeadline(None)]

    def _record_exit(self, returncode: int | None, now: float) -> ExitInfo:
        code, sig = decode_wait_status(returncode)
        reason = self.stop_reason or ("killed" if sig is not None else "exited")
        runtime = now - self.started_at if self.started_at is not None else 0.0
        self.last_exit = ExitInfo(code, sig, reason, runtime)
        self._exit_seen = True
        return self.last_exit

    def _tree_gone(self, now: float) -> list[Action]:
        if not self._exit_seen:
            # TreeGone without Exited (the daemon lost the main pid's status): unknown
            runtime = now - self.started_at if self.started_at is not None else 0.0
            self.last_exit = ExitInfo(None, None, self.stop_reason or "killed", runtime)
            self._exit_seen = True
        info = self.last_exit
        assert info is not None  # set just above or by _record_exit
        self.pid = None
        if not self.wanted:
            self._goto(State.STOPPED, info.describe())
            return []
        if not should_restart(self.program.restart, info):
            self._goto(State.EXITED, f"{info.describe()} (restart: {self.program.restart})")
            return []
        return self._restart(info, now)

    def _restart(self, info: ExitInfo, now: float) -> list[Action]:
        """BACKOFF before an automatic restart, or FATAL past the start limit."""
        backoff, limit = self.program.backoff, self.program.start_limit
        failed = info.reason == "spawn_failed" or info.runtime < self.program.min_runtime
        if failed:
            self.failures.append(now)
            while self.failures and now - self.failures[0] > limit.interval:
                self.failures.popleft()
            if len(self.failures) > limit.burst:
                n, span = len(self.failures), limit.interval
                self._goto(State.FATAL, f"start limit: {n} failed starts within {span:g}s")
                return []
            wait, self.delay = self.delay, min(self.delay * backoff.factor, backoff.max)
        else:
            # a run of at least min_runtime: the program works, start the backoff afresh
            self.failures.clear()
            wait = self.delay = backoff.initial
        self.restarts += 1
        self.wake_at = now + wait
        self._goto(State.BACKOFF, f"{info.describe()}; restart in {wait:g}s")
        return [SetTimer(self.wake_at)]

    # ------------------------------------------------------------------ outside view

    def update_program(self, program: ProgramConfig) -> list[Action]:
        """Take a reloaded config for this instance; re-arm the deadline if it moved."""
        if program.name != self.program.name:
            raise ValueError(f"{self.name}: cannot become program {program.name!r}")
        self.program = program
        self.delay = min(max(self.delay, program.backoff.initial), program.backoff.max)
        if self.state is not State.RUNNING or self.started_at is None:
            return []
        limit = program.wall_clock_limit
        at = None if limit is None else self.started_at + limit
        if at == self.deadline_at:
            return []
        self.deadline_at = at  # one already past fires at once
        return [SetDeadline(at)]

    def snapshot(self, now: float) -> protocol.InstanceState:
        """JSON-ready status of this instance."""
        uptime = backoff = None
        if self.state in (State.RUNNING, State.STOPPING) and self.started_at is not None:
            uptime = round(now - self.started_at, 3)
        if self.state is State.BACKOFF and self.wake_at is not None:
            backoff = round(max(0.0, self.wake_at - now), 3)
        left = None  # time left before the wall-clock limit
        if self.state is State.RUNNING and self.deadline_at is not None:
            left = round(max(0.0, self.deadline_at - now), 3)
        return {
            "name": self.name,
            "program": self.program.name,
            "state": self.state.value,
            "pid": self.pid,
            "uptime_s": uptime,
            "restarts": self.restarts,
            "last_exit": None if self.last_exit is None else self.last_exit.to_json(),
            "backoff_s": backoff,
            "wall_clock_left_s": left,
            "stop_reason": self.stop_reason,
        }


def should_restart(policy: str, info: ExitInfo) -> bool:
    """The restart policy: always, never, or on-failure (non-zero, signal, or a limit)."""
    if policy == "always":
        return True
    if policy == "never":
        return False
    if info.code is None and info.signal is None:  # not known: the safe side is a restart
        return True
    return info.killed_by_limit or info.signal is not None or (info.code or 0) != 0
