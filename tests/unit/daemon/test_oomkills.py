"""Issue 24: an OOM kill the kernel reports is attributed to the lease whose tree its
victim was in, and teaches that lease's job the victim's size; only that run is judged
cut short. A /proc tree in a temp dir stands for the processes, a real ledger for the
budget."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

from structlog.testing import capture_logs

from supervisord_batt.daemon.oomkills import OomWatch, holder_of, parent_reader
from supervisord_batt.daemon.workersizes import Learned, WorkerSizes
from supervisord_batt.host.kmsg import OomKill
from tests.support.budget import GIB, ledger, request
from tests.support.sizes import MIB, lease, tree

CHARGE = 512 * MIB
KEY = ("batt", 1000)


def proc_tree(root: Path, parents: dict[int, int]) -> Path:
    """A /proc in `root` whose processes (pid -> ppid) have a stat file each (their comm
    with a space and a ')', as a real one may have)."""
    for pid, ppid in parents.items():
        (root / str(pid)).mkdir()
        stat = f"{pid} (a) b) Z {ppid} {pid} {pid} 0 -1 4194560 " + "0 " * 40
        (root / str(pid) / "stat").write_text(stat)
    return root


def test_a_victim_is_found_by_its_parents_or_by_the_last_scan(tmp_path: Path) -> None:
    """Holder 100; 150 a worker started since the scan (a zombie: its stat is kept) and
    160 its child; 170 seen in 100's tree at the scan and gone since; 200 a process of
    no lease; 300 a holder itself; 400 a process whose stat is garbled."""
    proc = proc_tree(tmp_path, {100: 1, 150: 100, 160: 150, 200: 1, 300: 1, 500: 500})
    (proc / "400").mkdir()
    (proc / "400" / "stat").write_text("garbled")
    parent = parent_reader(str(proc))
    assert parent(150) == 100 and parent(170) is None and parent(400) is None
    holders, seen = {100, 300}, {170: 100}
    assert [holder_of(p, holders, seen, parent) for p in (150, 160, 170, 300)] == [100] * 3 + [300]
    for pid in (200, 400, 500, 999):  # no lease's: not guessed (500 is its own parent)
        assert holder_of(pid, holders, seen, parent) is None


def test_a_kill_of_a_worker_never_scanned_teaches_its_job_the_victims_size() -> None:
    """A pool of 1.5 GiB workers charged 512 MiB, killed before any scan saw them:
    before, its run taught nothing and the next was charged 512 MiB again. Killed
    mid-write, the victim held part of its data: its job is charged twice that until a
    run charged so ends with no kill."""
    sizes = WorkerSizes()
    held = lease("L1", 100, 4)
    assert sizes.killed(held, 1536 * MIB, holder=False, charged=CHARGE)
    assert sizes.figures() == {KEY: Learned(3072 * MIB, 1, from_kill=True)}  # at once
    sizes.observe([], {}, {}, {})  # the next scan ends its run: kept, for the next daemon
    assert sizes.ended() == {KEY: [(1536 * MIB, 0, 0)]}
    assert sizes.figures() == {KEY: Learned(3072 * MIB, 1, from_kill=True)}
    t, rss = tree(100, 2048)  # the next run, charged the margin, ends uncut at 2 GiB
    sizes.observe([held], {100: t}, rss, {"L1": 3072 * MIB})
    sizes.observe([], {}, {}, {})
    assert sizes.figures() == {KEY: Learned(2048 * MIB, 2)}


def test_a_run_charged_less_than_the_margin_leaves_it() -> None:
    """A run of the same job that began before the kill (charged 512 MiB) and ends uncut
    says nothing of what twice the victim's size would do: the margin stays."""
    sizes = WorkerSizes()
    early = lease("L0", 200, 4)
    t, rss = tree(200, 1000)
    sizes.observe([early], {200: t}, rss, {"L0": CHARGE})
    assert sizes.killed(lease("L1", 100, 4), 1536 * MIB, holder=False, charged=CHARGE)
    sizes.observe([], {}, {}, {})  # both end; L0 was not hit
    assert sizes.figures() == {KEY: Learned(3072 * MIB, 2, from_kill=True)}
    again = lease("L2", 300, 4)  # a run charged the margin, killed too: raised, not gone
    t, rss = tree(300, 2500)
    sizes.observe([again], {300: t}, rss, {"L2": 3072 * MIB})
    assert sizes.killed(again, 2600 * MIB, holder=False, charged=3072 * MIB) is False
    sizes.observe([], {}, {}, {})
    assert sizes.figures()[KEY] == Learned(3072 * MIB, 2, from_kill=True)


