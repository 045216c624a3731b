"""The daemon: wires config, host monitor, ledger and socket server together.

Its life is three steps, each on one screen: `startup()` (bind the socket, first sample),
`main_loop()` (a drift-free tick: sample, expire leases, level changes; a slower /proc
scan), `shutdown()` (stop intake, release everything, remove the socket). Signal handlers
only set flags or schedule the same code paths the CLI uses (SIGHUP = reload).

# No threads
The daemon must answer, kill and log when the host cannot start one more thread, so it
never starts one: no executors, no `to_thread`, no loky. Everything here is one asyncio
loop; the slow /proc scan runs inline on its own interval.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from pathlib import Path
from typing import Any

from supervisord_batt import __version__, protocol
from supervisord_batt.budget import BudgetLedger, Grant, LeaseError, Request
from supervisord_batt.config import Config, ConfigError, load_config
from supervisord_batt.host import HostMonitor, HostSample, sample_to_json
from supervisord_batt.logs import get_logger
from supervisord_batt.procinfo import cgroup_fs_paths, thread_count
from supervisord_batt.server import Connection, Server

log = get_logger(component="daemon")


class Daemon:
    def __init__(self, config: Config, socket_path: Path | None = None) -> None:
        self.config = config
        self.socket_path = socket_path or config.daemon.socket
        self.monitor = HostMonitor(cgroups=config.budget.cgroups, users=self._watched_users(config))
        self.ledger = BudgetLedger(config.budget, clock=time.monotonic)
        self.server = Server(config.daemon, self.handle, self.on_close, self.socket_path)
        self.sample: HostSample | None = None
        self.should_exit = asyncio.Event()
        self.force_exit = False
        self.started_at = time.monotonic()
        self._last_scan = 0.0
        self._trees: dict[str, int] = {}

    @staticmethod
    def _watched_users(config: Config) -> list[int | str]:
        users: list[int | str] = [os.geteuid(), *config.budget.watch_users]
        users += [p.user for p in config.programs if p.user]
        return list(dict.fromkeys(users))

    # -- life -------------------------------------------------------------------------

    async def run(self) -> int:
        self._install_signal_handlers()
        try:
            await self.startup()
        except OSError as exc:
            log.error("startup_failed", reason=str(exc))
            return 1
        try:
            await self.main_loop()
        finally:
            await self.shutdown()
        return 0

    async def startup(self) -> None:
        self.monitor.scan()
        self._last_scan = time.monotonic()
        self.sample = self.monitor.sample()
        self.ledger.update(self.sample, {})
        await self.server.start()
        tightest = self.sample.tightest()
        log.info(
            "started",
            version=__version__,
            pid=os.getpid(),
            socket=str(self.socket_path),
            tightest=tightest.name,
            headroom=tightest.headroom,
            level=self.ledger.statistics().level,
        )

    async def main_loop(self) -> None:
        interval = self.config.daemon.sample_interval
        next_tick = time.monotonic()
        while not self.should_exit.is_set():
            self.tick(time.monotonic())
            next_tick += interval
            now = time.monotonic()
            if next_tick < now:  # a slow tick: skip the missed ones, no burst
                next_tick = now + interval
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.should_exit.wait(), timeout=next_tick - now)

    async def shutdown(self) -> None:
        self.server.accepting = False
        leases = self.ledger.statistics().leases
        await self.server.close()
        self.monitor.close()
        log.info("stopped", pid=os.getpid(), leases_dropped=len(leases))

    def _install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.handle_exit, sig)
        loop.add_signal_handler(signal.SIGHUP, self.reload)

    def handle_exit(self, sig: signal.Signals) -> None:
        if self.should_exit.is_set():
            log.warning("forced_exit", signal=sig.name)
            self.force_exit = True
            os._exit(1)
        log.info("exit_requested", signal=sig.name)
        self.should_exit.set()

    # -- the tick ---------------------------------------------------------------------

    def tick(self, now: float) -> None:
        if now - self._last_scan >= self.config.daemon.scan_interval:
            self.monitor.scan()
            self._trees = self._holder_trees()
            self._last_scan = now
        self.sample = self.monitor.sample()
        # trees from the last scan stand until the next one: a tree that grew since is
        # charged at its lease (counted twice until then: the safe side)
        result = self.ledger.update(self.sample, self._trees)
        if result.changed:
            stats = self.ledger.statistics()
            tightest = self.sample.tightest()
            log.warning(
                "pressure_change",
                old=result.previous,
                new=result.level,
                reason=result.reason,
                tightest=tightest.name,
                headroom=tightest.headroom,
                capacity=stats.capacity,
                leased=stats.leased,
            )
        for lease in self.ledger.expire():
            log.warning(
                "lease_expired",
                lease=lease.lease_id,
                pid=lease.pid,
                job=lease.job,
                workers=lease.workers,
                reason=f"not renewed within {self.config.budget.lease_ttl}s",
            )
        self.server.sweep_idle(now)

    def _holder_trees(self) -> dict[str, int]:
        leases = self.ledger.statistics().leases
        if not leases:
            return {}
        usage = self.monitor.tree_tasks({lease.pid for lease in leases})
        return {lease.lease_id: usage[lease.pid].tasks for lease in leases if lease.pid in usage}

    # -- reload -----------------------------------------------------------------------

    def reload(self) -> dict[str, Any]:
        source = self.config.source
        if source is None:
            return protocol.error(protocol.BAD_REQUEST, "the daemon was not started from a file")
        try:
            new = load_config(source)
        except (ConfigError, OSError) as exc:
            log.error("reload_rejected", path=str(source), reason=str(exc))
            return protocol.error(protocol.BAD_REQUEST, f"config rejected, old one kept:\n{exc}")
        self.config = new
        self.ledger.reconfigure(new.budget)
        log.info("reloaded", path=str(source))
        return protocol.ok()

    # -- requests ---------------------------------------------------------------------

    async def handle(self, conn: Connection, msg: dict[str, Any]) -> dict[str, Any]:
        op = msg["op"]
        method = getattr(self, f"op_{op}", None)
        if method is None:
            raise protocol.ProtocolError(protocol.UNKNOWN_OP, f"op {op!r} is not served here")
        reply: dict[str, Any] = method(conn, msg)
        if "id" in msg:
            reply["id"] = msg["id"]
        return reply

    def on_close(self, conn: Connection) -> None:
        for lease in self.ledger.release_holder(conn.key):
            log.info(
                "release",
                lease=lease.lease_id,
                pid=lease.pid,
                job=lease.job,
                kind=lease.kind,
                workers=lease.workers,
                reason="connection closed",
            )

    def op_hello(self, conn: Connection, msg: dict[str, Any]) -> dict[str, Any]:
        """{"op":"hello","version":1,"client":"name"} -> {"ok":true,"version":1,"server":"..."}"""
        if msg["version"] != protocol.VERSION:
            raise protocol.ProtocolError(
                protocol.UNSUPPORTED_VERSION,
                f"client speaks version {msg['version']}, this daemon speaks {protocol.VERSION}",
            )
        conn.data["client"] = msg.get("client", "")
        return protocol.ok(version=protocol.VERSION, server=f"supervisord-batt {__version__}")

    def op_acquire(self, conn: Connection, msg: dict[str, Any]) -> dict[str, Any]:
        """{"op":"acquire","want":N,"kinds":[...],"job":"name","pid":P} -> a grant"""
        peer = conn.peer
        if "cgroups" not in conn.data:
            conn.data["cgroups"] = tuple(cgroup_fs_paths(peer.pid))
        request = Request(
            holder=conn.key,
            pid=peer.pid,
            uid=peer.uid,
            job=msg.get("job") or f"pid{peer.pid}",
            want=msg["want"],
            kinds=tuple(msg.get("kinds", protocol.KINDS)),
            cgroups=conn.data["cgroups"],
            base_tasks=thread_count(peer.pid),
        )
        grant = self.ledger.acquire(request)
        event = "grant" if grant.kind != "sequential" or request.want < 2 else "deny"
        log.info(
            event,
            lease=grant.lease_id,
            pid=peer.pid,
            job=request.job,
            want=request.want,
            kind=grant.kind,
            workers=grant.workers,
            pressure=grant.level,
            reason=grant.reason,
        )
        return _grant_reply(grant)

    def op_renew(self, conn: Connection, msg: dict[str, Any]) -> dict[str, Any]:
        """{"op":"renew","lease":"L1","workers_in_use":N} -> the lease's current target"""
        lease_id = self._owned(conn, msg["lease"])
        grant = self.ledger.renew(lease_id, msg.get("workers_in_use"))
        return _grant_reply(grant)

    def op_release(self, conn: Connection, msg: dict[str, Any]) -> dict[str, Any]:
        """{"op":"release","lease":"L1"} -> {"ok":true,"kind":...,"workers":N}"""
        lease = self.ledger.release(self._owned(conn, msg["lease"]))
        log.info(
            "release",
            lease=lease.lease_id,
            pid=lease.pid,
            job=lease.job,
            kind=lease.kind,
            workers=lease.workers,
            reason="released by holder",
        )
        return protocol.ok(lease=lease.lease_id, kind=lease.kind, workers=lease.workers)

    def op_heartbeat(self, conn: Connection, msg: dict[str, Any]) -> dict[str, Any]:
        """{"op":"heartbeat","lease":"L1","progress":5} -> {"ok":true}"""
        conn.data["last_progress"] = time.monotonic()
        if "lease" in msg:
            self.ledger.heartbeat(self._owned(conn, msg["lease"]))
        return protocol.ok()

    def op_status(self, conn: Connection, msg: dict[str, Any]) -> dict[str, Any]:
        """{"op":"status"} -> level, capacity, leased, leases, host"""
        return protocol.ok(**self.status())

    def status(self) -> dict[str, Any]:
        stats = self.ledger.statistics()
        now = time.monotonic()
        return {
            "pid": os.getpid(),
            "version": __version__,
            "uptime_s": round(now - self.started_at, 1),
            "level": stats.level,
            "capacity": stats.capacity,
            "leased": stats.leased,
            "leased_tasks": stats.leased_tasks,
            "connections": len(self.server.connections),
            "leases": [
                {
                    "lease": lease.lease_id,
                    "pid": lease.pid,
                    "uid": lease.uid,
                    "job": lease.job,
                    "kind": lease.kind,
                    "workers": lease.workers,
                    "target": lease.target,
                    "wanted": lease.wanted,
                    "age_s": round(now - lease.created_at, 1),
                }
                for lease in stats.leases
            ],
            "host": sample_to_json(self.sample) if self.sample else None,
        }

    def _owned(self, conn: Connection, lease_id: str) -> str:
        """A lease this connection holds; anything else is an error, never a silent no-op."""
        try:
            holder = self.ledger.lease(lease_id).holder
        except LeaseError as exc:
            raise protocol.ProtocolError(protocol.UNKNOWN_LEASE, str(exc)) from None
        if holder != conn.key:
            raise protocol.ProtocolError(
                protocol.UNKNOWN_LEASE, f"lease {lease_id} is not held by this connection"
            )
        return lease_id


def _grant_reply(grant: Grant) -> dict[str, Any]:
    return protocol.ok(
        lease=grant.lease_id,
        kind=grant.kind,
        workers=grant.workers,
        target=grant.target,
        level=grant.level,
        ttl=grant.ttl,
        reason=grant.reason,
    )


def run_daemon(config: Config, socket_path: Path | None = None) -> int:
    return asyncio.run(Daemon(config, socket_path).run())
