"""The shipped unit under a real systemd: readiness, reload, watchdog, stop, TasksMax.

Each test boots its own systemd as PID 1 of private namespaces (sandbox.py), installs
`systemd/supervisord-batt.service` exactly as shipped plus a drop-in that points it at
the code under test, and talks to it with systemctl and the CLI inside the namespace.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from supervisord_batt.cli.unit import (
    SHIPPED_COMMAND,
    SYSTEMD_PATH,
    installed_command,
    render_unit,
)
from supervisord_batt.paths import SOURCE_UNIT
from tests.helpers import wait_until
from tests.integration.systemd.sandbox import Sandbox, cannot_run
from tests.support.systemd import UNIT, Service, base_config

# -------------------------------------------------------------------- the unit file


def _verify(unit: Path, bind_command: bool = False) -> str:
    """systemd-analyze verify's whole output (it exits 0 even on 'ignoring' warnings).

    Run in a private mount namespace with a private /run; with `bind_command`, this
    install's command is bind-mounted at the path the shipped unit names."""
    script = 'mount -t tmpfs tmpfs /run && exec systemd-analyze verify --man=no "$@"'
    if bind_command:  # a tmpfs over its directory: nothing is created on the host
        where = os.path.dirname(SHIPPED_COMMAND)
        script = (
            f"mount -t tmpfs tmpfs {where} && touch {SHIPPED_COMMAND} && "
            f"mount --bind {installed_command()[0]} {SHIPPED_COMMAND} && {script}"
        )
    work = Path(tempfile.mkdtemp())
    try:
        done = subprocess.run(
            ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh", str(unit)],
            capture_output=True,
            text=True,
            env=dict(os.environ, LIBMOUNT_UTAB=str(work / "utab")),
            timeout=60,
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return (done.stdout + done.stderr).strip() + (
        "" if done.returncode == 0 else f" rc={done.returncode}"
    )


@pytest.fixture
def verifier(needs_root: None) -> None:  # needs_root: marks the tests `root`
    """systemd-analyze in a private mount namespace: root, util-linux and systemd."""
    why = cannot_run()
    if why is not None:
        pytest.skip(f"cannot run systemd-analyze verify here: {why}")


@pytest.mark.usefixtures("verifier")
def test_the_shipped_unit_verifies_without_a_word() -> None:
    """As shipped, with this install's command where the unit names it."""
    if not Path(SHIPPED_COMMAND).parent.is_dir():
        pytest.skip(f"no {Path(SHIPPED_COMMAND).parent} on this machine to mount over")
    assert _verify(SOURCE_UNIT, bind_command=True) == ""


@pytest.mark.usefixtures("verifier")
def test_the_unit_command_prints_the_shipped_unit_for_this_install(tmp_path: Path) -> None:
    config = tmp_path / "site.yaml"
    done = subprocess.run(
        [sys.executable, "-m", "supervisord_batt", "unit", "-c", str(config)],
        capture_output=True,
        text=True,
        check=True,
    )
    assert done.stdout == render_unit(config=config)
    shipped = SOURCE_UNIT.read_text().splitlines()
    printed = done.stdout.splitlines()
    command = " ".join(installed_command())
    bin_dir = os.path.dirname(installed_command()[0])
    if bin_dir not in SYSTEMD_PATH.split(":"):  # the PATH line and its comment are added
        assert f"Environment=PATH={bin_dir}:{SYSTEMD_PATH}" in printed
        printed = [line for line in printed if bin_dir not in line or "Exec" in line]
    changed = [(a, b) for a, b in zip(shipped, printed, strict=True) if a != b]
    assert [b.split("=")[0] for _, b in changed] == [
        "AssertPathExists",
        "ExecStart",
        "ExecReload",
        "ExecStopPost",
    ]
    assert f"ExecStart={command} run -c {config}" in printed
    assert f"ExecReload={command} reload -c {config}" in printed
    config.write_text("")
    unit = tmp_path / UNIT
    unit.write_text(done.stdout)
    assert _verify(unit) == ""


def test_the_unit_command_refuses_a_relative_config() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "supervisord_batt", "unit", "-c", "site.yaml"],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 1
    assert "must be absolute" in done.stderr


# -------------------------------------------------------------------- under systemd


def test_start_returns_after_ready_with_the_socket_serving(service: Service) -> None:
    service.install(base_config())
    service.box.systemctl("start", UNIT)  # blocks until READY=1 (Type=notify)
    assert service.show("ActiveState", "SubState") == {
        "ActiveState": "active",
        "SubState": "running",
    }
    # READY came after the socket served and the autostart programs started: no waiting
    status = service.status()
    assert set(service.instances()) == {"sleeper:0", "sleeper:1"}
    assert status["all_running"] is True
    text = service.box.systemctl("status", UNIT, check=False).stdout
    assert 'Status: "2/2 instances running; level normal; tasks ' in text, text


def test_a_daemon_that_never_sends_ready_leaves_the_unit_activating(service: Service) -> None:
    service.install(base_config())
    dropin = service.box.units / f"{UNIT}.d" / "zz-never-ready.conf"
    dropin.write_text("[Service]\nExecStart=\nExecStart=/bin/sleep 600\n")
    service.box.systemctl("daemon-reload")
    service.box.systemctl("start", "--no-block", UNIT)
    wait_until(lambda: service.show("MainPID")["MainPID"] != "0", timeout=10, what="a main pid")
    # the process runs, but without READY=1 the unit is not started
    for _ in range(20):
        state = service.show("ActiveState", "SubState")
        assert state == {"ActiveState": "activating", "SubState": "start"}, state
    service.box.systemctl("stop", UNIT)


