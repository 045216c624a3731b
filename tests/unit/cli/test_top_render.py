"""The live view's screen from hand-made status replies (pure: no daemon, no terminal):
what each section shows, how rows are shared at 80x24, and rich kept out of the rest."""

from __future__ import annotations

import datetime as dt
import io
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from supervisord_batt import protocol, shapes
from supervisord_batt.cli import top
from supervisord_batt.cli.status import render_status
from supervisord_batt.cli.top import (
    allocate,
    clip_left,
    event_detail,
    event_time,
    fmt_count,
    fmt_duration,
    limit_bar,
    render_screen,
)
from tests.helpers import REPO


def screen_text(status: Any, width: int = 80, height: int = 24, **kw: Any) -> str:
    console = Console(
        width=width, height=height, record=True, color_system=None, file=io.StringIO()
    )
    console.print(render_screen(status, width, height, clock="12:00:00", **kw))
    return console.export_text()


def limit(name: str, in_use: int, cap: int) -> dict[str, Any]:
    return {
        "name": name,
        "kind": name,
        "scope": None,
        "limit": cap,
        "in_use": in_use,
        "headroom": cap - in_use,
        "percent_used": round(100 * in_use / cap, 1),
    }


def instance(name: str, pid: int | None, state: str = "RUNNING", **kw: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "name": name,
        "program": name.split(":", maxsplit=1)[0],
        "state": state,
        "pid": pid,
        "uptime_s": 125.0,
        "restarts": 3,
        "last_exit": None,
        "backoff_s": None,
        "wall_clock_left_s": 475.2,
        "stop_reason": None,
        "tasks": 7,
        "ok": True,
        "lease": None,
        "pending": [],
    }
    return base | kw


def event(n: int, name: str = "transition", **kw: Any) -> dict[str, Any]:
    return {
        "timestamp": f"2026-01-02T03:04:{n:02d}.000000Z",
        "level": "info",
        "event": name,
        "component": "supervisor",
    } | kw


def status(
    *,
    limits: list[dict[str, Any]] | None = None,
    instances: list[dict[str, Any]] | None = None,
    leases: list[dict[str, Any]] | None = None,
    events: list[dict[str, Any]] | None = None,
    totals: tuple[int, int] | None = None,
) -> Any:
    """A status reply as `top` asks for it, checked against the protocol's shape; its
    lists are a first page of `totals` (instances, leases) rows when given."""
    limits = limits if limits is not None else [limit("threads-max", 300, 1000)]
    instances, leases = instances or [], leases or []
    tightest = max(limits, key=lambda x: x["percent_used"]) if limits else None
    n_instances, n_leases = totals or (len(instances), len(leases))
    reply = {
        "ok": True,
        "pid": 4242,
        "version": "0.1.0",
        "uptime_s": 3725.0,
        "level": "high",
        "level_reason": "cgroup:/batt free 18.0%",
        "capacity": 6,
        "leased": 2,
        "leased_tasks": 100,
        "connections": 1,
        "all_running": True,
        "scope": "all",
        "counts": {
            "leases": n_leases,
            "instances": n_instances,
            "programs": 1,
            "states": dict(Counter(i["state"] for i in instances)),
            "leftovers": 0,
        },
        "host": host(limits, tightest),
        "leases": leases,
        "instances": instances,
        "events": events or [],
        "page": {
            "offset": 0,
            "limit": 24,
            "leases": n_leases,
            "instances": n_instances,
            "leftovers": 0,
            "next_offset": 24 if max(n_leases, n_instances) > 24 else None,
        },
    }
    return shapes.check(protocol.StatusListsReply, reply)


def host(limits: list[dict[str, Any]], tightest: dict[str, Any] | None) -> dict[str, Any]:
    tight = tightest or limit("threads-max", 0, 1)
    return {
        "wall_time": 0.0,
        "threads_total": 300,
        "threads_max": 1000,
        "pid_max": 32768,
        "cgroups": [],
        "users": [],
        "mem_available_bytes": 1,
        "mem_total_bytes": 2,
        "cpus": 2.0,
        "psi": None,
        "limits": limits,
        "tightest": {k: tight[k] for k in ("name", "kind", "limit", "in_use", "headroom")},
    }


