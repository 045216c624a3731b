"""The denial causes the daemon counts: a real ledger driven into each cap, and the
cause its reason maps to (a change to the ledger's wording breaks this test, not the
report's advice silently)."""

from __future__ import annotations

from supervisord_batt.budget.ledger import BudgetLedger
from supervisord_batt.budget.records import Grant
from supervisord_batt.daemon.tallies import DENIAL_CAUSES, Tallies, denial_cause
from supervisord_batt.host.sample import Psi
from supervisord_batt.protocol import Kind
from tests.support.budget import GIB, PRESSURE, ledger, limit, request, sample


def denied(led: BudgetLedger, holders: int = 1, process_only: bool = False) -> Grant:
    """The last of `holders` acquires (that one process-only if asked), which must come
    back sequential."""
    for i in range(holders - 1):
        led.acquire(request(f"h{i}", 4))
    kinds: tuple[Kind, ...] = ("process",) if process_only else ("process", "thread", "sequential")
    grant = led.acquire(request("last", 4, kinds=kinds))
    assert grant.kind == "sequential", grant
    return grant


def test_each_cap_maps_to_its_cause() -> None:
    cases = {
        "cpu": denied(ledger(cpus=2.0), holders=2),
        "limit": denied(ledger(limit(100, 98))),
        "memory": denied(ledger(mem=5 * GIB, memory_per_slot=GIB), 2, process_only=True),
    }
    # 4 slots: a and b take them with pools of 2, so c's fair share is under a pool
    shared = ledger(mem=4 * GIB, memory_per_slot=GIB)
    for holder in ("a", "b"):
        shared.acquire(request(holder, 2, kinds=("process",)))
    cases["fair_share"] = denied(shared, process_only=True)
    signals = {}  # a pressure level's refusal is put down to the signal that set it
    for cause, at in (
        ("cpu_pressure", sample(psi=Psi(cpu_some_avg10=95.0, memory_some_avg10=None))),
        ("memory_pressure", sample(psi=Psi(cpu_some_avg10=None, memory_some_avg10=70.0))),
        ("pressure", sample(limit(100, 97))),  # a limit's headroom under 5%
    ):
        extreme = ledger(pressure=PRESSURE)
        extreme.update(at, {})
        cases[cause] = denied(extreme)
        signals[cause] = extreme.level_signal(request().uid)
    for cause, grant in cases.items():
        assert denial_cause(grant.reason, signals.get(cause, "")) == cause, grant.reason
    assert denial_cause("no host sample yet") == "other"
    assert set(cases) | {"other"} == set(DENIAL_CAUSES)


def test_only_pool_requests_given_sequential_count_as_denied() -> None:
    tallies = Tallies()
    tallies.granted("sequential", 1, "asked for 1 workers: a pool of 1 never pays")
    tallies.granted("process", 4, "granted in full")
    tallies.granted("sequential", 4, "cpu cap: 2 CPUs, 2 in use")
    tallies.granted("sequential", 8, "threads-max headroom 1 tasks < thread pool of 2 (2 tasks)")
    assert tallies.grants == {"sequential": 3, "process": 1}
    assert tallies.denied == 2
    assert tallies.denied_by == {"cpu": 1, "limit": 1}
