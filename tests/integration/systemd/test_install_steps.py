"""README's "Install as a service" steps, run as written under a real systemd.

The sandbox gets a private, writable /etc (an overlay: nothing is written to the host's)
and a journal, so `install`, `supervisord-batt unit > /etc/systemd/system/...`,
`systemctl enable --now`, `set-property` and `journalctl` all do what they do on a VM.
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import wait_until
from tests.integration.systemd.sandbox import Sandbox, cannot_run

REPO = Path(__file__).resolve().parents[3]
UNIT = "supervisord-batt.service"
# the package is installed in this interpreter already; installing again needs a network
SKIPPED = "python3 -m pip install ."


def readme_block(heading: str) -> list[str]:
    """The commands of the first indented block after `heading` in README.md."""
    text = (REPO / "README.md").read_text()
    section = text.split(f"## {heading}\n", 1)[1]
    block = re.search(r"\n\n((?:    \S.*\n)+)", section)
    assert block is not None, f"no command block under {heading!r}"
    return [line.strip() for line in block.group(1).splitlines()]


@pytest.fixture
def box(needs_root: None) -> Iterator[Sandbox]:  # needs_root: marks the tests `root`
    why = cannot_run()
    if why is not None:
        pytest.skip(f"no systemd sandbox on this machine: {why}")
    workdir = Path(tempfile.mkdtemp(prefix="sdns-", dir="/var/tmp"))
    sandbox = Sandbox.prepare(workdir, etc_overlay=True, journald=True)
    try:
        sandbox.boot()
        yield sandbox
    finally:
        left = sandbox.close()
        shutil.rmtree(workdir, ignore_errors=True)
        assert not left, f"sandbox cgroups left behind: {left}"


def sh(box: Sandbox, line: str, check: bool = True) -> str:
    done = box.run("sh", "-c", line, cwd=REPO, check=False)
    if check:
        assert done.returncode == 0, f"{line!r} failed: {done.stdout}{done.stderr}"
    return done.stdout


def test_readme_install_steps_work_as_written(box: Sandbox) -> None:
    steps = readme_block("Install as a service")
    assert steps[0] == SKIPPED
    for step in steps[1:]:
        # following the journal never ends: read it once instead
        sh(box, step.replace(" -f -o cat", " --no-pager -o cat"))
    # a file in the private /etc, not the host's
    assert (box.workdir / "etc-upper" / "systemd" / "system" / UNIT).is_file()
    assert box.show(UNIT, "ActiveState")["ActiveState"] == "active"
    status_text = sh(box, "systemctl --no-pager status supervisord-batt")
    assert 'Status: "3/3 instances running; level ' in status_text, status_text

    # the default config's demo workers run and lease (their Python found through PATH)
    wait_until(
        lambda: sh(box, "supervisord-batt status", check=False).count(" RUNNING ") == 3,
        timeout=20,
        what="three demo workers RUNNING",
    )

    # the journal: JSON lines, and -p warning filters by the priority each line carries
    lines = sh(box, "journalctl -u supervisord-batt --no-pager -o cat").splitlines()
    events = [json.loads(line) for line in lines if line.startswith("{")]
    assert "started" in {e["event"] for e in events}
    box.host_path("/etc/supervisord-batt/supervisord-batt.yaml").write_text("budget: [\n")
    assert (
        "Job for supervisord-batt.service failed"
        in box.run("systemctl", "reload", UNIT, check=False).stderr
    )
    warned = sh(box, "journalctl -u supervisord-batt -p warning --no-pager -o cat")
    warned_events = [
        json.loads(line)["event"] for line in warned.splitlines() if line.startswith("{")
    ]
    assert "reload_rejected" in warned_events and "started" not in warned_events


def test_readme_tasks_max_step(box: Sandbox) -> None:
    for line in readme_block("Install as a service")[1:6]:
        sh(box, line)
    command = next(
        line
        for line in (REPO / "README.md").read_text().splitlines()
        if line.strip().startswith("systemctl set-property")
    ).strip()
    sh(box, command.replace("4096", "40"))
    status = wait_until(
        lambda: (
            (s := json.loads(sh(box, "supervisord-batt status --json")))["host"]["tightest"][
                "limit"
            ]
            == 40
            and s
        ),
        timeout=10,
        what="TasksMax=40 as the tightest limit",
    )
    assert status["host"]["tightest"]["name"] == f"cgroup:/system.slice/{UNIT}"
    text = sh(box, "supervisord-batt status")
    assert f"tightest limit cgroup:/system.slice/{UNIT}" in text, text
