"""A fleet of three hosts seen by a real Prometheus: three daemons, each with its own
socket, metrics port, `instance` label and watched pids cgroup, jobs leasing on each,
runs that complete, fail, hang past their wall clock or flap into FATAL; and Debian's
Prometheus scraping them twice a second with the shipped rules loaded.

Shared by the package's modules (the dashboard's queries, the fleet report): starting it
takes about 15 s, most of it waiting for runs to end and for Prometheus to see them.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import CALM, PidsCgroup, pids_v1_writable, wait_until
from tests.integration.prometheus.tools import Prometheus, tool
from tests.support.daemons import DaemonHandle, program_entry, python_command
from tests.support.metrics import free_port
from tests.support.prometheus import Fleet, Host

ONCE = {"restart": "never", "min_runtime": "0s", "autostart": False}
OK = python_command("import time; time.sleep(0.3)")
BAD = python_command("import sys, time; time.sleep(0.3); sys.exit(3)")
HANG = python_command("import time; time.sleep(600)")


def _programs(host: str) -> dict[str, Any]:
    """Each host runs a different mix, so a figure given to the wrong host shows."""
    if host == "host-a":  # one of each: completed, failed, hung (killed at 1 s)
        return {
            "ok": program_entry(OK, **ONCE),
            "bad": program_entry(BAD, **ONCE),
            "hang": program_entry(HANG, wall_clock_limit="1s", stop_grace="1s", **ONCE),
        }
    if host == "host-b":  # two that complete
        return {"ok": program_entry(OK, numprocs=2, **ONCE)}
    # host-c: one completes; one fails and is restarted until it is FATAL
    flapping = ONCE | {
        "restart": "on-failure",
        "min_runtime": "10s",  # a shorter run is a failed start
        "start_limit": {"burst": 2, "interval": "60s"},
        "backoff": {"initial": "100ms", "max": "100ms", "factor": 1},
    }
    return {"ok": program_entry(OK, **ONCE), "bad": program_entry(BAD, **flapping)}


def _config(host: str, port: int, workdir: Path, cgroup: PidsCgroup) -> dict[str, Any]:
    return {
        "daemon": {
            "log_file": str(workdir / "events.log"),
            "stats_interval": "200ms",
            "log_level": "info",
        },
        # host-a has one CPU for pools: its job's pool request is answered sequential
        "budget": {
            "cpu_cap": 1 if host == "host-a" else 4,
            "pressure": CALM,
            "cgroups": [cgroup.cgroup_path],
        },
        "metrics": {"listen": f"127.0.0.1:{port}"},
        "programs": _programs(host),
    }


def _refuse_forks(cgroup: PidsCgroup, count: int) -> None:
    """`count` task creations refused for real in `cgroup` (pids.max 1, then forks)."""
    code = f"import os\nfor _ in range({count}):\n    try: os.fork()\n    except OSError: pass"
    cgroup.set_max(1)
    try:
        subprocess.run(
            [sys.executable, "-c", code], preexec_fn=cgroup.preexec(), check=True, timeout=30
        )
    finally:
        cgroup.set_max("max")
    assert cgroup.events_max() == count


def _settled(host: Host) -> bool:
    """Every run over, and a stats line written after the last exit."""
    states = [i["state"] for i in host.handle.status()["instances"]]
    if not all(s in ("EXITED", "FATAL") for s in states):
        return False
    events = host.events()
    last_exit = max(i for i, e in enumerate(events) if e.get("event") == "exit")
    return any(e.get("event") == "stats" for e in events[last_exit + 1 :])


def _prometheus_caught_up(fleet: Fleet) -> bool:
    """Prometheus has scraped each host's final counters and evaluated the rules on them."""
    runs = fleet.prometheus.values("sum by (instance) (supervisord_batt_runs_total)", "instance")
    refused = fleet.prometheus.values(
        "sum by (instance) (supervisord_batt_cgroup_refused_tasks_total)", "instance"
    )
    recorded = fleet.prometheus.values("instance:supervisord_batt_completion:ratio6h", "instance")
    for name, host in fleet.hosts.items():
        stats = host.last_stats()
        if runs.get((name,)) != sum(n for r in stats["runs"].values() for n in r.values()):
            return False
        if refused.get((name,)) != stats["refused_spawns"] or (name,) not in recorded:
            return False
    return True


@pytest.fixture(scope="package")
def fleet() -> Iterator[Fleet]:
    tool("prometheus")
    if not pids_v1_writable():
        pytest.skip("needs root and the cgroup v1 pids controller (a watched cgroup each)")
    ports = {name: free_port() for name in ("host-a", "host-b", "host-c")}
    hosts: dict[str, Host] = {}
    dirs: list[Path] = []
    prometheus = None
    try:
        prometheus = Prometheus({name: f"127.0.0.1:{port}" for name, port in ports.items()})
        for name, port in ports.items():
            workdir = Path(tempfile.mkdtemp(prefix="sbt-", dir="/tmp"))
            dirs.append(workdir)
            cgroup = PidsCgroup()
            config = _config(name, port, workdir, cgroup)
            hosts[name] = Host(name, DaemonHandle(workdir, config), cgroup, workdir / "events.log")
        for host in hosts.values():
            host.handle.wait_ready()
        fleet = Fleet(prometheus, hosts)
        # every counter seen at 0 first, so that increase() and rate() count each run; and
        # 12 s of samples, so that their extrapolation to the window's end (up to one
        # scrape interval, 500 ms) adds at most a few percent to a count
        seen = "min(count_over_time(supervisord_batt_host_tasks[1m])) >= 24"
        count = "count(supervisord_batt_host_tasks) == 3"
        wait_until(
            lambda: prometheus.query(f"{seen} and on () {count}"),
            timeout=60,
            what="12 s of samples of the three hosts",
        )
        for host in hosts.values():
            host.job = host.handle.client()
            host.grant = dict(host.job.request("acquire", want=2, job=f"job-{host.name}"))
            assert host.grant["ok"], host.grant
            if host.name == "host-a":
                reply = host.job.request(
                    "fallback", **{"from": "process", "to": "thread"}, workers=2, reason="test"
                )
                assert reply["ok"], reply
                _refuse_forks(host.cgroup, 2)
            with host.handle.client() as control:
                assert control.request("start", target="all")["ok"]
        for host in hosts.values():
            wait_until(partial(_settled, host), timeout=30, what=f"{host.name}'s runs over")
        wait_until(lambda: _prometheus_caught_up(fleet), timeout=30, what="Prometheus caught up")
        caught_up = float(prometheus.query("time()")[0]["value"][1])
        wait_until(
            lambda: prometheus.rules_evaluated_since(caught_up),
            what="the rules evaluated on the final figures",
        )
        yield fleet
    finally:
        for host in hosts.values():
            if host.job is not None:
                host.job.close()
            host.handle.stop()
            with contextlib.suppress(OSError, RuntimeError):
                host.cgroup.close()
        if prometheus is not None:
            prometheus.close()
        for d in dirs:
            shutil.rmtree(d, ignore_errors=True)
