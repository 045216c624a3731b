"""`supervisord-batt top`: a live view (being written)."""

from __future__ import annotations

from pathlib import Path


def run_top(socket: Path, interval: float) -> int:
    raise NotImplementedError(f"top ({socket}, {interval}s)")
