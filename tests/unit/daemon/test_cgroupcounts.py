"""Issue 24: OOM kills and refused task creations of a watched cgroup, logged when the
count moves, at most once per gap per cgroup, each line with the increase since the last."""

from __future__ import annotations

import io
import json

from supervisord_batt.daemon.cgroupcounts import CgroupCounts
from supervisord_batt.host.sample import CgroupUsage, HostSample, Limit, MemoryCgroupUsage


def lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def sample(oom: int | None, refused: int | None = 0) -> HostSample:
    mem = MemoryCgroupUsage("/batt", "/m/batt", 1, 10, 0, 100, None, 100, 90, "/batt", oom)
    pids = CgroupUsage("/batt", "/p/batt", 1, 3, 10, refused, 10, 7, "/batt")
    return HostSample(
        taken_at=0.0,
        wall_time=0.0,
        threads_total=1,
        threads_max=100,
        pid_max=100,
        cgroups=(pids,),
        users=(),
        mem_available_bytes=1 << 30,
        mem_total_bytes=1 << 31,
        cpus=2.0,
        psi=None,
        limits=(Limit("pid_max", "pid_max", None, 100, 1),),
        memory_cgroups=(mem,),
    )


def test_a_count_that_moves_is_one_line_then_one_per_gap(out: io.StringIO) -> None:
    counts = CgroupCounts(gap=60.0)
    counts.observe(0.0, sample(oom=3))  # what the daemon finds at its start: no line
    assert lines(out) == []
    counts.observe(1.0, sample(oom=4))
    (first,) = lines(out)
    assert first["event"] == "cgroup_oom_kill"
    assert (first["cgroup"], first["count"], first["increase"], first["headroom"]) == (
        "/batt",
        4,
        1,
        90,
    )
    assert first["level"] == "warning" and "memory limit" in str(first["reason"])
    for t in range(2, 60):  # it moves every tick: held back until the gap is over
        counts.observe(float(t), sample(oom=4 + t))
    assert len(lines(out)) == 1
    counts.observe(61.0, sample(oom=63))
    second = lines(out)[1]
    assert (second["count"], second["increase"]) == (63, 59)
    counts.observe(200.0, sample(oom=63))  # no change: no line
    assert len(lines(out)) == 2


def test_held_increase_is_written_when_the_gap_ends_without_a_new_change(
    out: io.StringIO,
) -> None:
    counts = CgroupCounts(gap=60.0)
    counts.observe(0.0, sample(oom=0))
    counts.observe(1.0, sample(oom=1))
    counts.observe(2.0, sample(oom=2))
    counts.observe(70.0, sample(oom=2))
    assert [(e["count"], e["increase"]) for e in lines(out)] == [(1, 1), (2, 1)]


def test_refused_tasks_too_and_a_removed_cgroup_keeps_its_count(out: io.StringIO) -> None:
    counts = CgroupCounts()
    counts.observe(0.0, sample(oom=0, refused=0))
    counts.observe(1.0, sample(oom=None, refused=None))  # removed: unreadable
    counts.observe(2.0, sample(oom=0, refused=5))
    (line,) = lines(out)
    assert (line["event"], line["count"], line["increase"]) == ("cgroup_tasks_refused", 5, 5)


def test_a_cgroup_made_again_starts_from_its_new_count(out: io.StringIO) -> None:
    counts = CgroupCounts()
    counts.observe(0.0, sample(oom=7))
    counts.observe(1.0, sample(oom=0))  # made again: counts from 0
    counts.observe(2.0, sample(oom=1))
    (line,) = lines(out)
    assert (line["count"], line["increase"]) == (1, 1)
