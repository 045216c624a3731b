"""The per-user CPU weights (pure), and the v2 path on a cgroup tree in a temp dir.

The v1 path, the kernel's use of the weights and their removal are proved for real in
tests/integration/supervise/test_cpu_share.py.
"""

from __future__ import annotations

import itertools
from pathlib import Path

from supervisord_batt.supervise.cgroups import LEAF_NAME, WorkerCgroup, enable_cpu_v2, plan_v2
from supervisord_batt.supervise.cpushare import (
    TOP,
    V1_RANGE,
    V2_RANGE,
    CpuShares,
    instance_weights,
)
from tests.unit.supervise.fakecgroups import v2_cgroup


def test_a_lone_instance_weighs_top_and_a_users_instances_split_it() -> None:
    assert instance_weights({1000: 1}, {}, *V1_RANGE) == {1000: TOP}
    assert instance_weights({1000: 5}, {}, *V1_RANGE) == {1000: TOP // 5}


def test_six_instances_weigh_what_one_does() -> None:
    assert instance_weights({"a": 6, "b": 1}, {}, *V1_RANGE) == {"a": 1667, "b": TOP}


def test_user_weights_scale_each_users_total() -> None:
    # a: weight 2 over 3 instances (2/3 each), b: weight 1 over 2 (1/2 each); a lone
    # instance of a (the heaviest user) would weigh TOP
    got = instance_weights({"a": 3, "b": 2}, {"a": 2.0}, *V2_RANGE)
    assert got == {"a": 3333, "b": 2500}
    assert abs(3 * got["a"] - 2 * (2 * got["b"])) <= 3  # within rounding


def test_weights_are_clamped_to_the_kernels_ranges() -> None:
    counts = {"many": 100_000, "one": 1}
    assert instance_weights(counts, {}, *V1_RANGE) == {"many": 2, "one": TOP}
    assert instance_weights(counts, {}, *V2_RANGE) == {"many": 1, "one": TOP}
    # a high below TOP caps the heaviest, and a user weight of 1000 cannot pass it
    assert instance_weights({"a": 1}, {"a": 1000.0}, 1, 500) == {"a": 500}


def test_users_without_live_instances_are_left_out() -> None:
    assert instance_weights({}, {}, *V1_RANGE) == {}
    assert instance_weights({"a": 0, "b": 2}, {"a": 5.0}, *V1_RANGE) == {"b": TOP // 2}


def test_each_users_instances_weigh_the_same_in_all_within_rounding() -> None:
    for counts in itertools.product(range(1, 9), repeat=3):
        users = dict(zip("abc", counts, strict=True))
        got = instance_weights(users, {}, *V2_RANGE)
        totals = [users[k] * got[k] for k in users]
        # each instance's weight is rounded: a user's total is off by at most n/2
        assert max(totals) - min(totals) <= max(counts), (users, got)
        assert all(V2_RANGE[0] <= w <= V2_RANGE[1] for w in got.values())


# -- cgroup v2 on a temp-dir tree ----------------------------------------------------------


def _leaf(root: Path, name: str) -> WorkerCgroup:
    """An instance's v2 cgroup as the kernel shows it: cpu.weight at its default."""
    path = root / name
    path.mkdir(parents=True)
    (path / "cpu.weight").write_text("100\n")
    return WorkerCgroup(path)


def _weights(root: Path) -> dict[str, int]:
    return {p.parent.name: int(p.read_text()) for p in sorted(root.glob("*/cpu.weight"))}


def test_v2_enables_cpu_beside_pids_down_to_the_worker_root(tmp_path: Path) -> None:
    own = v2_cgroup(tmp_path / "x.service", "cpu memory pids")
    plan = plan_v2(own, "sb")
    assert not isinstance(plan, str)
    v2_cgroup(plan.workers_root, "cpu pids")
    assert enable_cpu_v2(plan) is None
    for directory in plan.enable:  # a regular file keeps the last write: "+cpu"
        assert (directory / "cgroup.subtree_control").read_text() == "+cpu"
    assert plan.leaf == own / LEAF_NAME


def test_v2_without_the_cpu_controller_says_why(tmp_path: Path) -> None:
    own = v2_cgroup(tmp_path / "x.service", "memory pids")
    plan = plan_v2(own, "sb")
    assert not isinstance(plan, str)
    why = enable_cpu_v2(plan)
    assert why is not None and "cpu controller is not available" in why


def test_v2_weights_follow_starts_and_exits(tmp_path: Path) -> None:
    shares = CpuShares(2, "test", weigh=lambda uid: 2.0 if uid == 1001 else 1.0)
    assert shares.describe() == "per_user"
    for i in range(3):
        assert shares.join(f"a:{i}", 1000, _leaf(tmp_path, f"a.{i}")) is None  # no procs file
    shares.join("b:0", 1001, _leaf(tmp_path, "b.0"))
    assert shares.reweigh() == []
    # 1000: weight 1 over 3 instances; 1001: weight 2 over 1 -> 1/3 against 2
    assert _weights(tmp_path) == {"a.0": 1667, "a.1": 1667, "a.2": 1667, "b.0": TOP}
    shares.leave("a:0")
    shares.leave("a:1")
    assert shares.reweigh() == []
    assert shares.counts() == {1000: 1, 1001: 1}
    now = _weights(tmp_path)  # (a.0 and a.1 are gone with their runs' pids cgroups)
    assert (now["a.2"], now["b.0"]) == (5000, TOP)


def test_v2_a_refused_write_is_said_once_and_the_others_go_on(tmp_path: Path) -> None:
    shares = CpuShares(2, "test")
    gone = WorkerCgroup(tmp_path / "gone")  # no such directory: the write fails
    shares.join("a:0", 1000, gone)
    shares.join("b:0", 1001, _leaf(tmp_path, "b.0"))
    (problem,) = shares.reweigh()
    assert problem[0] == "a:0" and "cpu.weight" in problem[1]
    shares.join("b:1", 1001, _leaf(tmp_path, "b.1"))
    assert shares.reweigh() == []  # not said again
    assert _weights(tmp_path) == {"b.0": 5000, "b.1": 5000}


def test_a_run_without_a_pids_cgroup_on_v2_is_not_weighed(tmp_path: Path) -> None:
    shares = CpuShares(2, "test")
    assert shares.join("a:0", 1000, None) is None
    assert "a:0" not in shares and shares.reweigh() == []


def test_without_a_cpu_controller_status_says_per_thread_and_why() -> None:
    shares = CpuShares(None, "no cgroup v1 cpu hierarchy")
    assert shares.describe() == "per_thread (no cgroup v1 cpu hierarchy)"
    assert shares.join("a:0", 1000, None) is None and shares.cleanup() == []


def test_the_workers_root_weighs_a_thread_per_live_instance(tmp_path: Path) -> None:
    root = tmp_path / "sb.workers"
    root.mkdir()
    (root / "cpu.weight").write_text("100\n")
    shares = CpuShares(2, "test", root)
    for i in range(3):
        shares.join(f"a:{i}", 1000, _leaf(root, f"a.{i}"))
    assert shares.reweigh() == []
    assert (root / "cpu.weight").read_text() == "300"  # as three nice-0 threads
    for i in range(200):
        shares.join(f"b:{i}", 1001, _leaf(root, f"b.{i}"))
    assert shares.reweigh() == []
    assert (root / "cpu.weight").read_text() == str(V2_RANGE[1])  # the kernel's maximum
    shares.leave("b:0")
    for i in range(3):
        shares.leave(f"a:{i}")
    for i in range(1, 200):
        shares.leave(f"b:{i}")
    assert shares.reweigh() == []
    assert (root / "cpu.weight").read_text() == "100"  # none live: one thread's, the default


def test_a_start_or_exit_rewrites_only_its_own_users_weights(tmp_path: Path) -> None:
    """Each write costs ~44 us on cgroup v1 (measured on a 2-core VM): an exit that
    rewrote every instance's weight stalled the loop 44 ms at 1,000 instances. With 10
    users of 100 instances each, one exit and its restart rewrite at most that user's."""
    shares = CpuShares(2, "test")
    for user in range(10):
        for i in range(100):
            shares.join(f"u{user}:{i}", 1000 + user, _leaf(tmp_path, f"u{user}.{i}"))
    assert shares.reweigh() == []
    for _ in range(2):  # the exit, then the restart
        before = _weights(tmp_path)
        if "u0:0" in shares:
            shares.leave("u0:0")
        else:
            shares.join("u0:0", 1000, WorkerCgroup(tmp_path / "u0.0"))
        assert shares.reweigh() == []
        now = _weights(tmp_path)
        changed = {name for name in now if now[name] != before[name]}
        assert changed <= {f"u0.{i}" for i in range(100)}, len(changed)
        assert len(set(now.values())) <= 2  # u0's weight and the others'


def test_after_cleanup_the_removed_root_is_not_weighed(tmp_path: Path) -> None:
    root = tmp_path / "sb.workers"
    root.mkdir()
    (root / "cpu.weight").write_text("100\n")
    shares = CpuShares(2, "test", root)
    shares.join("a:0", 1000, _leaf(root, "a.0"))
    shares.join("a:1", 1000, _leaf(root, "a.1"))
    assert shares.reweigh() == []
    shares.cleanup()
    for p in sorted(root.rglob("*"), reverse=True):  # the pids cgroups' cleanup
        p.unlink() if p.is_file() else p.rmdir()
    root.rmdir()
    assert shares.reweigh() == []  # a weighing still pending at shutdown says nothing
