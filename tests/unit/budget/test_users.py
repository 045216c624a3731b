"""A lease that asked for no worker holds no CPU (issue 22): one user's leases of 0 workers,
renewed, made every other job of a 2-CPU host sequential."""

from __future__ import annotations

from tests.fakes import FakeClock
from tests.unit.budget.conftest import ledger, request

ROOT, ALICE = 0, 1000


def test_leases_that_ask_for_no_worker_hold_no_cpu() -> None:
    """The measured attack: one user holding two leases that asked for 0 workers on a
    2-CPU host made every other job sequential ("cpu cap: 2 CPUs, 2 in use")."""
    clock = FakeClock()
    led = ledger(cpus=2.0, clock=clock, lease_ttl=30.0)
    held = [led.acquire(request(holder, 0, uid=ALICE)).lease_id for holder in ("x1", "x2")]
    for _ in range(3):  # renewed every 10 s: they stay
        clock.advance(10.0)
        assert [led.renew(lease_id).workers for lease_id in held] == [0, 0]
        assert not led.expire()
    grant = led.acquire(request("root", 4, uid=ROOT))
    assert (grant.kind, grant.workers) == ("process", 2)
    # and its own user's jobs alike: one user, 0-worker leases beside a job that asks
    led = ledger(cpus=2.0)
    led.acquire(request("x1", 0, uid=ALICE))
    led.acquire(request("x2", 0, uid=ALICE))
    assert led.acquire(request("job", 4, uid=ALICE)).workers == 2
