"""The systemd notify protocol (sd_notify(3)), spoken by the daemon itself.

One datagram per message to `$NOTIFY_SOCKET` (a path, or an abstract socket when it
starts with "@"); nothing at all when it is unset (run by hand, or under a
`Type=simple` unit). Messages: `READY=1` once the socket serves and the autostart
programs were started, `WATCHDOG=1` from the main loop at half of `$WATCHDOG_USEC`,
`STATUS=` a one-line summary, `RELOADING=1` (with `MONOTONIC_USEC`) then `READY=1`
around a reload or a re-execution, `STOPPING=1` at shutdown.

# The file descriptor store
With `FileDescriptorStoreMax=` in the unit, systemd keeps descriptors the service sends
it (`FDSTORE=1` with SCM_RIGHTS) while the service restarts after a crash, and passes
them to the next process (`LISTEN_FDS`, `LISTEN_FDNAMES`, sd_listen_fds(3)). The
daemon stores its listening socket and each worker's output pipes there: a daemon
killed by the OOM killer or the watchdog comes back with jobs still connecting to the
same socket and workers still writing to the same pipes, which it adopts.

# Why not a library
The protocol is a sendto() of "KEY=value" lines on a datagram socket. The libraries
that speak it either wrap libsystemd through C bindings (one more compiled dependency
on every VM, for one syscall) or are small unmaintained copies of the same dozen lines.
Written here it is one non-blocking socket the daemon owns, with no thread, whose
failure is logged once and never fatal: a supervisor must keep supervising when systemd
cannot hear it.

# Why the environment is cleared
Workers inherit the daemon's environment. Left in place, `NOTIFY_SOCKET` and the
watchdog variables would tell every worker it is the service; sd_notify(3) clears them
for the same reason (`unset_environment`).
"""

from __future__ import annotations

import array
import os
import socket
import time
from collections.abc import MutableMapping

from supervisord_batt.logs import get_logger

log = get_logger(component="notify")

_ENV = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")
_LISTEN_ENV = ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")
SD_LISTEN_FDS_START = 3


class Notifier:
    """Sends notify messages to systemd, or nothing when not run as a notify service."""

    def __init__(self, env: MutableMapping[str, str] | None = None) -> None:
        env = os.environ if env is None else env
        target = env.get("NOTIFY_SOCKET", "")
        self.watchdog_interval = _watchdog_interval(env)
        # what systemd told this process, for a re-execution of it to be told the same
        self.environment = {name: env[name] for name in _ENV if name in env}
        self.passed = listen_fds(env)  # the descriptors systemd kept for us, by name
        for name in _ENV + _LISTEN_ENV:
            env.pop(name, None)
        self.address: str | bytes | None = None
        if target.startswith("@"):
            self.address = b"\0" + target[1:].encode()
        elif target.startswith("/"):
            self.address = target
        self._sock: socket.socket | None = None
        self.failures = 0
        self._status = ""
        self._last_ping = 0.0

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, *lines: str) -> bool:
        """One datagram of `lines`; True when systemd got it (or nothing is listening)."""
        if self.address is None:
            return True
        try:
            if self._sock is None:
                self._sock = socket.socket(
                    socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC
                )
            self._sock.sendto("\n".join(lines).encode(), self.address)
        except OSError as exc:
            self.failures += 1
            if self.failures == 1:  # once: the next ones would say the same every tick
                log.warning("notify_failed", reason=str(exc), socket=_shown(self.address))
            return False
        return True

    def store(self, name: str, fd: int) -> bool:
        """Keep a duplicate of `fd` in systemd's store under `name` (FDNAME: no ':', no
        control characters, at most 255 bytes); True when sent."""
        return self._send_fds(["FDSTORE=1", f"FDNAME={name}"], [fd])

    def unstore(self, name: str) -> bool:
        """Drop what the store holds under `name` (its run ended)."""
        return self._send_fds(["FDSTOREREMOVE=1", f"FDNAME={name}"], [])

    def _send_fds(self, lines: list[str], fds: list[int]) -> bool:
        if self.address is None:
            return False
        if not fds:
            return self.send(*lines)
        try:
            if self._sock is None:
                self._sock = socket.socket(
                    socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC
                )
            rights = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))]
            self._sock.sendmsg(["\n".join(lines).encode()], rights, 0, self.address)
        except OSError as exc:
            self.failures += 1
            if self.failures == 1:
                log.warning("notify_failed", reason=str(exc), socket=_shown(self.address))
            return False
        return True

    def ready(self, status: str) -> None:
        self._status = status
        self.send("READY=1", f"STATUS={status}")

    def reloading(self) -> None:
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self.send("RELOADING=1", f"MONOTONIC_USEC={usec}")

    def stopping(self) -> None:
        self.send("STOPPING=1", "STATUS=stopping")

    def status(self, status: str) -> None:
        """STATUS=, sent only when the summary changed."""
        if status != self._status:
            self._status = status
            self.send(f"STATUS={status}")

    def watchdog_due(self, now: float) -> float | None:
        """Ping when half the watchdog interval passed; the next ping's time, or None."""
        if self.watchdog_interval is None or self.address is None:
            return None
        if now - self._last_ping >= self.watchdog_interval:
            self._last_ping = now
            self.send("WATCHDOG=1")
        return self._last_ping + self.watchdog_interval

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def listen_fds(env: MutableMapping[str, str]) -> dict[str, list[int]]:
    """The descriptors passed to this process (sd_listen_fds(3)), by name: from fd 3 on,
    `$LISTEN_FDS` of them, named by `$LISTEN_FDNAMES`; none unless `$LISTEN_PID` is us.
    Each is made close-on-exec: a worker must not inherit the daemon's socket."""
    pid, count = env.get("LISTEN_PID", ""), env.get("LISTEN_FDS", "")
    if not (pid.isdigit() and int(pid) == os.getpid() and count.isdigit()):
        return {}
    names = env.get("LISTEN_FDNAMES", "").split(":")
    out: dict[str, list[int]] = {}
    for i in range(int(count)):
        fd = SD_LISTEN_FDS_START + i
        try:
            os.set_inheritable(fd, False)
        except OSError:
            continue
        name = names[i] if i < len(names) and names[i] else "unknown"
        out.setdefault(name, []).append(fd)
    return out


def _watchdog_interval(env: MutableMapping[str, str]) -> float | None:
    """Half of $WATCHDOG_USEC in seconds, when the watchdog is meant for this process."""
    usec = env.get("WATCHDOG_USEC", "")
    pid = env.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    if pid and (not pid.isdigit() or int(pid) != os.getpid()):
        return None
    return int(usec) / 2e6


def _shown(address: str | bytes) -> str:
    return "@" + address[1:].decode(errors="replace") if isinstance(address, bytes) else address
