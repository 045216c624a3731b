"""The daemon's state record: every instance as it stands, in a file beside the socket,
kept current so that a daemon restarted after a crash (SIGKILL, the OOM killer, the
watchdog) adopts the workers the dead one left instead of killing them.

# Why a file beside the socket
The socket's directory is one only root (or the daemon's user) can write in, checked
at bind (`safepath`); under systemd it is the unit's RuntimeDirectory, kept across an
automatic restart (`RuntimeDirectoryPreserve=restart`) and removed at stop, which is
when the record must go too. The file is replaced atomically, so a crash mid-write
leaves the previous record, never half of one.

# Why once per loop iteration
A record of a thousand instances is some hundred kilobytes of JSON. Every state change
asks for a write (`mark`), and the writes of one iteration of the event loop are one:
a start of a thousand instances costs one write, not a thousand. A crash can lose at
most that iteration's changes; an instance spawned in it is then found as a leftover
cgroup with no record and stopped, as before.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from supervisord_batt import safepath
from supervisord_batt.logs import get_logger

log = get_logger(component="daemon")

VERSION = 1
MAX_BYTES = 64 * 1024 * 1024  # a larger file is not ours: refused, not read


def record_path(socket: Path) -> Path:
    return socket.with_name(socket.name + ".state")


class StateRecord:
    """The record of one daemon (by its socket), written when `mark`ed."""

    def __init__(self, socket: Path, build: Callable[[], dict[str, Any]]) -> None:
        self.path = record_path(socket)
        self.socket = socket
        self.build = build  # the current state, as JSON-ready data
        self.failures = 0
        self._pending: asyncio.Handle | None = None

    def load(self) -> dict[str, Any] | None:
        """The record a previous daemon of this socket left; None when there is none or
        it cannot be trusted (said once, with why)."""
        try:
            fd = safepath.open_read(self.path)
        except FileNotFoundError:
            return None
        except OSError as exc:
            log.warning("state_record_ignored", path=str(self.path), reason=str(exc))
            return None
        with os.fdopen(fd, "rb") as f:
            data = f.read(MAX_BYTES + 1)
        why = None
        try:
            record = json.loads(data) if len(data) <= MAX_BYTES else None
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            record, why = None, f"not JSON: {exc}"
        if not isinstance(record, dict):
            why = why or "not a record"
        elif record.get("version") != VERSION or record.get("socket") != str(self.socket):
            why = f"version {record.get('version')!r} of socket {record.get('socket')!r}"
        if why is not None:
            log.warning("state_record_ignored", path=str(self.path), reason=why)
            return None
        return record

    def mark(self) -> None:
        """Something changed: write the record once this loop iteration is done."""
        if self._pending is None:
            self._pending = asyncio.get_running_loop().call_soon(self.write)

    def write(self, extra: dict[str, Any] | None = None) -> None:
        """Replace the record with the current state (and `extra`, what only the next
        daemon needs); a failure is said once in a row."""
        self._pending = None
        data = {"version": VERSION, "socket": str(self.socket), "pid": os.getpid()}
        data.update(self.build())
        data.update(extra or {})
        try:
            safepath.replace_file(self.path, json.dumps(data).encode(), 0o600)
        except OSError as exc:
            self.failures += 1
            if self.failures == 1:
                log.error("state_record_failed", path=str(self.path), reason=str(exc))
            return
        self.failures = 0

    def remove(self) -> None:
        """A clean stop: nothing is left to adopt."""
        if self._pending is not None:
            self._pending.cancel()
            self._pending = None
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.warning("state_record_left", path=str(self.path), reason=str(exc))
