"""Issue 24, bursts: a real daemon with `budget.burst_window` holds the jobs of a burst
sequential with `retry_after`, and the project's client waits that out and renews before
it starts its pool, so it starts at a share that counts the whole burst.

The windows here are long (the most the config allows), so that asks made one after
another by this test fall within one on a busy host; nothing waits on a fixed time.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from supervisord_batt.client.leases import acquire
from tests.helpers import CALM, WireClient, wait_until
from tests.support.daemons import DaemonHandle

WINDOW = 1.0  # seconds: budget.burst_window's most


def _daemon(daemon: Callable[..., DaemonHandle], window: float = WINDOW) -> DaemonHandle:
    budget = {"burst_window": window, "cpu_cap": 8, "memory_per_slot": "1MiB", "pressure": CALM}
    return daemon({"budget": budget})


def _held(reply: dict[str, Any]) -> bool:
    return (
        reply["ok"] is True
        and reply["kind"] == "sequential"
        and str(reply["reason"]).startswith("burst:")
        and 0 < float(reply["retry_after"]) <= 2 * WINDOW
    )


def test_a_burst_is_held_with_retry_after_and_the_clients_renewal_gets_the_pool(
    daemon: Callable[..., DaemonHandle],
) -> None:
    d = _daemon(daemon)
    with d.client() as a, d.client() as b:
        replies = [c.request("acquire", want=2, job="burst") for c in (a, b)]
        assert all(_held(r) for r in replies), replies
        # the project's client, asking within the window of those two: held too, it
        # waits out retry_after and renews before it returns the grant its pool starts at
        grant = acquire(2, job="burst", socket_path=d.socket)
        try:
            assert (grant.kind, grant.size, grant.retry_after) == ("process", 2, 0.0)
        finally:
            grant.release()
    denied = [e for e in d.events("deny") if e["job"] == "burst"]
    assert len(denied) == 3 and all(e["reason"].startswith("burst:") for e in denied)


def test_a_lone_jobs_first_ask_is_held_once_then_granted_its_pool(
    daemon: Callable[..., DaemonHandle],
) -> None:
    d = _daemon(daemon)
    grant = acquire(3, job="lone", socket_path=d.socket)
    try:
        assert (grant.kind, grant.size, grant.degraded) == ("process", 3, False)
    finally:
        grant.release()
    (first,) = d.events("deny")
    assert first["reason"] == "burst: the first to ask, others may follow"


def test_a_process_seen_asking_alone_gets_its_pool_at_once_the_next_time(
    daemon: Callable[..., DaemonHandle],
) -> None:
    """A script's next call after its pool was given back, a notebook's next cell: no
    one followed the process's first ask within the window, so its next ask into an
    empty ledger is not held (a process not seen yet still is: the test above)."""
    d = _daemon(daemon, window=0.25)
    grants = []
    for _ in range(2):  # the first waits its hold out, so the second asks a window later
        grant = acquire(3, job="lone", socket_path=d.socket)
        grant.release()
        grants.append((grant.kind, grant.size, grant.reason))
    assert grants == [("process", 3, "grown to 3"), ("process", 3, "granted in full")], grants
    denied = [(e["job"], e["reason"]) for e in d.events("deny")]
    assert denied == [("lone", "burst: the first to ask, others may follow")], denied


def test_an_ask_outside_the_window_is_not_held(daemon: Callable[..., DaemonHandle]) -> None:
    d = _daemon(daemon, window=0.25)
    with d.client() as a, d.client() as b:
        assert _held(a.request("acquire", want=2, job="first"))

        def granted() -> bool:  # renewed until the burst window has passed
            reply = a.request("renew", lease="L1")
            return reply["kind"] == "process" and "retry_after" not in reply

        wait_until(granted, timeout=30, what="the first lease granted after the window")
        later = b.request("acquire", want=2, job="later")
        assert (later["kind"], later["workers"]) == ("process", 2), repr(later)
        assert "retry_after" not in later


def test_no_ask_is_held_with_the_window_off(daemon: Callable[..., DaemonHandle]) -> None:
    d = _daemon(daemon, window=0.0)
    with WireClient(d.socket) as a:
        reply = a.request("acquire", want=2, job="off")
        assert (reply["kind"], reply["workers"]) == ("process", 2), reply
        assert "retry_after" not in reply


def test_a_held_first_ask_left_no_pool_by_the_burst_is_let_go_at_its_next_renew(
    daemon: Callable[..., DaemonHandle],
) -> None:
    """Four jobs on 2 CPUs: the first, alone, would get a pool and is held; the second's
    ask leaves it a share of one CPU, which the end of the window would grant
    sequential too. So its next renew (the client renews a held grant every
    BURST_POLL) lets it go now, not a window later."""
    budget = {"burst_window": WINDOW, "cpu_cap": 2, "memory_per_slot": "1MiB", "pressure": CALM}
    d = daemon({"budget": budget})
    with d.client() as a, d.client() as b:
        first = a.request("acquire", want=2, job="first")
        assert _held(first), first
        second = b.request("acquire", want=2, job="second")  # 1 CPU each: no pool to hold
        assert (second["kind"], second.get("retry_after")) == ("sequential", None), second
        renewed = a.request("renew", lease=first["lease"], workers_in_use=0)
        assert (renewed["kind"], renewed.get("retry_after")) == ("sequential", None), renewed
        assert not str(renewed["reason"]).startswith("burst:"), renewed


def test_a_reexecuted_daemon_goes_on_knowing_who_asks_alone(
    daemon: Callable[..., DaemonHandle],
) -> None:
    """An upgrade re-executes the daemon under running kernels: a process it had seen
    asking alone is still not held (the record written before the exec carries it)."""
    d = _daemon(daemon, window=0.25)
    for _ in range(2):  # held once; the next call teaches the daemon this one asks alone
        acquire(3, job="lone", socket_path=d.socket).release()
    out = d.cli("reexec")
    assert out.returncode == 0, out.stdout + out.stderr
    grant = acquire(3, job="lone", socket_path=d.socket)
    grant.release()
    assert (grant.kind, grant.size, grant.reason) == ("process", 3, "granted in full"), grant
    denied = [(e["job"], e["reason"]) for e in d.events("deny")]
    assert denied == [("lone", "burst: the first to ask, others may follow")], denied
