"""What fits now (`_Sizing`): the pool a lease may hold at once on the charged book.

A mixin of `BudgetLedger`, over the allocation. The allocation says what a lease grows to
once the others shrink; this caps it by what every limit, the CPUs and the memory let it
hold right now (`_Book.fit` on the charged book), and says in one line what bound it.
"""

from __future__ import annotations

from supervisord_batt.budget.books import _Book, _Entry, _Size
from supervisord_batt.budget.costs import MIN_POOL, Kind
from supervisord_batt.budget.records import Request
from supervisord_batt.budget.shortcuts import _AcquireShortcuts


class _Sizing(_AcquireShortcuts):
    """Grant sizes: a new lease's pool, a renewed lease's growth, the free capacity."""

    _charged: _Book  # every lease at its granted pool (see `_Book`)

    def _resize(self, e: _Entry, kind: Kind, workers: int) -> None:
        """Change a lease's charged pool (the allocation's order and kinds depend on it,
        but the ledger never recomputed on it: the next acquire or release does)."""
        if kind == e.kind and workers == e.workers:
            return
        self._charged.move(e, (e.kind, e.workers), (kind, workers))
        e.kind, e.workers = kind, workers
        self._relist(e)

    def _best_now(self, e: _Entry, held: _Size | None) -> tuple[Kind, int, str]:
        """The largest pool that fits now, capped by the lease's allocation; `held`: its
        pool in the charged book (None: not in it)."""
        if self._sample is None:
            return "sequential", 0, "no host sample yet"
        if self._level == "extreme":
            return "sequential", 0, "level extreme: sequential only"
        if e.cap < MIN_POOL:
            return "sequential", 0, f"asked for {e.req.want} workers: a pool of 1 never pays"
        kinds = self._kinds_for(e, MIN_POOL)
        if e.alloc_kind == "process" and "thread" in e.req.kinds:
            kinds.append("thread")
        for kind in kinds if e.alloc >= MIN_POOL else ():  # else no fit makes a pool
            if self._in_full(e, kind, held):
                return kind, e.alloc, "granted in full"
            fit, _ = self._charged.fit(e, kind, held, explain=False)
            workers = min(fit, e.alloc)
            if workers >= MIN_POOL:
                return kind, workers, self._why_short(e, kind, held, workers, fit)
        if e.alloc < MIN_POOL and self._fair_share:
            why = f"fair share: {self._fair_share} workers each, none left for a new pool"
            return "sequential", 0, why
        why = self._charged.fit(e, kinds[-1], held)[1] if kinds else ""  # the last kind's
        return "sequential", 0, why or f"level {self._level}: no pool kind accepted"

    def _in_full(self, e: _Entry, kind: Kind, held: _Size | None) -> bool:
        """Whether a pool of `kind` at the lease's share fits now, the share being all it
        wants: `_best_now` then grants it in full without sizing the pool (`fits` is
        whether `fit` reaches the size, and the grant is min(fit, share))."""
        return e.alloc >= e.req.want and self._charged.fits(e, kind, e.alloc, held)

    def _why_short(self, e: _Entry, kind: Kind, held: _Size | None, workers: int, fit: int) -> str:
        if workers >= e.req.want:
            return "granted in full"
        if workers == fit:  # the cap that bound it, named only now
            return self._charged.fit(e, kind, held)[1]
        if workers == self._config.max_per_lease:
            return f"max_per_lease {workers}"
        return f"fair share {e.alloc} across {len(self._entries)} holders"

    def _grow(self, e: _Entry) -> str:
        """Raise the lease toward its allocation if that fits right now."""
        if self._sample is None or e.alloc <= e.workers:
            return "shrink" if e.target() < e.workers else "unchanged"
        kinds = self._kinds_for(e, e.alloc)
        if not kinds:
            return "unchanged"
        fit, why = self._charged.fit(e, kinds[0], (e.kind, e.workers))
        workers = min(fit, e.alloc)
        if workers <= e.workers or workers < MIN_POOL:
            return why
        self._resize(e, kinds[0], workers)
        return f"grown to {workers}" if workers == e.alloc else why

    def _capacity(self) -> int:
        """Process workers a new holder inside every scope could get now."""
        if self._sample is None or self._level != "normal":
            return 0
        req = Request("", 0, 0, "", self._config.max_per_lease, base_tasks=0)
        probe = _Entry("", req, 0, 0.0, everywhere=True)
        probe.scope = tuple(range(len(self._sample.limits)))
        fit, _ = self._charged.fit(probe, "process", None)
        workers = min(fit, self._config.max_per_lease)
        return workers if workers >= MIN_POOL else 0