def lease(n: int) -> dict[str, Any]:
    return {
        "lease": f"L{n}",
        "pid": 1000 + n,
        "uid": 0,
        "job": f"job{n}",
        "kind": "process",
        "workers": 2,
        "target": 2,
        "wanted": 3,
        "age_s": 61.0,
    }


# -- formatting -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (None, "-"),
        (-3, "0s"),
        (0, "0s"),
        (59.9, "59s"),
        (62, "1m02s"),
        (3725, "1h02m"),
        (90000, "1d01h"),
    ],
)
def test_durations_are_short(seconds: float | None, text: str) -> None:
    assert fmt_duration(seconds) == text


@pytest.mark.parametrize(
    ("n", "text"),
    [(None, "-"), (0, "0"), (32768, "32768"), (192736, "192k"), (12_345_678, "12.3M")],
)
def test_counts_fit_six_characters(n: int | None, text: str) -> None:
    assert fmt_count(n) == text


def test_a_long_name_keeps_its_end() -> None:
    assert clip_left("short", 10) == "short"
    clipped = clip_left("cgroup:/system.slice/supervisord-batt.service", 17)
    assert len(clipped) == 17
    assert clipped.startswith("…") and clipped.endswith("batt.service")


def test_event_time_is_local_time_of_the_utc_stamp() -> None:
    stamp = "2026-01-02T03:04:05.000000Z"
    utc = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc)
    assert event_time(stamp) == utc.astimezone().strftime("%H:%M:%S")
    assert event_time(None) == "--:--:--"
    assert event_time("garbage-xyz") == "garbage-"


def test_event_detail_puts_the_instance_and_transition_first() -> None:
    detail = event_detail(
        event(1, program="batt", instance="batt:0", pid=7, reason="spawned", to="RUNNING")
        | {"from": "STARTING", "cgroup": "/x"}
    )
    assert detail == "batt:0 STARTING->RUNNING pid=7 reason=spawned cgroup=/x"
    assert "program=" not in detail  # the instance names it
    assert event_detail(event(2, "listening", socket="/s")) == "socket=/s"


# -- rows and bars ------------------------------------------------------------------------


def test_rows_are_shared_in_turn_and_never_beyond_what_is_wanted() -> None:
    assert allocate(10, [2, 50, 0, 50]) == [2, 4, 0, 4]
    assert allocate(100, [2, 3, 1, 4]) == [2, 3, 1, 4]
    assert allocate(3, [5, 5, 5, 5]) == [1, 1, 1, 0]
    assert allocate(0, [5, 5]) == [0, 0]
    assert allocate(-4, [5]) == [0]


def test_bar_shows_in_use_then_leased_then_headroom_at_its_width() -> None:
    bar = limit_bar(250, 250, 1000, 22).plain
    assert bar == "[" + "|" * 5 + "+" * 5 + "." * 10 + "]"
    assert len(limit_bar(7, 3, 32768, 30).plain) == 30
    # a little in use or leased still shows; leased never past the limit
    assert limit_bar(1, 1, 100000, 12).plain == "[|+........]"
    assert limit_bar(900, 500, 1000, 12).plain == "[|||||||||+]"
    assert limit_bar(1000, 0, 1000, 12).plain == "[||||||||||]"


# -- the screen -----------------------------------------------------------------------------


