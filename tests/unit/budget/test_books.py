"""The books' quick check against their sizing: `Book.fits(fp, kind, size, old)` (each
simulated round's check, and acquire's for a grant in full) is whether `Book.fit` reaches
the size, for any lease, kind, size and pool held or none, in either book."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from supervisord_batt.budget.books import Size
from supervisord_batt.config.records import BudgetConfig
from supervisord_batt.protocol import Kind
from tests.unit.budget.conftest import SETTINGS, configs, random_calls


@SETTINGS
@given(cfg=configs(), data=st.data())
def test_fits_is_fit_compared_with_the_size(cfg: BudgetConfig, data: st.DataObject) -> None:
    tracker = random_calls(cfg, data, data.draw(st.integers(1, 20)))
    held = tracker.held()
    w = tracker.world()
    pools: tuple[Kind, ...] = ("process", "thread")
    for h in held:
        fp = w.footprints[h.lease_id]
        olds: tuple[Size | None, ...] = (None, (h.kind, h.workers), ("sequential", 0))
        for book in (w.charged, w.idle):
            for old in olds:
                for kind in pools:
                    fit, _ = book.fit(fp, kind, old)
                    for size in range(1, 14):
                        assert book.fits(fp, kind, size, old) == (fit >= size)
