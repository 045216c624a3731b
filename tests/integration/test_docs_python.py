"""Issue 25: every `python` block of the README and docs/ runs, against a real daemon.

README's joblib example failed with `NameError: name 'joblib' is not defined`. Each
block runs here as a script in a fresh directory, in this interpreter with the checkout
first on the path, with SUPERVISORD_BATT_SOCKET naming a test daemon. It must exit 0, and
a block that uses the project must have leased from that daemon (a grant or deny line
with the block's pid), not run on the client's local fallback.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests import docblocks
from tests.docblocks import Block
from tests.helpers import REPO, wait_until
from tests.support.daemons import DaemonHandle

PYTHON = docblocks.all_blocks("python")


def run_block(block: Block, daemon: DaemonHandle) -> tuple[subprocess.CompletedProcess[str], int]:
    """The block run as a script against `daemon`, and its pid."""
    with tempfile.TemporaryDirectory(prefix="sbt-doc-") as workdir:
        script = Path(workdir) / "block.py"
        script.write_text(block.text)
        env = dict(os.environ, PYTHONPATH=str(REPO), SUPERVISORD_BATT_SOCKET=str(daemon.socket))
        proc = subprocess.Popen(
            [sys.executable, str(script)],
            cwd=workdir,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            out, err = proc.communicate(timeout=90)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err), proc.pid


def leased_by(daemon: DaemonHandle, pid: int) -> list[dict[str, object]]:
    return [e for e in daemon.events() if e.get("event") in ("grant", "deny") and e["pid"] == pid]


def test_there_are_python_blocks_to_run() -> None:
    assert len(PYTHON) >= 2
    assert {b.document for b in PYTHON} >= {"README.md"}


@pytest.mark.parametrize("block", PYTHON, ids=[b.where for b in PYTHON])
def test_every_python_block_runs_against_a_real_daemon(
    block: Block, daemon_once: DaemonHandle
) -> None:
    done, pid = run_block(block, daemon_once)
    assert done.returncode == 0, f"{block.where}:\n{done.stderr}"
    if "supervisord_batt" in block.text:
        assert "daemon not reachable" not in done.stderr, done.stderr
        wait_until(lambda: leased_by(daemon_once, pid), timeout=10, what="the block's lease")


def test_a_failing_block_fails_the_check(daemon_once: DaemonHandle) -> None:
    """The issue's NameError, as the README had it: the check reports it."""
    (bad,) = docblocks.blocks_of(
        "```python\nimport supervisord_batt.joblib\n"
        'with joblib.parallel_config(backend="supervisord-batt"):\n    pass\n```\n',
        "README.md",
    )
    done, _ = run_block(bad, daemon_once)
    assert done.returncode == 1
    assert "NameError: name 'joblib' is not defined" in done.stderr
