"""`Throttle` on its own, on a fake clock: at most `rate` lines in any second of the
clock, the rest counted by event and by uid and written as one summary line; a rate of 0
writes everything; the uid table stays bounded however many uids a flood uses."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from structlog.testing import capture_logs

from supervisord_batt.daemon.throttle import PerSecond, Throttle
from tests.fakes import FakeClock


def lines(logged: Sequence[Mapping[str, Any]], event: str) -> list[Mapping[str, Any]]:
    return [e for e in logged if e["event"] == event]


def test_writes_up_to_the_rate_each_second_and_counts_the_rest() -> None:
    clock = FakeClock(now=100.0)
    t = Throttle(3, clock=clock)
    with capture_logs() as logged:
        written = [t.emit("warning", "bad_message", uid=1000, reason="x") for _ in range(5)]
        clock.advance(0.5)  # the same second: still held
        written.append(t.emit("warning", "bad_message", uid=1000))
        clock.advance(0.6)  # the next second: written again
        written.append(t.emit("warning", "bad_message", uid=1000))
    assert written == [True, True, True, False, False, False, True]
    assert len(lines(logged, "bad_message")) == 4
    assert lines(logged, "bad_message")[0] == {
        "event": "bad_message",
        "log_level": "warning",
        "component": "daemon",
        "uid": 1000,
        "reason": "x",
    }


def test_the_summary_counts_by_event_and_by_uid_then_starts_again() -> None:
    clock = FakeClock(now=7.0)
    t = Throttle(1, clock=clock, summary="peer_lines_suppressed", about="refused peers")
    for uid, event in ((1, "a"), (1, "a"), (2, "b"), (2, "a"), (3, "b")):
        t.emit("info", event, uid=uid)
    with capture_logs() as logged:
        t.summarize()
        t.summarize()  # nothing held since: no second line
    (summary,) = logged
    assert summary == {
        "event": "peer_lines_suppressed",
        "log_level": "warning",
        "component": "daemon",
        "lines": 4,
        "events": {"a": 2, "b": 2},
        "by_uid": {"1": 1, "2": 2, "3": 1},
        "reason": "more than 1 lines a second about refused peers",
    }


def test_nothing_held_writes_no_summary() -> None:
    t = Throttle(10, clock=FakeClock())
    with capture_logs() as logged:
        t.emit("info", "one")
        t.summarize()
    assert [e["event"] for e in logged] == ["one"]


def test_rate_zero_writes_every_line() -> None:
    t = Throttle(0, clock=FakeClock())
    with capture_logs() as logged:
        assert all(t.emit("error", "handler_failed", uid=5) for _ in range(1000))
        t.summarize()
    assert len(lines(logged, "handler_failed")) == 1000
    assert lines(logged, "bad_input_suppressed") == []


def test_a_flood_from_many_uids_keeps_the_uid_table_bounded() -> None:
    t = Throttle(1, clock=FakeClock())
    t.emit("info", "flood", uid=0)  # the one written line
    for uid in range(1, 1001):
        t.emit("info", "flood", uid=uid)
    with capture_logs() as logged:
        t.summarize()
    (summary,) = logged
    assert summary["lines"] == 1000
    # 64 uids counted on their own, the other 936 summed as "other": the top ten shown
    assert summary["by_uid"]["other"] == 1000 - 64
    assert len(summary["by_uid"]) == 10


def test_a_clock_step_back_starts_a_new_count() -> None:
    clock = FakeClock(now=50.0)
    t = Throttle(1, clock=clock)
    assert t.emit("info", "e") is True
    assert t.emit("info", "e") is False
    clock.now = 40.0  # the wall clock stepped back: another second, a new count
    assert t.emit("info", "e") is True


def test_the_window_takes_the_rate_of_each_call_as_a_reload_may_change_it() -> None:
    window = PerSecond(FakeClock(now=3.2))
    assert [window.allow(2) for _ in range(3)] == [True, True, False]
    assert window.allow(3) is True  # raised within the second: one more
    assert window.allow(3) is False
    assert all(window.allow(0) for _ in range(100))  # 0: no limit
