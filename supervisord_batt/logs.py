"""Structured logging, configured in one place.

JSON lines when the stream is not a terminal (journald, files, pipes: one object per line,
`timestamp` ISO-8601 UTC, `level`, `event`, then the context keys), a readable console
renderer on a terminal. Everything is synchronous: writing a log line never needs a new
thread, so the daemon can still log when the host is out of threads and pids.

# Why one wrapper and a stable sink
The daemon logs grants and releases on its request path, so a line must be cheap.
Loggers are cached on first use (structlog's own binding per call costs more than the
JSON encoding); what a reload may change (format, level, file) lives in `_state`, read by
the wrapper (`_EventLogger`) and the sink, so cached loggers follow a reconfiguration.

# Why the daemon writes its lines once per loop iteration
A write and a flush per line cost the daemon a system call per grant and per release,
more than the rest of answering the request. Inside the daemon (`write_per_iteration`)
the sink keeps the lines of one event-loop iteration and writes them in one call right
after it, in order, before the loop waits again: a line is out within the iteration that
logged it, the reply to the client is sent before its log line is written, and a burst
of many requests costs one write. A SIGKILL can lose at most that one iteration's lines;
every exit of the daemon's loop flushes.

# Why a backlog when the log cannot be written
The kill, timeout and pressure lines of a full disk's minutes are the ones an operator
needs afterwards. A write that fails (ENOSPC, EIO, a closed pipe) keeps the lines it
could not write, up to `MAX_BACKLOG` bytes, and each later flush tries them first;
past the bound the oldest lines go and are counted. Once the log takes lines again the
backlog is written in order, then one `log_lines_lost` line with the count, if any.

# Why a "<N>" in front of each line under journald
journald reads a service's stdout as plain lines at one priority, unless a line starts
with a syslog priority in angle brackets (sd-daemon(3)). When stdout is the journal
(`$JOURNAL_STREAM` names stdout's device and inode), each line gets its level's prefix,
so `journalctl -u supervisord-batt -p warning` shows warnings and worse; the JSON after
the prefix is unchanged (journald strips the prefix).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import sys
import time
from collections import deque
from pathlib import Path
from typing import Any, Literal, TextIO

import structlog

from supervisord_batt import safepath
from supervisord_batt.protocol import LOG_LEVELS

# each level's number in the logging module (10, 20, 30, 40), by the protocol's names
LEVELS: dict[str, int] = {name: getattr(logging, name.upper()) for name in LOG_LEVELS}
# syslog priorities (sd-daemon(3)): <7> debug, <6> info, <4> warning, <3> error
_PRIORITY: dict[str, str] = dict(zip(LOG_LEVELS, ("<7>", "<6>", "<4>", "<3>"), strict=True))
_NO_PRIORITY = dict.fromkeys(_PRIORITY, "")


class _State:
    def __init__(self) -> None:
        self.stream: TextIO = sys.stdout
        self.owned = False  # we opened the stream (a log file) and must close it
        self.level = logging.INFO
        self.console: Any = None  # a ConsoleRenderer on a terminal, None for JSON
        self.prefix: dict[str, str] = _NO_PRIORITY  # per level: "<6>" when stdout is journald
        self.loop: asyncio.AbstractEventLoop | None = None  # set: lines wait for its iteration
        self.pending: list[str] = []
        self.pending_chars = 0
        self.scheduled = False
        self.recent: deque[str] | None = None  # the last lines at info and above (the daemon)
        self.log_file: Path | None = None  # the file `configure` opened, for `reopen`
        self.backlog = bytearray()  # lines a failed write kept, oldest first (whole lines)
        self.lost = 0  # lines dropped from the backlog since the log last took a write
        self.write_error = ""  # why the last write failed


_state = _State()
_MAX_PENDING_CHARS = 64 * 1024  # a burst this large is written at once, not at iteration end
_PROCESSORS: list[Any] = []
_ENCODE = json.JSONEncoder(default=str).encode  # json.dumps(default=...) builds one per call


class _LineLogger:
    """Where each rendered line goes: the stream of the current configuration, at once or,
    in the daemon, once per event-loop iteration. (structlog's WriteLogger takes a lock and
    flushes per line; the daemon has one thread and batches.)"""

    def msg(self, message: str) -> None:
        st = _state
        st.pending.append(message + "\n")
        st.pending_chars += len(message) + 1
        if st.loop is None or st.pending_chars >= _MAX_PENDING_CHARS:
            flush()
        elif not st.scheduled:
            st.scheduled = True
            st.loop.call_soon(flush)


_LINE_LOGGER = _LineLogger()


def _line_logger(*_args: Any) -> _LineLogger:
    return _LINE_LOGGER


def flush() -> None:
    """Write the lines the sink holds, in one call (the backlog first, if any)."""
    st = _state
    st.scheduled = False
    if not st.pending and not st.backlog:
        return
    data = "".join(st.pending).encode("utf-8", "replace")
    st.pending.clear()
    st.pending_chars = 0
    if st.backlog:
        st.backlog += data
        data = bytes(st.backlog)
        st.backlog.clear()
    written = _write(data)
    if written < len(data):
        _keep(data[written:])
    elif st.lost:  # the log takes lines again: say how many it never will
        lost, st.lost = st.lost, 0
        line = {
            "timestamp": _timestamp(),
            "level": "error",
            "event": "log_lines_lost",
            "lines": lost,
            "reason": st.write_error,
        }
        encoded = (st.prefix["error"] + _ENCODE(line) + "\n").encode()
        done = _write(encoded)
        if done < len(encoded):
            _keep(encoded[done:])


MAX_BACKLOG = 1024 * 1024  # bytes of lines kept while the log cannot be written


def _write(data: bytes) -> int:
    """Write `data` to the log stream; the bytes written (fewer when it failed)."""
    stream = _state.stream
    try:
        fd = stream.fileno()
    except (OSError, ValueError, AttributeError):  # no descriptor (a StringIO): all or none
        try:
            stream.write(data.decode("utf-8", "replace"))
            stream.flush()
        except (OSError, ValueError) as exc:
            _state.write_error = str(exc)
            return 0
        return len(data)
    done = 0
    try:
        stream.flush()  # nothing of ours is buffered there, but a stream may hold its own
        while done < len(data):
            done += os.write(fd, data[done:])
    except (OSError, ValueError) as exc:  # full or closed: kept (`_keep`), never raised
        _state.write_error = getattr(exc, "strerror", None) or str(exc)
    return done


def _keep(data: bytes) -> None:
    """Keep unwritten bytes for the next flush, dropping (and counting) the oldest whole
    lines past `MAX_BACKLOG`. A line written in part is kept whole from where it broke."""
    st = _state
    st.backlog[:0] = data
    excess = len(st.backlog) - MAX_BACKLOG
    if excess > 0:
        cut = st.backlog.find(b"\n", excess - 1)
        cut = len(st.backlog) if cut < 0 else cut + 1
        st.lost += st.backlog.count(b"\n", 0, cut)
        del st.backlog[:cut]
    if not st.scheduled and st.loop is not None and st.backlog:
        st.scheduled = True  # tried again within a second, even if nothing else logs
        st.loop.call_later(1.0, flush)


def reopen() -> None:
    """Open the log file's path afresh (SIGHUP after logrotate renamed it); OSError when
    it cannot be, and the file held so far stays in use. Nothing to do on stdout."""
    path = _state.log_file
    if path is None:
        return
    fd = safepath.open_append(path)
    flush()
    old = _state.stream
    _state.stream = open(fd, "a", buffering=1, encoding="utf-8")  # noqa: SIM115
    old.close()


def fatal_to_stderr(event: str, reason: str) -> None:
    """Say on stderr too why the process ends (after logging it), unless the log goes
    there already: a daemon whose log is a file must not exit with nothing on the
    terminal that started it. Under systemd stderr is the log's own stream: said once."""
    flush()
    if _same_file(_state.stream, sys.stderr):
        return
    with contextlib.suppress(OSError, ValueError):
        sys.stderr.write(f"supervisord-batt: {event}: {reason}\n")
        sys.stderr.flush()


