"""Runs the configured programs: executes what the state machine decides, on the loop.

`states.Instance` decides (pure); this module does: it spawns into a worker cgroup (and
its cpu counterpart, weighted per user: `cpushare`), watches exits by pidfd, arms
wall-clock deadlines with `loop.call_at` (exact, not a tick), kills whole trees, reads
output pipes, and feeds every outcome back as an event.

# Why deadlines are loop timers and progress is checked on the tick
A wall-clock limit must be enforced to the millisecond (the kill's overshoot is measured),
so each one is a `call_at` handle. The no-progress timeout is only as exact as heartbeats
arrive anyway, so the daemon's tick checks it.

# Why the daemon is a subreaper
When a worker's tree is killed, its grandchildren lose their parent. Re-parented to PID 1
they would stay zombies on hosts whose PID 1 does not reap, holding pids; re-parented to
us, we reap them by pid on the tick.

# Why one module
It is the one place where the state machine's actions meet the loop: spawn, timers,
kills, output readers, reload and adoption all change the same instance table, run
records and tally, in the order the machine's actions say. The pure parts are apart
(`states`, `changes`, `record`, `output`, `proctree`, `cgroups`, `cpushare`).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from supervisord_batt import paths, protocol
from supervisord_batt.config.records import DEFAULT_STOP_GRACE, STOP_MARGIN, Config, ProgramConfig
from supervisord_batt.host.procfs import read_stat
from supervisord_batt.host.procinfo import cgroup_fs_paths
from supervisord_batt.logs import get_logger
from supervisord_batt.supervise.cgroups import WorkerCgroup, WorkerCgroups, instance_dir_name
from supervisord_batt.supervise.changes import ProgramChange, plan, stale
from supervisord_batt.supervise.cpushare import Account, CpuShares
from supervisord_batt.supervise.environ import worker_environment
from supervisord_batt.supervise.output import PipeReader, StreamSink
from supervisord_batt.supervise.proctree import (
    Adopted,
    Child,
    CpuJoinFailed,
    ExitWatcher,
    UnknownUser,
    become_subreaper,
    identity,
    kill_tree,
    lookup_user,
    reap_adopted,
    spawn,
    tree_task_count,
)
from supervisord_batt.supervise.record import (
    RunRecord,
    identity_of,
    restore,
    run_record,
    spawned_as,
    to_json,
)
from supervisord_batt.supervise.states import (
    LIMIT_REASONS,
    Action,
    CancelTimer,
    Deadline,
    Event,
    Exited,
    Instance,
    KillTree,
    SetDeadline,
    SetTimer,
    Spawn,
    Spawned,
    SpawnFailed,
    Start,
    State,
    Stop,
    Transition,
    TreeGone,
    Wake,
)

log = get_logger(component="supervisor")

OUT_OF_PIDS = (errno.EAGAIN, errno.ENOMEM)
TERMINAL = (State.STOPPED, State.EXITED, State.FATAL)
_HOWS = ("added", "removed", "changed", "unchanged")


@dataclass
class Run:
    """What one instance's current run holds besides its state."""

    proc: Child | None = None  # the main process: spawned (Popen), or adopted
    cgroup: WorkerCgroup | None = None
    readers: list[PipeReader] = field(default_factory=list)
    timer: asyncio.TimerHandle | None = None
    deadline: asyncio.TimerHandle | None = None
    last_progress: float = 0.0
    exit_seen: bool = False  # the main pid's exit was posted for this run
    tasks_max: int | None = None  # the pids.max containment last wrote to its cgroup
    killed_for: str | None = None  # the reason of the kill that ended this run, if one did
    # what the run was started as: it keeps that command, user and environment until its
    # next start, whatever a reload says meanwhile (`changes.stale`)
    spawned: ProgramConfig | None = None
    # pid -> start time of every process seen in its tree at a scan (`record_trees`):
    # one that leaves the cgroup and the session later is still part of the kill
    known: dict[int, int] = field(default_factory=dict)


@dataclass
class Tally:
    """Per program, since the daemon started: what the `stats` lines and metrics count."""

    restarts: Counter[str] = field(default_factory=Counter)  # program -> automatic restarts
    kills: Counter[tuple[str, str]] = field(default_factory=Counter)  # (program, reason)
    # (program, outcome): one of states.RUN_OUTCOMES, or "unknown"
    runs: Counter[tuple[str, str]] = field(default_factory=Counter)
    # (program, errno name or exception type): spawns that failed (the run never began)
    spawn_failures: Counter[tuple[str, str]] = field(default_factory=Counter)


Sinks = dict[tuple[str, str], StreamSink]  # (instance, stream) -> its sink


def _instance_of(cg: WorkerCgroup) -> str:
    """An unconfigured leftover's instance name, as its members' environment says."""
    for pid in cg.procs():
        with contextlib.suppress(OSError), open(f"/proc/{pid}/environ", "rb") as f:
            for entry in f.read().split(b"\0"):
                key, _, value = entry.partition(b"=")
                if key == paths.INSTANCE_ENV.encode():
                    return value.decode(errors="replace")
    return cg.path.name


async def _stop_leftover(cg: WorkerCgroup, sig: signal.Signals, grace: float) -> dict[str, Any]:
    """stop signal, grace, SIGKILL, until the cgroup is empty; what it took."""
    pids = cg.procs()
    record: dict[str, Any] = {"pids": pids, "signal": sig.name, "outcome": "empty"}
    if not pids:
        return record
    loop = asyncio.get_running_loop()
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)
    record["outcome"] = f"exited on {sig.name}"
    deadline = loop.time() + grace
    while cg.procs() and loop.time() < deadline:
        await asyncio.sleep(0.02)  # an orphan's exit wakes nothing of ours: poll it
    if cg.procs():
        record["outcome"] = "killed"
        deadline = loop.time() + 5.0
        while (members := cg.procs()) and loop.time() < deadline:
            for pid in members:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
            await asyncio.sleep(0.02)
    return record