def test_screen_shows_every_section_of_a_small_status() -> None:
    s = status(
        limits=[limit("threads-max", 300, 1000), limit("cgroup:/batt", 820, 1000)],
        instances=[instance("batt:0", 501, lease="L1"), instance("batt:1", None, "BACKOFF")],
        leases=[lease(1)],
        events=[event(5, program="batt", instance="batt:1", reason="exited", to="BACKOFF")],
    )
    text = screen_text(s)
    lines = text.splitlines()
    assert lines[0].startswith("supervisord-batt 0.1.0  pid 4242  up 1h02m  1/2 running")
    assert lines[0].rstrip().endswith("12:00:00  q quit")
    assert "HIGH" in lines[1] and "cgroup:/batt free 18.0%" in lines[1]
    assert "capacity 6  leased 2 (100 tasks)" in lines[1]
    tight = next(line for line in lines if "cgroup:/batt" in line and "[" in line)
    other = next(line for line in lines if "threads-max" in line and "[" in line)
    assert tight.startswith("*cgroup:/batt") and other.startswith(" threads-max")
    assert tight.split()[-4:] == ["82.0%", "820/1000", "100", "180"]
    row = next(line for line in lines if line.startswith("batt:0"))
    assert row.split() == ["batt:0", "RUNNING", "501", "2m05s", "3", "7", "L1", "7m55s"]
    backoff = next(line for line in lines if line.startswith("batt:1"))
    assert backoff.split()[:3] == ["batt:1", "BACKOFF", "-"]
    assert next(line for line in lines if line.startswith("L1")).split() == [
        "L1", "1001", "job1", "process", "2/3", "1m01s"
    ]  # fmt: skip
    assert any(line.split()[2:5] == ["transition", "batt:1", "reason=exited"] for line in lines), (
        text
    )