def _same_file(a: TextIO, b: TextIO) -> bool:
    """Whether two streams write to one file (a terminal, a pipe, the journal's socket)."""
    try:
        sa, sb = os.fstat(a.fileno()), os.fstat(b.fileno())
    except (OSError, ValueError, AttributeError):  # no descriptor (a StringIO), or closed
        return a is b
    return (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)


def write_per_iteration(loop: asyncio.AbstractEventLoop | None) -> None:
    """Hold lines until the end of each iteration of `loop` (None: write each at once)."""
    flush()
    _state.loop = loop


def is_journal(stream: TextIO, env: dict[str, str] | None = None) -> bool:
    """Whether `stream` is connected to journald: $JOURNAL_STREAM is "device:inode" of it."""
    value = (os.environ if env is None else env).get("JOURNAL_STREAM", "")
    dev, sep, ino = value.partition(":")
    if not (sep and dev.isdigit() and ino.isdigit()):
        return False
    try:
        st = os.fstat(stream.fileno())
    except (OSError, ValueError, AttributeError):  # no descriptor (a StringIO), or closed
        return False
    return (st.st_dev, st.st_ino) == (int(dev), int(ino))


def level_from(configured: str, verbose: int = 0, quiet: int = 0) -> int:
    """The configured level moved down one step per -v and up one step per -q."""
    order = list(LEVELS.values())
    index = order.index(LEVELS.get(configured, logging.INFO)) - verbose + quiet
    return order[max(0, min(len(order) - 1, index))]


