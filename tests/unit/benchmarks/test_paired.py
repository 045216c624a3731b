"""benchmarks/paired.py and contention.py's use of it: rounds alternate which arm goes
first, and each round's candidate is compared with its own round's baseline."""

from __future__ import annotations

import pytest

from benchmarks.contention import Row, pair_rounds, plan
from benchmarks.memory_proof import Run
from benchmarks.memory_proof import pair_rounds as pair_memory_rounds
from benchmarks.paired import best_arm, paired, round_order


def test_every_second_round_runs_the_arms_in_reverse() -> None:
    arms = ["sequential", "budget"]
    assert [round_order(i, arms) for i in range(4)] == [
        ["sequential", "budget"],
        ["budget", "sequential"],
        ["sequential", "budget"],
        ["budget", "sequential"],
    ]


def test_the_ratio_is_the_median_of_the_rounds_own_ratios() -> None:
    # the baseline's rate moves between rounds (2.0 to 3.0) as a shared host's does; each
    # candidate is 0.98, 1.0, 0.96, 1.02, 1.04 of its own round's baseline
    baseline = [2.0, 3.0, 2.5, 2.0, 2.5]
    candidate = [1.96, 3.0, 2.4, 2.04, 2.6]
    p = paired(baseline, candidate)
    assert p.ratios == pytest.approx((0.98, 1.0, 0.96, 1.02, 1.04))
    assert (p.median, p.low, p.high, p.rounds) == pytest.approx((1.0, 0.96, 1.04, 5))
    assert p.met(0.97) and not p.met(1.01)
    assert str(p) == "1.000 (0.960-1.040, 5 rounds)"


def test_a_round_whose_baseline_did_nothing_has_no_ratio() -> None:
    p = paired([0.0, 2.0], [1.0, 1.0])
    assert (p.ratios, p.rounds) == ((0.5,), 1)
    none = paired([], [])
    assert (none.rounds, none.met(0.0), str(none)) == (0, False, "- (0 rounds)")


def test_rounds_must_pair_up() -> None:
    with pytest.raises(ValueError, match="3 baseline rounds, 2 candidate rounds"):
        paired([1.0, 1.0, 1.0], [1.0, 1.0])


def test_the_baseline_is_the_arm_with_the_best_median_not_each_rounds_fastest() -> None:
    # hand is faster in round 2 only (the host lifted it): sequential stays the baseline
    rates = {"sequential": [10.0, 10.0, 11.0], "hand": [7.0, 12.0, 8.0], "plain": []}
    assert best_arm(rates) == "sequential"
    assert best_arm({}) is None


def row(mode: str, tasks_per_s: float) -> Row:
    return Row("none", None, mode, 24, tasks_per_s=tasks_per_s)


def test_contention_pairs_budget_with_the_best_other_mode_of_its_round() -> None:
    runs = {
        ("none", "sequential"): [row("sequential", 2.0), row("sequential", 3.0)],
        ("none", "heuristic"): [row("heuristic", 2.6), row("heuristic", 1.0)],
        ("none", "budget"): [row("budget", 2.4), row("budget", 2.7)],
    }
    # sequential's median (2.5) is the best: round 1 is against its 2.0, not heuristic's 2.6
    assert pair_rounds(runs, "none")[0] == "sequential"
    assert pair_rounds(runs, "none")[1].ratios == pytest.approx((1.2, 0.9))
    assert pair_rounds(runs, "half")[1].rounds == 0
    order = plan(["none"], ["budget", "sequential"], 3, alternate=True)
    assert [m for _, m in order] == [
        *("sequential", "budget"),
        *("budget", "sequential"),
        *("sequential", "budget"),
    ]


def run(label: str, mode: str, rnd: int, wall: float, done: int = 64) -> Run:
    return Run(label, mode, limit=1, total=64, done=done, failed=64 - done, wall=wall, round=rnd)


def test_memory_proof_pairs_each_budget_row_with_its_rounds_run_of_the_best_mode() -> None:
    first, learned = "budget host CPUs, first run", "budget host CPUs, learned"
    rows = [
        run("plain", "plain", 1, wall=4.0, done=16),  # fastest, but it did not finish
        run("hand", "hand", 1, wall=16.0),
        run("sequential", "sequential", 1, wall=8.0),  # 8 tasks/s
        run(first, "budget", 1, wall=10.0),
        run(learned, "budget", 1, wall=8.0),
        run(learned, "budget", 2, wall=16.0),  # the reverse order in round 2
        run(first, "budget", 2, wall=8.0),
        run("sequential", "sequential", 2, wall=32.0),  # a busier host: 2 tasks/s
        run("hand", "hand", 2, wall=16.0),  # 4 tasks/s, its best round
        run("plain", "plain", 2, wall=4.0, done=16),
    ]
    baseline, pairs = pair_memory_rounds(rows)
    assert baseline == "sequential"  # median 5 tasks/s, hand's 4
    assert pairs[first].ratios == pytest.approx((0.8, 4.0))
    assert pairs[learned].ratios == pytest.approx((1.0, 2.0))
