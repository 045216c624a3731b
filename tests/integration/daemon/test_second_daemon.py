"""A second daemon on a live daemon's socket (issue 11): one clear line, no traceback,
and nothing of the first daemon's touched (its socket, its workers' cgroups)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.helpers import REPO


def run(config: Path, **streams: Any) -> subprocess.CompletedProcess[str]:
    """`supervisord-batt run -c CONFIG`, to its exit (`streams`: where its output goes,
    captured apart by default)."""
    return subprocess.run(
        [sys.executable, "-m", "supervisord_batt", "run", "-c", str(config)],
        **(streams or {"capture_output": True}),
        text=True,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
        timeout=60,
    )


def test_a_second_daemon_on_a_live_socket_ends_with_one_clear_line(
    daemon: Callable[..., Any],
) -> None:
    """It ended with a traceback (issue 11); the first daemon's socket stays."""
    d = daemon()
    second = run(d.config_path)
    assert second.returncode == 1
    out = second.stdout + second.stderr
    assert "Traceback" not in out
    (failed,) = [json.loads(x) for x in out.splitlines() if '"startup_failed"' in x]
    assert failed["reason"] == f"another daemon is serving {d.socket}"
    assert d.status()["ok"] and d.socket.exists()


def test_issue25_a_startup_failure_reaches_stderr_whatever_the_log_destination(
    daemon: Callable[..., Any], tmp_path: Path
) -> None:
    """With daemon.log_file set, the second daemon exited 1 with nothing on the
    terminal: its startup_failed line went to the file alone."""
    log = tmp_path / "second.log"
    d = daemon({"daemon": {"log_file": str(log)}})
    second = run(d.config_path)
    assert second.returncode == 1
    assert f"startup_failed: another daemon is serving {d.socket}" in second.stderr
    failed = [x for x in log.read_text().splitlines() if '"startup_failed"' in x]
    assert len(failed) == 1  # the file has it too
    # a bad config, the log on stdout (a file here): stderr says it as well
    bad = tmp_path / "bad.yaml"
    bad.write_text("daemon:\n  sample_interval: soon\n")
    with (tmp_path / "out.log").open("w") as out:
        refused = run(bad, stdout=out, stderr=subprocess.PIPE)
    assert refused.returncode == 1
    assert (
        "config_invalid" in refused.stderr and "daemon.sample_interval (line 2)" in refused.stderr
    )


def test_a_startup_failure_is_said_once_where_stderr_is_the_log(
    daemon: Callable[..., Any],
) -> None:
    """stdout and stderr one stream (a terminal, the journal): no second line."""
    d = daemon()
    second = run(d.config_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert second.returncode == 1
    assert second.stdout.count("startup_failed") == 1, second.stdout
