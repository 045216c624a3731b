"""The one way the job side tells a person something: a warning line.

structlog is not imported here: a program that configured it has imported it already,
and one that did not gets the line on stderr. Importing it (and `logs`, with asyncio
and rich behind it) was most of a job's `import supervisord_batt.client` (docs/BENCHMARKS.md).
"""

from __future__ import annotations

import contextlib
import sys
from typing import Any


def warn(message: str, **fields: Any) -> None:
    """One line: to structlog when the program configured it, else to stderr."""
    structlog = sys.modules.get("structlog")
    if structlog is not None and structlog.is_configured():
        structlog.get_logger().warning(message, **fields)
        return
    with contextlib.suppress(OSError, ValueError):
        sys.stderr.write(f"supervisord-batt: {message}\n")
        sys.stderr.flush()
