"""The ledger answers recorded replays of seeded random traffic exactly as when recorded,
before the budget was split per user: grants, renews, releases, updates and statistics,
digest by digest, wherever one user held leases (one user's budget is what it was). A
fixed spread of the seeds runs here; all of them with `python benchmarks/replay_ledger.py`
(`--single-user` for the single-user traffic)."""

from __future__ import annotations

from tests.unit.budget.replay import SEQUENCES, digest, recorded, replay

SPREAD = range(0, SEQUENCES, 6)  # 2,000 seeds across each recording


def test_the_recordings_are_complete() -> None:
    assert len(recorded()) == len(recorded(single=True)) == SEQUENCES


def test_the_mixed_traffic_is_answered_as_recorded_wherever_one_user_held_leases() -> None:
    """Of the mixed traffic, the sequences where two users held leases at once, or a
    lease asked for no worker, are answered as the split per user says now; every other
    one as recorded. Few stay with one user (8 of this spread, 48 of all 12,000: three
    uids draw at random); the single-user traffic below is the one compared in full."""
    want = recorded()
    runs = {seed: replay(seed) for seed in SPREAD}
    one_user = [seed for seed, run in runs.items() if run.one_user]
    differ = [seed for seed in one_user if runs[seed].digest != want[seed]]
    assert not differ, f"{len(differ)} of {len(one_user)} sequences differ, first {differ[:10]}"
    assert len(one_user) >= 8, len(one_user)  # the spread holds 8: the test compares some


def test_the_single_user_traffic_is_answered_as_recorded() -> None:
    want = recorded(single=True)
    seeds = range(3, SEQUENCES, 6)  # other seeds than the mixed traffic's
    differ = [seed for seed in seeds if digest(seed, single=True) != want[seed]]
    assert not differ, f"{len(differ)} of {len(seeds)} sequences differ, first {differ[:10]}"


def test_a_digest_depends_on_its_seed_and_traffic_only() -> None:
    assert digest(5) == digest(5) != digest(6)
    assert digest(5, single=True) == digest(5, single=True) != digest(5)
