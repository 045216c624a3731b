"""Factory fixtures for the integration tests: the real daemon as a subprocess on a real
socket, and the builders of the program configs it is given."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.daemons import DaemonHandle, program_entry, python_command


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


@pytest.fixture
def program() -> Callable[..., dict[str, Any]]:
    """Factory: program(command, **settings) is one entry of a config's `programs`, its
    output to the daemon's log and a short backoff; `settings` override any key."""
    return program_entry


@pytest.fixture
def py() -> Callable[[str], list[str]]:
    """Factory: py(code) is the command that runs `code` (dedented) in this interpreter."""
    return python_command
