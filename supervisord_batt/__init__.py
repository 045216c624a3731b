"""supervisord-batt: a supervisor for batch hosts that keeps run_batt jobs inside the
host's thread and pid limits, hands out a concurrency budget over a Unix socket, and
kills and restarts workers that overrun their wall clock."""

from __future__ import annotations

__version__ = "0.1.0"