def test_issue24_memory_line_says_the_cgroup_limit_and_its_oom_kills() -> None:
    s = status()
    gib = 1 << 30
    row = {
        "path": "/batt",
        "fs_path": "/sys/fs/cgroup/memory/batt",
        "version": 1,
        "current_bytes": gib // 4,
        "inactive_file_bytes": 0,
        "max_bytes": gib,
        "high_bytes": None,
        "effective_max_bytes": gib,
        "headroom_bytes": 3 * gib // 4,
        "limited_by": "/batt",
        "oom_kills": 2,
    }
    mem_limit = limit("memory:/batt", gib // 4, gib) | {"kind": "memory"}
    s["host"]["memory"] = {
        "headroom_bytes": 3 * gib // 4,
        "limited_by": "memory:/batt",
        "cgroups": [row],
        "limits": [mem_limit],
    }
    assert not shapes.problems(protocol.StatusListsReply, s, strict=True)
    lines = screen_text(s).splitlines()
    assert lines[2].rstrip() == (
        "memory 0.75 GiB free before memory:/batt (0.25/1.00 GiB)  2 OOM kills"
    )
    assert len(lines) <= 24
    assert render_status(s).splitlines()[4] == (
        "memory headroom 0.75 GiB (memory:/batt); /batt 0.25/1.00 GiB, 2 OOM kills"
    )


def test_no_leases_and_no_host_sample_are_said() -> None:
    s = status()
    s["host"] = None
    text = screen_text(s)
    assert "LEASES: none" in text
    assert "no host sample yet" in text


def test_a_busy_host_fits_80x24_with_the_latest_events_and_counts_of_the_rest() -> None:
    s = status(
        limits=[limit(f"cgroup:/a/very/long/path/number-{i}", 10 * i, 1000) for i in range(6)],
        instances=[instance(f"batt:{i}", 1000 + i) for i in range(12)],
        leases=[lease(i) for i in range(9)],
        events=[event(i, reason="r" * 120, instance=f"batt:{i}") for i in range(30)],
    )
    text = screen_text(s)
    lines = text.splitlines()
    assert len(lines) <= 24
    assert max(len(line) for line in lines) <= 80
    assert "+" in text and "more" in text
    # 22 rows after the header lines: 4 headings and 18 rows, shared in turn
    assert sum(1 for line in lines if line.startswith("batt:")) == 4  # 5 rows, one says +8
    assert "+8 more" in text  # instances
    assert "+27 more" in text  # events: 30, 3 shown after the count
    # the newest event is shown, the oldest is not
    assert any("batt:29" in line for line in lines)
    assert not any(" batt:0 " in line and "reason=" in line for line in lines)
    # the tightest (here the fullest) comes first, marked even when its name is clipped
    first_limit = lines[lines.index(next(x for x in lines if x.startswith("LIMIT"))) + 1]
    assert first_limit.startswith("*…ng/path/number-5 [")


@pytest.mark.parametrize(("width", "height"), [(80, 24), (60, 15), (132, 43)])
def test_the_screen_never_exceeds_the_terminal(width: int, height: int) -> None:
    s = status(
        instances=[instance(f"program-with-a-long-name:{i}", 10 + i) for i in range(40)],
        leases=[lease(i) for i in range(40)],
        events=[event(i % 60, reason="x" * 200) for i in range(40)],
    )
    lines = screen_text(s, width, height).splitlines()
    assert len(lines) <= height
    assert max(len(line) for line in lines) <= width


def test_the_banner_says_the_daemon_is_down_and_keeps_the_last_status() -> None:
    text = screen_text(
        status(instances=[instance("batt:0", 501)]),
        problem="daemon down since 11:59:58: Connection refused; retrying",
    )
    first = text.splitlines()[0]
    assert first.startswith("daemon down since 11:59:58: Connection refused; retrying")
    assert first.rstrip().endswith("q quit")
    assert "batt:0" in text


# -- rich stays optional ----------------------------------------------------------------------


def test_without_rich_top_says_how_to_install_it_and_exits_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    monkeypatch.setitem(sys.modules, "rich.console", None)  # import fails
    assert top.run_top(tmp_path / "none.sock", 1.0) == 2
    assert "pip install 'supervisord-batt[top]'" in capsys.readouterr().err


def test_no_daemon_exits_2_saying_so(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert top.run_top(tmp_path / "none.sock", 1.0) == 2
    err = capsys.readouterr().err
    assert "daemon is not running" in err and "none.sock" in err


def test_rich_is_imported_by_the_view_alone() -> None:
    """Importing the CLI (and top itself) loads no rich; no other module imports it."""
    code = (
        "import sys, supervisord_batt.cli.main, supervisord_batt.cli.top\n"
        "assert not [m for m in sys.modules if m.split('.')[0] == 'rich'], 'rich loaded'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO, timeout=60)
    package = REPO / "supervisord_batt"
    importers = [
        str(path.relative_to(REPO))
        for path in package.rglob("*.py")
        if any(
            line.lstrip().startswith(("import rich", "from rich"))
            for line in path.read_text().splitlines()
        )
    ]
    assert importers == ["supervisord_batt/cli/top.py"]


def test_a_socket_that_cannot_be_reached_exits_2_saying_why(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    (tmp_path / "file").write_text("")
    assert top.run_top(tmp_path / "file" / "s.sock", 1.0) == 2
    err = capsys.readouterr().err
    assert "daemon not reachable at" in err and "Not a directory" in err


def test_issue_22_a_first_page_counts_the_rows_of_the_list_it_does_not_hold() -> None:
    """`top` asks for a page the height of the screen: the rows past it are counted from
    the page's totals, not from the rows the reply holds."""
    s = status(
        instances=[instance(f"batt:{i}", 100 + i) for i in range(24)],
        leases=[lease(i) for i in range(24)],
        totals=(1000, 3000),
    )
    lines = screen_text(s).splitlines()
    assert "24/1000 running" in lines[0]
    shown_instances = sum(1 for line in lines if line.startswith("batt:"))
    shown_leases = sum(1 for line in lines if line.startswith("L") and "job" in line)
    more = [int(line.split()[0][1:]) for line in lines if line.split()[1:2] == ["more"]]
    assert more == [1000 - shown_instances, 3000 - shown_leases]


def test_every_level_state_and_log_level_has_a_style() -> None:
    from supervisord_batt import protocol
    from supervisord_batt.cli import top
    from supervisord_batt.supervise.states import State

    assert set(top.LEVEL_STYLE) == set(protocol.LEVELS)
    assert set(top.STATE_STYLE) == {s.value for s in State}
    assert set(top.EVENT_LEVEL_STYLE) == set(protocol.LOG_LEVELS)
