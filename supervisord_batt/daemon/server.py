"""The asyncio Unix-socket server: framing, replies in order, bounded connections.

# Why leases die with the connection
A job that dies, even by SIGKILL, has its socket closed by the kernel; the server sees
EOF at once and releases whatever that connection held. No heartbeat is needed to
notice a dead job, and nothing a job forgets to do can leak slots. Leases also carry a
TTL (the ledger's), for the job that is alive but stuck.

# Framing
Newline-delimited JSON with a hard line limit (`max_message_bytes`). An overlong line
gets a `too_large` reply and is skipped up to its newline so the connection stays in
sync; a peer that keeps sending without a newline past 16 times the limit is closed.
Everything a peer sends is validated by `protocol.decode` before a handler sees it.

# Why a protocol, not streams
Each connection is an `asyncio.Protocol` (`Link`): the bytes a read brings are split
into lines and each is answered in the same callback, with no task, future or stream
buffer per request. The requests that wait (stop, start, reload) run as a task, and
the connection reads nothing more until it has replied, so replies keep the order of
the requests. Once the replies a peer does not read fill the transport's buffer
(`pause_writing`), none of its buffered requests is answered and nothing more is read
from it until it reads (`resume_writing`), so it cannot make the daemon buffer without
bound. Measured on the request path (benchmarks/bench_grant.py): the streams
version spent more of the daemon's CPU per request than the acquire itself.

# Why one module
The framing (`Link`) and the admission (`Server`: caps per account, the equal part,
eviction) work on the same connection table in the same callbacks: a connect is
admitted, enlisted and framed in one step, and an eviction ends another link in the
same call. The credentials and the peer policy are apart (`daemon.peers`), and so is
the listening socket (`daemon.listener`).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from supervisord_batt import protocol
from supervisord_batt.config.records import DaemonConfig
from supervisord_batt.daemon import fairshare
from supervisord_batt.daemon.listener import (
    bind_socket,
    descriptor_cap,
    inherited_listener,
    socket_identity,
)
from supervisord_batt.daemon.peers import Peer, PeerPolicy, peer_credentials
from supervisord_batt.daemon.throttle import Throttle
from supervisord_batt.logs import get_logger

log = get_logger(component="server")

_RESYNC_FACTOR = 16
_REFUSE_LINGER_S = 1.0


@dataclass
class PeerState:
    """What the daemon learns of a connection's peer as it asks, read once: a
    connection's peer does not change (commands.py and containment.py keep it here)."""

    # the peer's threads at its first acquire; None: it has not acquired yet
    base_tasks: int | None = None
    leases: set[str] = field(default_factory=set)  # leases it took, less those it released
    job: str | None = None  # the job name of its last acquire
    cgroups: tuple[str, ...] | None = None  # its pids cgroup directories, once read
    # the supervised instance whose tree holds it (None: none), once looked up
    instance: str | None = None
    instance_known: bool = False


@dataclass(eq=False)
class Connection:
    """One client connection; the daemon keys a holder's leases by `key`."""

    id: int
    peer: Peer
    transport: asyncio.Transport
    last_active: float
    state: PeerState = field(default_factory=PeerState)
    key: str = ""
    admin: bool = False  # may control the daemon (PeerPolicy.is_admin), found at connect
    # whose connections it counts against (daemon.fairshare); None: an admin's
    account: str | None = None

    def __post_init__(self) -> None:
        self.key = f"c{self.id}"


Reply = dict[str, Any]
# a handler answers at once (a reply) or later (an awaitable of one); it raises
# protocol.ProtocolError for a request that gets an error reply
Handler = Callable[[Connection, dict[str, Any]], "Reply | Awaitable[Reply]"]
Hook = Callable[[Connection], None]


def _no_instance(pid: int) -> str | None:
    return None


def _holds_nothing(conn: Connection) -> bool:
    return False


def _unobserved(op: str, result: str, seconds: float) -> None:
    return None


