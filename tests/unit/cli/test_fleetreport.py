"""The fleet report's pure parts: counting a counter's samples across resets, one host's
counts as the local report's figures, and the fleet's sum of its hosts."""

from __future__ import annotations

from dataclasses import replace

import pytest

from supervisord_batt.cli import report
from supervisord_batt.cli.fleetreport import counted, counter_figures, fleet_figures
from supervisord_batt.cli.report import LimitKill


def test_a_counter_counts_from_its_base_and_from_zero_after_each_reset() -> None:
    assert counted(0.0, [0, 1, 3]) == 3
    assert counted(5.0, [6, 8]) == 3  # from its value at the window's start
    assert counted(5.0, [6, 1, 4]) == 1 + 1 + 3  # restarted: 1 counted by the new daemon
    assert counted(0.0, []) == 0


def counts(**overrides: dict[tuple[str, ...], float]) -> dict[str, dict[tuple[str, ...], float]]:
    base: dict[str, dict[tuple[str, ...], float]] = {
        "grants": {("process",): 3.0, ("sequential",): 2.0},
        "denials": {("cpu",): 2.0, ("limit",): 0.0},
        "executor_fallbacks": {("process", "thread"): 1.0, ("thread", "sequential"): 0.0},
        "cgroup_refused_tasks": {(): 2.0},
        "runs": {("completed",): 8.0, ("failed",): 1.0, ("killed",): 1.0},
        "limit_kills": {("hang", "wall_clock_limit"): 1.0, ("ok", "progress_timeout"): 0.0},
        "pressure_seconds": {("normal",): 90.0, ("high",): 10.0},
    }
    return base | overrides


def test_one_hosts_counts_are_the_local_reports_figures() -> None:
    fig = counter_figures(counts())
    assert fig.grants == {"process": 3, "thread": 0, "sequential": 2}
    assert fig.denied == 2 and fig.denied_by == {"cpu": 2}
    assert fig.sequential_share == pytest.approx(2 / 5)
    assert fig.executor_fallbacks == {"process>thread": 1}
    assert fig.limit_kills == [LimitKill("hang", "wall_clock_limit", 1)]
    assert fig.completion_rate == pytest.approx(0.8) and fig.hang_rate == pytest.approx(0.1)
    assert fig.pressure_share == {"normal": 0.9, "high": 0.1, "extreme": 0.0}
    fig = replace(fig, host_tasks={"p50": 1, "p95": 2, "max": 3}, stats_lines=10)
    fig = replace(fig, tightest_percent={"p50": 1, "p95": 2, "max": 3}, pressure_changes=0)
    keys = [tip["key"] for tip in report.advice(fig)]
    assert "programs.hang.wall_clock_limit" in keys
    assert "programs.<name>.numprocs / budget.cpu_cap" in keys  # 40% sequential, for CPUs


def test_the_fleet_sums_its_hosts_and_takes_the_busiest_hosts_quantiles() -> None:
    hosts = {}
    for name, tasks in (("a", 100.0), ("b", 300.0)):
        fig = counter_figures(counts())
        fig = replace(fig, host_tasks={"p50": tasks, "p95": tasks, "max": tasks}, stats_lines=5)
        fig = replace(
            fig, tightest_percent={"p50": 1.0, "p95": None, "max": 2.0}, pressure_changes=1
        )
        hosts[name] = fig
    fleet = fleet_figures(hosts)
    assert fleet.daemons == 2 and fleet.stats_lines == 10
    assert fleet.grants == {"process": 6, "thread": 0, "sequential": 4}
    assert fleet.runs["completed"] == 16 and fleet.completion_rate == pytest.approx(0.8)
    assert fleet.limit_kills == [LimitKill("hang", "wall_clock_limit", 2)]
    assert fleet.executor_fallbacks == {"process>thread": 2}
    assert fleet.host_tasks == {"p50": 300.0, "p95": 300.0, "max": 300.0}
    assert fleet.tightest_percent == {"p50": 1.0, "p95": None, "max": 2.0}
