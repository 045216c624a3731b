"""An executor sized by a grant that finishes or fails, and never hangs or leaks workers.

    with grant.executor(task_timeout=600) as ex:
        results = ex.map(score, tasks)       # input order; task errors propagate unchanged

Three pools behind one loop (client.pools): one reused loky pool (process), a thread
pool (thread), or the calling thread (sequential, which costs no new task). The loop
keeps at most `size` tasks in flight, so between tasks it can follow the grant (renew;
shrink or grow by draining and recreating) and so a failed pool leaves only those tasks
to redo. A pool that fails (client.pools says why each guard exists) is closed, its
tasks redone on the next kind down; a kind that failed is not retried on every task; a
grow gets it one more chance.

Inner threads fit the grant (client.inner): loky workers are spawned with OMP/BLAS
variables set to cpus / workers, and a thread pool caps the process's BLAS with
threadpoolctl while it runs, so n workers never run n threads each.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_COMPLETED, Future, wait
from concurrent.futures.process import BrokenProcessPool
from concurrent.futures.thread import BrokenThreadPool
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Protocol, TypeVar

from supervisord_batt.client import inner
from supervisord_batt.client.notice import warn
from supervisord_batt.client.pools import (
    LokyPool,
    Pool,
    PoolFailure,
    SequentialPool,
    ThreadPool,
    describe_error,
)
from supervisord_batt.protocol import KINDS

T = TypeVar("T")
R = TypeVar("R")

CHAIN = KINDS  # the fallback order: process, then thread, then sequential


class TaskTimeout(Exception):
    """A task ran longer than the executor's task_timeout."""

    def __init__(self, index: int, item: object, seconds: float, where: str) -> None:
        super().__init__(
            f"task {index} ({item!r:.80}) did not finish within {seconds:g}s on {where}"
        )
        self.index = index
        self.item = item
        self.seconds = seconds


@dataclass(frozen=True)
class Fallback:
    """One step down the chain, kept for logs, tests and the job's summary."""

    from_kind: str
    to_kind: str
    workers: int
    stage: str
    reason: str
    detail: dict[str, Any] = field(default_factory=dict)


def _is_broken_pool(exc: BaseException) -> bool:
    """A future failed because its pool broke (not because the task raised)."""
    return isinstance(exc, BrokenProcessPool | BrokenThreadPool)


class GrantLike(Protocol):
    """What the executor needs of a grant: what to run now, and how to keep it current.

    `supervisord_batt.client.Grant` is one; the executor depends on this shape only, so
    it never imports the module that talks to the daemon.
    """

    @property
    def kind(self) -> str: ...

    @property
    def size(self) -> int: ...

    def renew_due(self, interval: float | None = None) -> bool: ...

    def renew(self, workers_in_use: int | None = None) -> object: ...

    def report_fallback(self, old: str, new: str, workers: int, stage: str, reason: str) -> None:
        """Tell whoever hands out the grant that a pool of `old` failed (best effort)."""


@dataclass
class FixedGrant:
    """A grant with no daemon behind it: a fixed kind and size that never changes."""

    kind: str = "sequential"
    workers: int = 1

    @property
    def size(self) -> int:
        return 1 if self.kind == "sequential" else max(1, self.workers)

    def renew_due(self, interval: float | None = None) -> bool:
        return False

    def renew(self, workers_in_use: int | None = None) -> FixedGrant:
        return self

    def report_fallback(self, old: str, new: str, workers: int, stage: str, reason: str) -> None:
        return None  # no daemon to tell


