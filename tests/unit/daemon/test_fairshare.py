"""daemon.fairshare: the equal part and the choice of the connection that makes room."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from supervisord_batt.daemon.fairshare import Idle, equal_part, over_part, victim


def test_the_equal_part_counts_the_newcomer_once() -> None:
    held = {f"uid {u}": 32 for u in range(6)}
    assert equal_part(192, held, "uid 99") == 27  # 192 // 7
    assert equal_part(192, held, "uid 0") == 32  # already one of the six
    assert equal_part(3, {f"uid {u}": 1 for u in range(5)}, "uid 9") == 1  # never 0
    assert over_part({"a": 30, "b": 27, "c": 31}, 27) == ["c", "a"]


def test_no_lease_first_then_the_heaviest_then_the_longest_silent() -> None:
    held = {"a": 32, "b": 30}
    a_old_leased = Idle(1, "a", True, 1.0)
    a_new = Idle(2, "a", False, 9.0)
    b_old = Idle(3, "b", False, 0.5)
    a_old = Idle(4, "a", False, 5.0)
    assert victim([a_old_leased, a_new, b_old, a_old], held) == a_old
    assert victim([a_old_leased, b_old], held) == b_old  # a lease only as a last resort
    assert victim([a_old_leased], held) == a_old_leased
    assert victim([], held) is None


counts = st.dictionaries(st.sampled_from([f"uid {u}" for u in range(12)]), st.integers(1, 40))


@given(counts, st.integers(8, 400), st.sampled_from([f"uid {u}" for u in range(14)]))
def test_a_place_never_goes_back_and_forth(held: dict[str, int], share: int, newcomer: str) -> None:
    """Whenever a newcomer below its part takes a place from an account above it, the
    newcomer still holds no more than its part and the other no less: neither can take
    the place back by the same rule."""
    part = equal_part(share, held, newcomer)
    mine = held.get(newcomer, 0)
    over = over_part(held, part)
    if mine >= part or not over:
        return
    taken = over[0]
    assert taken != newcomer
    assert mine + 1 <= part <= held[taken] - 1


@given(st.lists(st.tuples(st.integers(0, 5), st.booleans(), st.floats(0, 100)), min_size=1))
def test_the_choice_is_the_least_of_the_order(rows: list[tuple[int, bool, float]]) -> None:
    idle = [Idle(i, f"uid {a}", leased, t) for i, (a, leased, t) in enumerate(rows)]
    held = {f"uid {a}": 10 + a for a in range(6)}
    chosen = victim(idle, held)
    assert chosen is not None
    if any(not c.leased for c in idle):
        assert not chosen.leased
    same = [c for c in idle if c.leased == chosen.leased]
    assert held[chosen.account] == max(held[c.account] for c in same)
