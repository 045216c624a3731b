"""A job's declared worker size (issue 24): charged for a job never seen, where
`memory_per_slot` guessed; the learned figure replaces it, at once where larger, after
DECLARED_RUNS runs where smaller (`costs.per_worker`)."""

from __future__ import annotations

import dataclasses

import pytest

from supervisord_batt.budget.costs import DECLARED_RUNS, per_worker
from supervisord_batt.budget.records import LeaseError
from supervisord_batt.protocol import MAX_WORKER_BYTES
from tests.support.budget import GIB, ledger, request

MIB = GIB // 1024
SLOT = 512 * MIB


@pytest.mark.parametrize(
    ("declared", "learned", "runs", "charged"),
    [
        (0, None, 0, SLOT),  # nothing known: memory_per_slot
        (2 * GIB, None, 0, 2 * GIB),  # never seen: the declared size
        (0, 100 * MIB, 1, 100 * MIB),  # nothing declared: the learned figure
        (2 * GIB, 3 * GIB, 1, 3 * GIB),  # the scan saw more: it wins at once
        (2 * GIB, 100 * MIB, 1, 2 * GIB),  # less, from one run: the declared size stands
        (2 * GIB, 100 * MIB, DECLARED_RUNS - 1, 2 * GIB),
        (2 * GIB, 100 * MIB, DECLARED_RUNS, 100 * MIB),  # from enough runs: learned
    ],
)
def test_a_worker_is_charged_its_declared_size_until_learned(
    declared: int, learned: int | None, runs: int, charged: int
) -> None:
    assert per_worker(SLOT, declared, learned, runs) == charged


def test_memory_not_budgeted_charges_nothing_whatever_was_declared() -> None:
    assert per_worker(0, 2 * GIB, None, 0) == per_worker(0, 2 * GIB, GIB, 5) == 0


def test_a_job_declaring_2_gib_workers_is_granted_what_fits_at_2_gib() -> None:
    """8 GiB free: memory_per_slot (512 MiB) grants 16 workers of a job that declares
    nothing, where its 2 GiB workers fit 4; declared, it is granted 4."""
    led = ledger(mem=8 * GIB, memory_per_slot=SLOT, max_per_lease=16)
    guessed = led.acquire(request("a", 16, kinds=("process",), job="fit"))
    assert (guessed.kind, guessed.workers) == ("process", 16)
    led.release(guessed.lease_id)
    declared = dataclasses.replace(request("b", 16, kinds=("process",), job="fit"))
    declared = dataclasses.replace(declared, declared_bytes=2 * GIB)
    grant = led.acquire(declared)
    assert (grant.kind, grant.workers) == ("process", 4), grant
    assert led.lease(grant.lease_id).declared_bytes == 2 * GIB
    assert led.worker_bytes("fit", 1000, 2 * GIB) == 2 * GIB


def test_a_learned_size_replaces_the_declared_one_by_the_rule() -> None:
    led = ledger(mem=8 * GIB, memory_per_slot=SLOT, max_per_lease=16)
    req = dataclasses.replace(request("a", 16, kinds=("process",)), declared_bytes=GIB)
    led.learn({("batt", 1000): 2 * GIB})  # larger, from one run (no runs given)
    assert led.acquire(req).workers == 4
    led.release_holder("a")
    led.learn({("batt", 1000): 256 * MIB}, runs={("batt", 1000): 1})
    assert led.acquire(req).workers == 8  # smaller, from one run: 1 GiB stands
    led.release_holder("a")
    led.learn({("batt", 1000): 256 * MIB}, runs={("batt", 1000): DECLARED_RUNS})
    assert led.acquire(req).workers == 16  # from enough runs: 256 MiB (the cap binds)


@pytest.mark.parametrize("declared", [-1, MAX_WORKER_BYTES + 1])
def test_a_declared_size_out_of_bounds_is_refused(declared: int) -> None:
    led = ledger()
    with pytest.raises(LeaseError) as err:
        led.acquire(dataclasses.replace(request(), declared_bytes=declared))
    assert err.value.code == "invalid_request"
    assert "declared_bytes" in str(err.value)
