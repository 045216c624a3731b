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
from pathlib import Path
from typing import Any, NoReturn

from supervisord_batt import __version__, logs, paths, safepath
from supervisord_batt.budget.ledger import BudgetLedger
from supervisord_batt.config.loader import ConfigError, load_config
from supervisord_batt.config.records import Config, MetricsConfig
from supervisord_batt.daemon.commands import Commands, ReloadRejected
from supervisord_batt.daemon.containment import Containment
from supervisord_batt.daemon.leaselog import LeaseLog
from supervisord_batt.daemon.notify import Notifier
from supervisord_batt.daemon.server import Connection, PeerPolicy, Server
from supervisord_batt.daemon.statsline import StatsLine
from supervisord_batt.daemon.throttle import Throttle
from supervisord_batt.daemon.weights import Weights
from supervisord_batt.host.monitor import HostMonitor
from supervisord_batt.host.sample import HostSample
from supervisord_batt.logs import get_logger
from supervisord_batt.supervise.states import State
from supervisord_batt.supervise.supervisor import Supervisor

log = get_logger(component="daemon")
RECENT_LINES = 50  # log lines kept in memory for `status` (a live view's latest events)


class Daemon:
    def __init__(self, config: Config, socket_path: Path | None = None) -> None:
        self.config = config
        # first: it clears NOTIFY_SOCKET from the environment the workers will inherit
        self.notifier = Notifier()
        self.socket_path = socket_path or config.daemon.socket
        self.monitor = HostMonitor(cgroups=config.budget.cgroups, users=_watched_users(config))
        self.ledger = BudgetLedger(
            config.budget, clock=time.monotonic, weigh=Weights(config.budget).weigh
        )
        self.lease_log = LeaseLog(config.daemon.lease_log_rate)
        self.supervisor = Supervisor(config, self.socket_path, self.on_tree_gone, self.limits_now)
        self.sample: HostSample | None = None
        self.containment = Containment(self.ledger, self.supervisor)
        # what the host ran out of (descriptors for accept, scan): counted, never fatal
        self.faults = Throttle(1, summary="faults_suppressed", about="exhausted resources")
        self.commands = Commands(
            ledger=self.ledger,
            lease_log=self.lease_log,
            supervisor=self.supervisor,
            reload=self.reload,
            accepting=lambda: self.server.accepting,
            connections=lambda: len(self.server.connections),
            sample=lambda: self.sample,
            pressure_reason=lambda: self.pressure_reason,
            lease_changed=self.containment.follow,
            faults=self.faults,
        )
        self.server = Server(config.daemon, self.commands.handle, self.on_close, self.socket_path)
        self.server.policy = _policy(config)
        self.server.is_worker = lambda pid: self.supervisor.instance_of(pid) is not None
        self.server.observe = self.commands.tallies.request
        self.should_exit = asyncio.Event()
        self._last_scan = 0.0
        self.pressure_reason = ""  # why the level is what it is, as of the last tick
        self._trees: dict[str, int] = {}
        self._reloading: asyncio.Task[None] | None = None  # the SIGHUP reloads' task
        self._hup_pending = False  # a SIGHUP came while a reload ran: one more after it
        self._reload_lock = asyncio.Lock()
        self.stats_line = StatsLine()
        self._next_stats = 0.0
        self.metrics = MetricsOutputs(self)

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
            await self.abort_startup()
            return 1
        _quiet_gc()
        try:
            await self.main_loop()
        finally:
            await self.shutdown()
        return 0

    async def startup(self) -> None:
        _raise_nofile()
        self.monitor.scan()
        self._last_scan = time.monotonic()
        self.sample = self.monitor.sample()
        result = self.ledger.update(self.sample, {})
        self.pressure_reason = result.reason
        await self.server.start()
        await self.metrics.apply(self.config.metrics)
        self._write_pid_file()
        await self.supervisor.settle_leftovers()  # an earlier daemon's, before ours start
        self.supervisor.start()
        tightest = self.sample.tightest()
        log.info(
            "started",
            version=__version__,
            pid=os.getpid(),
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
        """Tick every sample_interval; ping the watchdog from here, so a stalled loop is
        one systemd restarts."""
        interval = self.config.daemon.sample_interval
        next_tick = time.monotonic()
        while not self.should_exit.is_set():
            now = time.monotonic()
            if now >= next_tick:
                self.tick(now)
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
        if self.config.daemon.pid_file is not None:
            with contextlib.suppress(FileNotFoundError):
                self.config.daemon.pid_file.unlink()
        self.lease_log.summarize()
        self.server.problems.summarize()
        self.commands.fallback_log.summarize()
        self.faults.summarize()
        pinger.cancel()
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
        if now - self._last_scan >= self.config.daemon.scan_interval:
            try:
                self._trees = self._scan()
            except OSError as exc:  # out of descriptors: the last trees stand, retried
                self.faults.emit("error", "scan_failed", errno=exc.errno, reason=str(exc))
            self.supervisor.reap()
            self._last_scan = now
        self.sample = self.monitor.sample()
        # trees from the last scan stand until the next one: a tree that grew since is
        # charged at its lease (counted twice until then: the safe side)
        result = self.ledger.update(self.sample, self._trees)
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
        for lease in self.ledger.expire():
            self.lease_log.ended(
                "lease_expired", lease, f"not renewed within {self.config.budget.lease_ttl}s"
            )
            holder = self.server.holder(lease.holder)
            if holder is not None:
                self.containment.follow(holder)
        self.lease_log.summarize()
        self.server.problems.summarize()
        self.commands.fallback_log.summarize()
        self.faults.summarize()
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
        )
        log.info("stats", pid=os.getpid(), **fields)

    def _scan(self) -> dict[str, int]:
        """The slow /proc pass: per-user counts, and each lease holder's tree size."""
        holders = self.ledger.lease_pids()
        usage = self.monitor.scan(set(holders.values()))
        return {lease: usage[pid].tasks for lease, pid in holders.items() if pid in usage}

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

    async def reload(self, by: dict[str, Any] | None = None) -> dict[str, list[str]]:
        """Re-read the config file; a config that does not validate leaves the old one.

        `by` names who asked (the peer's uid, gid and pid, or the signal) in the lines.
        One at a time: a reload asked for while another runs waits for it, then reads
        the file afresh, and its caller gets its own outcome."""
        async with self._reload_lock:
            # every SIGHUP so far is answered by this reload: it reads the file now
            self._hup_pending = False
            self.notifier.reloading()
            try:
                return await self._reload(by or {"by": "unknown"})
            finally:
                self.notifier.ready(self.status_line())  # the old config or the new one runs

    def _reject(self, source: Path, by: dict[str, Any], reason: str) -> NoReturn:
        log.error("reload_rejected", path=str(source), reason=reason, **by)
        raise ReloadRejected(f"config rejected, the old one stays:\n{reason}")

    async def _reload(self, by: dict[str, Any]) -> dict[str, list[str]]:
        source = self.config.source
        if source is None:
            raise ReloadRejected("the daemon was not started from a config file")
        try:
            new = load_config(source)
        except (ConfigError, OSError) as exc:
            log.error("reload_rejected", path=str(source), reason=str(exc), **by)
            raise ReloadRejected(f"config rejected, the old one stays:\n{exc}") from None
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
        self.ledger.reconfigure(new.budget, Weights(new.budget).weigh)
        self.lease_log.rate = d.lease_log_rate
        self.server.problems.rate = d.bad_input_log_rate
        self.server.reconfigure(d, _policy(new))
        self.monitor.close()
        self.monitor = monitor
        diff = await self.supervisor.reload(new, prepared)
        await self.metrics.apply(new.metrics)
        log.info("reloaded", path=str(source), **by, **diff)
        return diff


