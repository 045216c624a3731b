"""An executor sized by a grant that finishes or fails, and never hangs or leaks workers.

    with grant.executor(task_timeout=600) as ex:
        results = ex.map(score, tasks)       # input order; task errors propagate unchanged

Three backends behind one loop: one reused loky pool (process), a ThreadPoolExecutor
(thread), or the calling thread (sequential, which costs no new task). The loop keeps at
most `size` tasks in flight, so between tasks it can follow the grant (renew; shrink or
grow by draining and recreating) and so a failed pool leaves only those tasks to redo.

Why each guard exists (see docs/FACTS.md, measured on loky 3.6.0 and 3.7.0):
- a pool is warmed up before any real task is given to it: one no-op round trip makes
  every creation step happen (both resource trackers, n workers, the manager thread, the
  feeder thread), so a refused one is a clean fallback with no task lost or run twice;
- a refused creation leaves a half-built pool: its workers are killed by pid and reaped
  before falling back, else multiprocessing joins them at interpreter exit (hang B);
- every wait is a poll in slices with a health check, because with loky <= 3.6.0 a
  refused feeder thread kills the manager thread and no future ever resolves (hang A);
- a kind that failed is not retried on every task; a grow gets it one more chance.

Inner threads fit the grant (client.inner): loky workers are spawned with OMP/BLAS
variables set to cpus / workers, and a thread pool caps the process's BLAS with
threadpoolctl while it runs, so n workers never run n threads each.

# Why one module
The executor's loop and its three backends: the loop switches backends between tasks
and reads each one's ways to fail (a broken pool, a refused thread, a timed-out task)
to fall back to the next, so their errors and the loop are read together.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from concurrent.futures.thread import BrokenThreadPool
from dataclasses import dataclass, field
from multiprocessing.connection import wait as mp_wait
from types import TracebackType
from typing import Any, Protocol, TypeVar

import psutil

from supervisord_batt.client import inner
from supervisord_batt.client.notice import warn
from supervisord_batt.protocol import KINDS

T = TypeVar("T")
R = TypeVar("R")

CHAIN = KINDS  # the fallback order: process, then thread, then sequential
_LOKY_WORKER_MARK = "loky.backend.popen_loky_posix"
_REAP_TIMEOUT = 5.0


class TaskTimeout(Exception):
    """A task ran longer than the executor's task_timeout."""

    def __init__(self, index: int, item: object, seconds: float, where: str) -> None:
        super().__init__(
            f"task {index} ({item!r:.80}) did not finish within {seconds:g}s on {where}"
        )
        self.index = index
        self.item = item
        self.seconds = seconds


class PoolFailure(Exception):
    """A pool could not be created or died; its tasks are redone on the next kind."""

    def __init__(self, stage: str, reason: str, **detail: Any) -> None:
        super().__init__(f"{stage}: {reason}")
        self.stage = stage
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class Fallback:
    """One step down the chain, kept for logs, tests and the job's summary."""

    from_kind: str
    to_kind: str
    workers: int
    stage: str
    reason: str
    detail: dict[str, Any] = field(default_factory=dict)


def _is_refusal(exc: BaseException) -> bool:
    """A creation refused by a pid/thread limit, or a pool broken by one (loky's
    BrokenProcessPool, standalone or joblib's copy, subclasses the standard library's)."""
    if isinstance(exc, OSError) and exc.errno in (errno.EAGAIN, errno.ENOMEM):
        return True
    if isinstance(exc, RuntimeError) and (
        "can't start new thread" in str(exc) or "cannot join thread" in str(exc)
    ):
        return True
    return isinstance(exc, BrokenProcessPool)


def _is_broken_pool(exc: BaseException) -> bool:
    """A future failed because its pool broke (not because the task raised)."""
    return isinstance(exc, BrokenProcessPool | BrokenThreadPool)


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}".splitlines()[0][:200]


class _Backend(Protocol):
    kind: str
    size: int

    def submit(self, fn: Callable[[Any], Any], item: Any) -> Future[Any]: ...
    def check(self) -> str | None: ...
    def close(self, *, stuck: bool = False) -> None: ...


class _Sequential:
    """The calling thread: costs no new task, cannot fail to start, cannot be timed out."""

    kind = "sequential"
    size = 1

    def submit(self, fn: Callable[[Any], Any], item: Any) -> Future[Any]:
        fut: Future[Any] = Future()
        try:
            fut.set_result(fn(item))
        except Exception as exc:
            fut.set_exception(exc)
        return fut

    def check(self) -> str | None:
        return None

    def close(self, *, stuck: bool = False) -> None:
        return None


