"""Fixtures that run the shipped unit under a real systemd (see sandbox.py)."""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.systemd.sandbox import Sandbox, cannot_run
from tests.support.systemd import Service


@contextlib.contextmanager
def booted(journald: bool = False) -> Iterator[Sandbox]:
    """A booted sandbox (`journald`: with a journal its services log to), closed after."""
    why = cannot_run()
    if why is not None:
        pytest.skip(f"no systemd sandbox on this machine: {why}")
    workdir = Path(tempfile.mkdtemp(prefix="sdns-", dir="/var/tmp"))
    box = Sandbox.prepare(workdir, journald=journald)
    try:
        box.boot()
        yield box
    finally:
        left = box.close()
        shutil.rmtree(workdir, ignore_errors=True)
        assert not left, f"sandbox cgroups left behind: {left}"


@pytest.fixture
def sandbox(needs_root: None) -> Iterator[Sandbox]:  # needs_root: marks the tests `root`
    with booted() as box:
        yield box


@pytest.fixture
def journaled(needs_root: None) -> Iterator[Sandbox]:
    """A sandbox whose services log to its journal."""
    with booted(journald=True) as box:
        yield box


@pytest.fixture
def service(sandbox: Sandbox) -> Service:
    return Service(sandbox)
