"""A process pool kept alive between a job's calls while it idles, with the lease it runs on.

    claim, kept = KEEPER.checkout(key)      # None, None: another call runs the pool now
    ...                                     # a call runs on kept.pool (or a new pool)
    KEEPER.checkin(claim, Kept(pool, grant, key, idle_s=5.0))   # or None: nothing to keep

Why: a loky pool costs a new interpreter per worker (about 0.1 s of CPU each on the
2-core VMs, docs/FACTS.md), and joblib reuses its executor across calls, so a loop of
short `Parallel` calls that built a pool per call ran 5.7x slower than plain joblib. So
the pool a call built is parked here when the call ends, and the next call with the same
request takes it back, lease and all, as loky keeps its idle workers.

The lease is held while the workers live, and both go together: while the pool is
parked, one thread renews the lease every `renew_every` seconds (so it neither expires
nor misses a shrink), and gives both back (pool closed first, workers killed and reaped;
then the lease released) when the pool was idle `idle_s` seconds, when the daemon asks
for fewer workers than it runs or took the lease away (the next call leases again and
builds the size it is granted), when the workers died, and at interpreter exit. A thread
that cannot start (the host is out of tasks) keeps nothing: the pool is closed at once.

One pool per process, as joblib's loky executor is one per process: a call that starts
while another holds the pool (another thread; a generator not yet exhausted) gets no
claim and leases a kind that needs no process pool. A claim whose holder was collected
without checking in frees the pool for the next call. A forked child forgets what its
parent keeps (`forget`): the pool's workers and the lease's connection are the parent's.
"""

from __future__ import annotations

import threading
import time
import weakref
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

from supervisord_batt.client.executor import GrantLike

RENEW_EVERY = 1.0  # seconds between renewals of a parked pool's lease


class Pool(Protocol):
    """What the keeper needs of a pool: its size, its health, and a way to end it."""

    @property
    def size(self) -> int: ...

    def check(self) -> str | None: ...

    def close(self, *, stuck: bool = False) -> None: ...


class Lease(GrantLike, Protocol):
    """What the keeper needs of a grant (`client.Grant` is one): the executor's, and
    how long it may sleep before the next renewal."""

    def renew_in(self, interval: float | None = None) -> float: ...


P = TypeVar("P", bound=Pool)


@dataclass
class Kept(Generic[P]):
    """A pool and its lease, parked after a call: `key` says which calls may take it."""

    pool: P
    grant: Lease
    key: Hashable
    idle_s: float
    parked_at: float = 0.0


class Claim:
    """The right to run this process's pool, held by one call from checkout to checkin."""

    __slots__ = ("__weakref__",)


@dataclass
class Keeper(Generic[P]):
    """Parks one pool between calls; `give_back(grant)` releases a lease it ends."""

    give_back: Callable[[Lease], None]
    clock: Callable[[], float] = time.monotonic
    renew_every: float = RENEW_EVERY
    start_thread: bool = True  # False in unit tests: they call step() themselves
    _cond: threading.Condition = field(default_factory=threading.Condition, init=False, repr=False)
    _parked: Kept[P] | None = field(default=None, init=False, repr=False)
    _owner: weakref.ref[Claim] | None = field(default=None, init=False, repr=False)
    _thread: threading.Thread | None = field(default=None, init=False, repr=False)
    _closed: bool = field(default=False, init=False, repr=False)

    def checkout(self, key: Hashable) -> tuple[Claim | None, Kept[P] | None]:
        """A claim on the pool and, when one is parked for `key`, that pool and lease.
        (None, None): another call runs the pool now. A pool parked for another key is
        given back first: a process runs one pool."""
        with self._cond:
            if self._owner is not None and self._owner() is not None:
                return None, None
            claim = Claim()
            self._owner = weakref.ref(claim)
            kept, self._parked = self._parked, None
            if kept is not None and kept.key != key:
                self._end(kept, stuck=False)
                kept = None
            return claim, kept

    def checkin(self, claim: Claim | None, kept: Kept[P] | None) -> None:
        """The call ends: park `kept` until it idles out (close it at once when the
        claim is stale, the keeper closed, or no thread can watch it)."""
        with self._cond:
            mine = claim is not None and self._owner is not None and self._owner() is claim
            if mine:
                self._owner = None
            if kept is None:
                return
            if not mine or self._closed or kept.idle_s <= 0 or not self._watch():
                self._end(kept, stuck=False)
                return
            kept.parked_at = self.clock()
            self._parked = kept
            self._cond.notify_all()

    def parked(self) -> Kept[P] | None:
        with self._cond:
            return self._parked

    def step(self) -> float | None:
        """The parked pool's idle work: renew its lease when due, give both back when
        they should go. Seconds until the next step; None when nothing is parked."""
        with self._cond:
            kept = self._parked
            if kept is None:
                return None
            now = self.clock()
            try:
                why, stuck = self._why_end(kept, now)
            except Exception as exc:  # nothing here should raise; if it does, keep nothing
                why, stuck = f"{type(exc).__name__}: {exc}", True
            if why is not None:
                self._parked = None
                self._end(kept, stuck=stuck)
                return None
            renew_in = kept.grant.renew_in(self.renew_every)
            return max(0.0, min(kept.parked_at + kept.idle_s - now, renew_in))

    def _why_end(self, kept: Kept[P], now: float) -> tuple[str | None, bool]:
        if now - kept.parked_at >= kept.idle_s:
            return "idle", False
        broken = kept.pool.check()
        if broken is not None:
            return broken, True
        grant = kept.grant
        if grant.renew_due(self.renew_every):
            grant.renew(workers_in_use=kept.pool.size)
            if grant.kind != "process" or grant.size < kept.pool.size:
                return "shrink", False
        return None, False

    def close(self) -> None:
        """Give back what is parked, and anything checked in from now on (at exit)."""
        with self._cond:
            self._closed = True
            kept, self._parked = self._parked, None
            if kept is not None:
                self._end(kept, stuck=False)
            self._cond.notify_all()

    def forget(self) -> bool:
        """In a forked child: drop the parent's pool and claim without touching them
        (its lock may have been held by a thread the child does not have). True when
        the parent had a pool parked or claimed."""
        had = self._parked is not None or (self._owner is not None and self._owner() is not None)
        self._cond = threading.Condition()
        self._parked, self._owner, self._thread = None, None, None
        return had

    def _end(self, kept: Kept[P], *, stuck: bool) -> None:
        """The pool first (its workers killed and reaped), then its lease."""
        try:
            kept.pool.close(stuck=stuck)
        finally:
            self.give_back(kept.grant)

    def _watch(self) -> bool:
        """A thread runs while a pool is parked or claimed; False if none can start."""
        if not self.start_thread or (self._thread is not None and self._thread.is_alive()):
            return True
        thread = threading.Thread(target=self._run, name="supervisord-batt-keeper", daemon=True)
        try:
            thread.start()
        except RuntimeError:  # can't start new thread: keep nothing
            return False
        self._thread = thread
        return True

    def _run(self) -> None:
        cond = self._cond
        with cond:
            while cond is self._cond and not self._closed:
                if self._parked is None:
                    if self._owner is None or self._owner() is None:
                        break  # nothing parked, nothing claimed: the thread ends
                    cond.wait()  # a call runs the pool: wait for its checkin
                    continue
                delay = self.step()
                if delay is not None:
                    cond.wait(delay)
            if cond is self._cond and self._thread is threading.current_thread():
                self._thread = None
