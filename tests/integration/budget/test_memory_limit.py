"""Issue 24: a real memory cgroup in `budget.cgroups` (v1 here, v2 where it is enabled):
the daemon shows its limit, usage and headroom, grants no more process workers than
(limit - usage) / memory_per_slot, and counts and logs the OOM kill of a process that
allocates past the limit."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prometheus_client.parser import text_string_to_metric_families

from tests.helpers import CALM, REPO, killing, wait_until
from tests.support.daemons import DaemonHandle

if TYPE_CHECKING:
    from tests.helpers import MemoryCgroup

MIB = 1 << 20
GIB = 1 << 30
SLOT = 128 * MIB
RESIDENT = 300  # MiB the resident process holds in the cgroup


def budget(cgroups: list[str]) -> dict[str, Any]:
    """CPUs and tasks that cannot bind (memory must), thresholds the host cannot reach."""
    return {
        "cgroups": cgroups,
        "reserve_tasks": 0,
        "reserve_percent": 0,
        "cpu_cap": 64,
        "max_per_lease": 64,
        "memory_per_slot": f"{SLOT // MIB}MiB",
        "pressure": CALM,
    }


def memory_row(d: DaemonHandle, path: str) -> dict[str, Any]:
    host = d.status()["host"]
    (row,) = [r for r in host["memory"]["cgroups"] if r["path"] == path]
    return dict(row)


def oom_kills_metric(textfile: Path, path: str) -> float | None:
    for family in text_string_to_metric_families(textfile.read_text()):
        for s in family.samples:
            if s.name == "supervisord_batt_cgroup_oom_kills_total" and s.labels["cgroup"] == path:
                return float(s.value)
    return None


def test_issue24_grants_fit_a_memory_cgroup_and_its_oom_kill_is_reported(
    memory_cgroup: Callable[..., MemoryCgroup],
    daemon: Callable[..., DaemonHandle],
    tmp_path: Path,
) -> None:
    cg = memory_cgroup()
    cg.set_limit(GIB)
    textfile = tmp_path / "batt.prom"
    with killing(cg.allocate(RESIDENT)) as resident:
        assert resident.stdout is not None and resident.stdout.readline() == b"up\n"
        d = daemon(
            {
                "budget": budget([cg.cgroup_path]),
                "metrics": {"textfile": str(textfile)},
                "daemon": {"stats_interval": "1s"},
            }
        )
        row = wait_until(
            lambda: (r := memory_row(d, cg.cgroup_path))["current_bytes"] >= RESIDENT * MIB and r,
            what="the daemon to see the resident process's memory",
        )
        assert (row["max_bytes"], row["effective_max_bytes"], row["limited_by"]) == (
            GIB,
            GIB,
            cg.cgroup_path,
        )
        assert row["version"] == cg.version and row["oom_kills"] == 0
        headroom = row["headroom_bytes"]
        assert GIB - (RESIDENT + 50) * MIB <= headroom <= GIB - RESIDENT * MIB
        memory = d.status()["host"]["memory"]
        assert memory["limited_by"] == f"memory:{cg.cgroup_path}"

        with d.client() as c:
            grant = c.request("acquire", want=32, kinds=["process"], job="mem")
        assert grant["ok"], grant
        # 1 GiB - 300 MiB and the interpreter's own: 5 slots of 128 MiB, not 32; one is
        # the job's own process's until the next sample (it may run its tasks itself:
        # budget.memory_unwritten)
        assert headroom // SLOT == 5
        assert grant["kind"] == "process" and grant["workers"] == 4, grant
        assert str(grant["reason"]).startswith("memory: 4 worker slots free"), grant

        shown = d.cli("status", "--summary")
        assert shown.returncode == 0, shown.stderr
        assert f"({memory['limited_by']}); {cg.cgroup_path} 0." in shown.stdout, shown.stdout
        command = ["probe", "--json", "--cgroup", cg.cgroup_path]
        probe = subprocess.run(
            [sys.executable, "-m", "supervisord_batt", *command],
            capture_output=True,
            text=True,
            timeout=60,
            env=dict(os.environ, PYTHONPATH=str(REPO)),
        )
        assert probe.returncode == 0, probe.stderr
        (probed,) = [
            r for r in json.loads(probe.stdout)["memory"]["cgroups"] if r["path"] == cg.cgroup_path
        ]
        assert probed["effective_max_bytes"] == GIB
        assert probed["current_bytes"] >= RESIDENT * MIB

        with killing(cg.allocate(2 * 1024)) as hog:
            assert hog.wait(timeout=60) == -9  # the cgroup's OOM killer: SIGKILL
        assert resident.poll() is None  # the largest process was the one killed
        assert cg.oom_kills() == 1
        wait_until(lambda: memory_row(d, cg.cgroup_path)["oom_kills"] == 1, what="the count")
        (line,) = wait_until(lambda: d.events("cgroup_oom_kill"), what="the oom line")
        assert (line["cgroup"], line["count"], line["increase"]) == (cg.cgroup_path, 1, 1)
        wait_until(lambda: oom_kills_metric(textfile, cg.cgroup_path) == 1.0, what="the metric")
        wait_until(lambda: any(e.get("oom_kills") == 1 for e in d.events("stats")))


def test_issue24_a_daemon_inside_a_memory_cgroup_budgets_against_it(
    memory_cgroup: Callable[..., MemoryCgroup],
    daemon: Callable[..., DaemonHandle],
) -> None:
    cg = memory_cgroup()
    cg.set_limit(512 * MIB)
    d = daemon({"budget": budget([])}, preexec_fn=cg.preexec())
    own = d.status()["host"]["memory"]["cgroups"][0]  # its own cgroup comes first
    assert (own["path"], own["max_bytes"], own["effective_max_bytes"]) == (
        cg.cgroup_path,
        512 * MIB,
        512 * MIB,
    )
    with d.client() as c:
        grant = c.request("acquire", want=32, kinds=["process"], job="mem")
    assert grant["ok"] and grant["kind"] == "process", grant
    # the daemon's own interpreter is charged there too: fewer than 512 MiB / 128 MiB, and
    # the job's own process one slot until the next sample (budget.memory_unwritten)
    assert grant["workers"] == own["headroom_bytes"] // SLOT - 1 <= 2, (grant, own)
