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

# Why a "<N>" in front of each line under journald
journald reads a service's stdout as plain lines at one priority, unless a line starts
with a syslog priority in angle brackets (sd-daemon(3)). When stdout is the journal
(`$JOURNAL_STREAM` names stdout's device and inode), each line gets its level's prefix,
so `journalctl -u supervisord-batt -p warning` shows warnings and worse; the JSON after
the prefix is unchanged (journald strips the prefix).
"""

from __future__ import annotations

import asyncio
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

LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}
_LEVEL_OF = {
    "debug": 10,
    "info": 20,
    "warning": 30,
    "error": 40,
    "critical": 50,
}
# syslog priorities (sd-daemon(3)): <7> debug, <6> info, <4> warning, <3> error, <2> crit
_PRIORITY = {"debug": "<7>", "info": "<6>", "warning": "<4>", "error": "<3>", "critical": "<2>"}
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
        if st.loop is None:
            st.stream.write(message + "\n")
            st.stream.flush()
            return
        st.pending.append(message + "\n")
        st.pending_chars += len(message) + 1
        if st.pending_chars >= _MAX_PENDING_CHARS:
            flush()
        elif not st.scheduled:
            st.scheduled = True
            st.loop.call_soon(flush)


_LINE_LOGGER = _LineLogger()


def _line_logger(*_args: Any) -> _LineLogger:
    return _LINE_LOGGER


def flush() -> None:
    """Write the lines the sink holds, in one call."""
    st = _state
    st.scheduled = False
    if not st.pending:
        return
    data = "".join(st.pending)
    st.pending.clear()
    st.pending_chars = 0
    try:
        st.stream.write(data)
        st.stream.flush()
    except (OSError, ValueError):  # a closed or full log stream must not stop the daemon
        pass


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
    order = [logging.DEBUG, logging.INFO, logging.WARNING, logging.ERROR]
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
        elif _LEVEL_OF[method] >= _state.level:
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

    def critical(self, event: str, **kw: Any) -> None:
        self._emit("critical", event, kw)

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
