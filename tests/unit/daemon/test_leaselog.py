"""Lease lines: every grant, deny and release up to the rate, then counted and summarised."""

from __future__ import annotations

import io
import json

from supervisord_batt.budget.records import Grant, Lease, Request
from supervisord_batt.daemon.leaselog import LeaseLog
from tests.fakes import FakeClock


def events(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def request(job: str = "batt", want: int = 2) -> Request:
    return Request(holder="c1", pid=42, uid=0, job=job, want=want)


def grant(kind: str = "process", workers: int = 2) -> Grant:
    return Grant("L1", kind, workers, workers, "normal", 30.0, "fits")  # type: ignore[arg-type]


def lease(job: str = "batt") -> Lease:
    return Lease("L1", "c1", 42, 0, job, "process", 2, 2, 2, 2, 7, 8, 1, 0.0, 0.0, 0.0)


def test_every_line_within_the_rate_is_whole(out: io.StringIO) -> None:
    book = LeaseLog(rate=10, clock=FakeClock())
    book.granted(request(), grant())
    book.granted(request(want=4), grant("sequential", 0))
    book.ended("release", lease(), "released by holder")
    first, second, third = events(out)
    assert first["event"] == "grant" and first["pid"] == 42 and first["workers"] == 2
    assert first["job"] == "batt" and first["reason"] == "fits"
    assert second["event"] == "deny" and second["want"] == 4
    assert third["event"] == "release" and third["reason"] == "released by holder"


def test_past_the_rate_lines_are_counted_then_summarised(out: io.StringIO) -> None:
    clock = FakeClock(1000.2)
    book = LeaseLog(rate=3, clock=clock)
    for i in range(6):
        book.granted(request(job=f"job{i % 2}"), grant())
        book.ended("release", lease(job=f"job{i % 2}"), "released by holder")
    assert len(events(out)) == 3  # the rate, in this second
    book.summarize()  # the daemon's tick
    summary = events(out)[-1]
    assert summary["event"] == "lease_lines_suppressed"
    assert (summary["grant"], summary["release"], summary["jobs"]) == (4, 5, 2)
    assert summary["rate"] == 3
    book.summarize()
    assert len(events(out)) == 4  # said once
    book.granted(request(), grant())  # still this second: held back
    assert len(events(out)) == 4
    clock.advance(1.0)
    book.granted(request(), grant())  # a new second: lines are written again
    assert events(out)[-1]["event"] == "grant"


def test_expired_leases_are_never_held_back(out: io.StringIO) -> None:
    book = LeaseLog(rate=1, clock=FakeClock())
    book.granted(request(), grant())
    for _ in range(3):
        book.ended("lease_expired", lease(), "not renewed within 30s")
    assert [e["event"] for e in events(out)] == ["grant"] + ["lease_expired"] * 3
    assert events(out)[-1]["level"] == "warning"


def test_rate_zero_writes_every_line(out: io.StringIO) -> None:
    book = LeaseLog(rate=0, clock=FakeClock())
    for _ in range(500):
        book.granted(request(), grant())
    assert len(events(out)) == 500


def test_the_next_tick_says_what_was_held_back(out: io.StringIO) -> None:
    book = LeaseLog(rate=1, clock=FakeClock())
    for _ in range(3):
        book.granted(request(), grant())
    book.summarize()
    assert events(out)[-1]["event"] == "lease_lines_suppressed" and events(out)[-1]["grant"] == 2


def test_a_flood_that_goes_on_is_summarised_every_second(out: io.StringIO) -> None:
    """Summaries must not wait for the flood to stop: lease lines arriving within every
    second must not keep putting the summary off."""
    clock = FakeClock(2000.0)
    book = LeaseLog(rate=5, clock=clock)
    for _ in range(10):  # ten seconds of 100 releases a second, a tick each second
        for _ in range(100):
            clock.advance(0.01)
            book.ended("release", lease(job=f"j{int(clock.now)}"), "released by holder")
        book.summarize()
    summaries = [e for e in events(out) if e["event"] == "lease_lines_suppressed"]
    assert len(summaries) == 10  # one a tick
    written = [e for e in events(out) if e["event"] == "release"]
    book.summarize()
    summaries = [e for e in events(out) if e["event"] == "lease_lines_suppressed"]
    assert len(written) + sum(int(s["release"]) for s in summaries) == 1000  # type: ignore[call-overload]


def test_job_names_counted_are_bounded(out: io.StringIO) -> None:
    book = LeaseLog(rate=1, clock=FakeClock())
    for i in range(5000):
        book.granted(request(job=f"job-{i}-" + "x" * 100), grant())
    book.summarize()
    summary = events(out)[-1]
    assert summary["grant"] == 4999 and summary["jobs"] == 1000
    assert summary["jobs_counted_up_to"] == 1000
