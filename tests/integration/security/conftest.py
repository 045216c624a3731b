"""Fixtures of the security tests: what real users of a shared host can reach."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A directory every user can read (pytest's tmp_path is private to root)."""
    d = Path(tempfile.mkdtemp(prefix="sbt-open-", dir="/tmp"))
    d.chmod(0o755)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)