@dataclass
class Prepared:
    """A reload made ready: the new config, each program's change, and the output files
    the new instances and the moved outputs need (opened first: all or nothing)."""

    config: Config
    changes: list[ProgramChange]
    sinks: Sinks

    def discard(self) -> None:
        for sink in self.sinks.values():
            sink.close()
        self.sinks.clear()


def _open_sinks(program: ProgramConfig, socket: Path, indices: Iterable[int]) -> Sinks:
    """Both streams of the given instances of `program`; all or nothing (OSError)."""
    made: Sinks = {}
    directory = program.output.directory or default_output_dir(socket)
    try:
        for index in indices:
            name = f"{program.name}:{index}"
            for stream in ("stdout", "stderr"):
                made[(name, stream)] = StreamSink(name, stream, program.output, directory)
    except OSError:
        for sink in made.values():
            sink.close()
        raise
    return made


def default_output_dir(socket: Path) -> Path:
    """Where output files go without `output.directory`: per daemon, so that two daemons
    with a program of the same name never share (and rotate) each other's files. The
    daemon on the default socket keeps the plain directory; any other one gets a
    subdirectory named after its socket (`paths.daemon_id`, as its worker cgroups are)."""
    if os.geteuid() == 0:
        base = paths.LOG_DIR
    else:
        state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
        base = Path(state) / "supervisord-batt" / "log"
    return base if socket == paths.DEFAULT_SOCKET else base / paths.daemon_id(socket)