def test_a_run_granted_sequential_under_the_margin_gives_its_pool_its_size() -> None:
    """A pool's worker killed mid-write at 900 MiB of its 1.5 GiB: charged the margin
    (1.8 GiB) the next run is granted sequential and runs its tasks whole in its own
    process. Its size then counts for the job's pool too: else the pool's figure stayed
    the victim's 900 MiB, and the run after was killed again (the memory simulator's
    mixed sizes)."""
    sizes = WorkerSizes()
    assert sizes.killed(lease("L1", 100, 4), 900 * MIB, holder=False, charged=CHARGE)
    sizes.observe([], {}, {}, {})
    assert sizes.figures() == {KEY: Learned(1800 * MIB, 1, from_kill=True)}
    seq = dataclasses.replace(lease("L2", 200, 0, kind="sequential"), wanted=4)
    sizes.observe([seq], {}, {200: 1560 * MIB}, {"L2": 1800 * MIB})
    sizes.changed = False  # saved (`SizesFile.save`)
    sizes.observe([], {}, {}, {})
    assert sizes.figures() == {KEY: Learned(1560 * MIB, 2)}
    # the pool's new figure is saved: a restarted daemon has it, not the victim's alone
    assert sizes.changed and sizes.ended() == {KEY: [(900 * MIB, 0, 0), (1560 * MIB, 0, 0)]}


def test_a_kill_below_the_charge_or_of_a_pools_holder_teaches_no_size() -> None:
    sizes = WorkerSizes()
    assert not sizes.killed(lease("L1", 100, 2), 300 * MIB, holder=False, charged=CHARGE)
    assert not sizes.killed(lease("L2", 200, 2), 900 * MIB, holder=True, charged=CHARGE)
    thread = lease("L3", 300, 2, kind="thread", job="t")
    assert not sizes.killed(thread, 900 * MIB, holder=False, charged=CHARGE)
    assert sizes.figures() == {}
    sizes.observe([], {}, {}, {})
    assert sizes.ended() == {}  # cut short below its charge: dropped, as by the count


def test_a_holder_running_its_own_tasks_teaches_its_size_when_its_run_ends() -> None:
    sizes = WorkerSizes()
    seq = dataclasses.replace(lease("L1", 100, 0, kind="sequential"), wanted=4)
    assert sizes.killed(seq, 1536 * MIB, holder=True, charged=CHARGE)
    # its run's size counts once ended; the kill's margin at once
    assert sizes.figures() == {KEY: Learned(3072 * MIB, 0, from_kill=True)}
    sizes.observe([], {}, {}, {})
    assert sizes.figures() == {KEY: Learned(3072 * MIB, 1, from_kill=True)}
    assert sizes.ended_runs() == {KEY: 1}


def test_a_holder_that_ran_its_own_tasks_before_its_pool_teaches_its_size() -> None:
    """Granted sequential first, the holder ran tasks and wrote their data in its own
    process; grown to a pool, it was killed holding that data while its new workers were
    still bare. Before, a pool's holder taught nothing, and its job, untaught, had its
    next run's workers charged memory_per_slot (the memory simulator's big workers)."""
    sizes = WorkerSizes()
    seq = dataclasses.replace(lease("L1", 100, 0, kind="sequential"), wanted=4)
    sizes.observe([seq], {}, {100: 30 * MIB}, {"L1": CHARGE})  # a scan: it runs itself
    pool = dataclasses.replace(seq, kind="process", workers=4)
    assert sizes.killed(pool, 1566 * MIB, holder=True, charged=CHARGE)
    sizes.observe([], {}, {}, {})  # its run ends
    assert sizes.figures() == {KEY: Learned(2 * 1566 * MIB, 1, from_kill=True)}
    # a holder never seen running its own tasks still teaches nothing (a kernel's own
    # process holds more than its workers)
    other = WorkerSizes()
    assert not other.killed(pool, 1566 * MIB, holder=True, charged=CHARGE)


def test_only_the_run_the_kill_hit_is_judged_cut_short() -> None:
    """Two runs of small workers (charged more than they hold) live when a kill hits
    a third: by the count every one lost its run; told which, they teach."""
    sizes = WorkerSizes()
    t, rss = tree(100, 20)
    u, rss2 = tree(200, 30)
    held = [lease("L1", 100, 1, job="a"), lease("L2", 200, 1, job="b")]
    sizes.observe(held, {100: t, 200: u}, {**rss, **rss2}, {"L1": CHARGE, "L2": CHARGE})
    sizes.killed(lease("L3", 300, 2, job="c"), 100 * MIB, holder=False, charged=CHARGE)
    sizes.observe([], {}, {}, {}, oom=False)  # the daemon reads the kernel's log
    assert set(sizes.ended()) == {("a", 1000), ("b", 1000)}


