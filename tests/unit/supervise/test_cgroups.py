"""Pure parts of proctree/cgroups: instance names, the v2 leaf plan, limits, own cgroups."""

from __future__ import annotations

from pathlib import Path

import pytest

from supervisord_batt.host import procfs
from supervisord_batt.supervise.cgroups import (
    LEAF_NAME,
    V2Plan,
    WorkerCgroup,
    instance_dir_name,
    own_pids_dirs,
    plan_v2,
)
from tests.unit.supervise.fakecgroups import v2_cgroup


@pytest.mark.parametrize(
    ("instance", "expected"),
    [
        ("batt:0", "batt.0"),
        ("batt_x-1.2", "batt_x-1.2"),
        ("a/b c", "a.b.c"),
        ("../etc", "etc"),
        ("...", "_"),
        ("cgroup.procs", "w.cgroup.procs"),
        ("pids.max", "w.pids.max"),
        ("tasks", "w.tasks"),
    ],
)
def test_instance_dir_name(instance: str, expected: str) -> None:
    assert instance_dir_name(instance) == expected


def test_instance_dir_name_keeps_long_names_unique_and_short() -> None:
    a, b = instance_dir_name("x" * 300 + "a"), instance_dir_name("x" * 300 + "b")
    assert a != b and len(a) <= 200 and len(b) <= 200
    assert "/" not in instance_dir_name("a/" * 200)


def test_v2_plan_moves_a_systemd_service_to_a_leaf(tmp_path: Path) -> None:
    own = v2_cgroup(tmp_path / "system.slice" / "x.service", "cpu memory pids")
    plan = plan_v2(own, "sb")
    assert plan == V2Plan(
        base=own,
        leaf=own / LEAF_NAME,
        enable=(own, own / "sb.workers"),
        workers_root=own / "sb.workers",
    )


def test_v2_plan_when_already_in_the_leaf(tmp_path: Path) -> None:
    base = v2_cgroup(tmp_path / "x.service", "pids", subtree="pids")
    own = v2_cgroup(base / LEAF_NAME, "pids")
    plan = plan_v2(own, "sb")
    assert isinstance(plan, V2Plan)
    assert plan.base == base and plan.leaf is None and plan.workers_root == base / "sb.workers"


def test_v2_plan_at_the_root_needs_no_leaf(tmp_path: Path) -> None:
    root = v2_cgroup(tmp_path, "cpu pids", root=True)
    plan = plan_v2(root, "sb")
    assert isinstance(plan, V2Plan) and plan.leaf is None


def test_v2_plan_without_pids_says_why(tmp_path: Path) -> None:
    # this machine's hybrid layout: cgroup2 with hugetlb only, pids lives on v1
    own = v2_cgroup(tmp_path, "hugetlb", root=True)
    reason = plan_v2(own, "sb")
    assert isinstance(reason, str)
    assert "pids controller is not available" in reason and "Delegate=yes" in reason


def test_v2_plan_rejects_threaded_cgroups(tmp_path: Path) -> None:
    own = v2_cgroup(tmp_path / "t", "pids")
    (own / "cgroup.type").write_text("threaded\n")
    reason = plan_v2(own, "sb")
    assert isinstance(reason, str) and "threaded" in reason


HYBRID = """\
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
"""
PURE_V2 = "30 23 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n"


def test_own_dirs_on_hybrid_and_pure_v2() -> None:
    entries = procfs.parse_proc_cgroup("8:pids:/batt\n1:cpu:/\n0::/\n")
    own = own_pids_dirs(procfs.parse_mountinfo(HYBRID), entries)
    assert own == {"v1": Path("/sys/fs/cgroup/pids/batt"), "v2": Path("/sys/fs/cgroup/unified")}
    entries = procfs.parse_proc_cgroup("0::/system.slice/x.service\n")
    own = own_pids_dirs(procfs.parse_mountinfo(PURE_V2), entries)
    assert own == {"v2": Path("/sys/fs/cgroup/system.slice/x.service")}


def test_full_checks_the_worker_and_its_parents(tmp_path: Path) -> None:
    parent = tmp_path / "workers"
    child = parent / "w.0"
    child.mkdir(parents=True)
    for d, cur, mx in ((parent, "3", "max"), (child, "1", "2")):
        (d / "pids.current").write_text(cur + "\n")
        (d / "pids.max").write_text(mx + "\n")
    cg = WorkerCgroup(child, (parent,))
    assert cg.full() is None
    (child / "pids.current").write_text("2\n")
    assert "at its pids.max (2/2)" in (cg.full() or "")
    (child / "pids.current").write_text("0\n")
    (parent / "pids.max").write_text("3\n")
    assert str(parent) in (cg.full() or "")
    assert WorkerCgroup(tmp_path / "gone").procs() == []
