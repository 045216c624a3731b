"""The books' quick check against their sizing: `Book.fits(fp, kind, size, old)` (each
simulated round's check, and acquire's for a grant in full) is whether `Book.fit` reaches
the size, for any lease, kind, size and pool held or none, in either book."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from supervisord_batt.budget.books import Size
from supervisord_batt.budget.claims import sampled
from supervisord_batt.config.records import BudgetConfig
from supervisord_batt.protocol import KINDS, Kind
from tests.support.budget import GIB, SETTINGS, configs, random_calls

MIB = 1 << 20


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


def test_memory_of_unmeasured_workers_is_what_they_add_beyond_the_sample() -> None:
    """Without a measured pool the signed memory charge is `unsampled`: the workers a
    sample saw are in its memory figure, charged nothing and never given back."""
    fp = sampled((0,), 1, 13, "process", 8, worker_bytes=MIB)
    for kind in KINDS:
        for workers in range(12):
            assert fp.memory(kind, workers) == fp.unsampled(kind, workers)
    assert fp.memory("process", 10) == 2 * MIB
    assert fp.memory("process", 3) == 0  # a smaller pool gives nothing back


def test_measured_workers_give_back_what_they_grew_to_when_the_pool_shrinks() -> None:
    """Issue 24, as with pids: four workers learned at 512 MiB that grew to 1 GiB each
    are in the sample's headroom at 4 GiB; a pool of 3 gives one of them back (1 GiB,
    not the 512 MiB figure), sequential or threads all four, and workers beyond the four
    are charged the figure."""
    fp = sampled((0,), 1, 9, "process", 4, worker_bytes=512 * MIB, measured_bytes=4 * GIB)
    assert fp.memory("process", 4) == 0
    assert fp.memory("process", 6) == 2 * 512 * MIB
    assert fp.memory("process", 3) == -GIB
    assert fp.memory("process", 2) == -2 * GIB
    assert fp.memory("sequential", 0) == -4 * GIB
    assert fp.memory("thread", 4) == -4 * GIB
    assert fp.memory("process", 0) == -4 * GIB
    # a lease holding no process worker has no pool to give back: as unmeasured
    seq = sampled((0,), 1, 1, "sequential", 0, worker_bytes=MIB, measured_bytes=GIB)
    assert seq.memory("process", 2) == 2 * MIB
    assert seq.memory("sequential", 0) == 0
