"""The asyncio Unix-socket server: peer credentials, framing, bounded connections.

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
"""

from __future__ import annotations

import asyncio
import contextlib
import grp
import os
import socket
import stat
import struct
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from supervisord_batt import protocol
from supervisord_batt.config import DaemonConfig
from supervisord_batt.logs import get_logger

log = get_logger(component="server")

_UCRED = struct.Struct("3i")
_MAX_UNIX_PATH = 107
_RESYNC_FACTOR = 16
_REFUSE_LINGER_S = 1.0


class SocketInUse(Exception):
    """Another live daemon answers on the socket path."""


@dataclass(frozen=True)
class Peer:
    pid: int
    uid: int
    gid: int


@dataclass(eq=False)
class Connection:
    """One client connection; the daemon keys a holder's leases by `key`."""

    id: int
    peer: Peer
    writer: asyncio.StreamWriter
    last_active: float
    data: dict[str, Any] = field(default_factory=dict)  # per-connection state of the daemon

    @property
    def key(self) -> str:
        return f"c{self.id}"


Handler = Callable[[Connection, dict[str, Any]], Awaitable[dict[str, Any]]]
Hook = Callable[[Connection], None]


def peer_credentials(sock: socket.socket) -> Peer:
    pid, uid, gid = _UCRED.unpack(
        sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
    )
    return Peer(pid, uid, gid)


def _supplementary_groups(pid: int) -> set[int]:
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"Groups:"):
                    return {int(g) for g in line.split()[1:]}
    except OSError:
        pass
    return set()


class PeerPolicy:
    """Who may talk to the daemon: root, the daemon's own uid, allowed uids and groups."""

    def __init__(self, uids: tuple[int, ...], groups: tuple[str, ...]) -> None:
        self.uids = {0, os.geteuid(), *uids}
        self.gids: set[int] = set()
        for name in groups:
            try:
                self.gids.add(grp.getgrnam(name).gr_gid)
            except KeyError:
                log.warning(
                    "unknown_group", group=name, reason="daemon.allowed_groups names no group"
                )

    def allows(self, peer: Peer) -> bool:
        if peer.uid in self.uids:
            return True
        if not self.gids:
            return False
        return peer.gid in self.gids or bool(self.gids & _supplementary_groups(peer.pid))


def bind_socket(path: Path, mode: int, group: str | None, backlog: int) -> socket.socket:
    """Bind a listening Unix socket: replace a stale file, refuse a live daemon's."""
    if len(os.fsencode(path)) > _MAX_UNIX_PATH:
        raise OSError(
            f"socket path is {len(os.fsencode(path))} bytes, the limit is {_MAX_UNIX_PATH}: {path}"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o777 & ~mode)  # no window in which the socket is wider than `mode`
    try:
        sock.bind(str(path))
    except OSError:
        sock.close()
        raise
    finally:
        os.umask(old_umask)
    os.chmod(path, mode)
    if group is not None:
        os.chown(path, -1, grp.getgrnam(group).gr_gid)
    sock.listen(backlog)
    sock.setblocking(False)
    return sock


def _remove_stale(path: Path) -> None:
    try:
        st = path.lstat()
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise OSError(f"{path} exists and is not a socket; not replacing it")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(str(path))
    except (ConnectionRefusedError, FileNotFoundError):
        log.info("stale_socket_removed", path=str(path))
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        return
    finally:
        probe.close()
    raise SocketInUse(f"another daemon is serving {path}")


async def _refuse(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, code: str, why: str
) -> None:
    """Tell a refused peer why, then close; half-close first and take its first line for up
    to a second, so a client that sends before it reads gets the reason, not EPIPE."""
    writer.write(protocol.encode(protocol.error(code, why)))
    with contextlib.suppress(ConnectionError, OSError):
        await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
        with contextlib.suppress(asyncio.TimeoutError, asyncio.LimitOverrunError, ValueError):
            await asyncio.wait_for(reader.readline(), timeout=_REFUSE_LINGER_S)