class _Threads:
    """A ThreadPoolExecutor whose n threads are all started (or refused) up front.

    With `inner_threads`, the process's BLAS/OpenMP pools are capped at that many while
    the pool lives (threadpoolctl): its threads share them."""

    kind = "thread"

    def __init__(self, n: int, inner_threads: int | None = None) -> None:
        self.size = n
        self._limits = contextlib.ExitStack()
        if inner_threads is not None:
            self._limits.enter_context(inner.limit_here(inner_threads))
            self.pool = ThreadPoolExecutor(
                n,
                thread_name_prefix="supervisord-batt",
                initializer=inner.limit_this_thread,
                initargs=(inner_threads,),
            )
        else:
            self.pool = ThreadPoolExecutor(n, thread_name_prefix="supervisord-batt")
        gate = threading.Event()
        started = 0
        try:
            # each blocked no-op forces the pool to start one more thread
            for _ in range(n):
                self.pool.submit(gate.wait)
                started += 1
        except RuntimeError as exc:
            gate.set()
            self.pool.shutdown(wait=True, cancel_futures=True)  # joins those that started
            self._limits.close()
            raise PoolFailure("thread start", _describe(exc), threads_started=started) from exc
        gate.set()

    def submit(self, fn: Callable[[Any], Any], item: Any) -> Future[Any]:
        try:
            return self.pool.submit(fn, item)
        except RuntimeError as exc:
            raise PoolFailure("submit", _describe(exc)) from exc

    def check(self) -> str | None:
        return None

    def close(self, *, stuck: bool = False) -> None:
        # a timed-out task's thread cannot be stopped: do not wait for it here
        self.pool.shutdown(wait=not stuck, cancel_futures=True)
        self._limits.close()


_live_loky: set[int] = set()  # worker pids of every live _Loky, so one never kills another's


