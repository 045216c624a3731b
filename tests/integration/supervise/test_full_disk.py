"""A full disk under the output files (issue 11): counted and logged once a tick, and
stops and shutdown go on as if nothing happened.

It was 3,119 tracebacks on stderr in 35 s and nothing in the structured log; a shutdown
during it failed the kill (a drain wrote to the full file), waited the whole stop
timeout, exited with a traceback and left the socket and a worker cgroup behind.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import wait_until

# writes as fast as it can, ignoring SIGTERM: the stop needs the grace, then SIGKILL
CHATTY = [
    sys.executable,
    "-c",
    "import signal, sys; signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
    "while True: sys.stdout.write('x' * 4096 + '\\n')",
]


@pytest.fixture
def full_disk(needs_root: None) -> Iterator[Path]:
    """A 256 KiB tmpfs: the workers' output fills it within a second."""
    where = Path(tempfile.mkdtemp(prefix="sbt-disk-", dir="/tmp"))
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256k,mode=0755", "tmpfs", str(where)], check=True
    )
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)
        shutil.rmtree(where, ignore_errors=True)


def test_a_full_disk_is_counted_and_never_stops_a_kill_or_a_shutdown(
    daemon: Callable[..., Any], full_disk: Path
) -> None:
    d = daemon(
        {
            "programs": {
                "chatty": {
                    "command": CHATTY,
                    "numprocs": 2,
                    "stop_grace": "500ms",
                    "output": {"mode": "file", "directory": str(full_disk)},
                }
            }
        }
    )
    lost = wait_until(lambda: d.events("output_lost"), timeout=15, what="output_lost lines")
    assert lost[0]["reason"] == "No space left on device" and lost[0]["bytes_lost"] > 0
    # a stop while the disk is full: the tree is gone within the grace and the kill
    with d.client() as c:
        reply = c.request("stop", target="chatty")
    assert reply["ok"] and set(reply["instances"].values()) == {"STOPPED"}, reply
    with d.client() as c:
        assert c.request("start", target="chatty")["ok"]
    wait_until(lambda: len(d.events("output_lost")) > len(lost), timeout=15)
    assert d.stop() == 0
    assert not d.socket.exists()
    text = d.log_text()
    assert "Traceback" not in text and not d.events("loop_error")
    # one line per stream and tick at most, not one per failed write
    assert len(d.events("output_lost")) < 200


def test_the_daemons_own_lines_of_a_full_disk_are_written_once_there_is_room(
    daemon: Callable[..., Any], full_disk: Path, py: Callable[[str], list[str]]
) -> None:
    """The kill lines of the minutes the log could not be written are the ones an
    operator needs: kept, and written in order once the disk has room again."""
    log_file = full_disk / "daemon.log"
    d = daemon(
        {
            "daemon": {"log_file": str(log_file), "log_level": "info"},
            "programs": {
                "slow": {
                    # 20 KB of output lines into the daemon's log each run: more than
                    # any stream buffer holds while the disk is full
                    "command": py(
                        "import time\nfor i in range(200): print(i, 'x' * 100, flush=True)\n"
                        "time.sleep(600)"
                    ),
                    "output": {"mode": "daemon"},
                    "wall_clock_limit": "1s",
                    "stop_grace": "200ms",
                    "backoff": {"initial": "100ms", "max": "200ms", "factor": 2},
                }
            },
        }
    )
    filler = full_disk / "filler"
    with open(filler, "wb", buffering=0) as f, contextlib.suppress(OSError):
        while True:
            f.write(b"\0" * 4096)
    written = log_file.stat().st_size
    # while it is full: at least two wall-clock kills happen, and none can be written
    with d.client() as c:
        wait_until(
            lambda: c.request("status", instances=True)["instances"][0]["restarts"] >= 2,
            timeout=20,
            what="two wall-clock restarts",
        )
    assert log_file.stat().st_size <= written + 4096
    filler.unlink()
    kills = wait_until(
        lambda: [e for e in _events(log_file) if e["event"] == "timeout_kill"][1:],
        timeout=10,
        what="the kills of the full minutes in the log",
    )
    assert kills[0]["instance"] == "slow:0" and kills[0]["reason"] == "wall_clock_limit"
    # and all the output lines of those runs, none dropped: whole runs of 200, in order
    output = [e["line"] for e in _events(log_file) if e["event"] == "output"]
    whole = sum(1 for line in output if line.startswith("199 "))
    run = [f"{i} {'x' * 100}" for i in range(200)]
    assert whole >= 2 and output[: whole * 200] == run * whole
    assert not [e for e in _events(log_file) if e["event"] == "log_lines_lost"]


def _events(path: Path) -> list[dict[str, Any]]:
    out = []
    for line in path.read_text(errors="replace").splitlines():
        with contextlib.suppress(json.JSONDecodeError):
            out.append(json.loads(line))
    return out
