"""The Debian package (issue 25), installed with apt under a real systemd.

Each test boots a sandbox with a private system (sandbox.py: /etc, /usr, /opt and /var
are overlays whose writes stay in the namespace's memory, and there is no network), so
`apt install ./supervisord-batt_*.deb`, dpkg's database and the package's files touch
nothing of the host's and vanish with the namespace. Commands there run with root's
stock environment and Debian's own /usr/bin/python3, which the package's venv is built
on. Hosts built like containers keep a /usr/sbin/policy-rc.d that forbids starting
services (exit 101; the machines these tests were written on do), which
deb-systemd-invoke obeys: the sandbox's private /usr gets one that allows, as a VM's
policy does (it has none).

The packages are built once per session by packaging/build-deb, side by side, and cached
(debs.py).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import textwrap
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest
import yaml

from supervisord_batt import __version__
from tests.helpers import REPO, wait_until
from tests.integration.systemd import debs
from tests.integration.systemd.jobs import (
    alive_inside,
    assert_rode_through,
    eight_leases,
    four_counters,
    leases,
    resumed,
)
from tests.integration.systemd.release import previous_release, release_budget, release_source
from tests.integration.systemd.sandbox import Sandbox, cannot_run
from tests.support.systemd import UNIT, Service

VENV = "/opt/venvs/supervisord-batt"
CONFIG = "/etc/supervisord-batt/supervisord-batt.yaml"
# what the package owns or makes, each gone after a purge
OWNED = (
    VENV,
    CONFIG,
    "/etc/supervisord-batt",
    "/etc/logrotate.d/supervisord-batt",
    "/usr/bin/supervisord-batt",
    f"/lib/systemd/system/{UNIT}",
    f"/etc/systemd/system/multi-user.target.wants/{UNIT}",
    "/var/log/supervisord-batt",
    "/usr/share/doc/supervisord-batt",
)
ALLOW_STARTS = "#!/bin/sh\n# the sandbox's own policy: services may start, as on a VM\nexit 0\n"


@pytest.fixture(scope="session")
def packages() -> Iterator[tuple[Path, Path]]:
    """This checkout's package as it is, and the previous release's: its commit's source
    with its own debian/ (a release before 0.3.0 has none: this checkout's is used) and
    the release's version. Both are built side by side the first time a test needs
    either (about 40 s each alone on 2 cores, about 50 s together)."""
    if (why := debs.cannot_build()) is not None:
        pytest.skip(f"cannot build the package here: {why}")
    version, commit = previous_release()
    with tempfile.TemporaryDirectory(prefix="release-", dir="/var/tmp") as tmp:
        source = Path(tmp) / "src"
        release_source(source)
        builds = [
            debs.start(REPO, "current", debs.checkout_key()),
            debs.start(source, f"release-{version}", debs.release_key(commit)),
        ]
        try:
            current, release = (each.finish() for each in builds)
        finally:
            for each in builds:
                each.abandon()
    assert release.name.startswith(f"supervisord-batt_{debs.debian_version(version)}_"), release
    yield current, release


@pytest.fixture(scope="session")
def current_deb(packages: tuple[Path, Path]) -> Path:
    return packages[0]


@pytest.fixture(scope="session")
def release_deb(packages: tuple[Path, Path]) -> Path:
    return packages[1]


@pytest.fixture(scope="session")
def next_deb(current_deb: Path) -> Path:
    """This checkout's package again under a higher version: a second upgrade."""
    return debs.repack(current_deb, f"{debs.debian_version(__version__)}+1")


@pytest.fixture
def system(needs_root: None) -> Iterator[Sandbox]:  # needs_root: marks the tests `root`
    if (why := cannot_run()) is not None:
        pytest.skip(f"no systemd sandbox on this machine: {why}")
    on_host = {path: os.path.lexists(path) for path in OWNED}
    workdir = Path(tempfile.mkdtemp(prefix="sdns-", dir="/var/tmp"))
    box = Sandbox.prepare(workdir, system=True)
    try:
        box.boot()
        box.host_path("/usr/sbin/policy-rc.d").write_text(ALLOW_STARTS)
        box.host_path("/usr/sbin/policy-rc.d").chmod(0o755)
        yield box
    finally:
        left = box.close()
        shutil.rmtree(workdir, ignore_errors=True)
        assert not left, f"sandbox cgroups left behind: {left}"
        # the private system lived in the namespace's memory: nothing of it reached the host
        assert {path: os.path.lexists(path) for path in OWNED} == on_host


def apt(box: Sandbox, *args: str, deb: Path | None = None) -> str:
    """`apt ARGS [./DEB]` as an operator types it (DEB from its own directory)."""
    where = [f"./{deb.name}"] if deb is not None else []
    done = box.run(
        "env",
        "DEBIAN_FRONTEND=noninteractive",
        "apt",
        "-y",
        *args,
        *where,
        check=False,
        timeout=600,
        cwd=deb.parent if deb is not None else None,
    )
    out = done.stdout + done.stderr
    assert done.returncode == 0, f"apt {' '.join(args)} failed:\n{out}"
    return out


def package_state(box: Sandbox) -> str:
    done = box.run("dpkg-query", "-W", "-f=${Version} ${Status}", "supervisord-batt", check=False)
    return done.stdout if done.returncode == 0 else ""


def installed(box: Sandbox) -> Service:
    """The packaged service, driven by its CLI on the PATH and its config in /etc."""
    service = Service(box)
    service.command = "/usr/bin/supervisord-batt"
    service.config = Path(CONFIG)  # a path inside the sandbox: never written from here
    service.pythonpath = None
    return service


def sh(box: Sandbox, line: str) -> str:
    done = box.run("sh", "-c", line, check=False)
    assert done.returncode == 0, f"{line!r}: {done.stdout}{done.stderr}"
    return done.stdout.strip()


# a notebook user's job: a lease through the package's own client, printed
LEASE = textwrap.dedent(
    """
    import json
    from supervisord_batt.client.leases import acquire
    grant = acquire(2, job="notebook", quiet=True)
    print(json.dumps({"lease": grant.lease_id, "degraded": grant.degraded,
                      "reason": grant.reason}))
    grant.release()
    """
)


def lease_as(box: Sandbox, user: str) -> dict[str, object]:
    out = sh(box, f"runuser -u {user} -- {VENV}/bin/python -c '{LEASE}'")
    result: dict[str, object] = json.loads(out.splitlines()[-1])
    return result


def test_install_runs_the_service_and_a_member_of_the_group_leases(
    system: Sandbox, current_deb: Path
) -> None:
    devices = sh(system, "cat /proc/net/dev").splitlines()[2:]
    interfaces = [line.split(":")[0].strip() for line in devices]
    assert interfaces in ([], ["lo"]), interfaces  # apt has no network to fetch from
    out = apt(system, "install", deb=current_deb)
    assert package_state(system) == f"{debs.debian_version(__version__)} install ok installed"
    assert debs.debian_version("0.3.0.dev0") == "0.3.0~dev0"
    assert "re-executed" not in out  # a first install starts the daemon

    # the unit, installed and enabled by debhelper, started, running the venv's code on
    # Debian's own interpreter
    assert sh(system, f"systemctl is-enabled {UNIT}") == "enabled"
    state = system.show(UNIT, "ActiveState", "FragmentPath", "ExecStart", "MainPID")
    assert state["ActiveState"] == "active", system.console()
    assert state["FragmentPath"] == f"/lib/systemd/system/{UNIT}"
    assert f"path={VENV}/bin/supervisord-batt ;" in state["ExecStart"], state
    exe = sh(system, f"readlink -f /proc/{state['MainPID']}/exe")
    assert exe.startswith("/usr/bin/python3.") and exe == sh(system, "readlink -f /usr/bin/python3")
    assert sh(system, "readlink -f /usr/bin/supervisord-batt") == f"{VENV}/bin/supervisord-batt"
    service = installed(system)
    assert service.status()["version"] == __version__

    # its config and log rotation are conffiles; the socket is the group's
    conffiles = sh(system, "dpkg-query -W -f='${Conffiles}' supervisord-batt")
    assert CONFIG in conffiles and "/etc/logrotate.d/supervisord-batt" in conffiles
    logrotate = system.host_path("/etc/logrotate.d/supervisord-batt").read_text()
    assert logrotate == (REPO / "contrib" / "logrotate" / "supervisord-batt").read_text()
    assert (
        sh(system, "stat -c '%a %U %G' /run/supervisord-batt/supervisord-batt.sock")
        == "660 root supervisord-batt"
    )

    # `adduser alice supervisord-batt` is all a user needs; one outside the group is refused
    alice, bob = (f"sbt{uuid.uuid4().hex[:8]}" for _ in range(2))
    sh(system, f"useradd -M -s /bin/sh {alice} && useradd -M -s /bin/sh {bob}")
    sh(system, f"adduser --quiet {alice} supervisord-batt")
    member = lease_as(system, alice)
    assert member["degraded"] is False and member["lease"], member
    stranger = lease_as(system, bob)
    assert stranger["degraded"] is True and "Permission denied" in str(stranger["reason"])


def operator_config(box: Sandbox) -> str:
    """The shipped conffile as an operator edits it: four counters run (their output in
    /var/log/supervisord-batt), and pressure thresholds a busy host cannot reach."""
    config = yaml.safe_load(box.host_path(CONFIG).read_text())
    counters = four_counters()
    config["daemon"].update(counters["daemon"])
    config["budget"] = release_budget(counters["budget"])
    config["programs"] = counters["programs"]
    config["programs"]["batt"]["output"] = {"mode": "file"}
    return "# edited by the operator: the counters\n" + yaml.safe_dump(config)


def pids(service: Service) -> dict[str, int]:
    return {name: inst["pid"] for name, inst in service.instances().items()}


def assert_reexecuted(service: Service, out: str, main: str, before: dict[str, int]) -> None:
    """The upgrade re-executed the daemon: the same MainPID and workers, no restart."""
    assert "re-executed the new version in place" in out, out
    assert "restarting" not in out, out
    state = service.show("MainPID", "NRestarts", "ActiveState")
    assert state == {"MainPID": main, "NRestarts": "0", "ActiveState": "active"}, state
    assert pids(service) == before
    assert all(i["restarts"] == 0 for i in service.instances().values())


def test_upgrades_keep_every_job_and_the_operators_config_then_remove_and_purge(
    system: Sandbox, release_deb: Path, current_deb: Path, next_deb: Path
) -> None:
    """The previous release's package (its commit's source, with this checkout's debian/,
    which it has not, and its own version), then this checkout's with 8 jobs leasing and 4
    workers running: postinst re-executes the daemon, no job notices. An edit of the
    conffile survives a second upgrade. remove stops everything; purge leaves nothing."""
    release, _ = previous_release()
    apt(system, "install", deb=release_deb)
    service = installed(system)
    assert service.status()["version"] == release

    edited = operator_config(system)
    system.host_path(CONFIG).write_text(edited)
    system.systemctl("reload", UNIT)
    before = wait_until(
        lambda: len(now := pids(service)) == 4 and all(now.values()) and now,
        timeout=20,
        what="the operator's four counters running",
    )
    main = service.show("MainPID")["MainPID"]
    with ExitStack() as stack:
        jobs, held = eight_leases(service, stack)
        out = apt(system, "install", deb=current_deb)
        assert package_state(system).startswith(f"{debs.debian_version(__version__)} ")
        assert_reexecuted(service, out, main, before)
        assert service.status()["version"] == __version__
        wait_until(lambda: resumed(service) == 8, timeout=20, what="the 8 leases resumed")
        assert sorted(leases(service)) == held
        assert_rode_through(jobs)
    assert system.host_path(CONFIG).read_text() == edited

    edited += "# a second edit, before the second upgrade\n"
    system.host_path(CONFIG).write_text(edited)
    out = apt(system, "install", deb=next_deb)
    assert_reexecuted(service, out, main, before)
    assert system.host_path(CONFIG).read_text() == edited
    assert list(system.host_path("/var/log/supervisord-batt").glob("batt-*.out.log"))

    # remove: the service stopped and every process gone; the operator's config kept
    apt(system, "remove", "supervisord-batt")
    assert package_state(system).endswith(" deinstall ok config-files")
    assert system.show(UNIT, "ActiveState")["ActiveState"] == "inactive"
    assert not any(alive_inside(system, pid) for pid in [int(main), *before.values()])
    processes = sh(system, "ps -eo args=")
    assert "supervisord" not in processes and "itertools" not in processes, processes
    assert system.host_path(CONFIG).read_text() == edited
    assert not system.host_path(VENV).exists()

    # purge: nothing of the package left; the group stays (docs/PACKAGE.md)
    apt(system, "purge", "supervisord-batt")
    assert package_state(system) == ""
    assert [p for p in OWNED if os.path.lexists(system.host_path(p))] == []
    left = system.run(
        "find", "/run/sdns", "-path", "/run/sdns/*/upper/*", "-name", "*supervisord*",
        "!", "-type", "c", check=False,
    ).stdout  # fmt: skip
    left += sh(system, "ls /lib/systemd/system")
    assert "supervisord" not in left, left
    assert sh(system, "getent group supervisord-batt").startswith("supervisord-batt:")