class MetricsOutputs:
    """The metrics' endpoint and textfile, each on only when configured. prometheus-client
    is imported the first time either is on: a daemon without metrics never loads it."""

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        self.config = MetricsConfig()
        self.collector: Any = None  # a DaemonCollector once metrics are on
        self.endpoint: Any = None  # a MetricsEndpoint while listening
        # one exposition per tick: the host figures change once a tick, and a scrape
        # between two ticks gets the textfile's bytes (counters as of the tick)
        self._rendered: bytes | None = None
        self._families: dict[str, Any] = {}  # the last rendering, by family (metrics.Rendered)
        self._textdir: safepath.HeldDir | None = None  # the textfile's directory, held

    def _collector(self) -> Any:
        if self.collector is None:
            from supervisord_batt.daemon.metrics import DaemonCollector  # noqa: PLC0415

            d = self.daemon  # (imported here: see the class)
            self.collector = DaemonCollector(
                lambda: d.sample, d.ledger, d.commands.tallies, d.supervisor
            )
        return self.collector

    async def apply(self, config: MetricsConfig) -> None:
        """Take a (new) metrics config: (re)start the endpoint when its address moved.
        A port that cannot be bound is an error line, never a daemon that stops."""
        old, self.config = self.config, config
        if config.listen is not None or config.textfile is not None:
            self._collector()  # imported now, not at a first scrape that may find no descriptor
        if old.textfile is not None and old.textfile != config.textfile:
            with contextlib.suppress(OSError):
                old.textfile.unlink()
            self._release_textdir()
        if config.listen == old.listen and (self.endpoint is not None or config.listen is None):
            return
        await self.close_endpoint()
        if config.listen is None:
            return
        from supervisord_batt.daemon.metricshttp import MetricsEndpoint  # noqa: PLC0415

        endpoint = MetricsEndpoint(
            config.listen, self.render, self._scrape_failed, self._accept_failed
        )
        try:
            await endpoint.start()
        except OSError as exc:
            host, port = config.listen
            log.error("metrics_listen_failed", address=host, port=port, reason=str(exc))
            return
        self.endpoint = endpoint

    def render(self) -> tuple[bytes, str]:
        """The exposition and its content type, rendered at most once a tick (see
        daemon.metrics for why one format serves both outputs)."""
        from supervisord_batt.daemon.metrics import (  # noqa: PLC0415
            TEXT_FORMAT,
            exposition,
            render_families,
        )

        if self._rendered is None:
            self._families = render_families(self._collector().collect(), self._families)
            self._rendered = exposition(self._families)
        return self._rendered, TEXT_FORMAT

    def _scrape_failed(self, exc: Exception) -> None:
        self.daemon.faults.emit("error", "metrics_failed", reason=repr(exc), exc_info=exc)

    def _accept_failed(self, exc: OSError) -> None:
        self.daemon.faults.emit(
            "warning", "metrics_accept_failed", errno=exc.errno, reason=str(exc), paused_s=1.0
        )

    def tick(self) -> None:
        """Rewrite the textfile; a full disk or a bad directory is counted, not fatal."""
        self._rendered = None
        path = self.config.textfile
        if path is None:
            return
        if self._textdir is None:
            self._textdir = safepath.HeldDir(path.parent)
        try:
            self._textdir.replace_file(path.name, self.render()[0], 0o644)
        except OSError as exc:
            self.daemon.faults.emit(
                "error", "metrics_textfile_failed", path=str(path), errno=exc.errno, reason=str(exc)
            )

    def _release_textdir(self) -> None:
        if self._textdir is not None:
            self._textdir.close()
            self._textdir = None

    async def close_endpoint(self) -> None:
        endpoint, self.endpoint = self.endpoint, None
        if endpoint is not None:
            await endpoint.close()

    async def close(self) -> None:
        """At stop: no endpoint, and no textfile left to be read as if the daemon ran."""
        await self.close_endpoint()
        self._release_textdir()
        if self.config.textfile is not None:
            with contextlib.suppress(OSError):
                self.config.textfile.unlink()


def _watched_users(config: Config) -> list[int | str]:
    users: list[int | str] = [os.geteuid(), *config.budget.watch_users]
    users += [p.user for p in config.programs if p.user]
    return list(dict.fromkeys(users))


def _policy(config: Config) -> PeerPolicy:
    """Allowed peers: the configured uids and groups, plus every program's user."""
    uids = list(config.daemon.allowed_uids)
    for program in config.programs:
        if program.user:
            with contextlib.suppress(KeyError):
                uids.append(pwd.getpwnam(program.user).pw_uid)
    return PeerPolicy(tuple(uids), config.daemon.allowed_groups, config.daemon.admin_groups)


def _raise_nofile() -> None:
    """Soft RLIMIT_NOFILE up to the hard limit: every job holds a connection, and the
    usual soft limit of 1024 ran out in a flood long before the hard one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            log.info("nofile_raised", old=soft, new=hard)


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
