"""Lease lines: every grant, deny and release up to the rate, then counted and summarised."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from supervisord_batt import logs
from supervisord_batt.leaselog import LeaseLog
from supervisord_batt.leases import Grant, Lease, Request
from tests.unit.test_budget import FakeClock


@pytest.fixture
def out() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    logs.configure("json", logging.INFO, stream=stream)
    try:
        yield stream
    finally:
        logs.configure("json", logging.INFO)


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
    book.summarize()
    assert len(events(out)) == 3  # the second is not over: nothing yet
    clock.advance(1.0)
    book.summarize()
    summary = events(out)[-1]
    assert summary["event"] == "lease_lines_suppressed"
    assert (summary["grant"], summary["release"], summary["jobs"]) == (4, 5, 2)
    assert summary["rate"] == 3
    book.summarize()
    assert len(events(out)) == 4  # said once
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


def test_a_stopping_daemon_says_what_it_held_back(out: io.StringIO) -> None:
    book = LeaseLog(rate=1, clock=FakeClock())
    for _ in range(3):
        book.granted(request(), grant())
    book.summarize(final=True)
    assert events(out)[-1]["event"] == "lease_lines_suppressed" and events(out)[-1]["grant"] == 2