@dataclass(frozen=True)
class Hooks:
    """What the server asks of the rest of the daemon (lifecycle passes the commands'
    and the supervisor's; a test, only the first two)."""

    handle: Handler  # answers a request
    on_close: Hook  # a connection closed: its leases are released
    # the supervised instance whose tree a pid is in (asked of ordinary workers' uids)
    instance_of: Callable[[int], str | None] = _no_instance
    # whether a connection holds a live lease (asked only to choose one to close)
    holds_lease: Callable[[Connection], bool] = _holds_nothing
    # each answered request: (op or "invalid", "ok" or the error code, seconds)
    observe: Callable[[str, str, float], None] = _unobserved


def _code(exc: Exception) -> str:
    """The error code a failed request is counted under."""
    return exc.code if isinstance(exc, protocol.ProtocolError) else protocol.INTERNAL


class Link(asyncio.Protocol):
    """One accepted socket: the peer check, the framing, the replies in request order."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.conn: Connection | None = None
        self.buf = bytearray()  # the start of a line whose newline has not come yet
        self.skipped: int | None = None  # bytes of an overlong line dropped so far
        self.busy: asyncio.Task[None] | None = None  # a request that is still running
        self.eof = False  # the peer will send no more; close once the replies are out
        self.write_paused = False
        self.linger: asyncio.TimerHandle | None = None  # a refused peer's last second

    # -- asyncio.Protocol -------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        server = self.server
        server.links.add(self)
        peer = peer_credentials(transport.get_extra_info("socket"))
        account = server.account_of(peer)
        refusal = server.refusal(peer, account)
        if refusal is not None:
            self._refuse(*refusal)
            return
        self.conn = Connection(server.next_id, peer, transport, time.monotonic())
        self.conn.admin, self.conn.account = account is None, account
        server.next_id += 1
        server.enlist(self)

    def data_received(self, data: bytes) -> None:
        conn = self.conn
        if conn is None:  # refused: its first line (or EOF) ends the linger
            if b"\n" in data and self.transport is not None:
                self.transport.close()
            return
        if self.skipped is not None:
            data = self._skip(conn, data)
        if not data:
            return
        waiting = self.busy is not None or self.write_paused
        # the usual case, one whole request in one read, goes straight to the handler
        if (
            not waiting
            and not self.buf
            and data.find(b"\n") == len(data) - 1
            and len(data) <= self.server.limit + 1
        ):
            conn.last_active = time.monotonic()
            self._answer(conn, data)
            return
        self.buf += data
        if not waiting:
            self._drain_lines(conn)

    def eof_received(self) -> bool:
        self.eof = True
        if self.busy is not None or (self.write_paused and b"\n" in self.buf):
            return True  # answer what was asked first, then close (`_carry_on`)
        self._note_half_message()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        server = self.server
        server.links.discard(self)
        if self.linger is not None:
            self.linger.cancel()
        self.end()
        if not server.links and server.links_gone is not None and not server.links_gone.done():
            server.links_gone.set_result(None)

    def end(self) -> None:
        """The connection is over (lost, or closed to make room): forget it and give
        back what it held, once."""
        conn, self.conn = self.conn, None
        if conn is not None:
            self.server.delist(conn)
            self.server.hooks.on_close(conn)

    def idle(self) -> bool:
        """Nothing in flight: no request running or half sent, no reply left unread."""
        closing = self.transport is None or self.transport.is_closing()
        return not (self.busy or self.write_paused or self.buf or closing) and self.skipped is None

    def pause_writing(self) -> None:
        """The peer does not read its replies: answer nothing more, read nothing more."""
        self.write_paused = True
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        self.write_paused = False
        if self.conn is not None and self.busy is None:
            self._carry_on(self.conn)

    def _carry_on(self, conn: Connection) -> None:
        """After a wait (a request's task, a full write buffer): answer the whole lines
        that are buffered, then read again, or close if the peer has sent its last."""
        if conn.transport.is_closing():
            return
        self._drain_lines(conn)
        if self.busy is not None or self.write_paused:
            return
        if self.eof:
            self._note_half_message()
            conn.transport.close()
        else:
            conn.transport.resume_reading()

    # -- requests ---------------------------------------------------------------------

    def _drain_lines(self, conn: Connection) -> None:
        """Answer every whole line in the buffer, in order, until one has to wait (its
        request runs as a task, or the replies fill the transport's buffer)."""
        buf, limit, start = self.buf, self.server.limit, 0
        try:
            while self.busy is None and not self.write_paused and not conn.transport.is_closing():
                end = buf.find(b"\n", start)
                if end < 0:
                    break
                line, start = bytes(buf[start : end + 1]), end + 1
                if len(line) > limit + 1:  # the limit is on the line without its newline
                    self._too_large(conn, len(line), closing=False)
                    continue
                conn.last_active = time.monotonic()
                self._answer(conn, line)
        finally:
            del buf[:start]
        if (  # no newline within the limit: skip the line
            len(buf) > limit
            and self.busy is None
            and not self.write_paused
            and not conn.transport.is_closing()
            and buf.find(b"\n") < 0
        ):
            self.skipped = 0
            rest = bytes(buf)
            buf.clear()
            self._skip(conn, rest)

    def _skip(self, conn: Connection, data: bytes) -> bytes:
        """Drop an overlong line up to its newline; what follows it (b"": nothing yet)."""
        assert self.skipped is not None
        end = data.find(b"\n")
        if end < 0:
            self.skipped += len(data)
            if self.skipped > self.server.limit * _RESYNC_FACTOR:
                self._too_large(conn, self.skipped, closing=True)
            return b""
        self._too_large(conn, self.skipped + end + 1, closing=False)
        self.skipped = None
        return data[end + 1 :]

    def _too_large(self, conn: Connection, size: int, *, closing: bool) -> None:
        limit = self.server.limit
        self.server.problems.emit(
            "warning",
            "message_too_large",
            uid=conn.peer.uid,
            pid=conn.peer.pid,
            conn=conn.key,
            bytes=size,
            closed=closing,
        )
        why = f"message over {limit} bytes" + ("; closing" if closing else "")
        conn.transport.write(protocol.encode(protocol.error(protocol.TOO_LARGE, why)))
        if closing:
            self.skipped = None
            conn.transport.close()

    def _answer(self, conn: Connection, line: bytes) -> None:
        """Decode one request and reply, now or (for a request that waits) from a task."""
        request_id, op, start = None, "invalid", time.perf_counter()
        try:
            msg = protocol.decode(line)
            request_id, op = msg.get("id"), msg["op"]
            reply = self.server.hooks.handle(conn, msg)
        except Exception as exc:  # every failure gets an error reply
            self._fail(conn, exc, request_id)
            self.server.hooks.observe(op, _code(exc), time.perf_counter() - start)
            return
        if isinstance(reply, dict):
            self._send(conn, reply, request_id)
            self.server.hooks.observe(op, "ok", time.perf_counter() - start)
            return
        conn.transport.pause_reading()  # nothing more until this request has replied
        finish = self._finish(conn, reply, request_id, op, start)
        self.busy = asyncio.get_running_loop().create_task(finish)
        self.server.tasks.add(self.busy)

    async def _finish(
        self, conn: Connection, pending: Awaitable[Reply], request_id: Any, op: str, start: float
    ) -> None:
        task = asyncio.current_task()
        try:
            reply = await pending
        except Exception as exc:
            self._fail(conn, exc, request_id)
            self.server.hooks.observe(op, _code(exc), time.perf_counter() - start)
        else:
            self._send(conn, reply, request_id)
            self.server.hooks.observe(op, "ok", time.perf_counter() - start)
        finally:
            self.busy = None
            self.server.tasks.discard(task)
        if not self.write_paused:
            self._carry_on(conn)

    def _send(self, conn: Connection, reply: Reply, request_id: Any) -> None:
        try:
            line = protocol.encode(reply)
        except Exception as exc:  # a reply that cannot be encoded is a bug: say so
            self._fail(conn, exc, request_id)
            return
        if len(line) > protocol.MAX_REPLY_BYTES:  # the most a client is ready to read
            why = f"reply of {len(line)} bytes, over {protocol.MAX_REPLY_BYTES}: ask for fewer"
            self._fail(conn, protocol.ProtocolError(protocol.TOO_LARGE, why), request_id)
            return
        conn.transport.write(line)

    def _fail(self, conn: Connection, exc: Exception, request_id: Any) -> None:
        problems, peer = self.server.problems, conn.peer
        if isinstance(exc, protocol.ProtocolError):
            problems.emit(
                "info" if exc.code != protocol.FORBIDDEN else "warning",
                "bad_request",
                uid=peer.uid,
                gid=peer.gid,
                pid=peer.pid,
                conn=conn.key,
                code=exc.code,
                reason=exc.message,
            )
            reply = protocol.error(exc.code, exc.message, request_id)
        else:  # a bug in a handler must not take the daemon down
            problems.emit(
                "error", "handler_failed", uid=peer.uid, pid=peer.pid, conn=conn.key, exc_info=exc
            )
            reply = protocol.error(
                protocol.INTERNAL, f"internal error: {type(exc).__name__}", request_id
            )
        conn.transport.write(protocol.encode(reply))
        if isinstance(exc, protocol.ProtocolError) and exc.fatal:
            conn.transport.close()

    def _note_half_message(self) -> None:
        if self.conn is not None and self.buf.strip():
            peer = self.conn.peer
            self.server.problems.emit(
                "info", "half_message", uid=peer.uid, pid=peer.pid, bytes=len(self.buf)
            )
            self.buf.clear()

    def _refuse(self, code: str, why: str) -> None:
        """Tell a refused peer why, then close; half-close first and wait for its first
        line for up to a second, so a client that sends before it reads gets the reason,
        not EPIPE."""
        transport = self.transport
        assert transport is not None
        transport.write(protocol.encode(protocol.error(code, why)))
        server = self.server
        if len(server.links) + server.backlog > server.fd_cap:
            transport.close()  # a flood: no descriptor is kept for courtesy
            return
        if transport.can_write_eof():
            transport.write_eof()
        self.linger = asyncio.get_running_loop().call_later(_REFUSE_LINGER_S, transport.close)


class Server:
    """Accepts connections, checks peers, frames lines, dispatches, replies."""

    def __init__(
        self,
        config: DaemonConfig,
        hooks: Hooks,
        socket_path: Path,
        policy: PeerPolicy | None = None,
    ) -> None:
        self.config = config
        self.hooks = hooks
        self.path = socket_path
        self.limit = config.max_message_bytes
        self.policy = policy or PeerPolicy(
            config.allowed_uids, config.allowed_groups, config.admin_groups
        )
        self.problems = Throttle(config.bad_input_log_rate)
        # open connections by account (daemon.fairshare), and how many those are
        self.accounts: dict[str, dict[int, Link]] = {}
        self.ordinary = 0
        self.connections: dict[int, Connection] = {}
        self.links: set[Link] = set()  # every open socket, refused ones included
        self.tasks: set[asyncio.Task[None]] = set()  # requests that are still running
        self.links_gone: asyncio.Future[None] | None = None  # set once `links` is empty
        self.next_id = 1
        self._server: asyncio.AbstractServer | None = None
        self._listener: socket.socket | None = None  # the listening socket, while it listens
        self._bound: tuple[int, int] | None = None
        self.fd_cap = descriptor_cap()  # connections the descriptor limit leaves room for
        self.backlog = 128  # sockets asyncio accepts per wakeup (set at start)
        self.accepting = True

    async def start(self, inherited: int | None = None) -> None:
        """Listen on the socket: the one `inherited` (a descriptor a previous daemon of
        this socket left: re-executed, or kept by systemd through a crash), if it is
        still bound to our path, else a newly bound one."""
        self.fd_cap = descriptor_cap()
        # asyncio accepts up to `backlog` sockets per wakeup before any of them is refused
        # and closed: a burst that size must fit in the descriptors' room, so the batch
        # (and the kernel queue, which asyncio sets to the same) is a quarter of it
        backlog = self.backlog = max(
            8, min(max(128, self.config.max_connections), self.fd_cap // 4)
        )
        sock = inherited_listener(inherited, self.path)
        if sock is None:
            sock = bind_socket(
                self.path, self.config.socket_mode, self.config.socket_group, backlog=backlog
            )
        else:
            sock.listen(backlog)
            sock.setblocking(False)
        self._listener = sock
        self._bound = socket_identity(self.path)  # shutdown removes this file and no other
        loop = asyncio.get_running_loop()
        self._server = await loop.create_unix_server(lambda: Link(self), sock=sock, backlog=backlog)
        log.info("listening", socket=str(self.path), mode=oct(self.config.socket_mode))

    def listener_fd(self) -> int | None:
        """The listening socket's descriptor (for systemd's store, or a re-execution)."""
        return self._listener.fileno() if self._listener is not None else None

    async def close(self) -> None:
        """Stop accepting, close every connection, remove the socket file."""
        if self._server is not None:
            self._server.close()
        for link in list(self.links):
            if link.transport is not None:
                link.transport.close()
        if self.tasks:
            await asyncio.wait(self.tasks, timeout=2.0)
        # each connection ends (its leases released and logged) in a later iteration, or
        # once its last replies are out: wait for that, then drop a peer that does not read
        if not await self._links_gone(2.0):
            for link in list(self.links):
                if link.transport is not None:
                    link.transport.abort()
            await self._links_gone(1.0)
        # only our own socket: whatever else is at the path now (a file someone put
        # there, another daemon's socket) is left alone, and said so
        now = socket_identity(self.path)
        if now is not None and now == self._bound:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
        elif now is not None:
            log.warning("socket_not_removed", socket=str(self.path), reason="not ours any more")

    async def _links_gone(self, timeout: float) -> bool:
        """Wait until every connection has ended; False if some are left after `timeout`."""
        if not self.links:
            return True
        self.links_gone = asyncio.get_running_loop().create_future()
        try:
            await asyncio.wait_for(self.links_gone, timeout)
        except asyncio.TimeoutError:
            return False
        finally:
            self.links_gone = None
        return True

    # -- admission (see daemon.fairshare) ----------------------------------------------

    def account_of(self, peer: Peer) -> str | None:
        """Whom an ordinary peer's connections count against: its uid, or the instance
        of a supervised worker of an ordinary user; None for root and the admins.

        Only a peer whose uid a program runs as can be a worker, so only those are looked
        up (the instance index is the supervisor's): a notebook user's connect costs no
        lookup."""
        if self.policy.is_admin(peer):
            return None
        if peer.uid in self.policy.worker_uids:
            instance = self.hooks.instance_of(peer.pid)
            if instance is not None:
                return f"instance {instance}"
        return f"uid {peer.uid}"

    def enlist(self, link: Link) -> None:
        conn = link.conn
        assert conn is not None
        self.connections[conn.id] = conn
        if conn.account is not None:
            self.accounts.setdefault(conn.account, {})[conn.id] = link
            self.ordinary += 1

    def delist(self, conn: Connection) -> None:
        del self.connections[conn.id]
        if conn.account is None:
            return
        held = self.accounts.get(conn.account)
        if held is not None and held.pop(conn.id, None) is not None:
            self.ordinary -= 1
            if not held:
                del self.accounts[conn.account]

    def refusal(self, peer: Peer, account: str | None) -> tuple[str, str] | None:
        """Why a new peer is refused (an error code and a message), logged; None: served
        (when the ordinary share is full, maybe after closing another's connection).

        # Why caps, a reserve and an equal part
        One allowed uid holding every connection locked everyone out, root's `status`
        included. So an account (a uid, or a supervised instance) holds at most
        `max_connections_per_uid`, ordinary peers together at most three quarters of
        `max_connections`, and the last quarter is for root and the admin groups alone:
        a supervised worker of an ordinary user is capped like any other. Within the
        share, an account below its equal part is never refused because others hold
        more (daemon.fairshare).
        """
        if not self.policy.allows(peer):
            self.problems.emit(
                "warning",
                "peer_refused",
                uid=peer.uid,
                gid=peer.gid,
                pid=peer.pid,
                reason="not allowed",
            )
            return protocol.FORBIDDEN, f"uid {peer.uid} is not allowed to use this daemon"
        if not self.accepting:
            return self._refused(
                peer, account, "the daemon is shutting down", protocol.SHUTTING_DOWN
            )
        total, limit = len(self.connections), min(self.config.max_connections, self.fd_cap)
        why = None
        if account is None:
            why = f"limit of {limit} connections" if total >= limit else None
        elif (held := len(self.accounts.get(account, ()))) >= self.config.max_connections_per_uid:
            why = f"{account} holds {held} connections, the limit per uid or instance"
        elif total >= limit or self.ordinary >= limit - limit // 4:
            why = self._make_room(peer, account, limit)
        return None if why is None else self._refused(peer, account, why)

    def _refused(
        self, peer: Peer, account: str | None, why: str, code: str = protocol.TOO_MANY_CONNECTIONS
    ) -> tuple[str, str]:
        self.problems.emit(
            "warning",
            "connection_refused",
            uid=peer.uid,
            gid=peer.gid,
            pid=peer.pid,
            account=account,
            reason=why,
        )
        return code, why

    def _make_room(self, peer: Peer, account: str, limit: int) -> str | None:
        """The share is full: close an idle connection of an account above its equal
        part for a newcomer below its own (None: done), or say why not."""
        share = limit - limit // 4
        held = {a: len(links) for a, links in self.accounts.items()}
        part = fairshare.equal_part(share, held, account)
        mine = held.get(account, 0)
        full = f"{self.ordinary} of the {share} connections for ordinary peers are open"
        if mine >= part:
            return f"{full}; {account} holds {mine}, its equal part is {part}"
        idle = [
            fairshare.Idle(conn.id, other, self.hooks.holds_lease(conn), conn.last_active)
            for other in fairshare.over_part(held, part)
            for link in self.accounts[other].values()
            if (conn := link.conn) is not None and link.idle()
        ]
        chosen = fairshare.victim(idle, held)
        if chosen is None:
            return f"{full}; none of those above their equal part ({part}) is idle"
        link = self.accounts[chosen.account][chosen.conn]
        conn = link.conn
        assert conn is not None
        why = (
            f"closed to make room: {chosen.account} holds {held[chosen.account]} connections, "
            f"more than its equal part ({part}), and {account} fewer"
        )
        self.problems.emit(
            "warning",
            "connection_evicted",
            uid=conn.peer.uid,
            pid=conn.peer.pid,
            conn=conn.key,
            account=chosen.account,
            leased=chosen.leased,
            idle_s=round(time.monotonic() - conn.last_active, 1),
            for_uid=peer.uid,
            for_pid=peer.pid,
            for_account=account,
            reason=why,
        )
        conn.transport.write(protocol.encode(protocol.error(protocol.TOO_MANY_CONNECTIONS, why)))
        link.end()  # counted out now: the newcomer takes its place in this same call
        conn.transport.close()
        return None

    def reconfigure(self, config: DaemonConfig, policy: PeerPolicy) -> None:
        """A reload: the new limits and peer policy, applied to open connections too (a
        peer dropped from the admin groups or the allowed peers loses those rights now,
        not at its next connect)."""
        self.config, self.limit, self.policy = config, config.max_message_bytes, policy
        self.problems.rate = config.bad_input_log_rate
        for conn in list(self.connections.values()):
            if not policy.allows(conn.peer):
                self.problems.emit(
                    "warning",
                    "peer_refused",
                    uid=conn.peer.uid,
                    gid=conn.peer.gid,
                    pid=conn.peer.pid,
                    reason="no longer allowed after a reload",
                )
                conn.transport.close()
            elif conn.admin != policy.is_admin(conn.peer):  # counted again, as it is now
                link = self._link_of(conn)
                self.delist(conn)
                conn.account = self.account_of(conn.peer)
                conn.admin = conn.account is None
                if link is not None:
                    self.enlist(link)

    def _link_of(self, conn: Connection) -> Link | None:
        return next((link for link in self.links if link.conn is conn), None)

    def holder(self, key: str) -> Connection | None:
        """The open connection a lease holder key names (`Connection.key`), if any."""
        number = key[1:]
        ours = key[:1] == "c" and number.isascii() and number.isdecimal()
        conn = self.connections.get(int(number)) if ours else None
        return conn if conn is not None and conn.key == key else None

    def sweep_idle(self, now: float) -> None:
        """Close connections that sent nothing for `idle_timeout`."""
        for conn in list(self.connections.values()):
            if now - conn.last_active > self.config.idle_timeout:
                log.info(
                    "connection_idle_closed",
                    conn=conn.key,
                    pid=conn.peer.pid,
                    idle_s=round(now - conn.last_active, 1),
                )
                conn.transport.close()
