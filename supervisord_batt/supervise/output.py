"""A worker's stdout and stderr: read from pipes on the event loop, kept and written out.

Each stream goes to its own file with size rotation (`name.out.log`, `.1`, `.2`, ...), or
to the daemon's own log as one structured `output` event per line. Either way the last
`RING_BYTES` stay in memory with a running byte offset, which is what `tail` reads, so
`supervisord-batt tail -f` works the same in both modes and never needs the file system.
Reads are non-blocking `os.read` calls from a loop reader callback: no threads.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from supervisord_batt import safepath
from supervisord_batt.config.records import OutputConfig
from supervisord_batt.logs import get_logger
from supervisord_batt.paths import output_file_name

log = get_logger(component="output")

RING_BYTES = 64 * 1024
MAX_LINE = 8 * 1024  # a longer "line" in daemon mode is logged in pieces
READ_CHUNK = 64 * 1024


@dataclass(frozen=True)
class Chunk:
    data: bytes
    start: int  # offset of data[0] in the stream's whole history
    end: int
    truncated: bool  # the asked-for offset had already left the ring


class RotatingFile:
    """Appends bytes to `path`; past `max_bytes` shifts path -> path.1 -> ... -> path.N.

    The directory must be one only root or the daemon can write in, and the file is
    opened without following a symlink (`safepath`): a link another user planted as
    `batt-0.out.log` must not make the root daemon append worker output to its target.
    """

    # Why the path is checked, not only the size. logrotate (and an operator's `mv`)
    # renames or removes the file under us. Kept open, the descriptor would go on
    # appending to the renamed file, and the size rotation would then shift logrotate's
    # own backups and fail on the missing name, losing the output for good. So
    # `follow_path` (each tick, and on SIGHUP through `reopen`) reopens the path as soon
    # as it no longer names the file we hold; a rotation that finds it gone reopens too.

    def __init__(self, path: Path, max_bytes: int, backups: int) -> None:
        self.path, self.max_bytes, self.backups = path, max_bytes, backups
        safepath.make_dir(path.parent, 0o755)
        self._file: BinaryIO = _open(path)
        self._size = self._file.tell()

    def write(self, data: bytes) -> None:
        while data:
            room = self.max_bytes - self._size if self.max_bytes > 0 else len(data)
            if room <= 0:
                self.rotate()
                continue
            piece, data = data[:room], data[room:]
            self._file.write(piece)
            self._size += len(piece)
        self._file.flush()

    def rotate(self) -> None:
        self._file.close()
        for n in range(self.backups - 1, 0, -1):
            older = self.path.with_name(f"{self.path.name}.{n}")
            if older.exists():
                older.replace(self.path.with_name(f"{self.path.name}.{n + 1}"))
        with contextlib.suppress(FileNotFoundError):  # moved away by someone else: reopen
            if self.backups > 0:
                self.path.replace(self.path.with_name(f"{self.path.name}.1"))
            else:
                self.path.unlink()
        self._file = _open(self.path)
        self._size = 0

    def moved(self) -> bool:
        """Whether the path no longer names the file we write (renamed, removed)."""
        try:
            held = os.fstat(self._file.fileno())
            now = os.stat(self.path, follow_symlinks=False)
        except (OSError, ValueError):  # gone, or our file was closed by a failed reopen
            return True
        return (held.st_dev, held.st_ino) != (now.st_dev, now.st_ino)

    def follow_path(self) -> bool:
        """Reopen the path if the file was moved (see the class comment); True if it was.
        OSError when the path cannot be opened now (the old file stays in use)."""
        if not self.moved():
            return False
        self.reopen()
        return True

    def reopen(self) -> None:
        """Open the path afresh if it no longer names our file (SIGHUP after logrotate),
        appending to whatever is there now; on failure the file held so far stays in use
        and OSError is raised. (Our own lock on the file we hold would refuse opening the
        same file again, and there is nothing to gain by it.)"""
        if not self.moved():
            return
        fresh = _open(self.path)
        with contextlib.suppress(OSError):
            self._file.close()
        self._file = fresh
        self._size = fresh.tell()

    def close(self) -> None:
        self._file.close()


class HeldElsewhere(OSError):
    """Another daemon writes this output file (it holds the file's lock)."""


def _open(path: Path) -> BinaryIO:
    """Append to `path`, checked (safepath.open_append); kept open for the worker's life.

    The file is locked (flock) while open: a second daemon configured with the same
    output directory and program name would otherwise append to it and rotate it away
    under the first; it is refused instead, with a line that says why."""
    fd = safepath.open_append(path)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            raise HeldElsewhere(
                errno.EBUSY, f"{path} is written by another supervisord-batt daemon"
            ) from None
        raise
    return os.fdopen(fd, "ab")


class StreamSink:
    """One stream of one instance: ring buffer plus a file or the daemon's log."""

    def __init__(self, instance: str, stream: str, config: OutputConfig, directory: Path) -> None:
        self.instance, self.stream = instance, stream
        self._ring = bytearray()
        self.total = 0  # bytes seen since the daemon started this instance
        self._partial = b""
        self.file: RotatingFile | None = None
        # bytes the file could not take (a full disk, EIO) since the last `summary()`,
        # and why: counted here, logged once a tick by the supervisor, never raised into
        # the pipe reader, a kill or a shutdown
        self.lost = 0
        self.lost_reason = ""
        if config.mode == "file":
            name = output_file_name(instance, stream)
            self.file = RotatingFile(directory / name, config.max_bytes, config.backups)

    @property
    def path(self) -> Path | None:
        return self.file.path if self.file else None

    def write(self, data: bytes) -> None:
        self._ring += data
        if len(self._ring) > RING_BYTES:
            del self._ring[: len(self._ring) - RING_BYTES]
        self.total += len(data)
        if self.file is not None:
            try:
                self.file.write(data)
            except (OSError, ValueError) as exc:  # ValueError: the file was closed
                self.lost += len(data)
                self.lost_reason = getattr(exc, "strerror", None) or str(exc)
        else:
            self._log_lines(data)

    def summary(self) -> dict[str, Any] | None:
        """What was lost since the last call, for one log line; None when nothing was."""
        if not self.lost:
            return None
        line = {
            "instance": self.instance,
            "stream": self.stream,
            "path": str(self.path),
            "bytes_lost": self.lost,
            "reason": self.lost_reason,
        }
        self.lost = 0
        return line

    def carry(self, old: StreamSink) -> None:
        """Take over what `old` keeps for `tail` (a reload moved the output elsewhere): the
        offsets of a follower stay valid across the move."""
        self._ring, self.total, self._partial = bytearray(old._ring), old.total, old._partial
        old._partial = b""

    def resize(self, config: OutputConfig) -> None:
        """A reload's new rotation sizes, applied to the open file."""
        if self.file is not None:
            self.file.max_bytes, self.file.backups = config.max_bytes, config.backups

    def follow_path(self) -> bool:
        """Reopen the file if its path was moved (logrotate); True if it was reopened. A
        path that cannot be opened now is a loss reason, tried again next time."""
        if self.file is None:
            return False
        try:
            return self.file.follow_path()
        except OSError as exc:
            self.lost_reason = f"cannot reopen {self.file.path}: {exc.strerror or exc}"
            return False

    def reopen(self) -> None:
        """Open the file's path afresh (SIGHUP); OSError when it cannot be (the file held
        so far stays in use)."""
        if self.file is not None:
            self.file.reopen()

    def _log_lines(self, data: bytes, final: bool = False) -> None:
        buf = self._partial + data
        *lines, rest = buf.split(b"\n")
        if final and rest:
            lines, rest = [*lines, rest], b""
        while len(rest) > MAX_LINE:
            lines.append(rest[:MAX_LINE])
            rest = rest[MAX_LINE:]
        self._partial = rest
        for line in lines:
            log.info(
                "output",
                instance=self.instance,
                stream=self.stream,
                line=line.decode("utf-8", "replace"),
            )

    def read(self, offset: int | None, limit: int) -> Chunk:
        """Bytes from `offset` (None: the last `limit` bytes), at most `limit`."""
        ring_start = self.total - len(self._ring)
        if offset is None:
            offset = max(ring_start, self.total - limit)
        truncated = offset < ring_start
        start = min(max(offset, ring_start), self.total)
        end = min(self.total, start + limit)
        data = bytes(self._ring[start - ring_start : end - ring_start])
        return Chunk(data, start, end, truncated)

    def close(self) -> None:
        if self.file is not None:
            with contextlib.suppress(OSError):  # a full disk: the buffer's last bytes go
                self.file.close()
        elif self._partial:
            self._log_lines(b"", final=True)


class PipeReader:
    """Feeds a pipe's bytes to a sink from the event loop until EOF."""

    def __init__(self, fd: int, sink: StreamSink) -> None:
        self.fd, self.sink = fd, sink
        os.set_blocking(fd, False)
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(fd, self._readable)
        self.open = True

    def _readable(self) -> None:
        try:
            data = os.read(self.fd, READ_CHUNK)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if data:
            self.sink.write(data)
        else:
            self.close()

    def drain(self) -> None:
        """Read what is left without waiting (the writer is gone)."""
        while self.open:
            try:
                data = os.read(self.fd, READ_CHUNK)
            except (BlockingIOError, OSError):
                return
            if not data:
                self.close()
                return
            self.sink.write(data)

    def close(self) -> None:
        if self.open:
            self.open = False
            self._loop.remove_reader(self.fd)
            with contextlib.suppress(OSError):
                os.close(self.fd)
