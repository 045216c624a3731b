"""Who is at the other end of a connection, and what it may do: the peer's credentials
as the kernel recorded them (SO_PEERCRED, SO_PEERGROUPS) and the peer policy (who may
talk to the daemon, who may control it). The security boundary of the socket; the caps
on connections per account are the server's admission (server.py, daemon.fairshare).
"""

from __future__ import annotations

import errno
import grp
import os
import socket
import struct
from dataclasses import dataclass

from supervisord_batt.logs import get_logger

log = get_logger(component="server")

_UCRED = struct.Struct("3i")


@dataclass(frozen=True)
class Peer:
    pid: int
    uid: int
    gid: int
    groups: frozenset[int] = frozenset()  # supplementary groups when it connected


def peer_credentials(sock: socket.socket) -> Peer:
    """Who is at the other end, as the kernel recorded it when the peer connected: its
    pid, uid, gid (SO_PEERCRED) and supplementary groups (SO_PEERGROUPS). Both come from
    the socket, never from /proc/PID: a peer that exits and whose pid is reused by a
    process of another user cannot lend that process's groups to the connection."""
    pid, uid, gid = _UCRED.unpack(
        sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
    )
    return Peer(pid, uid, gid, peer_groups(sock, pid))


_SO_PEERGROUPS = getattr(socket, "SO_PEERGROUPS", 59)  # Linux >= 4.13; Python names it in 3.13
_MAX_OPTLEN = 1024  # the most Python's getsockopt reads: 256 groups


def peer_groups(sock: socket.socket, pid: int) -> frozenset[int]:
    """The peer's supplementary groups, from the socket. A peer in more than 256 groups
    (more than getsockopt can return here) is read from /proc/PID/status instead; a
    kernel that cannot say at all gives none (judged by uid and primary gid alone)."""
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, _SO_PEERGROUPS, _MAX_OPTLEN)
    except OSError as exc:
        return _proc_groups(pid) if exc.errno == errno.ERANGE else frozenset()
    return frozenset(struct.unpack(f"{len(raw) // 4}I", raw[: len(raw) // 4 * 4]))


def _proc_groups(pid: int) -> frozenset[int]:
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"Groups:"):
                    return frozenset(int(g) for g in line.split()[1:])
    except OSError:
        pass
    return frozenset()


class PeerPolicy:
    """Who may talk to the daemon, and who may control it.

    Talk (lease, heartbeat, status): root, the daemon's own uid, the allowed uids and
    members of the allowed groups. Control (start, stop, restart, reload, tail of any
    program): root, the daemon's own uid and members of the admin groups only.
    """

    def __init__(
        self,
        uids: tuple[int, ...],
        groups: tuple[str, ...],
        admin_groups: tuple[str, ...] = (),
        worker_uids: tuple[int, ...] = (),
    ) -> None:
        self.admin_uids = {0, os.geteuid()}
        self.uids = {*self.admin_uids, *uids}
        self.gids = _gids(groups, "daemon.allowed_groups")
        self.admin_gids = _gids(admin_groups, "daemon.admin_groups")
        # the ordinary uids programs run as: a peer of one may be a supervised worker
        self.worker_uids = frozenset(worker_uids) - self.admin_uids

    def allows(self, peer: Peer) -> bool:
        if peer.uid in self.uids or self.is_admin(peer):
            return True
        return bool(self.gids) and _in_groups(peer, self.gids)

    def is_admin(self, peer: Peer) -> bool:
        if peer.uid in self.admin_uids:
            return True
        return bool(self.admin_gids) and _in_groups(peer, self.admin_gids)


def _gids(names: tuple[str, ...], key: str) -> set[int]:
    gids = set()
    for name in names:
        try:
            gids.add(grp.getgrnam(name).gr_gid)
        except KeyError:
            log.warning("unknown_group", group=name, reason=f"{key} names no group")
    return gids


def _in_groups(peer: Peer, gids: set[int]) -> bool:
    return peer.gid in gids or bool(gids & peer.groups)
