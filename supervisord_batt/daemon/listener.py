"""The listening socket: bound only where nobody else can write, a stale file replaced
and a live daemon's refused, an inherited one (reexec, systemd's store) taken back only
if it still listens at our path; and the descriptors connections may use.
"""

from __future__ import annotations

import contextlib
import grp
import os
import resource
import socket
import stat
from pathlib import Path

from supervisord_batt import paths, safepath
from supervisord_batt.logs import get_logger

log = get_logger(component="server")


class SocketInUse(OSError):
    """Another live daemon answers on the socket path."""


def bind_socket(path: Path, mode: int, group: str | None, backlog: int) -> socket.socket:
    """Bind a listening Unix socket: replace a stale file, refuse a live daemon's.

    The directory must be one only root or the daemon can write in (`safepath`; a
    missing one is made: 0755 for root, whose socket notebook users must reach, 0700
    for a user's own daemon). There, nobody else can move the socket aside and bind an
    impostor, or swap in a symlink for the mode and group to land on: the mode is set by
    the umask at bind, with no window, and the group without following a link.
    """
    if why := paths.socket_path_problem(path):
        raise OSError(why)
    safepath.make_dir(path.parent, 0o755 if os.geteuid() == 0 else 0o700)
    _remove_stale(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o777 & ~mode)  # the socket is made with exactly `mode`
    try:
        sock.bind(str(path))
        if group is not None:
            os.chown(path, -1, grp.getgrnam(group).gr_gid, follow_symlinks=False)
    except (OSError, KeyError):
        sock.close()
        raise
    finally:
        os.umask(old_umask)
    sock.listen(backlog)
    sock.setblocking(False)
    return sock


def inherited_listener(fd: int | None, path: Path) -> socket.socket | None:
    """The inherited listening socket at `fd`, if it is a Unix stream socket listening at
    `path` whose file is still there; None (and `fd` closed) otherwise."""
    if fd is None:
        return None
    try:
        sock = socket.socket(fileno=fd)
    except OSError:
        with contextlib.suppress(OSError):
            os.close(fd)
        return None
    try:
        ours = (
            sock.family == socket.AF_UNIX
            and sock.type == socket.SOCK_STREAM
            and sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) == 1
            and sock.getsockname() == str(path)
            and os.path.exists(path)
        )
    except OSError:
        ours = False
    if not ours:
        sock.close()
        return None
    sock.set_inheritable(False)
    log.info("socket_inherited", socket=str(path), fd=fd)
    return sock


def descriptor_cap() -> int:
    """Connections the daemon may hold and still have descriptors for its own work.

    Each connection is a descriptor; so are each worker's two pipes and pidfd, the
    monitor's files, the log. A quarter of the soft RLIMIT_NOFILE (at least 32) is kept
    for those: a flood of connections is refused before `accept`, spawns, scans and logs
    run out (EMFILE), instead of after."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return 1 << 30
    return max(0, soft - max(32, soft // 4))


def socket_identity(path: Path) -> tuple[int, int] | None:
    """(device, inode) of what is at `path` now, without following a link."""
    try:
        st = path.lstat()
    except OSError:
        return None
    return st.st_dev, st.st_ino


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
