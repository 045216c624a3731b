"""Issue 24: HostMonitor against real memory cgroups (v1 here, v2 where it is enabled):
the limit, the usage, the tightest ancestor and the OOM killer's count."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from supervisord_batt.host.monitor import HostMonitor
from tests.helpers import killing

if TYPE_CHECKING:
    from tests.helpers import MemoryCgroup

MIB = 1 << 20
GIB = 1 << 30


def test_limit_usage_and_headroom_of_a_real_memory_cgroup(
    memory_cgroup: Callable[..., MemoryCgroup],
) -> None:
    cg = memory_cgroup()
    cg.set_limit(GIB)
    with (
        killing(cg.allocate(200)) as proc,
        HostMonitor(cgroups=[cg.cgroup_path], include_self_cgroup=False) as mon,
    ):
        assert proc.stdout is not None and proc.stdout.readline() == b"up\n"
        before = cg.usage()
        s = mon.sample()
        after = cg.usage()
        (row,) = s.memory_cgroups
        assert (row.path, row.fs_path, row.version) == (cg.cgroup_path, str(cg.path), cg.version)
        assert (row.max, row.effective_max, row.limited_by) == (GIB, GIB, cg.cgroup_path)
        assert row.current is not None and before - MIB <= row.current <= after + MIB
        assert row.current >= 200 * MIB
        assert row.inactive_file is not None and row.headroom is not None
        assert row.headroom == GIB - (row.current - row.inactive_file)
        assert row.headroom <= GIB - 200 * MIB
        assert row.oom_kills == 0
        assert s.memory_headroom() == (row.headroom, f"memory:{cg.cgroup_path}")


def test_nested_memory_cgroup_limited_by_its_parent(
    memory_cgroup: Callable[..., MemoryCgroup],
) -> None:
    parent = memory_cgroup()
    parent.set_limit(512 * MIB)
    parent.enable_children()
    child = memory_cgroup(name=f"{parent.name}/job")
    child.set_limit(4 * GIB)
    with (
        killing(child.allocate(100)) as proc,
        HostMonitor(cgroups=[child.cgroup_path], include_self_cgroup=False) as mon,
    ):
        assert proc.stdout is not None and proc.stdout.readline() == b"up\n"
        (row,) = mon.sample().memory_cgroups
        assert (row.max, row.effective_max, row.limited_by) == (
            4 * GIB,
            512 * MIB,
            parent.cgroup_path,
        )
        assert row.headroom is not None and row.headroom <= 512 * MIB - 100 * MIB


def test_an_oom_kill_in_the_cgroup_is_counted(memory_cgroup: Callable[..., MemoryCgroup]) -> None:
    cg = memory_cgroup()
    cg.set_limit(128 * MIB)
    with HostMonitor(cgroups=[cg.cgroup_path], include_self_cgroup=False) as mon:
        assert mon.sample().memory_cgroups[0].oom_kills == 0
        with killing(cg.allocate(512)) as proc:
            assert proc.wait(timeout=60) == -9  # SIGKILL from the cgroup's OOM killer
        (row,) = mon.sample().memory_cgroups
        assert row.oom_kills == cg.oom_kills() == 1
