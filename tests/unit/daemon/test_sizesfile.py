"""Each job's learned figures kept across restarts (issue 24): the ended runs saved
beside the socket, restored by the next daemon, and a file not to be trusted (a symlink,
another user's, garbled, too large, of another shape) not read, said once."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from supervisord_batt.daemon import sizesfile
from supervisord_batt.daemon.sizesfile import SizesFile
from supervisord_batt.daemon.workersizes import Learned, Peak, WorkerSizes
from tests.support.sizes import MIB, lease, tree


@pytest.fixture
def socket(tmp_path: Path) -> Path:
    home = tmp_path / "run"
    home.mkdir(mode=0o700)
    return home / "s.sock"


def learned() -> WorkerSizes:
    sizes = WorkerSizes()
    sizes.restore({("big", 1000): [Peak(300 * MIB, 3, 6), Peak(310 * MIB, 3, 5)]})
    sizes.restore({("small", 1001): [Peak(20 * MIB)]})  # its tasks never seen
    return sizes


def test_the_ended_runs_are_restored_by_the_next_daemon(socket: Path) -> None:
    before = learned()
    # a run of big: two workers of 290 MiB, 2 threads each, 6 more tasks in its pool
    t, rss = tree(100, 290, 280, threads=(7, 2, 2))
    before.observe([lease("L1", 100, 2, "big")], {100: t}, rss)
    before.observe([], {}, {})  # its lease is gone: the run ended
    assert before.changed and before.ended()[("big", 1000)][-1] == Peak(290 * MIB, 2, 6)
    SizesFile(socket).save(before)
    assert not before.changed
    path = sizesfile.sizes_path(socket)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    after = WorkerSizes()
    assert SizesFile(socket).load(after) == 2
    assert after.figures() == before.figures()
    assert after.figures()[("big", 1000)] == Learned(310 * MIB, 3, 3, 6)
    assert after.figures()[("small", 1001)] == Learned(20 * MIB, 1)
    assert not after.changed  # nothing new to save


def test_a_kills_margin_is_restored_by_the_next_daemon(socket: Path) -> None:
    """A worker killed mid-write at 900 MiB charges its job 1.8 GiB until a run so
    charged ends uncut; a daemon restarted (or re-executed) before that charged the
    victim's 900 MiB alone, and its next run was killed again. A file of a release
    before the margins still reads (no margins)."""
    before = WorkerSizes()
    assert before.killed(lease("L1", 100, 4, "big"), 900 * MIB, holder=False, charged=512 * MIB)
    assert before.changed  # saved at the next scan, though no run ended
    SizesFile(socket).save(before)
    after = WorkerSizes()
    assert SizesFile(socket).load(after) == 1
    assert after.figures() == {("big", 1000): Learned(1800 * MIB, 0, from_kill=True)}
    old = {"version": 1, "jobs": [["big", 1000, [[900 * MIB, 0, 0]]]]}
    sizesfile.sizes_path(socket).write_text(json.dumps(old))
    assert SizesFile(socket).load(WorkerSizes()) == 1


def test_no_file_is_no_figure_and_no_event(socket: Path) -> None:
    with capture_logs() as logs:
        assert SizesFile(socket).load(WorkerSizes()) == 0
    assert logs == []


def ignored(socket: Path) -> list[str]:
    """Load into a fresh WorkerSizes: nothing restored; the events said."""
    sizes = WorkerSizes()
    with capture_logs() as logs:
        assert SizesFile(socket).load(sizes) == 0
    assert sizes.figures() == {}
    return [e["event"] for e in logs]


def test_a_symlink_or_another_users_file_is_not_read(socket: Path, tmp_path: Path) -> None:
    planted = tmp_path / "planted"
    SizesFile(planted).save(learned())
    path = sizesfile.sizes_path(socket)
    path.symlink_to(sizesfile.sizes_path(planted))
    assert ignored(socket) == ["worker_sizes_ignored"]
    path.unlink()
    SizesFile(socket).save(learned())
    os.chown(path, 65534, 65534)  # nobody's: another user's file in our directory
    assert ignored(socket) == ["worker_sizes_ignored"]


@pytest.mark.parametrize(
    "text",
    [
        b"not json",
        b'{"version": 2, "jobs": []}',
        b'{"version": 1, "jobs": {"big": 1}}',
        b'{"version": 1, "jobs": [["big", -1, [[1, 1, 1]]]]}',
        b'{"version": 1, "jobs": [["big", 1000, []]]}',
        b'{"version": 1, "jobs": [["big", 1000, [[1, 1]]]]}',
        b'{"version": 1, "jobs": [["big", 1000, [[1, true, 1]]]]}',
        b'{"version": 1, "jobs": [["big", 1000, [[1.5, 1, 1]]]]}',
        b'{"version": 1, "jobs": [["", 1000, [[1, 1, 1]]]]}',
        json.dumps({"version": 1, "jobs": [["big", 1000, [[1, 1, 1]] * 33]]}).encode(),
        b" " * (sizesfile.MAX_BYTES + 1),
        b'{"version": 1, "jobs": [], "margins": {"big": 1}}',
        b'{"version": 1, "jobs": [], "margins": [["big", 1000, 0]]}',
        b'{"version": 1, "jobs": [], "margins": [["big", 1000, 1.5]]}',
        b'{"version": 1, "jobs": [], "margins": [["big", 1000]]}',
        b'{"version": 1, "jobs": [], "margins": [["", 1000, 1]]}',
    ],
)
def test_a_file_of_another_shape_is_not_read_at_all(socket: Path, text: bytes) -> None:
    path = sizesfile.sizes_path(socket)
    path.write_bytes(text)
    path.chmod(0o600)
    assert ignored(socket) == ["worker_sizes_ignored"]


def test_a_failed_save_is_said_once_in_a_row(socket: Path) -> None:
    gone = socket.parent / "gone" / "s.sock"  # its directory does not exist
    f = SizesFile(gone)
    sizes = learned()
    sizes.changed = True
    with capture_logs() as logs:
        f.save(sizes)
        f.save(sizes)
    assert [e["event"] for e in logs] == ["worker_sizes_not_saved"]
    assert sizes.changed  # still to be saved


def test_end_all_keeps_the_live_runs(socket: Path) -> None:
    sizes = WorkerSizes()
    t, rss = tree(100, 100, threads=(5, 1))  # one worker of 100 MiB, 4 more tasks
    sizes.observe([lease("L1", 100, 1, "big")], {100: t}, rss)
    assert not sizes.changed and sizes.ended() == {}  # a live run, not ended yet
    sizes.end_all()
    assert sizes.changed and sizes.ended() == {("big", 1000): [Peak(100 * MIB, 1, 4)]}
    assert sizes.figures() == {("big", 1000): Learned(100 * MIB, 1, 1, 4)}