class Supervisor:
    def __init__(
        self,
        config: Config,
        socket_path: Path,
        on_tree_gone: Callable[[str, tuple[int, ...]], None],
        describe_limits: Callable[[], dict[str, Any]],
        weigh: Callable[[int], float] | None = None,
    ) -> None:
        self.config = config
        self.socket_path = socket_path
        self.on_tree_gone = on_tree_gone
        self.describe_limits = describe_limits
        self.instances: dict[str, Instance] = {}
        self.runs: dict[str, Run] = {}
        self.sinks: dict[tuple[str, str], StreamSink] = {}
        self.watcher = ExitWatcher()
        # one cgroup root per daemon: two daemons on a host never touch each other's workers
        base = f"supervisord-batt.{paths.daemon_id(socket_path)}"
        self.cgroups = WorkerCgroups.detect(base_name=base)
        # each instance's cpu cgroup, weighted so that each user's weigh the same
        self.cpu = CpuShares.detect(base, self.cgroups)
        if weigh is not None:
            self.cpu.weigh = weigh
        self.tasks: set[asyncio.Task[None]] = set()
        self.changed = asyncio.Event()
        # one queue for control: reloads and operators' start, stop and restart run one at
        # a time, so a start during a reload is never undone by it unseen
        self.control = asyncio.Lock()
        # after every event: the daemon keeps its state record current (staterecord)
        self.on_change: Callable[[], None] = lambda: None
        # a run's output pipes came ((instance, {stream: fd})) or went ((instance, None)):
        # the daemon keeps systemd's descriptor store in step (notify)
        self.on_pipes: Callable[[str, dict[str, int] | None], None] = lambda name, fds: None
        # what the last start found and stopped of an earlier daemon's workers (status)
        self.leftovers: list[dict[str, Any]] = []
        # the daemon's children that are no workers (the reexec's check of the new code):
        # their own Popen reads their exit status, so `reap` must leave them alone
        self.helpers: set[int] = set()
        self.tally = Tally()
        self._traced: set[tuple[str, str]] = set()  # spawn failures logged with a traceback
        # the soft RLIMIT_NOFILE workers start with: the daemon's before it raised its own
        # (set by the daemon at startup; None: the daemon's, as it is)
        self.worker_nofile: int | None = None
        # which instance a peer belongs to, without reading every instance's files (see
        # `instance_of`): each live run by its cgroup's directory name, and by its main
        # pid while it runs without a cgroup
        self._by_cgroup: dict[str, str] = {}
        self._mains: dict[int, str] = {}
        self._reweigh_pending: asyncio.Handle | None = None
        self._weights_said: dict[str, list[Any]] = {}  # the last `cpu_weights` line's

    # -- life -------------------------------------------------------------------------

    async def settle_leftovers(self) -> list[dict[str, Any]]:
        """Stop what an earlier daemon left running, before starting anything.

        # Why stop, not adopt
        A daemon killed with SIGKILL (or by the OOM killer) leaves its workers running
        in their cgroups, with no wall-clock limit and nobody reaping them. Adopting
        them would need their pipes (gone with the old daemon) and their leases (gone
        with its connections), so they are stopped the way the daemon stops any worker:
        the program's stop_signal (SIGTERM for an instance no longer configured) to
        every member, its stop_grace, then SIGKILL; each one logged with its pids, and
        listed in `status`. Under systemd KillMode=mixed already kills them on a crash;
        this is for a daemon run by hand or restarted by anything else.
        """
        configured = {
            instance_dir_name(f"{p.name}:{i}"): (f"{p.name}:{i}", p)
            for p in self.config.programs
            for i in range(p.numprocs)
        }
        for cg in self.cgroups.leftovers():
            instance, program = configured.get(cg.path.name, (_instance_of(cg), None))
            sig = program.stop_signal if program else signal.SIGTERM
            grace = program.stop_grace if program else DEFAULT_STOP_GRACE
            record = await _stop_leftover(cg, sig, grace)
            record.update(instance=instance, configured=program is not None)
            problem = cg.remove()
            if problem is not None:
                record["left"] = problem
            log.warning("leftover_stopped", cgroup=str(cg.path), **record)
            self.leftovers.append(record)
        for cg, killed, problem in self.cpu.leftovers():
            log.warning(
                "leftover_removed",
                cgroup=str(cg.path),
                pids=killed,
                left=problem,
                reason="an earlier daemon's cpu cgroup",
            )
        return self.leftovers

    def start(
        self,
        records: dict[str, dict[str, Any]] | None = None,
        pipes: dict[tuple[str, str], int] | None = None,
        *,
        children: bool = False,
    ) -> list[str]:
        """Add every program's instances; those in `records` (a previous daemon's,
        `snapshot`) go on where it left them: their processes adopted (still our
        `children` after a re-execution; someone else's after a crash), their output read
        from `pipes` ((instance, stream) -> fd), deadlines and backoff timers armed again.
        Returns the adopted instances; `autostart` starts the others."""
        subreaper = become_subreaper()
        log.info(
            "supervisor_started",
            cgroups=self.cgroups.enabled,
            cgroup_root=str(self.cgroups.root),
            cgroup_reason=self.cgroups.reason,
            subreaper=subreaper,
            cpu_share=self.cpu.describe(),
            programs=[p.name for p in self.config.programs],
        )
        if not self.cpu.enabled:
            log.warning("cpu_shared_per_thread", reason=self.cpu.reason)
        records, pipes = records or {}, dict(pipes or {})
        adopted = []
        for program in self.config.programs:
            for name in self._add_program(program, start=False):
                inst = self.instances[name]
                data = records.get(name)
                if data is not None and self._restore(inst, data, pipes, children):
                    adopted.append(name)
        self._reweigh("adopted")
        for fd in pipes.values():  # of instances no longer configured, or not adopted
            with contextlib.suppress(OSError):
                os.close(fd)
        return adopted

    def autostart(self, skip: Iterable[str] = ()) -> None:
        """Start every instance whose program autostarts, but those in `skip` (adopted)."""
        skipped = set(skip)
        for name, inst in self.instances.items():
            if inst.program.autostart and name not in skipped:
                self.post(inst, Start())

    def _restore(
        self,
        inst: Instance,
        data: dict[str, Any],
        pipes: dict[tuple[str, str], int],
        children: bool,
    ) -> bool:
        """Go on with an instance where the previous daemon left it; False when there is
        nothing to go on with (it never ran, or its process is another one now)."""
        rec = run_record(data)
        state = State(data["state"])
        if state in (State.STARTING, State.STOPPING) or (
            state is State.RUNNING and (rec.pid is None or rec.pid_start is None)
        ):
            return False  # mid-way: started afresh (a STOPPING tree is a leftover)
        run = self.runs[inst.name]
        restore(inst, data)
        for action in inst.update_program(inst.program):  # a limit counts from its start
            self._execute(inst, action)
        if state is State.BACKOFF and inst.wake_at is not None:
            self._execute(inst, SetTimer(inst.wake_at))
        if state is not State.RUNNING:
            return True
        assert rec.pid is not None
        proc = Adopted(rec.pid, child=children)
        if identity((rec.pid,)).get(rec.pid) != rec.pid_start:
            proc.gone = True  # ended while nobody watched (or its pid is another's now)
        run.proc, run.last_progress, run.tasks_max = proc, rec.last_progress, rec.tasks_max
        run.known, run.exit_seen, run.killed_for = dict(rec.known), False, None
        run.spawned = spawned_as(inst.program, rec.spawned)
        if rec.cgroup is not None:
            run.cgroup = self.cgroups.adopt(rec.cgroup)
        self.cpu.adopt(inst.name, _account(run.spawned), rec.cpu_cgroup, run.cgroup)
        for stream in ("stdout", "stderr"):
            sink = self.sinks[(inst.name, stream)]
            sink.total = rec.offsets.get(stream, 0)
            fd = pipes.pop((inst.name, stream), None)
            if fd is not None:
                run.readers.append(PipeReader(fd, sink))
        if inst.deadline_at is not None:
            self._execute(inst, SetDeadline(inst.deadline_at))  # one past fires at once
        log.info(
            "adopted",
            program=inst.program.name,
            instance=inst.name,
            pid=rec.pid,
            child=children,
            output=len(run.readers) == 2,
            deadline_in_s=None
            if inst.deadline_at is None
            else round(inst.deadline_at - time.monotonic(), 3),
            reason="re-executed" if children else "found running after a restart",
        )
        self.watcher.watch(proc, lambda rc: self._exited(inst, proc, rc))
        return True

    def snapshot(self) -> dict[str, dict[str, Any]]:
        """Every instance as the state record keeps it (`record.to_json`)."""
        out = {}
        for name, inst in self.instances.items():
            run = self.runs[name]
            pid = run.proc.pid if run.proc is not None else None
            start = identity((pid,)).get(pid) if pid is not None else None
            rec = RunRecord(
                pid=pid,
                pid_start=start,
                cgroup=run.cgroup.path if run.cgroup is not None else None,
                cpu_cgroup=self.cpu.path_of(name),
                last_progress=run.last_progress,
                tasks_max=run.tasks_max,
                known=run.known,
                spawned=identity_of(run.spawned) if run.spawned is not None else {},
                offsets={st: self.sinks[(name, st)].total for st in ("stdout", "stderr")},
            )
            out[name] = to_json(inst, rec)
        return out

    def pipes(self) -> dict[tuple[str, str], int]:
        """(instance, stream) -> the read end of each running worker's output pipe."""
        out = {}
        for name, run in self.runs.items():
            for stream, reader in zip(("stdout", "stderr"), run.readers, strict=False):
                if reader.open:
                    out[(name, stream)] = reader.fd
        return out

    async def shutdown(self, timeout: float) -> None:
        """Stop every instance (stop signal, grace, kill) and wait for their trees."""
        for inst in self.instances.values():
            self.post(inst, Stop())
        await self.wait_for(list(self.instances), TERMINAL, timeout)
        for sink in self.sinks.values():
            sink.close()
            lost = sink.summary()
            if lost is not None:
                log.error("output_lost", **lost)
        self.watcher.close()
        problems = self.cgroups.cleanup() + self.cpu.cleanup()
        if problems:
            log.warning("cgroup_cleanup_incomplete", problems=problems)

    def force_kill(self) -> None:
        """Second signal: SIGKILL every tree at once, no grace; then remove the worker
        cgroups (briefly blocking: the daemon is about to exit) so none is left behind."""
        for run in self.runs.values():
            if run.cgroup is not None:
                run.cgroup.kill_members()
            if run.proc is not None and run.proc.returncode is None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(run.proc.pid, signal.SIGKILL)
                with contextlib.suppress(OSError, subprocess.TimeoutExpired):
                    run.proc.wait(timeout=1.0)  # ours: reap it so its cgroup empties
        problems = self.cgroups.cleanup(retry_s=2.0) + self.cpu.cleanup(retry_s=2.0)
        if problems:
            log.warning("cgroup_cleanup_incomplete", problems=problems)

    def _add_program(
        self,
        program: ProgramConfig,
        sinks: Sinks | None = None,
        indices: Iterable[int] = (),
        start: bool = True,
    ) -> list[str]:
        """Add instances of `program` (`indices`; all when empty), started if it autostarts
        (and `start`); their names."""
        indices = list(indices) or list(range(program.numprocs))
        if sinks is None:
            sinks = _open_sinks(program, self.socket_path, indices)
        names = []
        for index in indices:
            inst = Instance(program, index)
            self.instances[inst.name] = inst
            self.runs[inst.name] = Run()
            for stream in ("stdout", "stderr"):
                self.sinks[(inst.name, stream)] = sinks[(inst.name, stream)]
            if program.autostart and start:
                self.post(inst, Start())
            names.append(inst.name)
        return names

    # -- events and actions -----------------------------------------------------------

    def post(self, inst: Instance, event: Event) -> None:
        for action in inst.handle(event, time.monotonic()):
            self._execute(inst, action)
        self.changed.set()
        self.on_change()

    def _execute(self, inst: Instance, action: Action) -> None:
        run = self.runs[inst.name]
        loop = asyncio.get_running_loop()
        if isinstance(action, Transition):
            log.info("transition", **action.fields())
            if action.new is State.BACKOFF:
                self.tally.restarts[inst.program.name] += 1
        elif isinstance(action, Spawn):
            self._spawn(inst, run)
        elif isinstance(action, KillTree):
            self._cancel(run, "deadline")
            self._task(self._kill(inst, run, action))
        elif isinstance(action, SetTimer):
            self._cancel(run, "timer")
            run.timer = loop.call_at(action.at, self.post, inst, Wake())
        elif isinstance(action, CancelTimer):
            self._cancel(run, "timer")
        elif isinstance(action, SetDeadline):
            self._cancel(run, "deadline")
            if action.at is not None:
                run.deadline = loop.call_at(
                    action.at, self.post, inst, Deadline("wall_clock_limit")
                )

    @staticmethod
    def _cancel(run: Run, which: str) -> None:
        handle = getattr(run, which)
        if handle is not None:
            handle.cancel()
            setattr(run, which, None)

    def _task(self, coro: Any) -> asyncio.Task[None]:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self.tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("supervisor_task_failed", error=repr(task.exception()))

    # -- spawn ------------------------------------------------------------------------

    def _spawn(self, inst: Instance, run: Run) -> None:
        program = inst.program
        # everything a spawn needs is acquired inside the try: out of descriptors
        # (EMFILE) or pids, the spawn fails into BACKOFF, never leaves it in STARTING
        cgroup = None
        fds: list[int] = []
        try:
            cgroup = self._cgroup_for(inst) if self.cgroups.enabled else None
            cpu_procs = self._cpu_join(inst, cgroup) if self.cpu.enabled else None
            out_r, out_w = os.pipe2(os.O_CLOEXEC)
            fds += (out_r, out_w)
            err_r, err_w = os.pipe2(os.O_CLOEXEC)
            fds += (err_r, err_w)
            proc = spawn(
                program.command,
                cwd=program.cwd,
                env=self._env(inst),
                user=program.user,
                group=program.group,
                cgroup=cgroup,
                stdout=out_w,
                stderr=err_w,
                nofile=self.worker_nofile,
                cpu_procs=cpu_procs,
            )
        except Exception as exc:  # whatever it is, a failed spawn: backoff, never a crash
            for fd in fds:
                os.close(fd)
            if cgroup is not None:
                self.cgroups.forget(cgroup)
            self._cpu_leave(inst.name)
            if isinstance(exc, CpuJoinFailed):  # the next try (the backoff's) goes without
                self.cpu.disable(str(exc))
                log.warning("cpu_shared_per_thread", reason=str(exc))
            self._spawn_failed(inst, exc)
            return
        for fd in (out_w, err_w):  # the child has them; the read ends are ours
            with contextlib.suppress(OSError):
                os.close(fd)
        run.proc, run.cgroup, run.last_progress = proc, cgroup, time.monotonic()
        self._index(inst.name, run)
        run.spawned = program
        run.tasks_max = None
        self.contain(inst.name, None)  # no lease yet
        run.exit_seen, run.killed_for = False, None
        run.readers = [
            PipeReader(out_r, self.sinks[(inst.name, "stdout")]),
            PipeReader(err_r, self.sinks[(inst.name, "stderr")]),
        ]
        self.on_pipes(inst.name, {"stdout": out_r, "stderr": err_r})
        log.info(
            "spawn",
            program=program.name,
            instance=inst.name,
            pid=proc.pid,
            cgroup=str(cgroup.path) if cgroup else None,
        )
        self.post(inst, Spawned(proc.pid))
        self.watcher.watch(proc, lambda rc: self._exited(inst, proc, rc))

    def _cgroup_for(self, inst: Instance) -> WorkerCgroup | None:
        """A new cgroup for the instance's run; what it cost, said: the members of one
        an earlier daemon left (killed), or why there is none (the run goes without)."""
        cgroup = self.cgroups.create(inst.name)
        _said_leftovers(inst, self.cgroups.killed, "cgroup")
        if cgroup is None:
            log.warning(
                "cgroup_unavailable",
                program=inst.program.name,
                instance=inst.name,
                reason=self.cgroups.last_error,
            )
        return cgroup

    def _cpu_join(self, inst: Instance, cgroup: WorkerCgroup | None) -> str | None:
        """The new run's cpu cgroup, weighted (with every other live one) before the
        child starts; the cgroup.procs it joins (v1). One without: said, per thread."""
        procs = self.cpu.join(inst.name, _account(inst.program), cgroup)
        _said_leftovers(inst, self.cpu.killed(), "cpu cgroup")
        if self.cpu.last_error is not None:
            log.warning(
                "cpu_cgroup_unavailable",
                program=inst.program.name,
                instance=inst.name,
                reason=self.cpu.last_error,
            )
        for instance, problem in self.cpu.reweigh(inst.name):  # before the child runs
            log.warning("cpu_weight_failed", instance=instance, reason=problem)
        self._reweigh_soon()  # the others' (coalesced: a mass start rewrites them once)
        return procs

    def _cpu_leave(self, instance: str) -> None:
        """The run's tree is gone: its cpu cgroup removed, the others weighed again."""
        problem = self.cpu.leave(instance)
        if problem is not None:
            log.warning("cgroup_left", instance=instance, reason=problem)
        self._reweigh_soon()

    def _reweigh_soon(self) -> None:
        """`_reweigh` once this loop iteration's starts and exits are done."""
        if self._reweigh_pending is None:
            loop = asyncio.get_running_loop()
            self._reweigh_pending = loop.call_soon(self._reweigh, "starts and exits")

    def _reweigh(self, why: str) -> None:
        """Write the live instances' cpu weights (those that changed): each user's
        instances together weigh the same, times the user's weight."""
        self._reweigh_pending = None
        for instance, problem in self.cpu.reweigh():
            log.warning("cpu_weight_failed", instance=instance, reason=problem)
        counts = self.cpu.counts()
        users = {str(a): [n, self.cpu.weights.get(a)] for a, n in counts.items()}
        if users != self._weights_said:  # user -> [instances, weight of each]
            self._weights_said = users
            log.debug("cpu_weights", reason=why, users=users)

    def _spawn_failed(self, inst: Instance, exc: Exception) -> None:
        """One line and one count per failed spawn; the state machine backs off (and
        gives up at the start limit). A failure nobody expected (not the host refusing,
        not a user that is gone) is a bug or a value the loader let through: its
        traceback is written once per program and kind, the repeats only counted."""
        program = inst.program.name
        code = exc.errno if isinstance(exc, OSError) and exc.errno else 0
        kind = errno.errorcode.get(code, "") if code else type(exc).__name__
        self.tally.spawn_failures[(program, kind)] += 1
        fields: dict[str, Any] = {
            "program": program,
            "instance": inst.name,
            "errno": code,
            "kind": kind,
            "failures": self.tally.spawn_failures[(program, kind)],
            "reason": str(exc) or kind,
        }
        if code in OUT_OF_PIDS:
            fields.update(self.describe_limits())
        expected = isinstance(exc, OSError | UnknownUser)
        if not expected and (program, kind) not in self._traced:
            self._traced.add((program, kind))
            fields["exc_info"] = exc
        log.error("spawn_failed", **fields)
        self.post(inst, SpawnFailed(code, str(exc) or kind))

    def _env(self, inst: Instance) -> dict[str, str]:
        """See supervise.environ: a login's for a worker run as another user."""
        program = inst.program
        account = lookup_user(program.user) if program.user is not None else None
        own = {
            paths.SOCKET_ENV: str(self.socket_path),
            paths.INSTANCE_ENV: inst.name,
            paths.WANT_ENV: str(program.slots),
        }
        if program.worker_memory is not None:
            own[paths.WORKER_MEMORY_ENV] = str(program.worker_memory)
        other = account is not None and account.pw_uid != os.geteuid()
        return worker_environment(program, os.environ, account if other else None, own)

    def _exited(self, inst: Instance, proc: Child, returncode: int | None) -> None:
        run = self.runs.get(inst.name)
        if run is None or run.proc is not proc or run.exit_seen:
            return
        run.exit_seen = True
        outcome = _outcome(run, inst, returncode)
        self.tally.runs[(inst.program.name, outcome)] += 1
        log.info(
            "exit",
            program=inst.program.name,
            instance=inst.name,
            pid=proc.pid,
            returncode=returncode,
            state=inst.state.value,
            outcome=outcome,
        )
        self.post(inst, Exited(returncode))

    # -- kill -------------------------------------------------------------------------

    async def _kill(self, inst: Instance, run: Run, action: KillTree) -> None:
        proc = run.proc
        if proc is None:
            self.post(inst, TreeGone(0, 0))
            return
        run.killed_for = action.reason
        # the run's length when the kill began (the limit itself, for a deadline kill)
        runtime = time.monotonic() - (inst.started_at or time.monotonic())
        others = frozenset(
            r.proc.pid for r in self.runs.values() if r.proc is not None and r.proc is not proc
        )
        report = await kill_tree(
            proc.pid,
            cgroup=run.cgroup,
            stop_signal=action.signal,
            grace=action.grace,
            known=run.known,
            reap=proc.poll,
            marker=f"{paths.INSTANCE_ENV}={inst.name}".encode(),
            others=others,
        )
        for reader in run.readers:
            reader.drain()
            reader.close()
        event = "timeout_kill" if action.reason in LIMIT_REASONS else "tree_killed"
        if event == "timeout_kill":
            self.tally.kills[(inst.program.name, action.reason)] += 1
        log.warning(
            event,
            program=inst.program.name,
            instance=inst.name,
            pid=proc.pid,
            reason=action.reason,
            runtime_s=round(runtime, 3),
            tasks=report.tasks_at_kill,
            processes=len(report.pids),
            needed_sigkill=report.needed_sigkill,
            kill_s=round(report.duration_s, 3),
            survivors=list(report.survivors),
        )
        # the main pid died in the kill (reaped by kill_tree's poll), before its pidfd
        # reader ran: its exit is recorded here, so the run ends with a known status
        self._exited(inst, proc, proc.wait())
        if run.cgroup is not None:
            self.cgroups.forget(run.cgroup)
        self._cpu_leave(inst.name)
        self._unindex(run)
        run.proc, run.cgroup, run.readers, run.known = None, None, [], {}
        self.on_pipes(inst.name, None)
        self.on_tree_gone(inst.name, report.pids)
        self.post(inst, TreeGone(report.tasks_at_kill, report.needed_sigkill))

    # -- the tick ---------------------------------------------------------------------

    def tick(self, now: float) -> None:
        """Output that could not be written (one line per stream a tick), and no-progress
        timeouts."""
        for (instance, stream), sink in self.sinks.items():
            if sink.follow_path():
                log.info(
                    "output_reopened",
                    instance=instance,
                    stream=stream,
                    path=str(sink.path),
                    reason="the file was renamed or removed",
                )
            lost = sink.summary()
            if lost is not None:
                log.error("output_lost", **lost)
        for inst in self.instances.values():
            timeout = inst.program.progress_timeout
            run = self.runs[inst.name]
            if timeout is None or inst.state is not State.RUNNING:
                continue
            if now - run.last_progress > timeout:
                log.warning(
                    "no_progress",
                    program=inst.program.name,
                    instance=inst.name,
                    pid=inst.pid,
                    silent_s=round(now - run.last_progress, 1),
                    reason=f"no heartbeat for {timeout}s",
                )
                self.post(inst, Deadline("progress_timeout"))

    def roots(self) -> dict[str, int]:
        """instance -> main pid of every run that has one (the scan's tree roots)."""
        return {name: run.proc.pid for name, run in self.runs.items() if run.proc is not None}

    def record_trees(self, trees: dict[str, tuple[int, ...]]) -> None:
        """Remember who is in each worker's tree now (from the scan's /proc pass, and the
        cgroup), with what it remembered before and still runs as the same process: a
        member that later leaves the cgroup and the session is still killed with it."""
        for name, pids in trees.items():
            run = self.runs.get(name)
            if run is None or run.proc is None:
                continue
            members = set(pids) | set(run.cgroup.procs() if run.cgroup is not None else ())
            before = {pid: start for pid, start in run.known.items() if pid not in members}
            fresh = identity(members)
            still = identity(before)
            run.known = fresh | {pid: s for pid, s in still.items() if before[pid] == s}

    def reopen_outputs(self) -> None:
        """Open every output file's path afresh (SIGHUP, logrotate's postrotate): one line
        per file that cannot be, which keeps the file it had."""
        for (instance, stream), sink in self.sinks.items():
            try:
                sink.reopen()
            except OSError as exc:
                log.error(
                    "output_reopen_failed",
                    instance=instance,
                    stream=stream,
                    path=str(sink.path),
                    reason=str(exc),
                )

    def reap(self) -> None:
        """Reap adopted orphans (zombies re-parented to us when their parent was killed)."""
        known = {run.proc.pid for run in self.runs.values() if run.proc is not None}
        for pid, rc in reap_adopted(known | self.helpers):
            log.debug("orphan_reaped", pid=pid, returncode=rc)

    def progress(self, pid: int, cgroup_dirs: Sequence[str] | None = None) -> str | None:
        """A heartbeat from `pid`: credit the instance whose tree holds it."""
        name = self.instance_of(pid, cgroup_dirs)
        run = self.runs.get(name) if name is not None else None
        if run is not None:
            run.last_progress = time.monotonic()
        return name

    def tree_tasks(self, instance: str) -> int | None:
        """Tasks of an instance's tree now (its cgroup's pids.current where it has one)."""
        run = self.runs.get(instance)
        return _tree_tasks(run) if run is not None and run.proc is not None else None

    def contain(self, instance: str, tasks_max: int | None) -> None:
        """Write the instance's cgroup pids.max (None: its program's tasks_without_lease),
        when its program contains and it has a cgroup (see daemon.containment)."""
        inst, run = self.instances.get(instance), self.runs.get(instance)
        if inst is None or run is None or run.cgroup is None or not inst.program.contain:
            return
        value = inst.program.tasks_without_lease if tasks_max is None else tasks_max
        if value == run.tasks_max:
            return
        try:
            run.cgroup.set_max(value)
        except OSError as exc:
            log.warning("tasks_max_failed", instance=instance, value=value, reason=str(exc))
            return
        run.tasks_max = value
        log.debug(
            "tasks_max",
            program=inst.program.name,
            instance=instance,
            pid=inst.pid,
            value=value,
            reason="lease" if tasks_max is not None else "no lease",
        )

    def instance_of(self, pid: int, cgroup_dirs: Sequence[str] | None = None) -> str | None:
        """The instance whose tree `pid` belongs to: its cgroup, else its ancestry.

        # Why an index
        Every new connection and every heartbeat asks this. It used to read every
        instance's cgroup.procs: with 1,000 instances a fresh connection's acquire and
        release took 25 ms instead of 0.7 (benchmarks/bench_scale.py). Now the peer's
        own /proc/PID/cgroup is read once (`cgroup_dirs` when the caller has read it)
        and its worker cgroup's directory name is looked up; a tree cannot leave its
        cgroup, so a descendant of a worker (forked, re-parented, in a new session) is
        found too. Only runs without a cgroup (none could be made) are found by walking
        the peer's ancestry to a main pid, and only while there are any.
        """
        if self._by_cgroup and self.cgroups.root is not None:
            root = f"{self.cgroups.root}/"
            dirs = cgroup_fs_paths(pid) if cgroup_dirs is None else cgroup_dirs
            for directory in dirs:
                if directory.startswith(root):
                    name = self._by_cgroup.get(directory[len(root) :].partition("/")[0])
                    if name is not None:
                        return name
        if self._mains:
            for cur in _ancestry(pid):
                if cur in self._mains:
                    return self._mains[cur]
        return None

    def _index(self, name: str, run: Run) -> None:
        if run.cgroup is not None:
            self._by_cgroup[run.cgroup.path.name] = name
        elif run.proc is not None:
            self._mains[run.proc.pid] = name

    def _unindex(self, run: Run) -> None:
        if run.cgroup is not None:
            self._by_cgroup.pop(run.cgroup.path.name, None)
        if run.proc is not None:
            self._mains.pop(run.proc.pid, None)

    # -- control ----------------------------------------------------------------------

    def select(self, target: str) -> list[Instance]:
        """`all`, `program` or `program:N`; KeyError naming what does not exist."""
        if target == "all":
            return list(self.instances.values())
        if target in self.instances:
            return [self.instances[target]]
        found = [i for i in self.instances.values() if i.program.name == target]
        if not found:
            raise KeyError(
                f"no program or instance {target!r}; known: "
                f"{', '.join(sorted({i.program.name for i in self.instances.values()}))}"
            )
        return found

    async def wait_for(
        self, names: Iterable[str], states: tuple[State, ...], timeout: float
    ) -> bool:
        """Wait until every named instance is in one of `states` (False at the timeout)."""
        deadline = time.monotonic() + timeout
        names = list(names)
        while not all(self.instances[n].state in states for n in names if n in self.instances):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            self.changed.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.changed.wait(), remaining)
        return True

    def stop_timeout(self, instances: Iterable[Instance]) -> float:
        """The longest the stop of these instances takes: LONGEST_STOP at most."""
        return max((i.program.stop_grace for i in instances), default=0.0) + STOP_MARGIN

    # -- reload -----------------------------------------------------------------------

    def prepare(self, new: Config) -> Prepared:
        """What a reload to `new` needs that can fail (the output files of the instances it
        adds and of the outputs it moves), made before anything changes; OSError, with
        nothing left open, when one cannot be made. `discard` undoes it; `reload` uses it."""
        changes = plan(self.config.programs, new.programs)
        prepared = Prepared(new, changes, {})
        try:
            for change in changes:
                if change.new is None or change.how == "unchanged":
                    continue
                kept, added, _ = change.indices()
                wanted = [*kept, *added] if change.new_sinks else added
                prepared.sinks.update(_open_sinks(change.new, self.socket_path, wanted))
        except OSError:
            prepared.discard()
            raise
        return prepared

    async def reload(
        self, new: Config, prepared: Prepared | None = None, restart_changed: bool = False
    ) -> dict[str, Any]:
        """Apply a new config in place (see `changes`): limits at once, what a worker is
        at its next start (now with `restart_changed`), instances added or stopped one by
        one; only removed programs and instances past a smaller numprocs are stopped.
        Returns the lists of programs by kind of change, and per program what was done."""
        prepared = self.prepare(new) if prepared is None else prepared
        self.config = new
        report: dict[str, dict[str, Any]] = {}
        going: list[Instance] = []  # stopped, then dropped
        for change in prepared.changes:
            row = report[change.name] = {"how": change.how}
            if change.how == "removed":
                going += [i for i in self.instances.values() if i.program.name == change.name]
            elif change.how == "changed":
                row.update(self._apply_change(change, prepared.sinks, going))
        restarting = self._stale_instances() if restart_changed else []
        for inst in restarting:
            report[inst.program.name].setdefault("restarted", []).append(inst.name)
        for inst in going + restarting:
            self.post(inst, Stop())
        await self._wait_stopped(going + restarting)
        for inst in going:
            self._drop_instance(inst.name)
        for inst in restarting:
            self.post(inst, Start())
        for change in prepared.changes:
            if change.new is None or change.how not in ("added", "changed"):
                continue
            _, added, _ = change.indices()
            if added:
                names = self._add_program(change.new, prepared.sinks, added)
                report[change.name]["started"] = names
        self._reweigh("reload")  # the users' weights may have changed
        lists = {how: [c.name for c in prepared.changes if c.how == how] for how in _HOWS}
        return {**lists, "programs": report}

    def _apply_change(
        self, change: ProgramChange, sinks: Sinks, going: list[Instance]
    ) -> dict[str, Any]:
        """A changed program's kept instances take the new config (limits now, what the
        worker is at its next start); those past a smaller numprocs go to `going`. What
        was done, for the reply and the log."""
        assert change.old is not None and change.new is not None
        kept, _, removed = change.indices()
        name = change.name
        for index in kept:
            inst = self.instances[f"{name}:{index}"]
            for action in inst.update_program(change.new):
                self._execute(inst, action)
            self._retarget_output(inst.name, change, sinks)
            run = self.runs[inst.name]
            if run.tasks_max == change.old.tasks_without_lease:  # no lease: follow the new
                self.contain(inst.name, None)
        going += [self.instances[f"{name}:{i}"] for i in removed]
        return {
            "in_place": list(change.in_place),
            "next_start": list(change.identity),
            "stopped": [f"{name}:{i}" for i in removed],
        }

    def _stale_instances(self) -> list[Instance]:
        """The instances that run as something their program no longer is (a reload
        changed their command, user, environment...), and should run: to restart now."""
        out = []
        for name, inst in self.instances.items():
            spawned = self.runs[name].spawned
            up = inst.state in (State.STARTING, State.RUNNING)  # BACKOFF starts anew anyway
            if up and inst.wanted and spawned is not None and stale(spawned, inst.program):
                out.append(inst)
        return out

    def _retarget_output(self, instance: str, change: ProgramChange, sinks: Sinks) -> None:
        """A kept instance's output follows the new config: new files when the destination
        moved (what `tail` keeps in memory carried over), new sizes otherwise."""
        assert change.new is not None
        run = self.runs[instance]
        for i, stream in enumerate(("stdout", "stderr")):
            old = self.sinks[(instance, stream)]
            if change.new_sinks:
                fresh = sinks[(instance, stream)]
                fresh.carry(old)
                self.sinks[(instance, stream)] = fresh
                if i < len(run.readers):
                    run.readers[i].sink = fresh
                old.close()
            else:
                old.resize(change.new.output)

    async def _wait_stopped(self, instances: list[Instance]) -> None:
        """Until every instance is down: a reload never drops one it has not seen stop.
        The kill always ends (SIGKILL rounds have a deadline of their own), so this is a
        wait for it, with one line if it takes longer than the stop should."""
        names = [i.name for i in instances]
        if await self.wait_for(names, TERMINAL, self.stop_timeout(instances)):
            return
        late = [i.name for i in instances if i.state not in TERMINAL]
        log.warning("reload_waiting", instances=late, reason="their stop takes longer")
        while not await self.wait_for(names, TERMINAL, 60.0):
            pass

    def _drop_instance(self, name: str) -> None:
        self.instances.pop(name, None)
        if name in self.cpu:
            self._cpu_leave(name)
        run = self.runs.pop(name, None)
        if run is not None:
            self._unindex(run)
            self._cancel(run, "timer")
            self._cancel(run, "deadline")
        for stream in ("stdout", "stderr"):
            sink = self.sinks.pop((name, stream), None)
            if sink is not None:
                sink.close()

    # -- status -----------------------------------------------------------------------

    def row(self, inst: Instance, now: float, lease: str | None) -> protocol.InstanceRow:
        """One instance as `status` lists it: its state, its tree's tasks now (one read of
        its cgroup's pids.current where it has one), the lease its main process holds."""
        run = self.runs[inst.name]
        tasks = _tree_tasks(run) if run.proc is not None else None
        # what it takes at its next start (a reload changed it while it ran)
        running = run.spawned if run.proc is not None else None
        pending = list(stale(running, inst.program)) if running else []
        return {
            **inst.snapshot(now),
            "tasks": tasks,
            "ok": _is_ok(inst),
            "lease": lease,
            "pending": pending,
        }

    def all_ok(self) -> bool:
        return all(_is_ok(inst) for inst in self.instances.values())