class BudgetExecutor:
    """Runs a job's tasks at the size its grant allows, falling back as pools fail."""

    def __init__(
        self,
        grant: GrantLike | None = None,
        *,
        task_timeout: float | None = None,
        poll_interval: float = 0.5,
        renew_interval: float = 1.0,
    ) -> None:
        self.grant: GrantLike = grant if grant is not None else FixedGrant()
        self.task_timeout = task_timeout
        self.poll_interval = poll_interval
        self.renew_interval = renew_interval
        self.fallbacks: list[Fallback] = []
        self.kinds_used: list[str] = []
        self.inner_threads: dict[str, int] = {}  # per kind made: threads each worker got
        self._backend: Pool | None = None
        self._failed: set[str] = set()
        self._failed_at = 0  # grant size when a kind last failed
        self._grow_retry_used = False
        self._stuck = False

    # --- lifecycle ------------------------------------------------------------------

    def __enter__(self) -> BudgetExecutor:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Shut the pool down, killing its workers; safe to call twice."""
        backend, self._backend = self._backend, None
        if backend is not None:
            backend.close(stuck=self._stuck)

    @property
    def kind(self) -> str:
        return self._backend.kind if self._backend is not None else self._wanted()[0]

    @property
    def workers(self) -> int:
        return self._backend.size if self._backend is not None else self._wanted()[1]

    # --- choosing and making the backend --------------------------------------------

    def _wanted(self) -> tuple[str, int]:
        g = self.grant
        kind = g.kind if g.kind in CHAIN else "sequential"
        size = g.size
        if kind != "sequential" and size < 1:
            kind = "sequential"
        for candidate in CHAIN[CHAIN.index(kind) :]:
            if candidate not in self._failed:
                kind = candidate
                break
        return kind, 1 if kind == "sequential" else size

    def _make(self) -> Pool:
        kind, n = self._wanted()
        while True:
            try:
                backend: Pool
                threads = inner.inner_threads(kind, n, tight=bool(getattr(self.grant, "tight", 0)))
                if kind == "process":
                    backend = LokyPool(n, env=inner.inner_env(threads))
                elif kind == "thread":
                    # no thread limit after a refusal: see inner.limit_here
                    limit = None if self._failed else threads
                    backend = ThreadPool(n, inner_threads=limit)
                else:
                    backend = SequentialPool()
            except PoolFailure as exc:
                kind = self._fell(kind, n, exc)
                continue
            self.kinds_used.append(kind if kind == "sequential" else f"{kind}:{n}")
            self.inner_threads[kind] = threads
            return backend

    def _fell(self, kind: str, n: int, exc: PoolFailure) -> str:
        """Record a failed kind and return the next one down the chain."""
        self._failed.add(kind)
        self._failed_at = max(self._failed_at, self.grant.size)
        nxt = CHAIN[CHAIN.index(kind) + 1]
        self.fallbacks.append(Fallback(kind, nxt, n, exc.stage, exc.reason, exc.detail))
        where = f"{kind} pool of {n}"
        warn(
            f"{where} failed at {exc.stage} ({exc.reason}); falling back to {nxt}",
            kind=kind,
            workers=n,
            stage=exc.stage,
            reason=exc.reason,
            fallback=nxt,
        )
        self.grant.report_fallback(kind, nxt, n, exc.stage, exc.reason)
        return nxt

    def _follow_grant(self, busy: bool) -> bool:
        """Renew when due; when the wanted pool differs, switch once idle. True: switching."""
        g = self.grant
        if g.renew_due(self.renew_interval):
            g.renew(workers_in_use=self._in_use())
        if g.size > self._failed_at and self._failed and not self._grow_retry_used:
            self._grow_retry_used = True  # a grow: the failed kinds get one more chance
            self._failed.clear()
        backend = self._backend
        if backend is None or (backend.kind, backend.size) == self._wanted():
            return False
        if busy:
            return True  # stop submitting; finish in-flight tasks first
        backend.close()
        self._backend = None
        self._backend = self._make()
        g.renew(workers_in_use=self._in_use())  # acknowledge the new size
        return False

    def _in_use(self) -> int:
        b = self._backend
        return 0 if b is None or b.kind == "sequential" else b.size

    # --- running tasks --------------------------------------------------------------

    def map(
        self,
        fn: Callable[[T], R],
        items: Iterable[T],
        *,
        on_done: Callable[[int, R], None] | None = None,
    ) -> list[R]:
        """fn over items, results in input order; a task's own exception propagates.

        `on_done(index, result)` is called in the calling thread as each task finishes
        (a place for heartbeats). A task running in a pool that fails is redone, once
        per fallback, on the next kind down; with `task_timeout`, a task running longer
        raises TaskTimeout after its pool was killed (sequential tasks cannot be timed
        out: they run in the calling thread).
        """
        todo = list(items)
        results: dict[int, R] = {}
        pending = deque(range(len(todo)))
        inflight: dict[Future[Any], tuple[int, float]] = {}
        while pending or inflight:
            switching = self._follow_grant(busy=bool(inflight))
            if self._backend is None:
                self._backend = self._make()
                self.grant.renew(workers_in_use=self._in_use())
            backend = self._backend
            try:
                while pending and not switching and len(inflight) < backend.size:
                    index = pending[0]
                    fut = backend.submit(fn, todo[index])
                    pending.popleft()
                    inflight[fut] = (index, time.monotonic())
                    if backend.kind == "sequential":
                        break  # already ran: let the loop renew and collect
                self._collect(inflight, results, pending, backend, on_done)
            except PoolFailure as exc:
                self._drop(backend, exc, inflight, pending)
                continue
            reason = backend.check()
            if reason is not None:
                self._drop(backend, PoolFailure("health check", reason), inflight, pending)
                continue
            self._check_timeouts(inflight, todo, backend)
        return [results[i] for i in range(len(todo))]

    def _collect(
        self,
        inflight: dict[Future[Any], tuple[int, float]],
        results: dict[int, Any],
        pending: deque[int],
        backend: Pool,
        on_done: Callable[[int, Any], None] | None,
    ) -> None:
        if not inflight:
            return
        done, _ = wait(list(inflight), timeout=self.poll_interval, return_when=FIRST_COMPLETED)
        failure: PoolFailure | None = None
        for fut in done:
            index, _started = inflight.pop(fut)
            if fut.cancelled():
                pending.appendleft(index)
                failure = failure or PoolFailure("result", "task cancelled by the pool")
                continue
            exc = fut.exception()
            if exc is None:
                results[index] = fut.result()
                if on_done is not None:
                    on_done(index, results[index])
            elif backend.kind != "sequential" and _is_broken_pool(exc):
                pending.appendleft(index)  # the pool's failure, not the task's
                failure = failure or PoolFailure("result", describe_error(exc))
            else:
                raise exc
        if failure is not None:
            raise failure

    def _drop(
        self,
        backend: Pool,
        exc: PoolFailure,
        inflight: dict[Future[Any], Any],
        pending: deque[int],
    ) -> None:
        """Kill a failed pool; put its unfinished tasks back, first, in input order."""
        for index in sorted((i for i, _ in inflight.values()), reverse=True):
            pending.appendleft(index)
        inflight.clear()
        backend.close(stuck=True)
        self._backend = None
        self._fell(backend.kind, backend.size, exc)

    def _check_timeouts(
        self, inflight: dict[Future[Any], tuple[int, float]], todo: list[Any], backend: Pool
    ) -> None:
        if self.task_timeout is None or not inflight:
            return
        now = time.monotonic()
        for index, started in inflight.values():
            if now - started > self.task_timeout:
                where = f"the {backend.kind} pool of {backend.size}"
                self._stuck = True
                self.close()
                self._stuck = False
                raise TaskTimeout(index, todo[index], self.task_timeout, where)