def test_the_watch_attributes_a_kill_teaches_the_ledger_and_says_it_once(
    tmp_path: Path,
) -> None:
    led = ledger(mem=64 * GIB, memory_per_slot=CHARGE)
    grant = led.acquire(request("h", 4, kinds=("process",), pid=100, job="big"))
    assert led.worker_bytes("big", 1000) == CHARGE
    sizes = WorkerSizes()
    taught: list[bool] = []
    watch = OomWatch(
        sizes,
        led,
        teach=lambda: taught.append(True),
        parent=parent_reader(str(proc_tree(tmp_path, {100: 1, 150: 100, 200: 1}))),
    )
    with capture_logs() as logs:
        assert watch.seen(OomKill(150, "python3", "/m", 1536 * MIB))
        assert not watch.seen(OomKill(200, "other", "/m", 900 * MIB))
    assert [e["event"] for e in logs] == ["oom_kill_seen"] * 2
    assert logs[0] == {
        "event": "oom_kill_seen",
        "log_level": "warning",
        "component": "daemon",
        "uid": 1000,
        "job": "big",
        "lease": grant.lease_id,
        "pid": 150,
        "task": "python3",
        "rss": 1536 * MIB,
        "cgroup": "/m",
        "holder": 100,
        "learned": True,
    }
    assert logs[1]["lease"] is None and logs[1]["log_level"] == "info"
    assert watch.unattributed == 1
    assert sizes.figures() == {("big", 1000): Learned(3072 * MIB, 1, from_kill=True)}
    # the scan's leases stand for a holder whose lease went since (killed with it)
    watch.scanned(led.held_by([100]), {})
    led.release(grant.lease_id)
    assert watch.seen(OomKill(100, "python3", None, 2 * GIB)) is False  # a pool's holder
    assert watch.unattributed == 1


def test_a_log_that_cannot_be_read_is_said_once_and_the_counts_judge(tmp_path: Path) -> None:
    """No /dev/kmsg (a container), or a file the event loop cannot watch: one warning at
    start, and every scan's runs are judged by the cgroups' oom_kill counts, as before."""
    plain = tmp_path / "plain"
    plain.write_bytes(b"")
    loop = asyncio.new_event_loop()
    try:
        for path in (tmp_path / "absent", plain):
            watch = OomWatch(WorkerSizes(), ledger(), teach=lambda: None, path=str(path))
            with capture_logs() as logs:
                watch.start(loop)
                watch.summarize()
            assert [e["event"] for e in logs] == ["kernel_log_unreadable"], logs
            assert not watch.reading and watch.by_count() and watch.by_count()
            watch.close()
    finally:
        loop.close()


def test_a_pid_seen_at_the_scan_counts_only_once_proc_has_lost_its_trail() -> None:
    """Pid 7 was in holder 100's tree at the last scan; reused since by a process whose
    live parents lead to no lease, its kill is not that lease's. A pid gone from /proc
    (reaped) is still found by what the scan saw."""
    holders, seen = {100}, {7: 100, 8: 100}
    parents = {7: 555, 555: 1}
    assert holder_of(7, holders, seen, parents.get) is None
    assert holder_of(8, holders, seen, parents.get) == 100


def test_a_kill_of_another_uid_or_of_no_lease_teaches_nothing_and_judges_the_live_runs(
    tmp_path: Path,
) -> None:
    """A victim of another uid in a holder's tree (a setuid helper, a reused pid) teaches
    the lease's job nothing. A kill of no lease's tree in a watched memory cgroup (a
    worker reaped before its report was read looks like one) judges every live run cut
    short, as the cgroup's count would: a run seen only at its bare size teaches nothing.
    A kill in a cgroup the daemon does not watch judges none."""
    led = ledger(mem=64 * GIB, memory_per_slot=CHARGE)
    grant = led.acquire(request("h", 4, kinds=("process",), pid=100, job="big"))
    sizes = WorkerSizes()
    parent = parent_reader(str(proc_tree(tmp_path, {100: 1, 150: 100})))
    watch = OomWatch(sizes, led, teach=lambda: None, parent=parent, watched=lambda: ["/m"])
    held = led.held_by([100])
    t, rss = tree(100, 20)  # a scan sees one bare worker of 20 MiB
    sizes.observe(held, {100: t}, rss, {grant.lease_id: CHARGE})
    # in a cgroup the daemon does not watch: neither taught nor judged
    assert not watch.seen(OomKill(150, "setuid", "/other", 1536 * MIB, uid=0))
    assert not watch.seen(OomKill(999, "elsewhere", "/other", 900 * MIB, uid=1000))
    assert watch.unattributed == 2 and sizes.figures()[("big", 1000)].worker_bytes == 20 * MIB
    sizes.observe([], {}, {}, {}, oom=False)  # the run ends, not judged: its bare size
    assert list(sizes.ended()) == [("big", 1000)]
    judged = WorkerSizes()
    watch = OomWatch(judged, led, teach=lambda: None, parent=parent, watched=lambda: ["/m"])
    judged.observe(held, {100: t}, rss, {grant.lease_id: CHARGE})
    assert not watch.seen(OomKill(999, "reaped", "/m/child", 900 * MIB, uid=1000))
    judged.observe([], {}, {}, {}, oom=False)
    assert judged.ended() == {}  # judged: 20 MiB under its 512 MiB charge, dropped


