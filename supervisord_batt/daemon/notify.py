"""The systemd notify protocol (sd_notify(3)), spoken by the daemon itself.

One datagram per message to `$NOTIFY_SOCKET` (a path, or an abstract socket when it
starts with "@"); nothing at all when it is unset (run by hand, or under a
`Type=simple` unit). Messages: `READY=1` once the socket serves and the autostart
programs were started, `WATCHDOG=1` from the main loop at half of `$WATCHDOG_USEC`,
`STATUS=` a one-line summary, `RELOADING=1` (with `MONOTONIC_USEC`) then `READY=1`
around a reload, `STOPPING=1` at shutdown.

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

import os
import socket
import time
from collections.abc import MutableMapping

from supervisord_batt.logs import get_logger

log = get_logger(component="notify")

_ENV = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")


class Notifier:
    """Sends notify messages to systemd, or nothing when not run as a notify service."""

    def __init__(self, env: MutableMapping[str, str] | None = None) -> None:
        env = os.environ if env is None else env
        target = env.get("NOTIFY_SOCKET", "")
        self.watchdog_interval = _watchdog_interval(env)
        for name in _ENV:
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