def _outcome(run: Run, inst: Instance, returncode: int | None) -> str:
    """completed, failed, killed (by a limit) or stopped (asked to): see Tally.runs; or
    unknown, for a worker adopted after a crash that ended with nobody to tell us how."""
    if run.killed_for in LIMIT_REASONS:
        return "killed"
    if run.killed_for is not None or (inst.state is State.STOPPING and not inst.wanted):
        return "stopped"
    if returncode is None:
        return "unknown"
    return "completed" if returncode == 0 else "failed"


def _said_leftovers(inst: Instance, killed: list[int], where: str) -> None:
    """What making a new run's cgroup killed of an earlier daemon's worker, said."""
    if killed:
        log.warning(
            "leftover_killed",
            program=inst.program.name,
            instance=inst.name,
            pids=killed,
            reason=f"an earlier daemon's worker in the {where} of a new run",
        )


def _account(program: ProgramConfig | None) -> Account:
    """Whose CPU share a run counts in: the uid it runs as (a user name no longer on the
    host stands for itself)."""
    if program is None or program.user is None:
        return os.geteuid()
    try:
        return lookup_user(program.user).pw_uid
    except UnknownUser:
        return f"user {program.user}"


def _is_ok(inst: Instance) -> bool:
    """Running as it should: RUNNING, or stopped on purpose, or finished cleanly."""
    if inst.state is State.RUNNING or not inst.wanted:
        return True
    return inst.state is State.EXITED and inst.last_exit is not None and inst.last_exit.code == 0


def _tree_tasks(run: Run) -> int | None:
    assert run.proc is not None
    try:
        return tree_task_count(run.proc.pid, run.cgroup)
    except OSError:
        return None


def _ancestry(pid: int) -> Iterable[int]:
    """pid, its parent, grandparent... up to (not including) PID 1."""
    for _ in range(64):  # a bound, in case of a cycle through pid reuse
        if pid <= 1:
            return
        yield pid
        st = read_stat(pid)
        if st is None:
            return
        pid = st.ppid
