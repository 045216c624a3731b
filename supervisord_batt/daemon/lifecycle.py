"""The daemon: wires config, host monitor, ledger, supervisor and socket server together.

Its life is three steps, each on one screen: `startup()` (bind the socket, first sample,
start the programs), `main_loop()` (a drift-free tick: sample, leases, progress timeouts;
a slower /proc scan), `shutdown()` (stop intake, stop every worker tree, remove the
socket). Signal handlers only set flags or schedule the code paths the CLI uses: SIGHUP
runs the same reload as `supervisord-batt reload`, SIGTERM the same shutdown.

# No threads
The daemon must answer, kill and log when the host cannot start one more thread, so it
never starts one: no executors, no `to_thread`, no loky, no asyncio subprocess (its child
watcher uses a thread). Everything is one asyncio loop; children are watched by pidfd.

# Why one module
`Daemon` is the wiring: its methods are the daemon's steps (start, tick, scan, reload,
reexec, stop) over the same parts, and the order of each step's calls is the design.
What each part does is in its own module (server, commands, supervisor, ledger, the
state record, the metrics' outputs).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import pwd
import resource
import signal
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any, NoReturn

from supervisord_batt import __version__, logs, paths, protocol, safepath
from supervisord_batt.budget.ledger import BudgetLedger
from supervisord_batt.budget.lone import LoneAskers
from supervisord_batt.config.loader import load_config
from supervisord_batt.config.records import Config
from supervisord_batt.config.yamlcheck import ConfigError
from supervisord_batt.daemon import reexec, resume
from supervisord_batt.daemon.cgroupcounts import CgroupCounts
from supervisord_batt.daemon.commands import Commands, ReloadRejected
from supervisord_batt.daemon.containment import Containment
from supervisord_batt.daemon.leaselog import LeaseLog
from supervisord_batt.daemon.metricsoutputs import MetricsOutputs, Sources
from supervisord_batt.daemon.notify import Notifier
from supervisord_batt.daemon.oomkills import OomWatch
from supervisord_batt.daemon.peers import PeerPolicy
from supervisord_batt.daemon.server import Connection, Hooks, Server
from supervisord_batt.daemon.sizesfile import SizesFile
from supervisord_batt.daemon.staterecord import StateRecord
from supervisord_batt.daemon.statsline import StatsLine
from supervisord_batt.daemon.throttle import Throttle
from supervisord_batt.daemon.weights import Weights
from supervisord_batt.daemon.workersizes import holder_bytes, oom_rose, runs_itself
from supervisord_batt.host.monitor import HostMonitor
from supervisord_batt.host.sample import HostSample, TreeUsage
from supervisord_batt.logs import get_logger
from supervisord_batt.supervise.states import State
from supervisord_batt.supervise.supervisor import Supervisor

log = get_logger(component="daemon")
RECENT_LINES = 50  # log lines kept in memory for `status` (a live view's latest events)


def scan_due(now: float, last_scan: float, scan_interval: float, sample_interval: float) -> bool:
    """Whether the tick at `now` scans: `scan_interval` has passed since the last scan,
    give or take half a tick. The ticks keep a fixed cadence but each runs a little late
    (a loaded host, the event loop): a scan at a tick 10 ms late was not due at the next
    tick 990 ms on, so a `scan_interval` of one tick scanned every other tick, and the
    samples between charged the memory that new pools had written since the last scan
    as still to be written (`budget.claims.pending`), which shrank pools for a second."""
    return now - last_scan >= scan_interval - sample_interval / 2


class Daemon:
    def __init__(self, config: Config, socket_path: Path | None = None) -> None:
        self.config = config
        # first: it clears NOTIFY_SOCKET from the environment the workers will inherit
        self.notifier = Notifier()
        # what the program this one replaced in place passed on (`reexec`)
        self.reexeced, passed = reexec.inherited()
        for name, fds in passed.items():
            self.notifier.passed.setdefault(name, []).extend(fds)
        self.socket_path = socket_path or config.daemon.socket
        self.monitor = HostMonitor(cgroups=config.budget.cgroups, users=_watched_users(config))
        # one weight per user for both splits: the budget's and the workers' CPU time
        weigh = Weights(config.budget).weigh
        self.ledger = BudgetLedger(config.budget, clock=time.monotonic, weigh=weigh)
        self.lease_log = LeaseLog(config.daemon.lease_log_rate)
        self.supervisor = Supervisor(
            config, self.socket_path, self.on_tree_gone, self.limits_now, weigh
        )
        self.sample: HostSample | None = None
        self.containment = Containment(self.ledger, self.supervisor)
        self.resumable = resume.Resumable(self.ledger)
        # what the host ran out of (descriptors for accept, scan): counted, never fatal
        self.faults = Throttle(1, summary="faults_suppressed", about="exhausted resources")
        self.commands = Commands(
            ledger=self.ledger,
            lease_log=self.lease_log,
            supervisor=self.supervisor,
            reload=self.reload,
            reexec=self.reexec,
            resumable=self.resumable,
            accepting=lambda: self.server.accepting,
            connections=lambda: len(self.server.connections),
            sample=lambda: self.sample,
            pressure_reason=lambda: self.pressure_reason,
            lease_changed=self.containment.follow,
            faults=self.faults,
        )
        hooks = Hooks(
            handle=self.commands.handle,
            on_close=self.on_close,
            instance_of=self.supervisor.instance_of,
            holds_lease=self.commands.holds_lease,
            observe=self.commands.tallies.request,
        )
        self.server = Server(config.daemon, hooks, self.socket_path, _policy(config))
        self.should_exit = asyncio.Event()
        self._last_scan = 0.0
        self.pressure_reason = ""  # why the level is what it is, as of the last tick
        self._trees: dict[str, int] = {}
        self._pool_bytes: dict[str, int] = {}  # lease -> its workers' bytes, last scan
        self._oom_kills: dict[str, int] = {}  # memory cgroup -> its oom_kill count, last scan
        self._holder_bytes: dict[str, int] = {}  # lease -> its holder's bytes, alike
        self._reloading: asyncio.Task[None] | None = None  # the SIGHUP reloads' task
        self._hup_pending = False  # a SIGHUP came while a reload ran: one more after it
        self._reexec: asyncio.Task[None] | None = None  # the exec, once its reply is sent
        self._recorded_leases: tuple[str, ...] = ()  # the lease ids the record has
        self.stats_line = StatsLine()
        self._next_stats = 0.0
        self.cgroup_counts = CgroupCounts()  # OOM kills and refused tasks, logged as they move
        self.metrics = MetricsOutputs(
            Sources(
                sample=lambda: self.sample,
                ledger=self.ledger,
                tallies=self.commands.tallies,
                supervisor=self.supervisor,
                level_seconds=lambda: self.stats_line.level_seconds,
            ),
            self.faults,
        )
        # every instance, kept current beside the socket: a restart adopts the workers
        self.state_record = StateRecord(self.socket_path, self._recorded)
        # each job's learned figures, kept beside the socket across restarts
        self.sizes_file = SizesFile(self.socket_path)
        # the kernel's OOM-kill reports, each taught to its victim's job
        self.oom_watch = OomWatch(
            self.commands.worker_sizes, self.ledger, self._teach, self._watched_memcgs
        )
        self.supervisor.on_change = self.state_record.mark
        self.supervisor.on_pipes = self._store_pipes

    # -- life -------------------------------------------------------------------------

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(self._loop_error)
        logs.write_per_iteration(loop)
        logs.keep_recent(RECENT_LINES)
        try:
            return await self._run()
        finally:
            logs.write_per_iteration(None)  # writes what the last iteration logged

    async def _run(self) -> int:
        self._install_signal_handlers()
        try:
            await self.startup()
        except OSError as exc:
            log.error("startup_failed", reason=str(exc))
            logs.fatal_to_stderr("startup_failed", str(exc))
            await self.abort_startup()
            return 1
        _quiet_gc()
        try:
            await self.main_loop()
        finally:
            await self.shutdown()
        return 0

    async def startup(self) -> None:
        self.supervisor.worker_nofile = _raise_nofile()  # workers start with the old one
        self.monitor.scan()
        self._last_scan = time.monotonic()
        self.sample = self.monitor.sample()
        self.cgroup_counts.observe(time.monotonic(), self.sample)  # the counts at the start
        if jobs := self.sizes_file.load(self.commands.worker_sizes):
            log.info("worker_sizes_loaded", path=str(self.sizes_file.path), jobs=jobs)
            self._teach()
        self.oom_watch.start(asyncio.get_running_loop())
        result = self.ledger.update(self.sample, {})
        self.pressure_reason = result.reason
        record = self.state_record.load()
        if record is not None:  # before the socket serves: no newcomer takes their slots
            self.resumable.restore(record.get("leases"), record.get("last_lease"))
            self.ledger.lone = LoneAskers.restored(record.get("lone"), resume.runs_as)
        listen = self.notifier.passed.pop(LISTEN_NAME, [None])[0]
        pipes = _passed_pipes(self.notifier.passed)
        await self.server.start(inherited=listen)
        if (fd := self.server.listener_fd()) is not None:
            self.notifier.store(LISTEN_NAME, fd)
        await self.metrics.apply(self.config.metrics)
        self._write_pid_file()
        instances = record.get("instances") if record is not None else None
        adopted = self.supervisor.start(instances, pipes, children=self.reexeced)
        await self.supervisor.settle_leftovers()  # what an earlier daemon left unadopted
        self.supervisor.autostart(skip=adopted)
        self._unstore_pipes_of(set(self.supervisor.instances) - set(adopted), pipes)
        self.state_record.write()
        tightest = self.sample.tightest()
        log.info(
            "started",
            version=__version__,
            pid=os.getpid(),
            reexecuted=self.reexeced,
            socket=str(self.socket_path),
            tightest=tightest.name,
            headroom=tightest.headroom,
            pressure=self.ledger.level,
            pressure_reason=result.reason,
            notify=self.notifier.enabled,
            watchdog_s=self.notifier.watchdog_interval,
        )
        self._next_stats = time.monotonic() + self.config.daemon.stats_interval
        self.notifier.ready(self.status_line())

    async def main_loop(self) -> None:
        """Tick every sample_interval (the config's now: a reload may change it, and
        `scan_due` reads it too); ping the watchdog from here, so a stalled loop is one
        systemd restarts."""
        next_tick = time.monotonic()
        while not self.should_exit.is_set():
            now = time.monotonic()
            if now >= next_tick:
                self.tick(now)
                interval = self.config.daemon.sample_interval
                next_tick += interval
                now = time.monotonic()
                if next_tick < now:  # a slow tick: skip the missed ones, no burst
                    next_tick = now + interval
            next_ping = self.notifier.watchdog_due(now)
            wake = next_tick if next_ping is None else min(next_tick, next_ping)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.should_exit.wait(), timeout=max(0.0, wake - now))

    async def abort_startup(self) -> None:
        """A failed start undoes what it did: no worker left running, no socket left."""
        timeout = self.supervisor.stop_timeout(self.supervisor.instances.values())
        await self.supervisor.shutdown(timeout)
        await self.server.close()
        await self.metrics.close()
        self.monitor.close()
        self.oom_watch.close()
        self.notifier.close()

    async def shutdown(self) -> None:
        """Stop taking leases, stop every worker (signal, grace, kill), close the socket."""
        self.notifier.stopping()
        # the stop may take the longest stop_grace + 10 s, longer than WatchdogSec: the
        # loop keeps pinging while it runs, so systemd never aborts a stop halfway
        pinger = asyncio.get_running_loop().create_task(self._ping_while_stopping())
        self.server.accepting = False
        timeout = self.supervisor.stop_timeout(self.supervisor.instances.values())
        await self.supervisor.shutdown(timeout)
        leases = self.ledger.lease_pids()
        await self.server.close()
        await self.metrics.close()
        self.monitor.close()
        self.oom_watch.close()
        if self.config.daemon.pid_file is not None:
            with contextlib.suppress(FileNotFoundError):
                self.config.daemon.pid_file.unlink()
        self._summarize_held_lines()
        pinger.cancel()
        self.commands.worker_sizes.end_all()  # what the live runs were seen at is kept
        self.sizes_file.save(self.commands.worker_sizes)
        self.state_record.remove()  # stopped: nothing is left to adopt
        self.notifier.close()
        log.info("stopped", pid=os.getpid(), leases_dropped=len(leases))

    async def _ping_while_stopping(self) -> None:
        while (next_ping := self.notifier.watchdog_due(time.monotonic())) is not None:
            await asyncio.sleep(max(0.0, next_ping - time.monotonic()))

    def status_line(self) -> str:
        """systemd's STATUS=: instances running, the tightest limit's use, the level."""
        instances = self.supervisor.instances.values()
        running = sum(1 for inst in instances if inst.state is State.RUNNING)
        line = f"{running}/{len(instances)} instances running; level {self.ledger.level}"
        if self.sample is not None:
            tight = self.sample.tightest()
            line += f"; tasks {tight.in_use}/{tight.limit} of {tight.name} (tightest)"
        return line

    def _watched_memcgs(self) -> list[str]:
        """The memory cgroups whose oom_kill counts the monitor reads (a reload may make
        a new monitor: asked each time)."""
        return list(self.monitor.oom_kills())

    def _recorded(self) -> dict[str, Any]:
        """What the state record keeps (`staterecord`)."""
        leases = resume.recorded(self.ledger)
        self._recorded_leases = tuple(lease["lease"] for lease in leases)
        return {
            "instances": self.supervisor.snapshot(),
            "leases": leases,
            "last_lease": f"L{self.ledger.last_id}",
        }

    def _store_pipes(self, instance: str, fds: dict[str, int] | None) -> None:
        """Keep a run's output pipes in systemd's store (None: its run ended), so a daemon
        restarted after a crash still reads them and its workers never see EPIPE."""
        for stream in ("stdout", "stderr"):
            name = pipe_name(instance, stream)
            if name is None:
                continue
            if fds is None:
                self.notifier.unstore(name)
            else:
                self.notifier.store(name, fds[stream])

    def _unstore_pipes_of(self, instances: set[str], passed: dict[tuple[str, str], int]) -> None:
        """Drop from the store the pipes systemd passed for runs that were not adopted."""
        for instance, stream in passed:
            name = pipe_name(instance, stream)
            if instance in instances and name is not None:
                self.notifier.unstore(name)

    def _write_pid_file(self) -> None:
        """daemon.pid_file: written once the socket serves, removed at shutdown."""
        path = self.config.daemon.pid_file
        if path is not None:  # in a directory no other user controls, through no link
            safepath.make_dir(path.parent, 0o755)
            safepath.replace_file(path, f"{os.getpid()}\n".encode(), 0o644)

    def _install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.handle_exit, sig)
        loop.add_signal_handler(signal.SIGHUP, self.request_reload)
        if os.environ.get(paths.DEBUG_STALL_ENV) == "1":
            # tests only: SIGUSR2 blocks the loop, as a bug would, for the watchdog to see
            loop.add_signal_handler(signal.SIGUSR2, self._debug_stall)

    def _loop_error(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        """What asyncio reports (an accept failing with EMFILE, whose server then pauses
        accepting for a second by itself): one counted line, no traceback on stderr."""
        exc = context.get("exception")
        self.faults.emit(
            "error",
            "loop_error",
            reason=str(context.get("message", "")),
            error=repr(exc) if exc is not None else None,
            errno=getattr(exc, "errno", None),
        )

    def _debug_stall(self) -> None:
        log.warning("debug_stall", reason=f"SIGUSR2 with {paths.DEBUG_STALL_ENV}=1")
        logs.flush()
        time.sleep(3600)  # blocks the one thread: no tick, no answer, no watchdog ping

    def handle_exit(self, sig: signal.Signals) -> None:
        if self.should_exit.is_set():
            log.warning(
                "forced_exit", signal=sig.name, reason="second signal: SIGKILL to every tree"
            )
            self.supervisor.force_kill()
            logs.write_per_iteration(None)  # os._exit skips every finally: write the lines now
            os._exit(1)
        log.info("exit_requested", signal=sig.name)
        self.should_exit.set()

    def request_reload(self) -> None:
        """SIGHUP: the same reload as the CLI's, run as a task the loop owns.

        Reloads run one at a time (`reload` holds a lock). SIGHUPs that arrive while one
        runs are coalesced into one more reload after it, never dropped: the daemon
        ends up running the file as it is after the last signal."""
        if self._reloading is not None and not self._reloading.done():
            self._hup_pending = True
            log.info("reload_queued", by="SIGHUP", reason="a reload is running")
            return
        self._reloading = asyncio.get_running_loop().create_task(self._sighup_reloads())

    async def _sighup_reloads(self) -> None:
        while True:
            try:
                await self.reload(by={"by": "SIGHUP"})
            except ReloadRejected:
                pass  # logged as reload_rejected, with its reasons
            except Exception as exc:  # a bug: said once, with its traceback; the loop runs on
                log.exception("reload_failed", by="SIGHUP", reason=repr(exc))
            if not self._hup_pending:
                return

    # -- the tick ---------------------------------------------------------------------

    def tick(self, now: float) -> None:
        daemon = self.config.daemon
        if scan_due(now, self._last_scan, daemon.scan_interval, daemon.sample_interval):
            try:
                self._trees = self._scan()
            except OSError as exc:  # out of descriptors: the last trees stand, retried
                self.faults.emit("error", "scan_failed", errno=exc.errno, reason=str(exc))
            self.supervisor.reap()
            self._last_scan = now
        self.sample = self.monitor.sample()
        self.cgroup_counts.observe(now, self.sample)
        # trees from the last scan stand until the next one: a tree that grew since is
        # charged at its lease (counted twice until then: the safe side)
        result = self.ledger.update(self.sample, self._trees, self._pool_bytes, self._holder_bytes)
        self.pressure_reason = result.reason
        if result.changed:
            stats = self.ledger.statistics()
            log.warning(
                "pressure_change",
                old=result.previous,
                new=result.level,
                reason=result.reason,
                capacity=stats.capacity,
                leased=stats.leased,
                **self.limits_now(),
            )
        expired = self.ledger.expire()
        for lease in expired:
            self.lease_log.ended(
                "lease_expired", lease, f"not renewed within {self.config.budget.lease_ttl}s"
            )
            holder = self.server.holder(lease.holder)
            if holder is not None:
                self.containment.follow(holder)
        self.resumable.forget({lease.lease_id for lease in expired})
        if tuple(self.ledger.lease_pids()) != self._recorded_leases:
            self.state_record.mark()  # at most once a tick for leases: a crash loses less
        self._summarize_held_lines()
        self.supervisor.tick(now)
        self.server.sweep_idle(now)
        self.stats_line.observe(now, result.level, self.sample)
        if now >= self._next_stats:
            self._next_stats = now + self.config.daemon.stats_interval
            self.log_stats()
        self.metrics.tick()
        self.notifier.status(self.status_line())

    def log_stats(self) -> None:
        """The `stats` line (see daemon.statsline): what `report` is computed from."""
        if self.sample is None:
            return
        fields = self.stats_line.fields(
            self.sample,
            self.ledger.statistics(),
            self.pressure_reason,
            self.commands.tallies,
            self.supervisor.tally,
            sizes=self.commands.worker_sizes.figures(),
        )
        log.info("stats", pid=os.getpid(), **fields)

    def _scan(self) -> dict[str, int]:
        """The slow /proc pass: per-user counts, each lease holder's tree size, and who is
        in each worker's tree (remembered for its kill: `Supervisor.record_trees`)."""
        holders = self.ledger.lease_pids()
        workers = self.supervisor.roots()
        usage = self.monitor.scan({*holders.values(), *workers.values()})
        self.supervisor.record_trees(
            {name: usage[pid].pids for name, pid in workers.items() if pid in usage}
        )
        self._learn(usage, holders.values())
        return {lease: usage[pid].tasks for lease, pid in holders.items() if pid in usage}

    def _learn(self, usage: dict[int, TreeUsage], holders: Iterable[int]) -> None:
        """Each job's memory per worker from this scan's trees (`daemon.workersizes`),
        given to the ledger: it sizes the pools from the next update on, which also takes
        what each pool's workers hold now (`_pool_bytes`: a pool that grew is asked to
        shrink), and what the holders that run their own tasks hold (`_holder_bytes`)."""
        sizes = self.commands.worker_sizes
        held = self.ledger.held_by(holders)
        budget = self.config.budget  # holders are read only where their memory is charged
        charged = budget.memory_unwritten and budget.memory_per_slot > 0
        own = [lease.pid for lease in held if runs_itself(lease)] if charged else []
        rss = self.monitor.resident_bytes([*sizes.pool_pids(held, usage), *own])
        charges = {
            x.lease_id: self.ledger.worker_bytes(x.job, x.uid, x.declared_bytes) for x in held
        }
        kills, before = self.monitor.oom_kills(), self._oom_kills
        self._oom_kills = kills  # read after the leases gone: a kill that ended one counts
        # where the kernel's log says which run a kill hit, only that one was judged
        oom = self.oom_watch.by_count() and oom_rose(before, kills)
        self._pool_bytes = sizes.observe(held, usage, rss, charges, oom)
        self.oom_watch.scanned(held, usage)
        self._holder_bytes = holder_bytes(held, rss)
        if sizes.changed:  # a run ended: kept for the next daemon
            self.sizes_file.save(sizes)
        self._teach()

    def _teach(self) -> None:
        """Give the ledger each job's learned figures (`WorkerSizes.figures`)."""
        figures = self.commands.worker_sizes.figures()
        self.ledger.learn(
            {key: f.worker_bytes for key, f in figures.items()},
            {
                key: (f.worker_tasks, f.pool_tasks)
                for key, f in figures.items()
                if f.worker_tasks is not None and f.pool_tasks is not None
            },
            self.commands.worker_sizes.ended_runs(),
        )

    def limits_now(self) -> dict[str, Any]:
        """The tightest limit right now, for log events about refusals and pressure."""
        sample = self.monitor.sample()
        tightest = sample.tightest()
        return {
            "tightest": tightest.name,
            "tightest_limit": tightest.limit,
            "tightest_in_use": tightest.in_use,
            "headroom": tightest.headroom,
        }

    # -- hooks ------------------------------------------------------------------------

    def _summarize_held_lines(self) -> None:
        """One line each for what the rate-limited logs held back since the last tick."""
        self.lease_log.summarize()
        self.server.problems.summarize()
        self.commands.fallback_log.summarize()
        self.faults.summarize()
        self.oom_watch.summarize()

    def on_close(self, conn: Connection) -> None:
        for lease in self.ledger.release_holder(conn.key):
            self.lease_log.ended("release", lease, "connection closed")
        self.containment.follow(conn)

    def on_tree_gone(self, instance: str, pids: tuple[int, ...]) -> None:
        """A worker's tree is verified gone: whatever it still leased goes back now."""
        for held in self.ledger.held_by(pids):
            lease = self.ledger.release(held.lease_id)
            self.lease_log.ended("release", lease, "worker tree gone", instance=instance)
        self.containment.forget(instance)

    # -- reload -----------------------------------------------------------------------

    async def reload(
        self, by: dict[str, Any] | None = None, restart_changed: bool = False
    ) -> dict[str, Any]:
        """Re-read the config file; a config that does not validate leaves the old one.

        `by` names who asked (the peer's uid, gid and pid, or the signal) in the lines.
        One at a time, and never during a start, stop or restart (`Supervisor.control`):
        a reload asked for while another runs waits for it, then reads the file afresh,
        and its caller gets its own outcome. `restart_changed`: instances whose command,
        user or environment changed restart now, not at their next start."""
        async with self.supervisor.control:
            # every SIGHUP so far is answered by this reload: it reads the file now
            self._hup_pending = False
            self.reopen_files()  # logrotate's postrotate: whatever the new config holds
            self.notifier.reloading()
            try:
                return await self._reload(by or {"by": "unknown"}, restart_changed)
            finally:
                self.notifier.ready(self.status_line())  # the old config or the new one runs

    def reopen_files(self) -> None:
        """Open the daemon's log file and every output file afresh (after logrotate moved
        them); one that cannot be keeps the file it had, and says so."""
        try:
            logs.reopen()
        except OSError as exc:
            log.error("log_reopen_failed", path=str(self.config.daemon.log_file), reason=str(exc))
        self.supervisor.reopen_outputs()

    # -- re-execution (`reexec`) -------------------------------------------------------

    async def reexec(self, conn: Connection, request_id: Any, by: dict[str, Any]) -> dict[str, Any]:
        """Check the installed code, then exec it in place once this reply is sent (see
        `reexec`); raises ReexecRefused, and the daemon runs on, when it cannot."""
        if self._reexec is not None:
            raise reexec.ReexecRefused("a re-execution is already under way")
        problem = await reexec.preflight(self.config.source, self.supervisor.helpers)
        if problem is None:
            async with self.supervisor.control:
                problem = await self._settled(deadline=time.monotonic() + 30.0)
        if problem is not None:
            log.error("reexec_refused", reason=problem, **by)
            raise reexec.ReexecRefused(problem)
        self._reexec = asyncio.get_running_loop().create_task(self._exec(conn, request_id, by))
        self._reexec.add_done_callback(self._exec_ended)
        return {"pid": os.getpid(), "version": __version__, "command": reexec.command()}

    async def _settled(self, deadline: float) -> str | None:
        """Wait until no instance is starting or stopping (their records are not ones
        to go on from); what is still mid-way at the deadline."""
        while True:
            midway = self._midway()
            if not midway or time.monotonic() >= deadline:
                return (
                    f"instances still starting or stopping: {', '.join(midway)}" if midway else None
                )
            await asyncio.sleep(0.05)

    def _midway(self) -> list[str]:
        return [
            name
            for name, inst in self.supervisor.instances.items()
            if inst.state in (State.STARTING, State.STOPPING)
        ]

    async def _exec(self, conn: Connection, request_id: Any, by: dict[str, Any]) -> None:
        async with self.supervisor.control:
            deadline = time.monotonic() + 2.0  # the reply out first: the asker learns it
            while conn.transport.get_write_buffer_size() and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            reason = await self._settled(deadline=time.monotonic() + 10.0)
            if reason is None:
                reason = self._exec_now(by)  # returns only when the exec failed
            log.error("reexec_failed", reason=reason, **by)
            self.notifier.ready(self.status_line())
            if not conn.transport.is_closing():
                error = {"code": protocol.INTERNAL, "message": f"reexec failed: {reason}"}
                conn.transport.write(
                    protocol.encode({"id": request_id, "ok": False, "error": error})
                )

    def _exec_ended(self, task: asyncio.Task[None]) -> None:
        """A bug in the exec's preparation is said, and the daemon runs on."""
        self._reexec = None
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.error("reexec_failed", reason=repr(exc), exc_info=exc)
            self.notifier.ready(self.status_line())

    def _exec_now(self, by: dict[str, Any]) -> str:
        """Record everything, pass the socket and the pipes, exec; why it failed."""
        fds = {
            name: fd
            for (instance, stream), fd in self.supervisor.pipes().items()
            if (name := pipe_name(instance, stream)) is not None
        }
        listen = self.server.listener_fd()
        if listen is not None:
            fds[LISTEN_NAME] = listen
        self.notifier.reloading()
        # who asks alone, for the next daemon only: 4,096 askers are too many for the
        # writes of every lease change, and a crash losing them costs a window once each
        self.state_record.write({"lone": self.ledger.lone.record()})
        self.sizes_file.save(self.commands.worker_sizes)  # a kill's margin since the scan
        log.info(
            "reexec",
            daemon_pid=os.getpid(),
            version=__version__,
            command=reexec.command(),
            running=sum(1 for i in self.supervisor.instances.values() if i.state is State.RUNNING),
            leases=len(self._recorded_leases),
            **by,
        )
        logs.flush()
        why = str(reexec.exec_self(fds, self.notifier.environment))
        self.state_record.write()  # not exec'd: a crash now restores no lone askers
        return why

    def _reject(self, source: Path, by: dict[str, Any], reason: str) -> NoReturn:
        log.error("reload_rejected", path=str(source), reason=reason, **by)
        raise ReloadRejected(f"config rejected, the old one stays:\n{reason}")

    async def _reload(self, by: dict[str, Any], restart_changed: bool) -> dict[str, Any]:
        source = self.config.source
        if source is None:
            raise ReloadRejected("the daemon was not started from a config file")
        try:
            new = load_config(source)
        except (ConfigError, OSError) as exc:
            self._reject(source, by, str(exc))
        if new.daemon.socket != self.config.daemon.socket:
            log.warning(
                "reload_socket_ignored",
                old=str(self.config.daemon.socket),
                new=str(new.daemon.socket),
                reason="the socket moves only on restart",
            )
        # all or nothing: build every new object first; change nothing unless all were
        # made (a reload applied by half ran the new peer policy with the old programs)
        d = new.daemon
        try:
            monitor = HostMonitor(cgroups=new.budget.cgroups, users=_watched_users(new))
        except (OSError, ValueError) as exc:
            self._reject(source, by, f"cannot watch the new limits: {exc}")
        try:
            prepared = self.supervisor.prepare(new)
        except OSError as exc:
            monitor.close()
            self._reject(source, by, f"cannot open the new programs' output: {exc}")
        try:
            logs.configure(d.log_format, logs.LEVELS.get(d.log_level, 20), d.log_file)
        except OSError as exc:
            monitor.close()
            prepared.discard()
            self._reject(source, by, f"cannot open the new log file: {exc}")
        self.config = new
        weigh = Weights(new.budget).weigh
        self.ledger.reconfigure(new.budget, weigh)
        self.supervisor.cpu.weigh = weigh  # its reload writes the weights again
        self.lease_log.rate = d.lease_log_rate
        self.server.problems.rate = d.bad_input_log_rate
        self.server.reconfigure(d, _policy(new))
        self.monitor.close()
        self.monitor = monitor
        diff = await self.supervisor.reload(new, prepared, restart_changed)
        await self.metrics.apply(new.metrics)
        log.info("reloaded", path=str(source), **by, **diff)
        return diff


