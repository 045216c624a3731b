"""One handler per request; each docstring is the operation's wire format.

docs/PROTOCOL.md describes the same operations for client authors. Handlers validate
nothing that `protocol.decode` already did; they raise `ProtocolError` for requests that
are well formed but wrong (a lease this connection does not hold, a program that does
not exist) and return the reply's fields.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from supervisord_batt import __version__, protocol
from supervisord_batt.budget.ledger import BudgetLedger
from supervisord_batt.budget.records import Grant, LeaseError, Request
from supervisord_batt.daemon.leaselog import LeaseLog
from supervisord_batt.daemon.reexec import ReexecRefused
from supervisord_batt.daemon.resume import Resumable
from supervisord_batt.daemon.server import Connection, Reply
from supervisord_batt.daemon.status import StatusView, Viewer, user_uid
from supervisord_batt.daemon.tallies import Tallies
from supervisord_batt.daemon.throttle import Throttle
from supervisord_batt.daemon.workersizes import WorkerSizes
from supervisord_batt.host.probe import sample_to_json
from supervisord_batt.host.procinfo import cgroup_fs_paths, thread_count
from supervisord_batt.host.sample import HostSample
from supervisord_batt.logs import get_logger
from supervisord_batt.supervise.states import Start, State, Stop
from supervisord_batt.supervise.supervisor import TERMINAL, Supervisor

log = get_logger(component="daemon")

# Who may do what (PeerPolicy): every allowed peer may lease, heartbeat and read status;
# these change what runs, so they are for admins only. `tail` is for admins, and for a
# peer reading a program that runs as its own uid.
LEASE_OPS = frozenset({"acquire", "renew", "release"})
# A job holds one lease, a notebook kernel a few; a connection that piles up thousands
# would grow the daemon's memory and every status reply without bound.
MAX_LEASES_PER_CONNECTION = 16


class ReloadRejected(Exception):
    """The new config did not validate (or there is no file): the old one keeps running."""


@dataclass
class Commands:
    """The handlers, given each collaborator they use (none of them reaches the daemon).

    The ledger, the lease log and the supervisor live as long as the daemon (a reload
    reconfigures them in place). What only the daemon knows is read through callables,
    at the moment a handler needs it: whether the server still takes leases, how many
    connections are open, the latest host sample, and the reload itself.
    """

    ledger: BudgetLedger
    lease_log: LeaseLog
    supervisor: Supervisor
    # (by=..., restart_changed=...), raises ReloadRejected
    reload: Callable[..., Awaitable[dict[str, Any]]]
    accepting: Callable[[], bool]
    connections: Callable[[], int]
    sample: Callable[[], HostSample | None]
    pressure_reason: Callable[[], str] = lambda: ""
    # after every lease op of a connection: its worker's cgroup follows its leases
    lease_changed: Callable[[Connection], None] = lambda conn: None
    # (conn, request id, by) -> the reply; raises ReexecRefused. None: not offered
    reexec: Callable[..., Awaitable[dict[str, Any]]] | None = None
    # the leases a re-executed or restarted daemon holds for their jobs (`resume`)
    resumable: Resumable | None = None
    started_at: float = field(default_factory=time.monotonic)
    tallies: Tallies = field(default_factory=Tallies)
    # each job's memory per worker, learned from the scans (shown in the lease rows)
    worker_sizes: WorkerSizes = field(default_factory=WorkerSizes)
    # the daemon's own faults (a bug in containment): counted, one line a second at most
    faults: Throttle = field(
        default_factory=lambda: Throttle(1, summary="faults_suppressed", about="faults")
    )
    # a job in a loop of failing pools must not flood the log: 10 lines a second, counted
    fallback_log: Throttle = field(
        default_factory=lambda: Throttle(
            10, summary="fallback_lines_suppressed", about="executor fallbacks"
        )
    )
    _ops: dict[str, Callable[[Connection, dict[str, Any]], Any]] = field(
        init=False, repr=False, default_factory=dict
    )
    _status: StatusView = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._ops = {
            op: getattr(self, f"op_{op}") for op in protocol.SCHEMAS if hasattr(self, f"op_{op}")
        }
        self._status = StatusView(self.supervisor, self.worker_sizes)

    def handle(self, conn: Connection, msg: dict[str, Any]) -> Reply | Awaitable[Reply]:
        """The reply to one request: at once, or an awaitable of it for ops that wait."""
        op = msg["op"]
        method = self._ops.get(op)
        if method is None:
            raise protocol.ProtocolError(protocol.UNKNOWN_OP, f"op {op!r} is not served here")
        if op in protocol.CONTROL_OPS and not conn.admin:
            raise protocol.ProtocolError(
                protocol.FORBIDDEN,
                f"uid {conn.peer.uid} may not {op}: control is for root, the daemon's uid "
                "and daemon.admin_groups",
            )
        reply = method(conn, msg)
        if op in LEASE_OPS:
            try:
                self.lease_changed(conn)
            except Exception as exc:  # the lease stands: its holder must learn it
                self.faults.emit(
                    "error",
                    "containment_failed",
                    uid=conn.peer.uid,
                    pid=conn.peer.pid,
                    reason=repr(exc),
                    exc_info=exc,
                )
        if "id" not in msg:
            return reply  # type: ignore[no-any-return]
        if isinstance(reply, dict):
            reply["id"] = msg["id"]
            return reply
        return _with_id(reply, msg["id"])

    # -- leases -----------------------------------------------------------------------

    def op_hello(self, conn: Connection, msg: dict[str, Any]) -> protocol.HelloReply:
        """{"op":"hello","version":1,"client":"name"} -> {"ok":true,"version":1,"server":"..."}"""
        if msg["version"] != protocol.VERSION:
            raise protocol.ProtocolError(
                protocol.UNSUPPORTED_VERSION,
                f"client speaks version {msg['version']}, this daemon speaks {protocol.VERSION}",
            )
        return {
            "ok": True,
            "version": protocol.VERSION,
            "server": f"supervisord-batt {__version__}",
        }

    def op_acquire(self, conn: Connection, msg: dict[str, Any]) -> protocol.GrantReply:
        """{"op":"acquire","want":N,"kinds":[...],"job":"name","pid":P,"worker_bytes":B}
        -> a grant"""
        if not self.accepting():
            raise protocol.ProtocolError(protocol.SHUTTING_DOWN, "the daemon is shutting down")
        peer, state = conn.peer, conn.state
        if state.base_tasks is None:  # a connection's peer does not change: read once
            state.base_tasks = thread_count(peer.pid)
        request = Request(
            holder=conn.key,
            pid=peer.pid,
            uid=peer.uid,
            job=msg.get("job") or f"pid{peer.pid}",
            want=msg["want"],
            kinds=tuple(msg.get("kinds", protocol.KINDS)),
            cgroups=_cgroups(conn),
            base_tasks=state.base_tasks,
            declared_bytes=msg.get("worker_bytes", 0),
        )
        held = state.leases
        if len(held) >= MAX_LEASES_PER_CONNECTION:
            # forget those the daemon ended meanwhile (expired, or their tree is gone)
            held.intersection_update(self.ledger.lease_pids())
            if len(held) >= MAX_LEASES_PER_CONNECTION:
                raise protocol.ProtocolError(
                    protocol.TOO_MANY_LEASES,
                    f"this connection holds {len(held)} leases, the most one may hold",
                )
        grant = self._resumed(conn, msg)
        if grant is None:
            grant = self.ledger.acquire(request)
        held.add(grant.lease_id)
        state.job = request.job
        signal = self.ledger.level_signal(request.uid)
        self.tallies.granted(grant.kind, request.want, grant.reason, signal)
        self.lease_log.granted(request, grant)
        return _grant_reply(grant)

    def _resumed(self, conn: Connection, msg: dict[str, Any]) -> Grant | None:
        """`resume`: the lease this job held before the daemon's re-execution or restart,
        or holds on an earlier connection it gave up, given back to it (None: this daemon
        holds no such lease for it; a fresh acquire)."""
        old = msg.get("resume")
        if old is None:
            return None
        peer, in_use = conn.peer, msg.get("workers_in_use")
        grant, reason = None, "not held by this daemon: acquired afresh"
        found = self.resumable
        if found is not None:
            if (grant := found.claim(old, peer.pid, peer.uid, conn.key, in_use)) is not None:
                reason = "held for it since the daemon's restart"
            elif (grant := found.take_over(old, peer.pid, peer.uid, conn.key, in_use)) is not None:
                reason = "moved from the job's earlier connection"
        log.info(
            "lease_resumed" if grant is not None else "lease_not_resumed",
            lease=old,
            uid=peer.uid,
            pid=peer.pid,
            job=msg.get("job"),
            kind=None if grant is None else grant.kind,
            workers=None if grant is None else grant.workers,
            reason=reason,
        )
        return grant

    async def op_reexec(self, conn: Connection, msg: dict[str, Any]) -> protocol.ReexecReply:
        """{"op":"reexec"} -> {"ok":true,"pid":P,"version":"...","command":[...]}, then the
        connection closes as the daemon execs; a second reply (an error) if the exec failed"""
        if self.reexec is None:
            raise protocol.ProtocolError(protocol.UNKNOWN_OP, "reexec is not served here")
        try:
            done = await self.reexec(conn, msg.get("id"), _who(conn))
        except ReexecRefused as exc:
            raise protocol.ProtocolError(protocol.BAD_REQUEST, str(exc)) from None
        return {
            "ok": True,
            "pid": done["pid"],
            "version": done["version"],
            "command": done["command"],
        }

    def op_renew(self, conn: Connection, msg: dict[str, Any]) -> protocol.GrantReply:
        """{"op":"renew","lease":"L1","workers_in_use":N} -> the lease's current target"""
        lease_id = self._owned(conn, msg["lease"])
        try:
            grant = self.ledger.renew(lease_id, msg.get("workers_in_use"))
        except LeaseError as exc:
            raise protocol.ProtocolError(protocol.BAD_REQUEST, str(exc)) from None
        return _grant_reply(grant)

    def op_release(self, conn: Connection, msg: dict[str, Any]) -> protocol.ReleaseReply:
        """{"op":"release","lease":"L1"} -> {"ok":true,"lease":"L1","kind":...,"workers":N}"""
        lease = self.ledger.release(self._owned(conn, msg["lease"]))
        conn.state.leases.discard(lease.lease_id)
        self.lease_log.ended("release", lease, "released by holder")
        reply: protocol.ReleaseReply = {
            "ok": True,
            "lease": lease.lease_id,
            "kind": lease.kind,
            "workers": lease.workers,
        }
        return reply

    def op_heartbeat(self, conn: Connection, msg: dict[str, Any]) -> protocol.HeartbeatReply:
        """{"op":"heartbeat","lease":"L1","progress":5} -> {"ok":true,"instance":"batt:0"|null}"""
        if "lease" in msg:
            self.ledger.heartbeat(self._owned(conn, msg["lease"]))
        instance = self.supervisor.progress(conn.peer.pid, _cgroups(conn))
        return {"ok": True, "instance": instance}

    def op_fallback(self, conn: Connection, msg: dict[str, Any]) -> protocol.OkReply:
        """{"op":"fallback","from":"process","to":"thread","lease":"L1","workers":4,
        "stage":"spawn","reason":"..."} -> {"ok":true}: a job's pool failed, it fell back"""
        old, new = msg["from"], msg["to"]
        self.tallies.fallbacks[(old, new)] += 1
        pid = conn.peer.pid
        self.fallback_log.emit(
            "warning",
            "executor_fallback",
            uid=conn.peer.uid,
            pid=pid,
            instance=self.supervisor.instance_of(pid, _cgroups(conn)),
            job=conn.state.job,
            lease=msg.get("lease"),
            workers=msg.get("workers"),
            stage=msg.get("stage", ""),  # both capped by protocol.MAX_CHARS
            reason=msg.get("reason", ""),
            **{"from": old, "to": new},
        )
        return {"ok": True}

    def holds_lease(self, conn: Connection) -> bool:
        """Whether the connection holds a live lease (at most 16 look-ups: the server
        asks it of the connections it could close to make room)."""
        for lease_id in conn.state.leases:
            with contextlib.suppress(LeaseError):
                if self.ledger.holder_of(lease_id) == conn.key:
                    return True
        return False

    def _owned(self, conn: Connection, lease_id: str) -> str:
        """A lease this connection holds; anything else is an error, never a silent no-op."""
        try:
            holder = self.ledger.holder_of(lease_id)
        except LeaseError as exc:
            raise protocol.ProtocolError(protocol.UNKNOWN_LEASE, str(exc)) from None
        if holder != conn.key:
            raise protocol.ProtocolError(
                protocol.UNKNOWN_LEASE, f"lease {lease_id} is not held by this connection"
            )
        return lease_id

    # -- status -----------------------------------------------------------------------

    def op_status(self, conn: Connection, msg: dict[str, Any]) -> protocol.StatusListsReply:
        """{"op":"status"} -> the summary; {"op":"status","leases":true,"instances":true,
        "leftovers":true,"events":true,"offset":0,"limit":500} -> with those lists (a page
        of each, and `page`); see daemon.status for who reads which rows."""
        stats = self.ledger.statistics(leases=False)
        sample = self.sample()
        reply: protocol.StatusListsReply = {
            "ok": True,
            "pid": os.getpid(),
            "version": __version__,
            "uptime_s": round(time.monotonic() - self.started_at, 1),
            "level": stats.level,
            "level_reason": self.pressure_reason(),
            "capacity": stats.capacity,
            "leased": stats.leased,
            "leased_tasks": stats.leased_tasks,
            "connections": self.connections(),
            "all_running": self.supervisor.all_ok(),
            "cpu_share": self.supervisor.cpu.describe(),
            "scope": "all" if conn.admin else "own",
            "counts": {"leases": 0, "instances": 0, "programs": 0, "states": {}, "leftovers": 0},
            "host": sample_to_json(sample) if sample is not None else None,
        }
        viewer = Viewer(conn.peer.uid, conn.admin)
        return self._status.fill(reply, viewer, msg, self.ledger)

    # -- control ----------------------------------------------------------------------

    async def op_start(self, conn: Connection, msg: dict[str, Any]) -> protocol.ControlReply:
        """{"op":"start","target":"batt"|"batt:0"|"all"} -> {"ok":true,"instances":{name: state}}"""
        async with self.supervisor.control:
            return await self._start(conn, msg)

    async def op_stop(self, conn: Connection, msg: dict[str, Any]) -> protocol.ControlReply:
        """{"op":"stop","target":...} -> waits until each tree is gone -> {name: state}"""
        async with self.supervisor.control:
            return await self._stop(conn, msg)

    async def op_restart(self, conn: Connection, msg: dict[str, Any]) -> protocol.ControlReply:
        """{"op":"restart","target":...} -> stop (tree gone), then start -> {name: state}"""
        async with self.supervisor.control:
            await self._stop(conn, msg)
            return await self._start(conn, msg)

    async def op_reload(self, conn: Connection, msg: dict[str, Any]) -> protocol.ReloadReply:
        """{"op":"reload","restart_changed":false} -> {"ok":true,"added":[],"removed":[],
        "changed":[],"unchanged":[],"programs":{name: {"how":..., "in_place":[...],
        "next_start":[...], "restarted":[...], "started":[...], "stopped":[...]}}}"""
        try:
            restart = msg.get("restart_changed", False)
            diff = await self.reload(by=_who(conn), restart_changed=restart)
        except ReloadRejected as exc:
            raise protocol.ProtocolError(protocol.BAD_REQUEST, str(exc)) from None
        return {
            "ok": True,
            "added": diff["added"],
            "removed": diff["removed"],
            "changed": diff["changed"],
            "unchanged": diff["unchanged"],
            "programs": diff["programs"],
        }

    # the control ops run under `Supervisor.control`, one at a time with reloads

    async def _start(self, conn: Connection, msg: dict[str, Any]) -> protocol.ControlReply:
        instances = self._select(msg["target"])
        for inst in instances:
            self.supervisor.post(inst, Start())
        names = [i.name for i in instances]
        await self.supervisor.wait_for(names, (State.RUNNING, State.BACKOFF, *TERMINAL), 10.0)
        log.info("control", op="start", target=msg["target"], **_who(conn))
        return {"ok": True, "instances": {i.name: i.state.value for i in instances}}

    async def _stop(self, conn: Connection, msg: dict[str, Any]) -> protocol.ControlReply:
        instances = self._select(msg["target"])
        for inst in instances:
            self.supervisor.post(inst, Stop())
        sup = self.supervisor
        await sup.wait_for([i.name for i in instances], TERMINAL, sup.stop_timeout(instances))
        log.info("control", op="stop", target=msg["target"], **_who(conn))
        return {"ok": True, "instances": {i.name: i.state.value for i in instances}}

    def op_tail(self, conn: Connection, msg: dict[str, Any]) -> protocol.TailReply:
        """{"op":"tail","target":"batt:0","stream":"stdout","offset":N,"bytes":B}
        -> {"ok":true,"data":"...","start":S,"offset":E,"truncated":false,"path":"..."}"""
        target = msg["target"] if ":" in msg["target"] else f"{msg['target']}:0"
        stream = msg.get("stream", "stdout")
        # rights first: a peer that may not read an instance learns nothing of it
        if not conn.admin and self._runs_as(target) != conn.peer.uid:
            raise protocol.ProtocolError(
                protocol.FORBIDDEN,
                f"uid {conn.peer.uid} may not read {target}: no instance of that name runs "
                "as that uid",
            )
        sink = self.supervisor.sinks.get((target, stream))
        if sink is None:
            raise protocol.ProtocolError(
                protocol.NOT_FOUND, f"no instance {target!r} or stream {stream!r}"
            )
        limit = min(max(0, msg.get("bytes", protocol.TAIL_DEFAULT)), protocol.TAIL_MAX)
        chunk = sink.read(msg.get("offset"), limit)
        return {
            "ok": True,
            "instance": target,
            "stream": stream,
            "data": chunk.data.decode("utf-8", "replace"),
            "start": chunk.start,
            "offset": chunk.end,
            "truncated": chunk.truncated,
            "path": str(sink.path) if sink.path else None,
        }

    def _runs_as(self, instance: str) -> int | None:
        """The uid an instance's program runs as (None: no such instance, unknown user)."""
        inst = self.supervisor.instances.get(instance)
        return None if inst is None else user_uid(inst.program.user, {})

    def _select(self, target: str) -> list[Any]:
        try:
            return self.supervisor.select(target)
        except KeyError as exc:
            raise protocol.ProtocolError(protocol.NOT_FOUND, str(exc.args[0])) from None


