"""A benchmark's daemon: this checkout's `supervisord-batt run -c CONFIG` in a child,
returned once its socket accepts connections (or killed, after 20 s)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def spawn_daemon(
    config: Path, sock: Path, prefix: Sequence[str] = (), timeout: float = 20.0
) -> subprocess.Popen[bytes]:
    """The daemon of `config` (whose socket is `sock`), run under `prefix` (e.g. nice)."""
    proc = subprocess.Popen(
        [*prefix, sys.executable, "-m", "supervisord_batt", "run", "-c", str(config)],
        env=dict(os.environ, PYTHONPATH=str(REPO)),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.socket(socket.AF_UNIX) as s:
                s.connect(str(sock))
                return proc
        except OSError:
            time.sleep(0.05)  # polling the socket, within the deadline above
    proc.kill()
    proc.wait()
    raise RuntimeError(f"the daemon of {config} did not start within {timeout:g} s")