LISTEN_NAME = "listen"  # the listening socket's name in systemd's descriptor store
_PIPE_PREFIX = {"stdout": "o", "stderr": "e"}


def pipe_name(instance: str, stream: str) -> str | None:
    """A run's pipe's name in the store (FDNAME allows no ':', at most 255 bytes): the
    stream's letter and the instance name in hex; None for a name too long to store."""
    name = _PIPE_PREFIX[stream] + instance.encode().hex()
    return name if len(name) <= 255 else None


def _passed_pipes(passed: dict[str, list[int]]) -> dict[tuple[str, str], int]:
    """(instance, stream) -> fd of the pipes systemd passed back (`pipe_name`'s inverse);
    any other descriptor passed is closed."""
    streams = {letter: stream for stream, letter in _PIPE_PREFIX.items()}
    out = {}
    for name, fds in passed.items():
        stream = streams.get(name[:1])
        try:
            instance = bytes.fromhex(name[1:]).decode() if stream else None
        except (ValueError, UnicodeDecodeError):
            instance = None
        for i, fd in enumerate(fds):
            if instance is not None and stream is not None and i == 0:
                out[(instance, stream)] = fd
            else:
                with contextlib.suppress(OSError):
                    os.close(fd)
    return out


def _watched_users(config: Config) -> list[int | str]:
    users: list[int | str] = [os.geteuid(), *config.budget.watch_users]
    users += [p.user for p in config.programs if p.user]
    return list(dict.fromkeys(users))


