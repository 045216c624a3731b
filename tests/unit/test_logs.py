"""The log sink: JSON lines, timestamps, and the daemon's one write per loop iteration."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import os
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest

from supervisord_batt import logs


class CountingStream(io.StringIO):
    """A log stream that counts the writes it gets."""

    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def write(self, s: str) -> int:
        self.writes += 1
        return super().write(s)

    def isatty(self) -> bool:
        return False


@pytest.fixture
def stream() -> Iterator[CountingStream]:
    out = CountingStream()
    logs.configure("json", logging.INFO, stream=out)
    try:
        yield out
    finally:
        logs.write_per_iteration(None)
        logs.configure("json", logging.INFO)


def lines(out: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in out.getvalue().splitlines()]


def test_line_is_json_with_timestamp_level_event_first(stream: CountingStream) -> None:
    before = time.time()
    logs.get_logger(component="t").info("grant", lease="L1", pid=7, workers=2)
    after = time.time()
    (line,) = lines(stream)
    assert list(line)[:3] == ["timestamp", "level", "event"]
    assert line["level"] == "info" and line["event"] == "grant"
    assert line["component"] == "t" and line["lease"] == "L1" and line["pid"] == 7
    stamp = str(line["timestamp"])
    assert stamp.endswith("Z") and len(stamp) == len("2026-11-30T13:58:45.123456Z")
    at = datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
    assert before - 1e-6 <= at <= after + 1e-6


def test_level_filter_drops_lower_levels(stream: CountingStream) -> None:
    log = logs.get_logger()
    log.debug("quiet")
    log.warning("loud")
    assert [line["event"] for line in lines(stream)] == ["loud"]


def test_without_a_loop_every_line_is_written_at_once(stream: CountingStream) -> None:
    log = logs.get_logger()
    log.info("one")
    assert stream.writes == 1
    log.info("two")
    assert stream.writes == 2


def test_in_the_daemon_loop_an_iteration_lines_go_out_in_one_write(
    stream: CountingStream,
) -> None:
    log = logs.get_logger()

    async def burst() -> tuple[str, int]:
        logs.write_per_iteration(asyncio.get_running_loop())
        for i in range(50):
            log.info("grant", n=i)
        held = stream.getvalue()
        await asyncio.sleep(0)  # the iteration ends: the sink writes
        await asyncio.sleep(0)
        return held, stream.writes

    held, writes = asyncio.run(burst())
    assert held == ""  # nothing written while the iteration was still running
    assert writes == 1
    assert [line["n"] for line in lines(stream)] == list(range(50))


def test_a_large_burst_is_written_before_the_iteration_ends(stream: CountingStream) -> None:
    log = logs.get_logger()

    async def burst() -> int:
        logs.write_per_iteration(asyncio.get_running_loop())
        for i in range(400):
            log.info("grant", n=i, padding="x" * 300)
        return len(stream.getvalue())

    written = asyncio.run(burst())
    assert written >= 64 * 1024  # the cap flushed on its own
    logs.write_per_iteration(None)
    assert [line["n"] for line in lines(stream)] == list(range(400))


def test_leaving_the_loop_writes_what_is_held(stream: CountingStream) -> None:
    log = logs.get_logger()

    async def last_words() -> None:
        logs.write_per_iteration(asyncio.get_running_loop())
        log.info("stopping")
        logs.write_per_iteration(None)

    asyncio.run(last_words())
    assert [line["event"] for line in lines(stream)] == ["stopping"]


def test_reconfigure_sends_held_lines_to_the_old_stream(stream: CountingStream) -> None:
    log = logs.get_logger()
    other = CountingStream()

    async def reload() -> None:
        logs.write_per_iteration(asyncio.get_running_loop())
        log.info("before")
        logs.configure("json", logging.INFO, stream=other)
        log.info("after")
        logs.write_per_iteration(None)

    asyncio.run(reload())
    assert [line["event"] for line in lines(stream)] == ["before"]
    assert [line["event"] for line in lines(other)] == ["after"]


def test_a_broken_stream_does_not_break_the_loop(stream: CountingStream) -> None:
    class Broken(CountingStream):
        def write(self, s: str) -> int:
            raise BrokenPipeError(32, "Broken pipe")

    logs.configure("json", logging.INFO, stream=Broken())
    errors: list[dict[str, object]] = []

    async def log_some() -> None:
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(lambda _loop, context: errors.append(context))
        logs.write_per_iteration(loop)
        logs.get_logger().info("lost")
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        logs.configure("json", logging.INFO, stream=stream)
        logs.get_logger().info("kept")
        logs.write_per_iteration(None)

    asyncio.run(log_some())
    assert errors == []
    # what the broken stream could not take is written to the next one, first
    assert [line["event"] for line in lines(stream)] == ["lost", "kept"]


def test_exception_lines_carry_the_traceback(stream: CountingStream) -> None:
    log = logs.get_logger()
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("handler_failed", conn="c1")
    try:
        raise KeyError("gone")
    except KeyError as exc:
        caught = exc
    log.error("handler_failed", conn="c2", exc_info=caught)  # after the except block
    first, second = lines(stream)
    assert first["level"] == "error" and "ValueError: boom" in str(first["exception"])
    assert second["conn"] == "c2" and "KeyError: 'gone'" in str(second["exception"])


def test_bound_context_and_console_format() -> None:
    out = CountingStream()
    logs.configure("console", logging.DEBUG, stream=out)
    try:
        logs.get_logger(component="daemon").bind(program="batt").debug("spawned", pid=42)
    finally:
        logs.configure("json", logging.INFO)
    text = out.getvalue()
    assert "spawned" in text and "program=batt" in text and "pid=42" in text
    assert "component=daemon" in text and not text.lstrip().startswith("{")


def test_capture_logs_sees_loggers_cached_before_a_reconfigure(stream: CountingStream) -> None:
    from structlog.testing import capture_logs

    log = logs.get_logger(component="early")
    log.info("cached")  # the logger is cached with the processor list of this configure
    logs.configure("json", logging.INFO, stream=stream)  # a reload configures again
    with capture_logs() as captured:
        log.info("caught", n=1)
    assert [e["event"] for e in captured] == ["caught"]
    assert "caught" not in stream.getvalue()


class PipeStream(io.TextIOBase):
    """A log stream on a real non-blocking pipe: full until the test reads it."""

    def __init__(self) -> None:
        self.r, self.w = os.pipe()
        os.set_blocking(self.w, False)
        os.set_blocking(self.r, False)

    def fileno(self) -> int:
        return self.w

    def isatty(self) -> bool:
        return False

    def fill(self) -> None:
        with contextlib.suppress(BlockingIOError):
            while True:
                os.write(self.w, b"\0" * 65536)

    def read_all(self) -> bytes:
        out = b""
        with contextlib.suppress(BlockingIOError):
            while chunk := os.read(self.r, 65536):
                out += chunk
        return out

    def close(self) -> None:
        os.close(self.r)
        os.close(self.w)


def test_lines_a_full_log_cannot_take_are_written_once_it_can() -> None:
    pipe = PipeStream()
    logs.configure("json", logging.INFO, stream=pipe)  # type: ignore[arg-type]
    try:
        pipe.fill()
        log = logs.get_logger()
        log.warning("timeout_kill", instance="batt:0")
        log.info("exit", instance="batt:0")
        logs.flush()
        assert pipe.read_all().strip(b"\0") == b""  # nothing got through: both kept
        log.info("later")
        logs.flush()  # room now: the kept lines first, in order, then the new one
        got = [json.loads(x) for x in pipe.read_all().decode().splitlines()]
        assert [x["event"] for x in got] == ["timeout_kill", "exit", "later"]
    finally:
        logs.configure("json", logging.INFO)
        pipe.close()


def test_past_the_backlog_bound_the_oldest_lines_go_and_are_counted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(logs, "MAX_BACKLOG", 2000)
    pipe = PipeStream()
    logs.configure("json", logging.INFO, stream=pipe)  # type: ignore[arg-type]
    try:
        pipe.fill()
        log = logs.get_logger()
        for i in range(100):  # about 80 bytes a line: most of them cannot be kept
            log.info("line", n=i)
            logs.flush()
        pipe.read_all()
        log.info("back")
        logs.flush()
        got = [json.loads(x) for x in pipe.read_all().decode().splitlines()]
        kept = [x["n"] for x in got if x["event"] == "line"]
        assert kept == list(range(100 - len(kept), 100)) and 0 < len(kept) < 100
        assert got[-2]["event"] == "back"
        assert got[-1]["event"] == "log_lines_lost"
        assert got[-1]["lines"] == 100 - len(kept)
        assert got[-1]["reason"]
    finally:
        logs.configure("json", logging.INFO)
        pipe.close()


def test_reopen_follows_a_log_file_renamed_away(tmp_path: Path) -> None:
    path = tmp_path / "daemon.log"
    logs.configure("json", logging.INFO, log_file=path)
    try:
        log = logs.get_logger()
        log.info("before")
        path.rename(tmp_path / "daemon.log.1")
        log.info("still_old")
        logs.reopen()
        log.info("after")
    finally:
        logs.configure("json", logging.INFO)
    old = [json.loads(x)["event"] for x in (tmp_path / "daemon.log.1").read_text().splitlines()]
    new = [json.loads(x)["event"] for x in path.read_text().splitlines()]
    assert old == ["before", "still_old"] and new == ["after"]