def configure(
    fmt: Literal["json", "console", "auto"] = "auto",
    level: int = logging.INFO,
    log_file: Path | None = None,
    stream: TextIO | None = None,
) -> None:
    """Set up logging for the whole process; safe to call again (on reload)."""
    if log_file is not None:  # in a directory only root or we can write in, no symlink
        safepath.make_dir(log_file.parent, 0o755)
        fd = safepath.open_append(log_file)
        new_stream: TextIO = open(fd, "a", buffering=1, encoding="utf-8")  # noqa: SIM115
    else:
        new_stream = stream if stream is not None else sys.stdout
    flush()  # what the old configuration logged goes to the old stream
    if _state.owned and _state.stream is not new_stream:
        _state.stream.close()
    _state.stream, _state.owned, _state.level = new_stream, log_file is not None, level
    _state.log_file = log_file
    _state.prefix = _PRIORITY if is_journal(new_stream) else _NO_PRIORITY
    use_console = fmt == "console" or (fmt == "auto" and new_stream.isatty())
    _state.console = (
        structlog.dev.ConsoleRenderer(colors=new_stream.isatty()) if use_console else None
    )
    structlog.configure(
        # _EventLogger renders the line itself (`_render`); one list for every call, as
        # loggers cached earlier keep the list they were made with (capture_logs edits it)
        processors=_PROCESSORS,
        wrapper_class=_EventLogger,
        logger_factory=_line_logger,
        cache_logger_on_first_use=True,
    )


class _EventLogger(structlog.BoundLoggerBase):
    """structlog's bound logger (bind, new, unbind, lazy proxies, cached on first use)
    whose level methods make the line in one step: the level filter, `_render`, the
    line logger. Run generically, the one-processor chain cost a context copy, a loop
    and type checks per call, on the daemon's request path (~2 us of ~5.4 per line)."""

    def _emit(self, method: str, event: str, kw: dict[str, Any]) -> None:
        if self._processors:  # structlog.testing.capture_logs put its own chain in
            self._proxy_to_logger(method, event, **kw)
        elif LEVELS[method] >= _state.level:
            _LINE_LOGGER.msg(_state.prefix[method] + _render(method, event, self._context, kw))

    def debug(self, event: str, **kw: Any) -> None:
        self._emit("debug", event, kw)

    def info(self, event: str, **kw: Any) -> None:
        self._emit("info", event, kw)

    def warning(self, event: str, **kw: Any) -> None:
        self._emit("warning", event, kw)

    warn = warning

    def error(self, event: str, **kw: Any) -> None:
        self._emit("error", event, kw)

    def exception(self, event: str, **kw: Any) -> None:
        kw.setdefault("exc_info", True)
        self._emit("error", event, kw)


def _render(method: str, event: str, context: Any, kw: dict[str, Any]) -> str:
    """The line itself: timestamp, level and event first, then the context and fields."""
    line: dict[str, Any] = {"timestamp": _timestamp(), "level": method, "event": event}
    line.update(context)
    line.update(kw)
    exc_info = line.pop("exc_info", None)
    if exc_info:  # True: the exception being handled; or an exception instance
        line["exception"] = structlog.processors.format_exc_info(
            None, "", {"exc_info": exc_info}
        ).get("exception")
    encoded: str | None = None
    if _state.recent is not None and method != "debug":
        encoded = _ENCODE(line)
        _state.recent.append(encoded)
    if _state.console is not None:
        rendered: str = _state.console(None, method, line)
        return rendered
    return encoded if encoded is not None else _ENCODE(line)


def keep_recent(lines: int) -> None:
    """Keep the last `lines` lines at info and above in memory (0: none), as JSON text:
    the daemon's `status` shows them, so a live view needs no access to its log."""
    _state.recent = deque(maxlen=lines) if lines > 0 else None


def recent() -> list[str]:
    """The lines `keep_recent` kept, oldest first."""
    return list(_state.recent or ())


_second: list[Any] = [-1, ""]  # the last whole second and its formatted prefix


def _timestamp() -> str:
    """ISO-8601 UTC with microseconds; the date and time are formatted once a second."""
    now = time.time()
    sec = int(now)
    if sec != _second[0]:
        _second[0], _second[1] = sec, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec))
    return f"{_second[1]}.{int((now - sec) * 1e6):06d}Z"


def get_logger(**context: Any) -> Any:
    """A lazy logger: modules may bind at import time, before `configure` runs."""
    return structlog.get_logger(**context)