def test_reload_applies_a_good_config_and_fails_on_a_bad_one_keeping_the_old(
    service: Service,
) -> None:
    config = base_config()
    service.install(config)
    service.box.systemctl("start", UNIT)
    main_pid = service.show("MainPID")["MainPID"]

    config["programs"]["extra"] = {"command": ["sleep", "600"], "stop_grace": "1s"}
    service.write_config(config)
    service.box.systemctl("reload", UNIT)
    assert service.instances()["extra:0"]["state"] == "RUNNING"

    service.write_config(
        "budget:\n  reserve_tasks: 2\n  no_such_key: 1\nprograms:\n  p:\n    command: [x]\n"
    )
    bad = service.box.systemctl("reload", UNIT, check=False)
    assert bad.returncode != 0
    console = service.box.console()
    assert "budget.no_such_key (line 3)" in console, console
    # the old config keeps running, in the same daemon
    assert service.show("ActiveState", "MainPID") == {"ActiveState": "active", "MainPID": main_pid}
    assert {"sleeper:0", "sleeper:1", "extra:0"} <= set(service.instances())


def _alive_inside(box: Sandbox, pid: int) -> bool:
    stat = box.host_path(f"/proc/{pid}/stat")
    try:
        return stat.read_text().split(") ")[1][0] != "Z"
    except (OSError, IndexError):
        return False


def test_a_stalled_loop_is_killed_by_the_watchdog_and_its_workers_adopted(
    service: Service,
) -> None:
    service.install(base_config(), WatchdogSec="2s", Environment="SUPERVISORD_BATT_DEBUG_STALL=1")
    service.box.systemctl("start", UNIT)
    before = service.show("MainPID", "NRestarts")
    workers = {name: inst["pid"] for name, inst in service.instances().items()}
    assert len(workers) == 2 and all(_alive_inside(service.box, pid) for pid in workers.values())
    # a loop that runs pings in time: two whole watchdog periods pass with no restart
    deadline = time.monotonic() + 4.0
    while time.monotonic() < deadline:
        assert service.show("NRestarts", "MainPID") == before
        time.sleep(0.2)

    service.box.systemctl("kill", "--kill-whom=main", "-s", "SIGUSR2", UNIT)
    wait_until(
        lambda: (
            service.show("NRestarts")["NRestarts"] == "1"
            and service.show("ActiveState")["ActiveState"] == "active"
        ),
        timeout=30,
        what="a watchdog restart",
    )
    assert "Watchdog timeout" in service.box.console()
    assert service.show("MainPID")["MainPID"] != before["MainPID"]
    # the old daemon's workers outlived it, and the new daemon supervises them
    now = service.instances()
    assert {name: inst["pid"] for name, inst in now.items()} == workers
    assert all(inst["state"] == "RUNNING" for inst in now.values())
    assert all(_alive_inside(service.box, pid) for pid in workers.values())


def test_stop_leaves_no_process_and_no_worker_cgroup(service: Service) -> None:
    service.install(base_config())
    service.box.systemctl("start", UNIT)
    group = service.show("ControlGroup")["ControlGroup"]
    pids_root = service.box.host_path("/sys/fs/cgroup/pids")
    service_dir = pids_root / group.lstrip("/")
    wait_until(
        lambda: len(list(service_dir.rglob("cgroup.procs"))) >= 3,
        timeout=10,
        what="worker cgroups below the service's own",
    )
    procs = {int(p) for f in service_dir.rglob("cgroup.procs") for p in f.read_text().split()}
    assert len(procs) >= 3  # the daemon and two workers
    # Delegate=yes gives the daemon its cpu cgroup too: each worker has one there
    assert service.status()["cpu_share"] == "per_user"
    cpu_root = service.box.host_path("/sys/fs/cgroup/cpu")
    workers = list((cpu_root / group.lstrip("/")).glob("supervisord-batt*.workers/*/cpu.shares"))
    assert len(workers) == 2, workers

    service.box.systemctl("stop", UNIT)
    assert service.show("ActiveState")["ActiveState"] == "inactive"
    left = [p for p in procs if _alive_inside(service.box, p)]
    assert left == []
    assert not service_dir.exists() or not any(
        f.read_text().split() for f in service_dir.rglob("cgroup.procs")
    )
    for root in (pids_root, cpu_root):
        assert not [d for d in root.rglob("*") if d.is_dir() and "supervisord-batt" in d.name]
    assert not service.box.host_path("/run/supervisord-batt").exists()


def test_tasks_max_is_the_tightest_limit_and_grants_fit_it(service: Service) -> None:
    config = base_config()
    config["budget"]["pressure"].update(headroom_high_percent=1, headroom_extreme_percent=0)
    job = (
        "import time; from supervisord_batt.client import lease\n"
        "with lease(want=8, kinds=('process',), job='big'):\n"
        "    time.sleep(600)\n"
    )
    config["programs"] = {"job": {"command": [sys.executable, "-c", job], "stop_grace": "1s"}}
    service.install(config, TasksMax="16")
    service.box.systemctl("start", UNIT)
    status = wait_until(
        lambda: (s := service.status())["leases"] and s, timeout=20, what="the job's lease"
    )
    tight = status["host"]["tightest"]
    assert tight["kind"] == "cgroup" and tight["limit"] == 16, tight
    (granted,) = status["leases"]
    assert granted["job"] == "big" and granted["wanted"] == 8
    # 16 tasks less the daemon, the job itself and the reserve of 2 fit a process pool
    # (n workers + 4) of fewer than the 8 asked for
    assert granted["kind"] == "process" and 2 <= granted["workers"] < 8, granted
    assert tight["in_use"] + granted["workers"] + 4 <= 16 - 2, (tight, granted)
    text = service.cli("status").stdout
    assert "<- tightest" in text or "tightest" in text, text