def _policy(config: Config) -> PeerPolicy:
    """Allowed peers: the configured uids and groups, plus every program's user (whose
    peers may be its supervised workers, each counted by instance)."""
    workers = []
    for program in config.programs:
        if program.user:
            with contextlib.suppress(KeyError):
                workers.append(pwd.getpwnam(program.user).pw_uid)
    d = config.daemon
    uids = (*d.allowed_uids, *workers)
    return PeerPolicy(uids, d.allowed_groups, d.admin_groups, worker_uids=tuple(workers))


def _raise_nofile() -> int:
    """Soft RLIMIT_NOFILE up to the hard limit: every job holds a connection, and the
    usual soft limit of 1024 ran out in a flood long before the hard one. Returns the
    soft limit the daemon had, which its workers get back (see supervise.environ)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            log.info("nofile_raised", old=soft, new=hard)
    return soft


def _quiet_gc() -> None:
    """Keep the cycle collector off the request path.

    Requests allocate a few short-lived dicts and records each, freed by reference
    counting; what survives (live leases, per-connection state) still tripped the young
    generation every ~700 request pairs, and now and then a collection walked the whole
    heap: in-process, the slowest request round took 1.3 ms with the collector on and
    0.14 ms with it off (p99 36 -> 28 us). Everything made at startup (modules, config,
    the first sample) is frozen out of the walks, and the young generation is collected
    after 20,000 surviving allocations instead of 700, so cycles (exceptions, cancelled
    tasks) are still collected within seconds of traffic.
    """
    gc.freeze()
    gc.set_threshold(20_000, 10, 10)


def run_daemon(config: Config, socket_path: Path | None = None) -> int:
    return asyncio.run(Daemon(config, socket_path).run())
