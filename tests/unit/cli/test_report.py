"""The report's arithmetic on hand-made events: counters across daemons, the targets and
the advice rules (pure: no daemon, no file)."""

from __future__ import annotations

from typing import Any

import pytest

from supervisord_batt.cli.events import Filter, journal_message, parse
from supervisord_batt.cli.report import Figures, advice, compute, render, targets


def stats(pid: int, **fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "event": "stats",
        "pid": pid,
        "tasks": 100,
        "tightest_percent": 10.0,
        "tightest_peak_percent": 10.0,
        "grants": {},
        "denied": 0,
        "level_seconds": {"normal": 0, "high": 0, "extreme": 0},
    }
    return base | fields


def test_counters_are_differences_within_one_daemon_and_add_across_daemons() -> None:
    events = [
        # daemon 1 was running before the window: its counters count from its first line
        stats(1, grants={"process": 10, "sequential": 5}, denied=5),
        stats(1, grants={"process": 14, "sequential": 9}, denied=8),
        # daemon 2 started inside the window: from zero
        {"event": "started", "pid": 2},
        stats(2, grants={"process": 1, "sequential": 1}, denied=1),
    ]
    fig = compute(events)
    assert fig.grants == {"process": 5, "thread": 0, "sequential": 5}
    assert fig.denied == 4
    assert fig.sequential_share == pytest.approx(4 / 9)  # 4 denied of 5 + 4 pool requests
    assert fig.daemons == 2


def test_issue24_oom_kills_are_counted_like_refused_spawns() -> None:
    events = [
        stats(1, oom_kills=2, refused_spawns=1),
        stats(1, oom_kills=5, refused_spawns=1),
        {"event": "started", "pid": 2},
        stats(2, oom_kills=1),
    ]
    fig = compute(events)
    assert (fig.oom_kills, fig.refused_spawns) == (4, 0)
    assert "oom kills           4" in render(fig).splitlines()


def test_issue24_the_latest_learned_worker_sizes_are_shown() -> None:
    batt = {"job": "batt", "uid": 1000, "worker_bytes": int(1.8 * 2**30), "runs": 14}
    small = {"job": "small", "uid": 1000, "worker_bytes": 33 * 2**20, "runs": 1}
    events = [stats(1, worker_sizes=[batt | {"runs": 13}]), stats(1, worker_sizes=[batt, small])]
    lines = render(compute(events)).splitlines()
    assert "worker sizes        batt: 1.8 GiB per worker, learned from 14 runs" in lines
    assert "                    small: 33 MiB per worker, learned from 1 runs" in lines
    assert not [x for x in render(compute([stats(1)])).splitlines() if "worker sizes" in x]
    blas = small | {"job": "blas", "worker_tasks": 3, "pool_tasks": 6}
    lines = render(compute([stats(1, worker_sizes=[blas, ["not", "a", "row"]])])).splitlines()
    assert (
        "worker sizes        blas: 33 MiB per worker, learned from 1 runs;"
        " 3 tasks per worker, pool +6 tasks"
    ) in lines
    killed = batt | {"worker_bytes": int(1.5 * 2**30), "runs": 1, "from_kill": True}
    lines = render(compute([stats(1, worker_sizes=[killed])])).splitlines()
    assert "worker sizes        batt: 1.5 GiB per worker, learned from an OOM kill" in lines


def test_time_shares_and_percentiles() -> None:
    events = [
        stats(1, tightest_percent=float(p), level_seconds={"normal": 10 * i, "high": i})
        for i, p in enumerate(range(1, 101))
    ]
    fig = compute(events)
    assert fig.tightest_percent["p50"] == 51 and fig.tightest_percent["max"] == 100
    assert fig.pressure_share["normal"] == pytest.approx(10 / 11)


def test_targets_and_advice_follow_the_figures() -> None:
    exits = [{"event": "exit", "outcome": "completed"}] * 19 + [
        {"event": "exit", "outcome": "killed"}
    ]
    strict = compute(
        [stats(1), stats(1, grants={"sequential": 40, "process": 60}, denied=40), *exits]
    )
    met = {t["target"]: t["met"] for t in targets(strict)}
    assert met == {
        "sequential fallback usage < 20%": False,
        "successful task completion > 95%": False,  # 19 of 20 is 95%, not more
        "script hangs 0%": False,
    }
    keys = " ".join(a["key"] for a in advice(strict))
    assert "budget.reserve_percent" in keys  # 40% sequential with the limit at 10%
    busy = compute([stats(1, tightest_percent=90.0), stats(1, tightest_percent=90.0)])
    assert advice(busy) == []


def test_event_parsing_and_filters() -> None:
    assert parse("<6>" + '{"event": "x"}') == {"event": "x"}  # journald priority prefix
    assert parse("not json") is None and parse("[1]") is None
    assert journal_message('{"MESSAGE": [123, 125]}') == "{}"
    assert journal_message('{"MESSAGE": "line"}') == "line"
    keep = Filter(program="batt")
    assert keep.keeps({"instance": "batt:1"}) and not keep.keeps({"instance": "other:0"})
    assert not keep.keeps(None)  # a non-JSON line is shown only when nothing narrows
    assert Filter().keeps(None)
    assert not Filter(level="warning").keeps({"level": "info"})


def test_advice_follows_why_pools_were_refused() -> None:
    """The same 40% sequential share on a quiet limit: CPUs all leased is not a reserve to
    lower, a limit's headroom is, memory is memory_per_slot."""

    def fig_for(denied_by: dict[str, int]) -> Figures:
        return compute(
            [
                stats(1, denied_by={}),
                stats(1, grants={"sequential": 40, "process": 60}, denied=40, denied_by=denied_by),
            ]
        )

    cpu = fig_for({"cpu": 10, "fair_share": 25, "limit": 5})
    assert cpu.denied_by == {"cpu": 10, "fair_share": 25, "limit": 5}
    keys = [a["key"] for a in advice(cpu)]
    assert keys == ["programs.<name>.numprocs / budget.cpu_cap"]
    assert "88% of them" in advice(cpu)[0]["why"]  # 35 of 40
    limit = [a["key"] for a in advice(fig_for({"limit": 30, "pressure": 5, "cpu": 5}))]
    assert limit and limit[0].startswith("budget.reserve_percent")
    memory = [a["key"] for a in advice(fig_for({"memory": 30, "cpu": 10}))]
    assert memory == ["budget.memory_per_slot"]
    # refused at a pressure level set by busy CPUs (issue 25: the advice was to lower
    # the reserve and the headroom thresholds): sequential is right, say so
    busy = advice(fig_for({"cpu_pressure": 30, "pressure": 5, "limit": 5}))
    assert [a["key"] for a in busy] == ["programs.<name>.numprocs / the host's CPUs"]
    assert "sequential is right" in busy[0]["why"] and "75% of them" in busy[0]["why"]
    assert "add CPUs or run fewer jobs" in busy[0]["why"]
    # by a limit's headroom: its reserve and thresholds; by memory pressure: memory
    tasks = [a["key"] for a in advice(fig_for({"pressure": 30, "cpu_pressure": 10}))]
    assert tasks and tasks[0].startswith("budget.reserve_percent")
    short = advice(fig_for({"memory_pressure": 30, "memory": 5}))
    assert [a["key"] for a in short] == ["programs.<name>.numprocs / the host's memory"]
    # lines written before the daemon counted causes: the limit-based rule, as before
    old = compute([stats(1), stats(1, grants={"sequential": 40, "process": 60}, denied=40)])
    assert old.denied_by == {}
    assert advice(old)[0]["key"].startswith("budget.reserve_percent")
