"""Issue 24: memory cgroup limits read like pids limits, over fake /sys trees of each
layout (v1, hybrid, v2); the real kernel's are in tests/integration/host/test_memory_live.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from supervisord_batt.host import memcg
from supervisord_batt.host.probe import render_table, sample_to_json
from supervisord_batt.host.sample import Limit
from tests.unit.host.fakehost import LAYOUTS, UNLIMITED_V1, FakeHost, write

GIB = 1 << 30
MEMAVAILABLE = 8000000 * 1024  # the fake meminfo's


@pytest.fixture(params=sorted(LAYOUTS))
def mem_host(request: pytest.FixtureRequest, tmp_path: Path) -> FakeHost:
    """Each layout with the memory controller: /batt limited to 4 GiB, /batt/job not."""
    fake = FakeHost(tmp_path, layout=request.param, memory=True).build()
    fake.set_memory("batt", 3 * GIB, 4 * GIB, inactive_file=GIB // 2, oom_kills=2)
    fake.set_memory("batt/job", GIB, None, oom_kills=1)
    return fake


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"1073741824\n", GIB),
        (b"max\n", None),
        (f"{UNLIMITED_V1}\n".encode(), None),  # v1's "no limit" with 4 KiB pages
        (b"9223372036854710272\n", None),  # the same with 64 KiB pages
        (b"0\n", 0),
        (b"garbage\n", None),
        (None, None),
    ],
)
def test_parse_memory_limit(data: bytes | None, expected: int | None) -> None:
    assert memcg.parse_memory_limit(data) == expected


def test_parse_keyed_matches_whole_keys() -> None:
    stat = b"cache 5\ninactive_file 7\ntotal_inactive_file 9\n"
    assert memcg.parse_keyed(stat, b"inactive_file") == 7
    assert memcg.parse_keyed(stat, b"total_inactive_file") == 9
    assert memcg.parse_keyed(b"oom_kill_disable 0\nunder_oom 0\noom_kill 4\n", b"oom_kill") == 4
    assert memcg.parse_keyed(b"oom 1\n", b"oom_kill") is None
    assert memcg.parse_keyed(None, b"max") is None


def test_own_cgroup_limited_by_parent(mem_host: FakeHost) -> None:
    with mem_host.monitor() as mon:
        s = mon.sample()
    (row,) = s.memory_cgroups
    version = LAYOUTS[mem_host.layout][4]
    headroom = 4 * GIB - (3 * GIB - GIB // 2)  # inactive file cache is not counted
    assert (row.path, row.fs_path, row.version) == (
        "/batt/job",
        str(mem_host.memory_dir / "batt/job"),
        version,
    )
    assert (row.current, row.max, row.high) == (GIB, None, None)
    assert (row.effective_max, row.headroom, row.limited_by) == (4 * GIB, headroom, "/batt")
    assert row.oom_kills == 1
    assert s.memory_limits == (
        Limit(
            "memory:/batt/job",
            "memory",
            str(mem_host.memory_dir / "batt"),
            4 * GIB,
            3 * GIB - GIB // 2,
        ),
    )
    assert s.memory_headroom() == (headroom, "memory:/batt/job")
    assert all(lim.kind != "memory" for lim in s.limits)  # the task limits stay tasks


def test_own_limit_tighter_than_parent(mem_host: FakeHost) -> None:
    mem_host.set_memory("batt/job", GIB, GIB + GIB // 4, inactive_file=GIB // 4)
    with mem_host.monitor() as mon:
        (row,) = mon.sample().memory_cgroups
    assert (row.max, row.effective_max, row.limited_by) == (
        GIB + GIB // 4,
        GIB + GIB // 4,
        "/batt/job",
    )
    assert (row.headroom, row.inactive_file) == (GIB // 2, GIB // 4)


def test_memavailable_below_every_cgroup_headroom_wins(mem_host: FakeHost) -> None:
    mem_host.set_memory("batt", GIB, 64 * GIB)
    with mem_host.monitor() as mon:
        assert mon.sample().memory_headroom() == (MEMAVAILABLE, "MemAvailable")


def test_v2_memory_high_counts_as_the_limit(tmp_path: Path) -> None:
    fake = FakeHost(tmp_path, layout="v2", memory=True).build()
    fake.set_memory("batt", GIB, 4 * GIB, high=2 * GIB)
    fake.set_memory("batt/job", GIB // 2, None)
    with fake.monitor() as mon:
        (row,) = mon.sample().memory_cgroups
    assert (row.effective_max, row.headroom, row.limited_by) == (2 * GIB, GIB, "/batt")


def test_unlimited_chain_has_no_memory_limit(mem_host: FakeHost) -> None:
    mem_host.set_memory("batt", 3 * GIB, None)
    with mem_host.monitor() as mon:
        s = mon.sample()
    (row,) = s.memory_cgroups
    assert (row.current, row.effective_max, row.headroom, row.limited_by) == (GIB, None, None, None)
    assert s.memory_limits == ()
    assert s.memory_headroom() == (MEMAVAILABLE, "MemAvailable")


@pytest.mark.parametrize("form", ["cgroup", "memory-fs", "pids-fs", "real-fs"])
def test_configured_cgroup_forms(tmp_path: Path, form: str) -> None:
    fake = FakeHost(tmp_path, layout="v1", memory=True).build()
    fake.set_memory("other", GIB, 2 * GIB)
    spec = {
        "cgroup": "/other",
        "memory-fs": str(fake.memory_dir / "other"),
        "pids-fs": str(fake.pids_dir / "other"),  # the same cgroup in the memory hierarchy
        "real-fs": "/sys/fs/cgroup/memory/other",  # as mountinfo names it
    }[form]
    with fake.monitor(cgroups=[spec], include_self_cgroup=False) as mon:
        (row,) = mon.sample().memory_cgroups
    assert (row.path, row.current, row.max, row.headroom) == ("/other", GIB, 2 * GIB, GIB)


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_no_memory_controller_no_rows(tmp_path: Path, layout: str) -> None:
    """v1 without a memory mount, hybrid whose v2 mount has no controllers, v2 without
    the memory controller: nothing is watched, MemAvailable alone counts."""
    fake = FakeHost(tmp_path, layout=layout).build()
    if layout == "v2":
        write(fake.pids_dir / "cgroup.controllers", "cpuset cpu io pids\n")
    with fake.monitor(cgroups=["/batt"]) as mon:
        s = mon.sample()
    assert (s.memory_cgroups, s.memory_limits) == ((), ())
    assert s.memory_headroom() == (MEMAVAILABLE, "MemAvailable")


def test_missing_cgroup_reads_none_then_comes_back(mem_host: FakeHost) -> None:
    with mem_host.monitor(cgroups=["/later"], include_self_cgroup=False) as mon:
        (row,) = mon.sample().memory_cgroups
        assert (row.current, row.max, row.oom_kills, row.headroom) == (None, None, None, None)
        mem_host.set_memory("later", GIB, 2 * GIB, oom_kills=4)
        (row,) = mon.sample().memory_cgroups
        assert (row.current, row.max, row.oom_kills, row.headroom) == (GIB, 2 * GIB, 4, GIB)


def test_usage_above_memory_high_is_no_headroom(tmp_path: Path) -> None:
    fake = FakeHost(tmp_path, layout="v2", memory=True).build()
    fake.set_memory("batt", 3 * GIB, 4 * GIB, high=2 * GIB)
    fake.set_memory("batt/job", GIB, None)
    with fake.monitor() as mon:
        s = mon.sample()
    assert s.memory_cgroups[0].headroom == -GIB
    assert s.memory_headroom() == (0, "memory:/batt/job")


def test_v2_own_cgroup_without_memory_is_not_watched(tmp_path: Path) -> None:
    fake = FakeHost(tmp_path, layout="v2").build()  # /batt/job offers pids only
    fake.set_memory("batt/job", GIB, 2 * GIB)
    with fake.monitor() as mon:
        assert mon.sample().memory_cgroups == ()


def test_root_cgroup_is_not_read(tmp_path: Path) -> None:
    fake = FakeHost(tmp_path, layout="v1", memory=True).build()
    write(fake.proc / "self/cgroup", "4:memory:/\n8:pids:/\n")
    fake.set_memory("", GIB, 2 * GIB)  # a root with files is ignored all the same
    with fake.monitor() as mon:
        (row,) = mon.sample().memory_cgroups
    assert (row.path, row.current, row.headroom) == ("/", None, None)


def test_probe_json_and_table_show_memory(mem_host: FakeHost) -> None:
    with mem_host.monitor(cgroups=["/" + "very-long-name/" * 8]) as mon:
        s = mon.sample()
    data = sample_to_json(s)
    memory = data["memory"]
    assert (memory["headroom_bytes"], memory["limited_by"]) == (
        GIB + GIB // 2,
        "memory:/batt/job",
    )
    own = memory["cgroups"][0]
    assert (own["current_bytes"], own["max_bytes"], own["effective_max_bytes"]) == (
        GIB,
        None,
        4 * GIB,
    )
    assert (own["headroom_bytes"], own["oom_kills"]) == (GIB + GIB // 2, 1)
    assert memory["cgroups"][1]["current_bytes"] is None  # the missing cgroup
    assert [lim["name"] for lim in memory["limits"]] == ["memory:/batt/job"]
    assert memory["limits"][0]["percent_used"] == 62.5
    table = render_table(s)
    assert max(map(len, table.splitlines())) <= 100
    lines = table.splitlines()
    row = lines[next(i for i, line in enumerate(lines) if line.startswith("MEMORY CGROUP")) + 1]
    version = str(LAYOUTS[mem_host.layout][4])
    assert row.split() == ["/batt/job", version, "1.00G", "max", "4.00G", "1.50G", "1", "/batt"]
    assert "1.5 GiB before memory:/batt/job: the budget counts on that" in table


def test_the_daemon_moved_to_another_memory_cgroup_is_followed(tmp_path: Path) -> None:
    """A daemon moved into a tighter memory cgroup budgets against it from the next scan."""
    fake = FakeHost(tmp_path, layout="v1", memory=True).build()
    fake.set_memory("batt", GIB, 4 * GIB)
    fake.set_memory("batt/job", GIB // 2, None)
    fake.set_memory("tight", GIB // 4, GIB // 2)
    with fake.monitor() as mon:
        assert [r.path for r in mon.sample().memory_cgroups] == ["/batt/job"]
        write(fake.proc / "self/cgroup", "4:memory:/tight\n8:pids:/batt/job\n")
        mon.scan()
        (row,) = mon.sample().memory_cgroups
    assert (row.path, row.effective_max, row.headroom) == ("/tight", GIB // 2, GIB // 4)
