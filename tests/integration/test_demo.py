"""The demo job end to end, as a real program, with no daemon running."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.helpers import REPO, killing

ARGS = [
    "--tasks",
    "6",
    "--samples",
    "2",
    "--want",
    "2",
    "--seed",
    "7",
    "--min-ms",
    "5",
    "--max-ms",
    "10",
]


def _demo(tmp_path: Path, fallback: str | None) -> tuple[int, dict[str, Any], str]:
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "SUPERVISORD_BATT_SOCKET": str(tmp_path / "no-daemon.sock"),
    }
    env.pop("SUPERVISORD_BATT_FALLBACK", None)
    if fallback:
        env["SUPERVISORD_BATT_FALLBACK"] = fallback
    proc = subprocess.Popen(
        [sys.executable, "-m", "supervisord_batt.demo", *ARGS],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    with killing(proc):
        out, err = proc.communicate(timeout=60)
    lines = out.strip().splitlines()
    assert len(lines) == 1, out
    return proc.returncode, json.loads(lines[0]), err


def test_demo_without_daemon_runs_sequential_with_a_mode_independent_checksum(
    tmp_path: Path,
) -> None:
    rc, seq, err = _demo(tmp_path, None)
    assert rc == 0, err
    assert (seq["tasks_done"], seq["tasks_failed"], seq["kinds"]) == (6, 0, ["sequential"])
    assert seq["degraded"] is True
    warnings = [ln for ln in err.splitlines() if ln.startswith("supervisord-batt:")]
    assert len(warnings) == 1 and "running sequential" in warnings[0]

    rc, proc, err = _demo(tmp_path, "process:2")
    assert rc == 0, err
    assert (proc["tasks_done"], proc["kinds"], proc["workers"]) == (6, ["process:2"], 2)
    assert proc["checksum"] == seq["checksum"]

    # the demo is CPU-bound and leases no threads: a thread fallback steps down to a
    # kind it can use (sequential), never to one it said it cannot
    rc, thr, err = _demo(tmp_path, "thread:3")
    assert rc == 0, err
    assert thr["kinds"] == ["sequential"] and thr["checksum"] == seq["checksum"]
    assert "running sequential" in err


def test_demo_checksum_depends_on_the_seed(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    code = (
        "from supervisord_batt.demo import Task, score; "
        "print(score(Task(0, 1, 2, 1, 2)) != score(Task(0, 2, 2, 1, 2)))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert out.stdout.strip() == "True"
