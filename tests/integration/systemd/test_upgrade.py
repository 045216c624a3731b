"""An upgrade from the previous release to this checkout, with jobs running (issue 23).

The previous release is built from its commit (CHANGELOG.md names it; its tag when the
clone has it) into a wheel and installed in a virtualenv, and the shipped unit runs it
under a real systemd with four workers and eight leasing jobs. Then this checkout's
wheel is installed over it, as a package upgrade does, and `supervisord-batt reexec`
(the new CLI) asks the running old daemon to exec the new code: the same MainPID, no
restart, the same workers, every lease resumed, no job sees an error.
"""

from __future__ import annotations

import json
import shutil
import site
import subprocess
import sys
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from tests.helpers import REPO, wait_until
from tests.integration.systemd.jobs import (
    assert_rode_through,
    eight_leases,
    four_counters,
    leases,
    resumed,
    running_counters,
)
from tests.integration.systemd.release import release_budget, release_source
from tests.support.systemd import UNIT, Service


def _wheel(source: Path, out: Path) -> Path:
    """The wheel of the project at `source`, built offline (hatchling from the test env)."""
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(out),
            str(source),
        ],
        check=True,
        timeout=300,
    )
    (wheel,) = out.glob("*.whl")
    return wheel


@pytest.fixture(scope="module")
def wheels(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path, Path]]:
    """(previous version, its wheel, this checkout's wheel)."""
    work = tmp_path_factory.mktemp("wheels")
    old_src = work / "old"
    version = release_source(old_src)
    new_src = work / "new"  # this checkout as it is, without its caches and its .venv
    caches = (".git", ".cache", ".venv", "__pycache__", "*.egg-info", "build", ".*_cache")
    shutil.copytree(REPO, new_src, ignore=shutil.ignore_patterns(*caches))
    old = _wheel(old_src, work / "old-wheel")
    new = _wheel(new_src, work / "new-wheel")
    yield version, old, new
    shutil.rmtree(work, ignore_errors=True)


def _install(venv: Path, wheel: Path) -> None:
    subprocess.run(
        [
            str(venv / "bin" / "python"),
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--no-index",
            "--force-reinstall",
            str(wheel),
        ],
        check=True,
        timeout=300,
    )


def _see_these_dependencies(venv: Path) -> None:
    """Give `venv` this interpreter's site directories too: `--system-site-packages`
    gives it only the base interpreter's, which hold the dependencies where they were
    installed globally but not where the tests run in a venv of their own (README's
    command, e.g. on Debian's python3, whose own site has no psutil). A .pth line adds a
    directory after the venv's own, so the release installed there is the one loaded."""
    where = "import sysconfig; print(sysconfig.get_path('purelib'))"
    purelib = subprocess.run(
        [str(venv / "bin" / "python"), "-c", where],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout.strip()
    (Path(purelib) / "_test_dependencies.pth").write_text("\n".join(site.getsitepackages()) + "\n")


def test_an_upgrade_from_the_previous_release_keeps_every_job(
    service: Service, wheels: tuple[str, Path, Path]
) -> None:
    version, old, new = wheels
    venv = service.box.workdir / "venv"
    # the dependencies from this interpreter's site, the package from the wheels only
    subprocess.run(
        [sys.executable, "-m", "venv", "--system-site-packages", str(venv)],
        check=True,
        timeout=120,
    )
    _see_these_dependencies(venv)
    _install(venv, old)
    service.command = str(venv / "bin" / "supervisord-batt")
    service.pythonpath = None  # the installed release, not this checkout
    config = four_counters()
    config["budget"] = release_budget(config["budget"])
    before = running_counters(service, config)
    hello = service.cli("status", "--json")
    assert json.loads(hello.stdout)["version"] == version, hello.stdout
    main = service.show("MainPID")["MainPID"]
    with ExitStack() as stack:
        jobs, held = eight_leases(service, stack)
        _install(venv, new)  # the package upgrade: new files under the running daemon
        out = service.cli("reexec")
        from supervisord_batt import __version__

        assert f"pid {main}, now supervisord-batt {__version__}" in out.stdout, (
            out.stdout + out.stderr
        )
        assert __version__ != version
        state = service.show("MainPID", "NRestarts", "ActiveState")
        assert state == {"MainPID": main, "NRestarts": "0", "ActiveState": "active"}, state
        after = service.instances()
        assert {n: i["pid"] for n, i in after.items()} == {n: i["pid"] for n, i in before.items()}
        assert all(i["restarts"] == 0 and i["state"] == "RUNNING" for i in after.values())
        # the release had no cpu cgroups: the adopted workers are moved into theirs
        for name, inst in after.items():
            lines = service.box.host_path(f"/proc/{inst['pid']}/cgroup").read_text()
            cpu = next(line for line in lines.splitlines() if ":cpu:" in line)
            assert cpu.endswith(f".workers/{name.replace(':', '.')}"), (name, lines)
        wait_until(lambda: resumed(service) == 8, timeout=20, what="the 8 leases resumed")
        assert sorted(leases(service)) == held
        assert_rode_through(jobs)
    service.box.systemctl("stop", UNIT)
    assert service.show("ActiveState")["ActiveState"] == "inactive"
