"""Two daemons on one host with a program of the same name (issue 23): by default their
output files are apart, and a directory two daemons are both told to use is refused by
the second with a line that says why, instead of the two rotating each other's files."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from supervisord_batt import paths
from tests.helpers import wait_until

HELLO = "import os, time; print('hello from', os.environ['SUPERVISORD_BATT_SOCKET'], flush=True)\n"
HELLO += "time.sleep(600)"


def _ends_a_line(out: Path) -> bool:
    return out.exists() and out.read_text().endswith("\n")


@pytest.fixture
def per_daemon_dirs(needs_root: None) -> Iterator[list[Path]]:
    """The default output directories the test's daemons make: removed afterwards."""
    made: list[Path] = []
    try:
        yield made
    finally:
        for d in made:
            shutil.rmtree(d, ignore_errors=True)


def test_two_daemons_default_output_files_are_apart(
    daemon: Callable[..., Any], py: Callable[[str], list[str]], per_daemon_dirs: list[Path]
) -> None:
    def config() -> dict[str, Any]:  # a fresh one each: the fixture fills in the socket
        return {"programs": {"batt": {"command": py(HELLO), "output": {"mode": "file"}}}}

    a = daemon(config())
    b = daemon(config())
    files = []
    for d in (a, b):
        where = paths.LOG_DIR / paths.daemon_id(d.socket)
        per_daemon_dirs.append(where)
        out = where / "batt-0.out.log"
        wait_until(  # the whole line (the pipe may bring it in pieces)
            partial(_ends_a_line, out),
            timeout=15,
            what=str(out),
        )
        files.append(out)
    assert files[0] != files[1]
    assert str(a.socket) in files[0].read_text() and str(b.socket) not in files[0].read_text()
    assert str(b.socket) in files[1].read_text() and str(a.socket) not in files[1].read_text()


def test_a_directory_another_daemon_writes_is_refused_with_a_reason(
    daemon: Callable[..., Any], py: Callable[[str], list[str]], tmp_path: Path
) -> None:
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o755)

    def config() -> dict[str, Any]:
        output = {"mode": "file", "directory": str(shared)}
        return {"programs": {"batt": {"command": py(HELLO), "output": output}}}

    daemon(config())
    with pytest.raises(AssertionError, match="exited with 1") as failed:
        daemon(config())
    assert "is written by another supervisord-batt daemon" in str(failed.value)
    assert "startup_failed" in str(failed.value)
