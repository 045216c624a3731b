"""docs/SERVICE.md's "Install from a checkout" steps, run as written under a real systemd.

The sandbox gets a private, writable /etc, /opt and /usr/local (overlays: nothing is
written to the host's) and a journal, so `python3 -m venv /opt/...`, its `pip install .`,
the link in /usr/local/bin, `install`, `supervisord-batt unit > /etc/systemd/system/...`,
`systemctl enable --now`, `set-property` and `journalctl` all do what they do on a VM.
The steps run with a root login's PATH, so `python3` is Debian's own /usr/bin/python3
(externally managed, PEP 668), as on a stock Debian 12, whatever interpreter runs the
tests. The pip step installs the package's dependencies from the index pip is
configured with, as an operator's does: the test needs the network CI has.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import docblocks
from tests.helpers import wait_until
from tests.integration.systemd.sandbox import Sandbox, cannot_run
from tests.support.systemd import journal_events

REPO = Path(__file__).resolve().parents[3]
UNIT = "supervisord-batt.service"
DOC = "docs/SERVICE.md"
# a root login's PATH on Debian (login.defs ENV_SUPATH): no venv, no pyenv
ROOT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# where the steps write outside /etc, each an overlay in the sandbox
PRIVATE = ("/opt", "/usr/local")


def install_steps() -> list[str]:
    return docblocks.command_lines(docblocks.first_block(DOC, "## Install from a checkout"))


@pytest.fixture
def box(needs_root: None) -> Iterator[Sandbox]:  # needs_root: marks the tests `root`
    why = cannot_run()
    if why is not None:
        pytest.skip(f"no systemd sandbox on this machine: {why}")
    if not Path("/usr/bin/python3").is_file():
        pytest.skip("no Debian python3 (/usr/bin/python3) to install with")
    workdir = Path(tempfile.mkdtemp(prefix="sdns-", dir="/var/tmp"))
    sandbox = Sandbox.prepare(workdir, etc_overlay=True, journald=True)
    try:
        sandbox.boot()
        for where in PRIVATE:  # writes land in the workdir, removed with it
            name = where.strip("/").replace("/", "-")
            upper, work = workdir / f"{name}-upper", workdir / f"{name}-work"
            upper.mkdir()
            work.mkdir()
            options = f"lowerdir={where},upperdir={upper},workdir={work}"
            sandbox.run("mount", "-t", "overlay", "overlay", "-o", options, where)
        yield sandbox
    finally:
        left = sandbox.close()
        shutil.rmtree(workdir, ignore_errors=True)
        assert not left, f"sandbox cgroups left behind: {left}"


def sh(box: Sandbox, line: str, check: bool = True) -> str:
    """A line run as an operator's root shell runs it, in the checkout."""
    argv = ["env", "-u", "VIRTUAL_ENV", "-u", "PYTHONPATH", f"PATH={ROOT_PATH}", "sh", "-c", line]
    done = box.run(*argv, cwd=REPO, check=False, timeout=600)
    if check:
        assert done.returncode == 0, f"{line!r} failed: {done.stdout}{done.stderr}"
    return done.stdout


def test_install_steps_then_tasks_max_work_as_written_on_debians_python(box: Sandbox) -> None:
    steps = install_steps()
    assert steps[:2] == [
        "python3 -m venv /opt/supervisord-batt",
        "/opt/supervisord-batt/bin/pip install .",
    ]
    assert sh(box, "command -v python3").strip() == "/usr/bin/python3"
    for step in steps:
        # following the journal never ends: read it once instead
        sh(box, step.replace(" -f -o cat", " --no-pager -o cat"))
    # files in the private /etc, /opt and /usr/local, not the host's
    assert (box.workdir / "etc-upper" / "systemd" / "system" / UNIT).is_file()
    venv = box.workdir / "opt-upper" / "supervisord-batt"
    assert "/usr/bin" in (venv / "pyvenv.cfg").read_text()  # made by Debian's python3
    assert (box.workdir / "usr-local-upper" / "bin" / "supervisord-batt").is_symlink()
    unit = box.host_path(f"/etc/systemd/system/{UNIT}").read_text()
    assert "ExecStart=/opt/supervisord-batt/bin/supervisord-batt run" in unit, unit
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
    journal_events(box, until="started")
    box.host_path("/etc/supervisord-batt/supervisord-batt.yaml").write_text("budget: [\n")
    assert (
        "Job for supervisord-batt.service failed"
        in box.run("systemctl", "reload", UNIT, check=False).stderr
    )
    warned = journal_events(box, "-p", "warning", until="reload_rejected")
    assert "started" not in {e["event"] for e in warned}

    # the TasksMax step on the installed service (still running its last good config):
    # in this test because a second install would cost the suite another pip install
    tasks_max_step(box)


def tasks_max_step(box: Sandbox) -> None:
    (command,) = docblocks.command_lines(docblocks.first_block(DOC, "## TasksMax"))
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
