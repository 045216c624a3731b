"""The one way the job side tells a person something: a warning line."""

from __future__ import annotations

import contextlib
import sys
from typing import Any

import structlog

from supervisord_batt.logs import get_logger


def warn(message: str, **fields: Any) -> None:
    """One line: to structlog when the program configured it, else to stderr."""
    if structlog.is_configured():
        get_logger().warning(message, **fields)
        return
    with contextlib.suppress(OSError, ValueError):
        sys.stderr.write(f"supervisord-batt: {message}\n")
        sys.stderr.flush()
