"""A real daemon as a subprocess on a real socket (`DaemonHandle`), and the builders of
the program configs it is given. The fixtures that start and stop them are in
tests/integration/conftest.py."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from supervisord_batt.client.leases import Connection
from supervisord_batt.client.status import LISTS, read_status
from tests.helpers import REPO, WireClient, wait_until


class DaemonHandle:
    def __init__(
        self,
        workdir: Path,
        config: dict[str, Any],
        preexec_fn: Callable[[], None] | None = None,
    ) -> None:
        self.workdir = workdir
        self.socket = workdir / "s.sock"
        config.setdefault("daemon", {})
        self.socket = Path(config["daemon"].setdefault("socket", str(self.socket)))
        config["daemon"].setdefault("log_format", "json")
        config["daemon"].setdefault("log_level", "debug")
        config["daemon"].setdefault("sample_interval", "100ms")
        config["daemon"].setdefault("scan_interval", "500ms")
        # a test sees each grant at once: only the burst tests hold grants for a burst
        config.setdefault("budget", {}).setdefault("burst_window", 0)
        self.config_path = workdir / "config.yaml"
        self.config_path.write_text(yaml.safe_dump(config))
        self.log_path = workdir / "daemon.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115
        env = dict(os.environ, PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1")
        env.pop("SUPERVISORD_BATT_SOCKET", None)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "supervisord_batt", "run", "-c", str(self.config_path)],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=workdir,
            preexec_fn=preexec_fn,
        )

    def wait_ready(self) -> None:
        wait_until(self._answers, timeout=20, what="daemon answering status")
        if self.proc.poll() is not None:  # fails at once, not at the wait's deadline
            raise AssertionError(f"daemon exited with {self.proc.returncode}:\n{self.log_text()}")

    def _answers(self) -> bool:
        if self.proc.poll() is not None:
            return True  # it exited: wait_ready says so
        try:
            with WireClient(self.socket, timeout=2) as c:
                return bool(c.request("status").get("ok"))
        except OSError:
            return False

    def client(self) -> WireClient:
        return WireClient(self.socket)

    def status(self) -> dict[str, Any]:
        """The summary with every list (every page of each) and the latest events, read
        the way `supervisord-batt status` reads them."""
        with Connection(self.socket) as conn:
            reply = read_status(conn, LISTS, events=True)
        return dict(reply)

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        """`supervisord-batt ARGS --socket` this daemon's, as an operator runs it."""
        return subprocess.run(
            [sys.executable, "-m", "supervisord_batt", *args, "--socket", str(self.socket)],
            capture_output=True,
            text=True,
            timeout=120,
            env=dict(os.environ, PYTHONPATH=str(REPO)),
        )

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def events(self, name: str | None = None) -> list[dict[str, Any]]:
        out = []
        for line in self.log_text().splitlines():
            with contextlib.suppress(json.JSONDecodeError):
                event = json.loads(line)
                if name is None or event.get("event") == name:
                    out.append(event)
        return out

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
                self._kill_left_workers()
        self._log.close()
        return self.proc.returncode

    def _kill_left_workers(self) -> None:
        """A daemon killed before it stopped its workers leaves them running, as it
        should in production (the next daemon adopts them): here nothing will, so they
        are ended as the unit's ExecStopPost ends them (`cleanup`, from the state record).
        1,000 sleepers of a daemon that took too long to stop stayed behind otherwise."""
        subprocess.run(
            [sys.executable, "-m", "supervisord_batt", "cleanup", "-c", str(self.config_path)],
            capture_output=True,
            timeout=120,
            env=dict(os.environ, PYTHONPATH=str(REPO)),
            check=False,
        )


def program_entry(command: list[str], **settings: Any) -> dict[str, Any]:
    """One entry of a config's `programs`: its output to the daemon's log and a short
    backoff; `settings` override any key."""
    base: dict[str, Any] = {
        "command": command,
        "output": {"mode": "daemon"},
        "backoff": {"initial": "100ms", "max": "400ms", "factor": 2},
    }
    base.update(settings)
    return base


def python_command(code: str) -> list[str]:
    """The command that runs `code` (dedented) in this interpreter."""
    return [sys.executable, "-c", textwrap.dedent(code)]


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    """`supervisord-batt ARGS` run by this interpreter on the checkout."""
    return subprocess.run(
        [sys.executable, "-m", "supervisord_batt", *args],
        capture_output=True,
        text=True,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
        timeout=60,
    )
