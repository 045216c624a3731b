"""Output sinks: rotation, the tail ring and its offsets, daemon-mode lines, pipe reading."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from structlog.testing import capture_logs

from supervisord_batt.config.records import OutputConfig
from supervisord_batt.supervise.output import RING_BYTES, PipeReader, RotatingFile, StreamSink


def file_config(tmp_path: Path, max_bytes: int = 100, backups: int = 2) -> OutputConfig:
    return OutputConfig(mode="file", directory=tmp_path, max_bytes=max_bytes, backups=backups)


def test_rotation_keeps_backups_and_caps_sizes(tmp_path: Path) -> None:
    f = RotatingFile(tmp_path / "w.out.log", max_bytes=10, backups=2)
    for i in range(5):
        f.write(f"{i}".encode() * 10)
    f.close()
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["w.out.log", "w.out.log.1", "w.out.log.2"]
    assert (tmp_path / "w.out.log").read_text() == "4" * 10
    assert (tmp_path / "w.out.log.1").read_text() == "3" * 10
    assert (tmp_path / "w.out.log.2").read_text() == "2" * 10


def test_rotation_splits_a_write_larger_than_the_file(tmp_path: Path) -> None:
    f = RotatingFile(tmp_path / "w.log", max_bytes=4, backups=5)
    f.write(b"abcdefghij")
    f.close()
    assert (tmp_path / "w.log").read_bytes() == b"ij"
    assert (tmp_path / "w.log.1").read_bytes() == b"efgh"
    assert (tmp_path / "w.log.2").read_bytes() == b"abcd"


def test_no_backups_truncates(tmp_path: Path) -> None:
    f = RotatingFile(tmp_path / "w.log", max_bytes=4, backups=0)
    f.write(b"abcdef")
    f.close()
    assert [p.name for p in tmp_path.iterdir()] == ["w.log"]
    assert (tmp_path / "w.log").read_bytes() == b"ef"


def test_file_sink_names_and_tail_offsets(tmp_path: Path) -> None:
    sink = StreamSink("batt:1", "stderr", file_config(tmp_path, max_bytes=1 << 20), tmp_path)
    assert sink.path == tmp_path / "batt-1.err.log"
    sink.write(b"hello\n")
    sink.write(b"world\n")
    last = sink.read(None, 6)
    assert (last.data, last.start, last.end, last.truncated) == (b"world\n", 6, 12, False)
    follow = sink.read(12, 100)
    assert follow.data == b"" and follow.end == 12
    sink.write(b"more\n")
    assert sink.read(12, 100).data == b"more\n"
    sink.close()
    assert sink.path.read_bytes() == b"hello\nworld\nmore\n"


def test_ring_keeps_only_the_last_bytes_and_reports_truncation(tmp_path: Path) -> None:
    sink = StreamSink("a:0", "stdout", file_config(tmp_path, max_bytes=1 << 30), tmp_path)
    sink.write(b"x" * RING_BYTES)
    sink.write(b"y" * 100)
    old = sink.read(0, 50)
    assert old.truncated and old.start == 100 and old.data == b"x" * 50
    assert sink.read(None, 100).data == b"y" * 100
    sink.close()


def test_daemon_mode_logs_one_event_per_line(tmp_path: Path) -> None:
    config = OutputConfig(mode="daemon", directory=None, max_bytes=0, backups=0)
    sink = StreamSink("batt:0", "stdout", config, tmp_path)
    with capture_logs() as logs:
        sink.write(b"one\ntw")
        sink.write(b"o\nthree")
        sink.close()
    lines = [(e["instance"], e["stream"], e["line"]) for e in logs if e["event"] == "output"]
    assert lines == [
        ("batt:0", "stdout", "one"),
        ("batt:0", "stdout", "two"),
        ("batt:0", "stdout", "three"),
    ]
    assert list(tmp_path.iterdir()) == []


def test_pipe_reader_feeds_the_sink_until_eof(tmp_path: Path) -> None:
    async def run() -> StreamSink:
        sink = StreamSink("p:0", "stdout", file_config(tmp_path, max_bytes=1 << 20), tmp_path)
        r, w = os.pipe()
        reader = PipeReader(r, sink)
        os.write(w, b"abc\n" * 1000)
        os.close(w)
        deadline = asyncio.get_running_loop().time() + 5
        while reader.open and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.001)
        assert not reader.open
        sink.close()
        return sink

    sink = asyncio.run(run())
    assert sink.total == 4000
    assert (tmp_path / "p-0.out.log").read_bytes() == b"abc\n" * 1000


def test_a_file_renamed_away_is_followed_to_its_path(tmp_path: Path) -> None:
    """logrotate's default: rename, then expect the writer to reopen the path."""
    f = RotatingFile(tmp_path / "w.out.log", max_bytes=1 << 20, backups=2)
    f.write(b"before\n")
    assert not f.follow_path()  # nothing moved: nothing to do
    (tmp_path / "w.out.log").rename(tmp_path / "w.out.log.1")
    assert f.follow_path()
    f.write(b"after\n")
    f.close()
    assert (tmp_path / "w.out.log.1").read_bytes() == b"before\n"
    assert (tmp_path / "w.out.log").read_bytes() == b"after\n"


def test_a_rotation_that_finds_its_file_gone_opens_the_path_again(tmp_path: Path) -> None:
    f = RotatingFile(tmp_path / "w.log", max_bytes=8, backups=2)
    f.write(b"1234")
    (tmp_path / "w.log").unlink()  # removed behind our back, and not yet followed
    f.write(b"567890ab")  # crosses max_bytes: the rotation must not fail on the gone file
    f.write(b"cd")
    f.close()
    assert (tmp_path / "w.log").read_bytes() == b"90abcd"  # 8 bytes went to the gone file


def test_the_sink_reports_a_path_it_cannot_reopen_as_a_loss_reason(tmp_path: Path) -> None:
    d = tmp_path / "out"
    d.mkdir()
    sink = StreamSink("w:0", "stdout", file_config(d, max_bytes=1 << 20), d)
    assert sink.path is not None
    sink.path.unlink()
    d.chmod(0o777)  # writable by others: safepath refuses to open anything in it
    assert not sink.follow_path()
    assert "cannot reopen" in sink.lost_reason
    d.chmod(0o755)
    assert sink.follow_path()
    sink.write(b"x\n")
    sink.close()
    assert sink.path.read_bytes() == b"x\n"
