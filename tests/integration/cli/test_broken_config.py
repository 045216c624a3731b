"""`status` and `reload` while the config on disk is broken (issue 25): they read the
config to find the socket, and reported a running daemon down (rc 2). They reach it
through the socket the file still names, and say what is wrong with the file."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import pytest
import yaml

from supervisord_batt.paths import CONFIG_ENV, SOCKET_ENV
from tests.helpers import REPO

# each breaks the file below the daemon section, which keeps naming the socket
BREAKS = {
    "bad values": (
        "budget:\n  reserve_tasks: lots\nprograms:\n  a:\n    command: [x]\n    numprocs: -1\n",
        ["budget.reserve_tasks (line", "programs.a.numprocs (line"],
    ),
    "no YAML": ("programs:\n  a: {command: [x]\n", ["YAML syntax"]),
}


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in (SOCKET_ENV, CONFIG_ENV)}
    return subprocess.run(
        [sys.executable, "-m", "supervisord_batt", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(env, PYTHONPATH=str(REPO)),
    )


def break_config(d: Any, rest: str) -> None:
    daemon_only = {"daemon": yaml.safe_load(d.config_path.read_text())["daemon"]}
    d.config_path.write_text(yaml.safe_dump(daemon_only) + rest)


@pytest.mark.parametrize("case", sorted(BREAKS))
def test_issue25_status_reaches_the_daemon_and_warns_of_the_file(
    daemon: Callable[..., Any], case: str
) -> None:
    d = daemon()
    rest, errors = BREAKS[case]
    break_config(d, rest)
    out = cli("status", "-c", str(d.config_path))
    assert out.returncode == 0, out.stderr
    assert "capacity" in out.stdout
    assert f"{d.config_path} does not load" in out.stderr
    for error in errors:
        assert error in out.stderr, out.stderr


@pytest.mark.parametrize("case", sorted(BREAKS))
def test_issue25_reload_reaches_the_daemon_which_rejects_the_file(
    daemon: Callable[..., Any], program: Callable[..., Any], py: Callable[[str], Any], case: str
) -> None:
    d = daemon({"programs": {"kept": program(py("import time; time.sleep(600)"))}})
    rest, errors = BREAKS[case]
    break_config(d, rest)
    out = cli("reload", "-c", str(d.config_path))
    assert out.returncode == 1, (out.stdout, out.stderr)
    assert "config rejected, the old one stays" in out.stderr
    for error in errors:
        assert error in out.stderr, out.stderr
    (rejected,) = d.events("reload_rejected")
    assert str(d.config_path) in rejected["reason"]
    assert [i["program"] for i in d.status()["instances"]] == ["kept"]  # the old config runs


def test_issue25_a_file_whose_socket_cannot_be_read_says_to_pass_socket(tmp_path: Any) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("daemon:\n  socket: [unclosed\n")
    out = cli("status", "-c", str(config))
    assert out.returncode == 2
    assert "not reachable" in out.stderr and "pass --socket" in out.stderr