def test_a_run_charged_the_margin_whose_scans_saw_no_data_leaves_it() -> None:
    """A victim killed mid-write at 900 MiB: its job is charged 1.8 GiB. The next run,
    charged that, is seen only at a scan before its workers wrote their data (20 MiB of
    interpreter) and ends uncut: its peak is no size, and were the margin gone the job's
    figure would be the victim's 900 MiB again, which was killed mid-write."""
    sizes = WorkerSizes()
    assert sizes.killed(lease("L1", 100, 4), 900 * MIB, holder=False, charged=CHARGE)
    sizes.observe([], {}, {}, {})
    bare = lease("L2", 200, 4)
    t, rss = tree(200, 20, 20)
    sizes.observe([bare], {200: t}, rss, {"L2": 1800 * MIB})
    sizes.observe([], {}, {}, {})
    assert sizes.figures()[KEY] == Learned(1800 * MIB, 2, from_kill=True)
    seen = lease("L3", 300, 4)  # one seen at its data: its size is the figure
    t, rss = tree(300, 1500, 1500)
    sizes.observe([seen], {300: t}, rss, {"L3": 1800 * MIB})
    sizes.observe([], {}, {}, {})
    assert sizes.figures()[KEY] == Learned(1500 * MIB, 3)


def test_the_killed_run_keeps_its_victims_size_when_it_outlives_a_scan() -> None:
    """The run a kill taught goes on (its pool replaces the worker) and is scanned again,
    where the job's charge is the margin now: the victim's size is still what the run
    ends at, saved for the next daemon (it held more than the run's workers were
    charged when they started)."""
    sizes = WorkerSizes()
    held = lease("L1", 100, 4)
    t, rss = tree(100, 20, 20)
    sizes.observe([held], {100: t}, rss, {"L1": CHARGE})
    assert sizes.killed(held, 900 * MIB, holder=False, charged=CHARGE)
    sizes.observe([held], {100: t}, rss, {"L1": 1800 * MIB})  # charged the margin now
    # another of its workers started before the margin, killed at 800 MiB: a size too
    assert sizes.killed(held, 800 * MIB, holder=False, charged=1800 * MIB)
    sizes.observe([], {}, {}, {})
    assert sizes.ended() == {KEY: [(900 * MIB, 0, 0)]}
    assert sizes.figures()[KEY] == Learned(1800 * MIB, 1, from_kill=True)


def test_a_run_sized_before_the_kill_and_scanned_after_leaves_the_margin() -> None:
    """A run of the same job granted at 512 MiB a worker before the kill is scanned
    after it, when the job's charge is the margin, and ends uncut: its pool was sized
    before, so it says nothing of the margin (as where no scan came between)."""
    sizes = WorkerSizes()
    early = lease("L0", 200, 4)
    t, rss = tree(200, 1000)
    sizes.observe([early], {200: t}, rss, {"L0": CHARGE})
    assert sizes.killed(lease("L1", 100, 4), 900 * MIB, holder=False, charged=CHARGE)
    sizes.observe([early], {200: t}, rss, {"L0": 1800 * MIB})
    sizes.observe([], {}, {}, {})
    assert sizes.figures()[KEY] == Learned(1800 * MIB, 2, from_kill=True)


def test_a_run_pinned_before_any_charge_was_given_takes_its_kills_charge() -> None:
    """A run scanned with no charge given (memory not budgeted then) and live when its
    job's margin was set: a kill in it later is weighed against the charge it reports."""
    sizes = WorkerSizes()
    early = lease("L0", 200, 4)
    t, rss = tree(200, 20)
    sizes.observe([early], {200: t}, rss)
    assert sizes.killed(lease("L1", 100, 4), 900 * MIB, holder=False, charged=CHARGE)
    assert not sizes.killed(early, 300 * MIB, holder=False, charged=CHARGE)
    assert sizes.killed(early, 1000 * MIB, holder=False, charged=CHARGE)
    assert sizes.figures()[KEY] == Learned(2000 * MIB, 2, from_kill=True)
