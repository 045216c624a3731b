"""Structured logging, configured in one place.

JSON lines when the stream is not a terminal (journald, files, pipes: one object per line,
`timestamp` ISO-8601 UTC, `level`, `event`, then the context keys), a readable console
renderer on a terminal. Everything is synchronous: writing a log line never needs a new
thread, so the daemon can still log when the host is out of threads and pids.

# Why one processor and a stable sink
The daemon logs every grant and release, on its request path, so a line must be cheap.
Loggers are cached on first use (structlog's own binding per call costs more than the
JSON encoding); what a reload may change (format, level, file) lives in `_state`, read by
the single processor and the sink, so cached loggers follow a reconfiguration.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal, TextIO

import structlog

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
    "warn": 30,
    "error": 40,
    "exception": 40,
    "critical": 50,
}


class _State:
    def __init__(self) -> None:
        self.stream: TextIO = sys.stdout
        self.owned = False  # we opened the stream (a log file) and must close it
        self.level = logging.INFO
        self.console: Any = None  # a ConsoleRenderer on a terminal, None for JSON


_state = _State()


class _Sink:
    """What structlog writes to: always the stream of the current configuration."""

    def write(self, line: str) -> None:
        _state.stream.write(line)

    def flush(self) -> None:
        _state.stream.flush()


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
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        new_stream: TextIO = open(log_file, "a", buffering=1, encoding="utf-8")  # noqa: SIM115
    else:
        new_stream = stream if stream is not None else sys.stdout
    if _state.owned and _state.stream is not new_stream:
        _state.stream.close()
    _state.stream, _state.owned, _state.level = new_stream, log_file is not None, level
    use_console = fmt == "console" or (fmt == "auto" and new_stream.isatty())
    _state.console = (
        structlog.dev.ConsoleRenderer(colors=new_stream.isatty()) if use_console else None
    )
    structlog.configure(
        processors=[_render],
        wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG),
        logger_factory=structlog.WriteLoggerFactory(file=_Sink()),  # type: ignore[arg-type]
        cache_logger_on_first_use=True,
    )


def _render(_logger: Any, method: str, event_dict: Any) -> str:
    """Level filter, timestamp, and the line itself: timestamp, level, event first."""
    if _LEVEL_OF.get(method, 20) < _state.level:
        raise structlog.DropEvent
    level = "warning" if method == "warn" else "error" if method == "exception" else method
    now = datetime.now(timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")
    line: dict[str, Any] = {"timestamp": now, "level": level, "event": event_dict.pop("event")}
    line.update(event_dict)
    if method == "exception" or line.pop("exc_info", False):
        line["exception"] = structlog.processors.format_exc_info(None, "", {"exc_info": True}).get(
            "exception"
        )
    if _state.console is not None:
        rendered: str = _state.console(_logger, method, line)
        return rendered
    return json.dumps(line, default=str)


def get_logger(**context: Any) -> Any:
    """A lazy logger: modules may bind at import time, before `configure` runs."""
    return structlog.get_logger(**context)
