"""A run cut short by the OOM killer teaches no size below its charge (issue 24): a job
killed before a scan saw its data was learned at its workers' bare size, and its next
run's pools were sized for 20 MiB workers."""

from __future__ import annotations

import dataclasses

from supervisord_batt.budget.costs import per_worker
from supervisord_batt.daemon.workersizes import Learned, WorkerSizes, oom_rose
from supervisord_batt.host.sample import TreeUsage
from tests.support.sizes import MIB, lease, tree

CHARGE = 512 * MIB


def _bare_run(sizes: WorkerSizes, *, oom: bool, bare: int = 20) -> None:
    """A pool of 2 seen at its workers' bare size, then gone (with an OOM kill counted
    at the scan that ends it, or not)."""
    t, rss = tree(100, bare, bare)
    held = [lease("L1", 100, 2)]
    sizes.observe(held, {100: t}, rss, {"L1": CHARGE})
    sizes.observe([], {}, {}, {}, oom)


def test_a_run_ended_by_an_oom_kill_below_its_charge_teaches_nothing() -> None:
    sizes = WorkerSizes()
    _bare_run(sizes, oom=True)
    assert sizes.figures() == {}  # the job is still never seen: its declared size stands
    assert sizes.ended() == {}  # nor is it saved for the next daemon
    _bare_run(sizes, oom=False)  # the same run with no kill is what the job holds
    assert sizes.figures() == {("batt", 1000): Learned(20 * MIB, 1)}


def test_a_run_with_an_oom_kill_that_saw_more_than_its_charge_still_teaches() -> None:
    """A peak above the charge is the truth of what its workers held, kill or not."""
    sizes = WorkerSizes()
    _bare_run(sizes, oom=True, bare=1536)
    assert sizes.figures() == {("batt", 1000): Learned(1536 * MIB, 1)}


def test_a_kill_counted_while_a_run_lived_judges_it_at_its_end() -> None:
    """The count rose at an earlier scan, while the run was live: it is judged at its end."""
    sizes = WorkerSizes()
    t, rss = tree(100, 20, 20)
    held = [lease("L1", 100, 2)]
    sizes.observe(held, {100: t}, rss, {"L1": CHARGE})
    assert sizes.figures() == {("batt", 1000): Learned(20 * MIB, 1)}  # a live run's
    sizes.observe(held, {100: t}, rss, {"L1": CHARGE}, True)
    assert sizes.figures() == {}  # hit while live: not given to the budget any more
    sizes.observe(held, {100: t}, rss, {"L1": CHARGE})
    sizes.observe([], {}, {})
    assert sizes.figures() == {}


def test_a_run_is_judged_by_its_charge_before_its_own_peak_lowered_it() -> None:
    """A job never seen is charged memory_per_slot at the first scan of its run; its
    live peak (bare workers) then makes its figure, and its charge, 20 MiB: the run is
    still judged against the 512 MiB it was charged first."""
    sizes = WorkerSizes()
    t, rss = tree(100, 20, 20)
    held = [lease("L1", 100, 2)]
    sizes.observe(held, {100: t}, rss, {"L1": CHARGE})
    sizes.observe(held, {100: t}, rss, {"L1": 20 * MIB})
    sizes.observe([], {}, {}, {}, True)
    assert sizes.figures() == {}


def test_a_holder_killed_running_its_own_tasks_teaches_nothing_either() -> None:
    """A job granted sequential writes its data in its own process: killed at its bare
    interpreter's size, it is not learned at it."""
    sizes = WorkerSizes()
    seq = dataclasses.replace(lease("S", 100, 0, kind="sequential"), wanted=3)
    t = TreeUsage(100, (100,), 1)
    sizes.observe([seq], {100: t}, {100: 30 * MIB}, {"S": 1536 * MIB})
    sizes.observe([], {}, {}, {}, True)
    assert sizes.figures() == {}


def test_an_oom_count_rises_only_where_a_cgroup_was_watched_before() -> None:
    assert oom_rose({"/a": 1}, {"/a": 2})
    assert not oom_rose({"/a": 1}, {"/a": 1})
    assert not oom_rose({}, {"/a": 3})  # not watched before: its kills are older
    assert not oom_rose({"/a": 5}, {"/a": 0})  # made again
    assert oom_rose({"/a": 5, "/b": 0}, {"/a": 0, "/b": 1})


def test_live_runs_do_not_count_toward_replacing_a_declared_size() -> None:
    """A job array's first scan sees three of its jobs with bare workers (20 MiB): a
    figure from three runs, but none ended, so a declared 2 GiB stands (a live-run
    count once let that scan undo it and the fourth job get a pool of 16)."""
    sizes = WorkerSizes()
    held, trees, rss = [], {}, {}
    for i, pid in enumerate((100, 200, 300)):
        t, r = tree(pid, 20, 20)
        held.append(lease(f"L{i}", pid, 2))
        trees[pid] = t
        rss.update(r)
    sizes.observe(held, trees, rss, {})
    key = ("batt", 1000)
    assert sizes.figures()[key] == Learned(20 * MIB, 3)
    assert sizes.ended_runs() == {key: 0}
    assert per_worker(512 * MIB, 2048 * MIB, 20 * MIB, sizes.ended_runs()[key]) == 2048 * MIB
    sizes.observe([], {}, {}, {})  # all three end: three ended runs now
    assert sizes.ended_runs() == {key: 3}
    assert per_worker(512 * MIB, 2048 * MIB, 20 * MIB, 3) == 20 * MIB
