"""The ledger answers a recorded replay of seeded random traffic exactly as it did when
recorded (before its rewrite by composition): grants, renews, releases, updates and
statistics, digest by digest. A fixed spread of the seeds runs here; all of them with
`python benchmarks/replay_ledger.py`."""

from __future__ import annotations

from tests.unit.budget.replay import SEQUENCES, digest, recorded

SPREAD = range(0, SEQUENCES, 6)  # 2,000 seeds across the recording


def test_the_recording_is_complete() -> None:
    assert len(recorded()) == SEQUENCES


def test_a_spread_of_the_recorded_replay_gives_the_recorded_answers() -> None:
    want = recorded()
    differ = [seed for seed in SPREAD if digest(seed) != want[seed]]
    assert not differ, f"{len(differ)} of {len(SPREAD)} sequences differ, first {differ[:10]}"


def test_a_digest_depends_on_its_seed_only() -> None:
    assert digest(5) == digest(5) != digest(6)
