"""The daemon's cheap look-ups: which live leases a set of pids holds (`held_by`) and
every live lease's holder pid (`lease_pids`), without computing the allocation."""

from __future__ import annotations

import copy
import dataclasses

from tests.support.budget import ledger, limit, request


def test_lease_pids_maps_every_live_lease_to_its_holder_pid() -> None:
    led = ledger()
    assert led.lease_pids() == {}
    a = led.acquire(request("a", pid=11)).lease_id
    b = led.acquire(request("b", pid=12)).lease_id
    c = led.acquire(request("c", pid=11)).lease_id
    assert led.lease_pids() == {a: 11, b: 12, c: 11}
    assert list(led.lease_pids()) == [a, b, c]  # in the order acquired
    led.release(b)
    assert led.lease_pids() == {a: 11, c: 11}


def test_held_by_gives_the_snapshots_of_the_leases_of_those_pids() -> None:
    led = ledger()
    a = led.acquire(request("a", 4, pid=11)).lease_id
    led.acquire(request("b", 4, pid=12))
    c = led.acquire(request("c", 4, pid=13)).lease_id
    led.statistics()  # the allocation is up to date: the snapshots are `lease`'s
    held = led.held_by([13, 11, 99])
    assert [lease.lease_id for lease in held] == [a, c]  # in the order acquired
    assert held == [led.lease(a), led.lease(c)]
    assert led.held_by(iter([])) == []
    assert led.held_by(p for p in (12,))[0].holder == "b"  # any iterable, once


def test_neither_computes_the_allocation() -> None:
    """After a change the allocation is stale until a call reads it: these calls do not
    read it, so their snapshots carry the last allocation's share and target (every other
    field is the lease's now), and the next reader computes the allocation as of that
    change, as it would have without them."""
    led = ledger(limit(40, 0))
    a = led.acquire(request("a", 30, pid=1)).lease_id
    assert led.lease(a).share == 30  # computed: a alone
    b = led.acquire(request("b", 30, pid=2)).lease_id  # a change: a's share is now 17
    twin = copy.deepcopy(led)
    assert led.lease_pids() == {a: 1, b: 2}
    (seen,) = led.held_by([1])
    now = led.lease(a)
    assert (now.share, now.target) == (17, 17)
    assert dataclasses.replace(seen, share=17, target=17) == now
    assert led.statistics() == twin.statistics()


def test_held_by_after_a_release_of_the_pid() -> None:
    led = ledger()
    a = led.acquire(request("a", 4, pid=11)).lease_id
    led.release(a)
    assert led.held_by([11]) == []
    assert led.lease_pids() == {}
