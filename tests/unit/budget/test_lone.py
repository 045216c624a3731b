"""The burst hold learns which jobs ask alone (budget.lone): a job whose first ask into an
empty ledger was followed by no other within the window is not held there again, until
it comes in a burst."""

from __future__ import annotations

from supervisord_batt.budget.ledger import BudgetLedger
from supervisord_batt.budget.lone import LONE_MAX, LoneJobs
from supervisord_batt.budget.records import Grant
from tests.fakes import FakeClock
from tests.support.budget import config, request, sample

WINDOW = 0.5
FIRST = "burst: the first to ask, others may follow"


def _ledger(clock: FakeClock) -> BudgetLedger:
    return BudgetLedger(config(burst_window=WINDOW), clock, sample(cpus=16.0))


def _alone(led: BudgetLedger, clock: FakeClock, job: str, uid: int = 1000) -> Grant:
    """One run of `job` alone: its ask, the hold waited out, its pool, its release; a
    second later, the grant its renewal got."""
    first = led.acquire(request(job, 4, job=job, uid=uid))
    clock.advance(first.retry_after)
    grant = led.renew(first.lease_id, 0)
    clock.advance(1.0)
    led.release(first.lease_id)
    return grant


def test_a_job_seen_asking_alone_is_not_held_into_an_empty_ledger_again() -> None:
    clock = FakeClock()
    led = _ledger(clock)
    first = led.acquire(request("k1", 4, job="notebook"))
    assert (first.kind, first.reason, first.retry_after) == ("sequential", FIRST, WINDOW)
    clock.advance(WINDOW)
    assert led.renew(first.lease_id, 0).kind == "process"
    clock.advance(5.0)  # its pool idles out, the ledger is empty again
    led.release(first.lease_id)
    clock.advance(30.0)  # the next cell that calls joblib
    again = led.acquire(request("k1", 4, job="notebook"))
    assert (again.kind, again.workers, again.retry_after) == ("process", 4, 0.0)
    led.release(again.lease_id)
    clock.advance(1.0)
    # a job never seen, the same job of another user: held as before
    for job, uid in (("other", 1000), ("notebook", 1001)):
        new = led.acquire(request("k2", 4, job=job, uid=uid))
        assert (new.kind, new.reason) == ("sequential", FIRST), (job, uid)
        led.release(new.lease_id)
        clock.advance(1.0)


def test_a_job_that_comes_in_a_burst_is_held_again() -> None:
    clock = FakeClock()
    led = _ledger(clock)
    assert _alone(led, clock, "a").kind == "process"
    lone = led.acquire(request("h1", 4, job="a"))  # learned: its pool at once
    assert (lone.kind, lone.retry_after) == ("process", 0.0)
    clock.advance(0.1)
    follower = led.acquire(request("h2", 4, job="b"))  # within the window: a burst
    assert follower.reason == "burst: another job asked 0.10 s before"
    for grant in (lone, follower):
        led.release(grant.lease_id)
    clock.advance(10.0)
    for job in ("a", "b"):  # both came in a burst: held again as the first to ask
        held = led.acquire(request("h3", 4, job=job))
        assert (held.kind, held.reason) == ("sequential", FIRST), job
        led.release(held.lease_id)
        clock.advance(10.0)


def test_a_first_ask_followed_within_the_window_is_not_learned_alone() -> None:
    clock = FakeClock()
    led = _ledger(clock)
    first = led.acquire(request("h1", 4, job="a"))
    clock.advance(WINDOW / 2)
    second = led.acquire(request("h2", 4, job="b"))
    clock.advance(WINDOW)
    assert [led.renew(g.lease_id, 0).kind for g in (first, second)] == ["process"] * 2
    for grant in (first, second):
        led.release(grant.lease_id)
    clock.advance(10.0)
    again = led.acquire(request("h1", 4, job="a"))
    assert (again.kind, again.reason, again.retry_after) == ("sequential", FIRST, WINDOW)


def test_the_jobs_remembered_are_bounded_the_oldest_forgotten_first() -> None:
    lone = LoneJobs()
    for i in range(LONE_MAX + 10):
        lone.asked((f"job{i}", 0), in_burst=False, first=True)
    lone.asked(("last", 0), in_burst=False, first=False)  # job{LONE_MAX + 9} asked alone
    assert len(lone.alone) == LONE_MAX
    assert ("job0", 0) not in lone and ("job10", 0) in lone
    assert (f"job{LONE_MAX + 9}", 0) in lone