def _cgroups(conn: Connection) -> tuple[str, ...]:
    """The peer's pids cgroup directories, read at its first request that needs them (a
    connection's peer does not move: the budget charges its cgroups, and they say which
    supervised instance it belongs to)."""
    if conn.state.cgroups is None:
        conn.state.cgroups = tuple(cgroup_fs_paths(conn.peer.pid))
    return conn.state.cgroups


def _who(conn: Connection) -> dict[str, int]:
    """The peer, as every control line names it."""
    return {"uid": conn.peer.uid, "gid": conn.peer.gid, "pid": conn.peer.pid}


async def _with_id(pending: Awaitable[Reply], request_id: Any) -> Reply:
    reply = await pending
    reply["id"] = request_id
    return reply


def _grant_reply(grant: Grant) -> protocol.GrantReply:
    reply: protocol.GrantReply = {
        "ok": True,
        "lease": grant.lease_id,
        "kind": grant.kind,
        "workers": grant.workers,
        "target": grant.target,
        "level": grant.level,
        "ttl": grant.ttl,
        "reason": grant.reason,
    }
    if grant.retry_after > 0:  # held for a burst; sent only then (docs/PROTOCOL.md)
        reply["retry_after"] = round(max(grant.retry_after, 0.001), 3)
    return reply
