"""The pools an executor runs tasks on: the calling thread, a thread pool, a loky pool.

    pool = LokyPool(4, env=inner.inner_env(2))   # warmed up, or PoolFailure
    fut = pool.submit(score, task)
    reason = pool.check()                        # None while it can still finish tasks
    pool.close(stuck=reason is not None)         # workers killed by pid and reaped

Each is a `Pool`; `client.executor` runs a job's tasks on one and falls back down
process, thread, sequential when one fails, and the joblib backend
(`supervisord_batt.joblib`) runs its calls on a LokyPool or a ThreadPool. A pool that
cannot be made or that dies raises PoolFailure, never leaves a half-built pool behind.

Why each guard exists (see docs/FACTS.md, measured on loky 3.6.0 and 3.7.0):
- a pool is warmed up before any real task is given to it: one no-op round trip makes
  every creation step happen (both resource trackers, n workers, the manager thread, the
  feeder thread), so a refused one is a clean fallback with no task lost or run twice;
- a refused creation leaves a half-built pool: its workers are killed by pid and reaped
  before falling back, else multiprocessing joins them at interpreter exit (hang B);
- every wait is a poll in slices with a health check, because with loky <= 3.6.0 a
  refused feeder thread kills the manager thread and no future ever resolves (hang A).

Every use of loky's internals (its executor's workers, flags and manager thread, the
reusable executor a forked child inherits) is in LokyPool, so a loky release that
changes them is fixed in one class.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from multiprocessing.connection import wait as mp_wait
from types import ModuleType
from typing import TYPE_CHECKING, Any, Protocol, cast

from supervisord_batt.client import inner
from supervisord_batt.client.notice import warn

if TYPE_CHECKING:
    import psutil

_LOKY_WORKER_MARK = "loky.backend.popen_loky_posix"
_REAP_TIMEOUT = 5.0


class Pool(Protocol):
    """What the executor and the joblib backend call on a pool."""

    @property
    def kind(self) -> str:
        """One of protocol.KINDS: process, thread or sequential."""

    @property
    def size(self) -> int:
        """How many tasks it runs at once."""

    def submit(self, fn: Callable[[Any], Any], item: Any) -> Future[Any]:
        """fn(item) on the pool; PoolFailure when the pool cannot take it."""

    def check(self) -> str | None:
        """Why the pool can no longer finish a task, or None while it is healthy."""

    def close(self, *, stuck: bool = False) -> None:
        """End the pool; `stuck`: it failed or a task timed out, do not wait for it."""


class PoolFailure(Exception):
    """A pool could not be created or died; its tasks are redone on the next kind."""

    def __init__(self, stage: str, reason: str, **detail: Any) -> None:
        super().__init__(f"{stage}: {reason}")
        self.stage = stage
        self.reason = reason
        self.detail = detail


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


def describe_error(exc: BaseException) -> str:
    """The first line of an exception, with its type, for a PoolFailure or a log line."""
    return f"{type(exc).__name__}: {exc}".splitlines()[0][:200]


class SequentialPool:
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


class ThreadPool:
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
            raise PoolFailure("thread start", describe_error(exc), threads_started=started) from exc
        gate.set()

    def submit(self, fn: Callable[[Any], Any], item: Any) -> Future[Any]:
        try:
            return self.pool.submit(fn, item)
        except RuntimeError as exc:
            raise PoolFailure("submit", describe_error(exc)) from exc

    def check(self) -> str | None:
        return None

    def close(self, *, stuck: bool = False) -> None:
        # a timed-out task's thread cannot be stopped: do not wait for it here
        self.pool.shutdown(wait=not stuck, cancel_futures=True)
        self._limits.close()


_live_loky: set[int] = set()  # worker pids of every live LokyPool, so one never kills another's


class LokyPool:
    """One loky ProcessPoolExecutor, warmed up at creation, killed by pid when closed.

    `env` is set in each worker (its inner thread limits); `make` builds the executor
    instead of a plain ProcessPoolExecutor (the joblib backend passes joblib's own, so
    its memmapping and reuse work), and gets the same guards. `loky` is the package the
    executor comes from: the standalone one by default, joblib's copy for joblib's."""

    kind = "process"

    def __init__(
        self,
        n: int,
        warmup_limit: float = 120.0,
        *,
        env: dict[str, str] | None = None,
        make: Callable[[], Any] | None = None,
        loky: ModuleType | None = None,
    ) -> None:
        # psutil here, not at the top: a job that runs sequential or on threads never
        # needs it (part of the client's import time, docs/BENCHMARKS.md)
        import psutil  # noqa: PLC0415

        lib = loky if loky is not None else _standalone_loky()
        if make is None:

            def make() -> Any:
                return lib.ProcessPoolExecutor(max_workers=n, env=env)

        self.size = n
        self.loky_version = str(lib.__version__)
        self.me = psutil.Process()
        self.before = {c.pid for c in self.me.children()}
        self.pids: set[int] = set()
        self.ex: Any = None
        try:
            self.ex = make()
        except BaseException as exc:
            self.close(stuck=True)
            if isinstance(exc, Exception) and _is_refusal(exc):
                raise PoolFailure("constructor", describe_error(exc), **self._detail()) from exc
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
                raise PoolFailure("first submit", describe_error(exc), **detail) from exc
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
                raise PoolFailure("submit", describe_error(exc), **self._detail()) from exc
            raise
        self.pids.update(self.ex._processes)
        _live_loky.update(self.pids)
        return fut

    def check(self) -> str | None:
        """Why this pool can no longer finish a task, or None while it is healthy."""
        flags = self.ex._flags
        if flags.broken is not None:
            return f"pool broken: {describe_error(flags.broken)}"
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
        import psutil  # noqa: PLC0415

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

    @staticmethod
    def forget_inherited(loky: ModuleType) -> None:
        """In a forked child: drop the reusable executor `loky` kept for the parent, so
        the child's next one is its own (an inherited one has no manager thread: a call
        on it waits forever)."""
        loky.reusable_executor._executor = None
        loky.reusable_executor._executor_kwargs = None

    def _reap(self, pids: set[int]) -> None:
        import psutil  # noqa: PLC0415

        alive: list[psutil.Process] = []
        for pid in pids:
            with contextlib.suppress(psutil.Error):
                alive.append(psutil.Process(pid))
        _gone, left = psutil.wait_procs(alive, timeout=_REAP_TIMEOUT)
        if left:
            warn(f"loky workers still alive after kill: {[p.pid for p in left]}")


def _standalone_loky() -> ModuleType:
    # loky is imported here, not at the top: importing it registers its start method,
    # which joblib's own copy of loky (the joblib backend's) would use
    import loky  # type: ignore[import-untyped]  # noqa: PLC0415

    return cast(ModuleType, loky)


def _count_trackers(me: psutil.Process) -> int:
    """Resource tracker processes (loky's, multiprocessing's) among our children."""
    import psutil  # noqa: PLC0415

    count = 0
    for child in me.children():
        with contextlib.suppress(psutil.Error):
            count += any("resource_tracker" in part for part in child.cmdline())
    return count


def _kill(pids: Iterable[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
