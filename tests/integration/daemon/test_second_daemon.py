"""A second daemon on a live daemon's socket (issue 11): one clear line, no traceback,
and nothing of the first daemon's touched (its socket, its workers' cgroups)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from typing import Any

from tests.helpers import REPO


def test_a_second_daemon_on_a_live_socket_ends_with_one_clear_line(
    daemon: Callable[..., Any],
) -> None:
    """It ended with a traceback (issue 11); the first daemon's socket stays."""
    d = daemon()
    env = dict(os.environ, PYTHONPATH=str(REPO))
    second = subprocess.run(
        [sys.executable, "-m", "supervisord_batt", "run", "-c", str(d.config_path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert second.returncode == 1
    out = second.stdout + second.stderr
    assert "Traceback" not in out
    (failed,) = [json.loads(x) for x in out.splitlines() if '"startup_failed"' in x]
    assert failed["reason"] == f"another daemon is serving {d.socket}"
    assert d.status()["ok"] and d.socket.exists()