class _Loky:
    """One loky ProcessPoolExecutor, warmed up at creation, killed by pid when closed.

    `env` is set in each worker (its inner thread limits); `make` builds the executor
    instead of a plain ProcessPoolExecutor (the joblib backend passes joblib's own, so
    its memmapping and reuse work), and gets the same guards."""

    kind = "process"

    def __init__(
        self,
        n: int,
        warmup_limit: float = 120.0,
        *,
        env: dict[str, str] | None = None,
        make: Callable[[], Any] | None = None,
        version: str | None = None,
    ) -> None:
        if make is None:
            # loky is imported here, not at the top: importing it registers its start
            # method, which joblib's own copy of loky (the joblib backend's) would use
            import loky  # type: ignore[import-untyped]  # noqa: PLC0415

            version = str(loky.__version__)

            def make() -> Any:
                return loky.ProcessPoolExecutor(max_workers=n, env=env)

        self.size = n
        self.loky_version = str(version)
        self.me = psutil.Process()
        self.before = {c.pid for c in self.me.children()}
        self.pids: set[int] = set()
        self.ex: Any = None
        try:
            self.ex = make()
        except BaseException as exc:
            self.close(stuck=True)
            if isinstance(exc, Exception) and _is_refusal(exc):
                raise PoolFailure("constructor", _describe(exc), **self._detail()) from exc
            raise
        try:
            # a builtin: a worker unpickles it without importing this package (psutil,
            # structlog: 0.1-0.3 s of a worker's start, which plain loky does not pay)
            fut = self.ex.submit(os.getpid)
            deadline = time.monotonic() + warmup_limit
            while not fut.done():
                reason = self.check()
                if reason is None and time.monotonic() > deadline:
                    reason = f"warm-up task not done after {warmup_limit:g}s"
                if reason is not None:
                    raise PoolFailure("warm-up", reason, **self._detail())
                wait([fut], timeout=0.2)
            fut.result()
            self.pids.update(self.ex._processes)
            _live_loky.update(self.pids)
        except PoolFailure:
            self.close(stuck=True)
            raise
        except BaseException as exc:
            detail = self._detail()
            self.close(stuck=True)
            if isinstance(exc, Exception) and _is_refusal(exc):
                raise PoolFailure("first submit", _describe(exc), **detail) from exc
            raise

    def _detail(self) -> dict[str, Any]:
        ex = self.ex
        mgr = getattr(ex, "_executor_manager_thread", None)
        return {
            "loky": self.loky_version,
            "workers_started": len(getattr(ex, "_processes", {}) or {}),
            "manager_started": mgr is not None and mgr.ident is not None,
            "manager_alive": mgr is not None and mgr.is_alive(),
            "trackers": _count_trackers(self.me),
        }

    def submit(self, fn: Callable[[Any], Any], item: Any) -> Future[Any]:
        try:
            fut: Future[Any] = self.ex.submit(fn, item)
        except Exception as exc:
            if _is_refusal(exc):
                raise PoolFailure("submit", _describe(exc), **self._detail()) from exc
            raise
        self.pids.update(self.ex._processes)
        _live_loky.update(self.pids)
        return fut

    def check(self) -> str | None:
        """Why this pool can no longer finish a task, or None while it is healthy."""
        flags = self.ex._flags
        if flags.broken is not None:
            return f"pool broken: {_describe(flags.broken)}"
        mgr = self.ex._executor_manager_thread
        if mgr is not None and mgr.ident is not None and not mgr.is_alive() and not flags.shutdown:
            # loky <= 3.6.0 when its feeder thread was refused (hang A)
            return "executor manager thread died without marking the pool broken"
        return None

    def workers_alive(self) -> bool:
        """False once a worker has exited (its sentinel is ready), which loky's manager
        thread notices only a moment later: a kept pool whose idle worker was killed."""
        try:
            procs = list(self.ex._processes.values())
            return len(procs) >= self.size and not mp_wait([p.sentinel for p in procs], 0)
        except (AttributeError, RuntimeError, OSError, ValueError):
            return False

    def _worker_pids(self) -> set[int]:
        """Our workers: the executor's, plus loky workers born since the pool was made."""
        pids = set(self.pids)
        if self.ex is not None:
            pids.update(getattr(self.ex, "_processes", {}) or {})
        others = _live_loky - self.pids
        for child in self.me.children():
            if child.pid in self.before or child.pid in others:
                continue
            with contextlib.suppress(psutil.Error):
                if any(_LOKY_WORKER_MARK in part for part in child.cmdline()):
                    pids.add(child.pid)
        return pids

    def close(self, *, stuck: bool = False) -> None:
        """Shut down and kill the workers; reap them so nothing joins them at exit."""
        ex = self.ex
        pids = self._worker_pids()
        procs = dict(getattr(ex, "_processes", {}) or {}) if ex is not None else {}
        if stuck:  # a failed pool: nobody will tell its workers to stop
            _kill(pids)
        if ex is not None:
            mgr = ex._executor_manager_thread
            if mgr is not None and mgr.ident is None:
                ex._executor_manager_thread = None  # never started: shutdown would join it
            with contextlib.suppress(Exception):
                ex.shutdown(wait=False, kill_workers=True)
            if mgr is not None and mgr.ident is not None:
                mgr.join(timeout=_REAP_TIMEOUT)
        _kill(pids)
        for proc in procs.values():
            with contextlib.suppress(Exception):
                proc.join(timeout=_REAP_TIMEOUT)
        self._reap(pids - set(procs))
        _live_loky.difference_update(pids)
        self.ex = None

    def _reap(self, pids: set[int]) -> None:
        alive: list[psutil.Process] = []
        for pid in pids:
            with contextlib.suppress(psutil.Error):
                alive.append(psutil.Process(pid))
        _gone, left = psutil.wait_procs(alive, timeout=_REAP_TIMEOUT)
        if left:
            warn(f"loky workers still alive after kill: {[p.pid for p in left]}")


def _count_trackers(me: psutil.Process) -> int:
    """Resource tracker processes (loky's, multiprocessing's) among our children."""
    count = 0
    for child in me.children():
        with contextlib.suppress(psutil.Error):
            count += any("resource_tracker" in part for part in child.cmdline())
    return count


def _kill(pids: Iterable[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


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
        self._backend: _Backend | None = None
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

    def _make(self) -> _Backend:
        kind, n = self._wanted()
        while True:
            try:
                backend: _Backend
                threads = inner.inner_threads(kind, n, tight=bool(getattr(self.grant, "tight", 0)))
                if kind == "process":
                    backend = _Loky(n, env=inner.inner_env(threads))
                elif kind == "thread":
                    # no thread limit after a refusal: see inner.limit_here
                    limit = None if self._failed else threads
                    backend = _Threads(n, inner_threads=limit)
                else:
                    backend = _Sequential()
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
        backend: _Backend,
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
                failure = failure or PoolFailure("result", _describe(exc))
            else:
                raise exc
        if failure is not None:
            raise failure

    def _drop(
        self,
        backend: _Backend,
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
        self, inflight: dict[Future[Any], tuple[int, float]], todo: list[Any], backend: _Backend
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
