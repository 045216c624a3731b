"""Issue 24: a small run of benchmarks/oom_stall.py, which times a memory cgroup's OOM
kills against the moment it reached its limit on one clock (the kernel log's).

Three writers of 48 MiB in a v1 memory cgroup of 100 MiB: the kernel kills at least one,
the run reads each kill's victim from /dev/kmsg with the daemon's parser and places it
on time.monotonic's clock, and the cgroup is gone afterwards."""

from __future__ import annotations

import os

import pytest

from benchmarks.oom_stall import DEADLINE, run_once
from tests.helpers import memory_cgroup_root


def test_issue24_oom_stall_times_each_kill_and_its_victim(needs_root: None) -> None:
    where = memory_cgroup_root()
    if where is None or where[1] != 1:
        pytest.skip("needs the v1 memory hierarchy")
    if not os.access("/dev/kmsg", os.R_OK | os.W_OK):
        pytest.skip("needs /dev/kmsg readable and writable")
    run = run_once(where[0], "writer", 3, 48, 100)
    assert run.kills, run
    assert all(k.role == "writer" and 0 <= k.writer < 3 for k in run.kills), run
    assert run.limit_at is not None, run  # the high-water mark reached the limit
    assert all(0 < k.at < DEADLINE for k in run.kills), run  # on the run's own clock
    assert abs(run.clock_skew_ms) < 1000, run  # the kernel log's clock is the monotonic one
    wrote = {i for i, w in enumerate(run.written) if w is not None}
    assert wrote | {k.writer for k in run.kills} == {0, 1, 2}, run  # wrote, or was killed
    ours = f"sbbench-stall-{os.getpid()}-"
    assert not [p for p in where[0].iterdir() if p.name.startswith(ours)]  # removed
