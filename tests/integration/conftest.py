"""Factory fixtures for the integration tests: the real daemon as a subprocess on a real
socket, and the builders of the program configs it is given."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
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
        self._log.close()
        return self.proc.returncode


@pytest.fixture
def daemon() -> Iterator[Callable[..., DaemonHandle]]:
    """Factory: daemon(config_dict) starts a real daemon; all are stopped at teardown.

    `preexec_fn` runs in the daemon's process before exec (e.g. a cgroup's `preexec()`,
    so the daemon and the workers' cgroups it makes live below that cgroup)."""
    started: list[DaemonHandle] = []
    dirs: list[Path] = []

    def start(
        config: dict[str, Any] | None = None, *, preexec_fn: Callable[[], None] | None = None
    ) -> DaemonHandle:
        # short directory: a Unix socket path is limited to 107 bytes
        workdir = Path(tempfile.mkdtemp(prefix="sbt-", dir="/tmp"))
        dirs.append(workdir)
        handle = DaemonHandle(workdir, config or {}, preexec_fn)
        started.append(handle)
        handle.wait_ready()
        return handle

    try:
        yield start
    finally:
        for handle in started:
            handle.stop()
        for d in dirs:
            shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module")
def daemon_once() -> Iterator[DaemonHandle]:
    """One daemon shared by a module's read-only tests."""
    workdir = Path(tempfile.mkdtemp(prefix="sbt-", dir="/tmp"))
    handle = DaemonHandle(workdir, {})
    try:
        handle.wait_ready()
        yield handle
    finally:
        handle.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def _program(command: list[str], **settings: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "command": command,
        "output": {"mode": "daemon"},
        "backoff": {"initial": "100ms", "max": "400ms", "factor": 2},
    }
    base.update(settings)
    return base


def _py(code: str) -> list[str]:
    return [sys.executable, "-c", textwrap.dedent(code)]


@pytest.fixture
def program() -> Callable[..., dict[str, Any]]:
    """Factory: program(command, **settings) is one entry of a config's `programs`, its
    output to the daemon's log and a short backoff; `settings` override any key."""
    return _program


@pytest.fixture
def py() -> Callable[[str], list[str]]:
    """Factory: py(code) is the command that runs `code` (dedented) in this interpreter."""
    return _py
