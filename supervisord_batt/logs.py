"""Structured logging, configured in one place.

JSON lines when the stream is not a terminal (journald, files, pipes: one object per line,
`timestamp` ISO-8601 UTC, `level`, `event`, then the context keys), a readable console
renderer on a terminal. Everything is synchronous: writing a log line never needs a new
thread, so the daemon can still log when the host is out of threads and pids.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any, Literal, TextIO

import structlog

LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}

_stream: TextIO | None = None


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
    """Set up structlog for the whole process; safe to call again (on reload)."""
    global _stream  # noqa: PLW0603 -- one log stream per process, replaced on reload
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        new_stream: TextIO = open(log_file, "a", buffering=1, encoding="utf-8")  # noqa: SIM115
    else:
        new_stream = stream if stream is not None else sys.stdout
    if (
        _stream is not None
        and _stream is not new_stream
        and _stream not in (sys.stdout, sys.stderr)
    ):
        _stream.close()
    _stream = new_stream
    use_console = fmt == "console" or (fmt == "auto" and new_stream.isatty())
    renderer: Any = (
        structlog.dev.ConsoleRenderer(colors=new_stream.isatty())
        if use_console
        else structlog.processors.JSONRenderer(sort_keys=False)
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True, key="timestamp"),
            structlog.processors.format_exc_info,
            _reorder,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.WriteLoggerFactory(file=new_stream),
        cache_logger_on_first_use=False,
    )


def _reorder(_logger: Any, _name: str, event_dict: MutableMapping[str, Any]) -> dict[str, Any]:
    """timestamp, level, event first, so a tailed line reads left to right."""
    head: dict[str, Any] = {
        k: event_dict.pop(k) for k in ("timestamp", "level", "event") if k in event_dict
    }
    head.update(event_dict)
    return head


def get_logger(**context: Any) -> Any:
    """A lazy logger: modules may bind at import time, before `configure` runs."""
    return structlog.get_logger(**context)
