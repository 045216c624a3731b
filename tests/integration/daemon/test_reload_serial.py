"""Reloads run one at a time; a SIGHUP during one is never dropped (issue 11).

A SIGHUP that arrived while a reload ran was dropped silently, so the daemon ran a
config that was no longer the file's; a CLI reload concurrent with a SIGHUP reload
waited on the other and the CLI said "daemon not reachable" although it happened.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import yaml

from tests.helpers import REPO, wait_until

# ignores SIGTERM, so stopping it (a removed program is stopped) takes its whole grace
STUBBORN = [
    sys.executable,
    "-c",
    "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)",
]
SLEEP = ["sleep", "600"]


def _config(d: Any, programs: dict[str, Any]) -> None:
    config = yaml.safe_load(d.config_path.read_text())
    config["programs"] = programs
    d.config_path.write_text(yaml.safe_dump(config))


def _names(d: Any) -> set[str]:
    return {i["program"] for i in d.status()["instances"]}


def test_sighups_during_a_cli_reload_are_coalesced_and_applied_after_it(
    daemon: Callable[..., Any],
) -> None:
    d = daemon({"programs": {"slow": {"command": STUBBORN, "stop_grace": "1500ms"}}})
    wait_until(lambda: d.status()["instances"][0]["state"] == "RUNNING")
    # the CLI's reload stops `slow` (removed): it waits out the 1.5 s grace
    _config(d, {"a": {"command": SLEEP}})
    env = dict(os.environ, PYTHONPATH=str(REPO))
    cli = subprocess.Popen(
        [sys.executable, "-m", "supervisord_batt", "reload", "-c", str(d.config_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        wait_until(
            lambda: any(e.get("to") == "STOPPING" for e in d.events("transition")),
            timeout=10,
            what="the CLI's reload stopping `slow`",
        )
        _config(d, {"a": {"command": SLEEP}, "b": {"command": SLEEP}})
        for _ in range(5):  # standard signals do not queue: one to five get delivered
            d.proc.send_signal(signal.SIGHUP)
        out, err = cli.communicate(timeout=60)
    finally:
        if cli.poll() is None:
            cli.kill()
            cli.wait()
    # the CLI got its own reload's outcome, not "not reachable"
    assert cli.returncode == 0, err
    assert "added: a" in out
    # five SIGHUPs during it: queued, then one more reload, which read the file as it is now
    wait_until(
        lambda: len(d.events("reloaded")) == 2,
        timeout=20,
        what=f"the coalesced reload; log in {d.log_path}",
    )
    first, second = d.events("reloaded")
    assert first["uid"] == os.geteuid() and first["added"] == ["a"]
    assert first["removed"] == ["slow"]
    assert second["by"] == "SIGHUP" and second["added"] == ["b"]
    assert _names(d) == {"a", "b"}
    # and no third reload follows
    assert len(d.events("reloaded")) == 2
    assert json.dumps(d.status()["instances"])  # still serving