class Server:
    """Accepts connections, checks peers, reads lines, dispatches, replies."""

    def __init__(
        self, config: DaemonConfig, handler: Handler, on_close: Hook, socket_path: Path
    ) -> None:
        self.config = config
        self.handler = handler
        self.on_close = on_close
        self.path = socket_path
        self.policy = PeerPolicy(config.allowed_uids, config.allowed_groups)
        self.connections: dict[int, Connection] = {}
        self._next_id = 1
        self._server: asyncio.AbstractServer | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.accepting = True

    async def start(self) -> None:
        sock = bind_socket(
            self.path,
            self.config.socket_mode,
            self.config.socket_group,
            backlog=max(128, self.config.max_connections),
        )
        self._server = await asyncio.start_unix_server(
            self._serve, sock=sock, limit=self.config.max_message_bytes
        )
        log.info("listening", socket=str(self.path), mode=oct(self.config.socket_mode))

    async def close(self) -> None:
        """Stop accepting, close every connection, remove the socket file."""
        if self._server is not None:
            self._server.close()
        for conn in list(self.connections.values()):
            conn.writer.close()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=2.0)
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

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
                conn.writer.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await self._serve_connection(reader, writer)
        finally:
            self._tasks.discard(task)
            writer.close()

    async def _serve_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        sock = writer.get_extra_info("socket")
        peer = peer_credentials(sock)
        if not self.policy.allows(peer):
            log.warning(
                "peer_refused", uid=peer.uid, gid=peer.gid, pid=peer.pid, reason="not allowed"
            )
            why = f"uid {peer.uid} is not allowed to use this daemon"
            await _refuse(reader, writer, protocol.FORBIDDEN, why)
            return
        if len(self.connections) >= self.config.max_connections or not self.accepting:
            code, why = (
                (
                    protocol.TOO_MANY_CONNECTIONS,
                    f"limit of {self.config.max_connections} connections",
                )
                if self.accepting
                else (protocol.SHUTTING_DOWN, "the daemon is shutting down")
            )
            log.warning("connection_refused", pid=peer.pid, uid=peer.uid, reason=why)
            await _refuse(reader, writer, code, why)
            return
        conn = Connection(self._next_id, peer, writer, time.monotonic())
        self._next_id += 1
        self.connections[conn.id] = conn
        try:
            await self._read_loop(conn, reader)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            del self.connections[conn.id]
            self.on_close(conn)

    async def _read_loop(self, conn: Connection, reader: asyncio.StreamReader) -> None:
        while True:
            try:
                line = await reader.readuntil(b"\n")
            except asyncio.IncompleteReadError as exc:
                if exc.partial.strip():
                    log.info(
                        "half_message", conn=conn.key, pid=conn.peer.pid, bytes=len(exc.partial)
                    )
                return
            except asyncio.LimitOverrunError as exc:
                if not await self._skip_overlong(conn, reader, exc.consumed):
                    return
                continue
            conn.last_active = time.monotonic()
            reply, fatal = await self._dispatch(conn, line)
            conn.writer.write(protocol.encode(reply))
            await conn.writer.drain()
            if fatal:
                return

    async def _skip_overlong(
        self, conn: Connection, reader: asyncio.StreamReader, consumed: int
    ) -> bool:
        """Discard an overlong line up to its newline; False when the peer never ends it."""
        limit = self.config.max_message_bytes
        skipped = 0
        while True:
            await reader.readexactly(consumed)
            skipped += consumed
            if skipped > limit * _RESYNC_FACTOR:
                self._reply_now(
                    conn, protocol.error(protocol.TOO_LARGE, f"message over {limit} bytes; closing")
                )
                log.warning(
                    "message_too_large",
                    conn=conn.key,
                    pid=conn.peer.pid,
                    bytes=skipped,
                    closed=True,
                )
                return False
            try:
                tail = await reader.readuntil(b"\n")
            except asyncio.LimitOverrunError as exc:
                consumed = exc.consumed
                continue
            skipped += len(tail)
            log.warning(
                "message_too_large", conn=conn.key, pid=conn.peer.pid, bytes=skipped, closed=False
            )
            self._reply_now(conn, protocol.error(protocol.TOO_LARGE, f"message over {limit} bytes"))
            await conn.writer.drain()
            return True

    def _reply_now(self, conn: Connection, reply: dict[str, Any]) -> None:
        conn.writer.write(protocol.encode(reply))

    async def _dispatch(self, conn: Connection, line: bytes) -> tuple[dict[str, Any], bool]:
        request_id = None
        try:
            msg = protocol.decode(line)
            request_id = msg.get("id")
            return await self.handler(conn, msg), False
        except protocol.ProtocolError as exc:
            log.info(
                "bad_request", conn=conn.key, pid=conn.peer.pid, code=exc.code, reason=exc.message
            )
            return protocol.error(exc.code, exc.message, request_id), exc.fatal
        except Exception as exc:  # a bug in a handler must not take the daemon down
            log.exception("handler_failed", conn=conn.key, pid=conn.peer.pid)
            return protocol.error(
                protocol.INTERNAL, f"internal error: {type(exc).__name__}", request_id
            ), False
