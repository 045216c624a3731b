"""A joblib parallel backend that leases its workers from the daemon.

    import joblib
    import supervisord_batt.joblib  # registers the backend "supervisord-batt"

    with joblib.parallel_config(backend="supervisord-batt"):
        results = joblib.Parallel(n_jobs=-1)(joblib.delayed(f)(x) for x in xs)

`Parallel(n_jobs=-1)` (or 8) asks the daemon for that many workers and runs on what it
grants: a loky pool of the granted size (joblib's own, so memmapping and its pickling
work), a thread pool, or sequential in the caller. The lease is taken when the call
configures its backend; it is renewed between batches; a shrink takes effect at the next
call. A thread pool's lease is given back when the call ends (for `with Parallel(...) as
p:`, when the block ends). A loky pool and its lease are kept after the call for
`keep_alive` idle seconds ($SUPERVISORD_BATT_KEEP_ALIVE, 5 by default; 0: a pool per
call), so that the next call with the same n_jobs runs on the same workers, as plain
joblib reuses its executor (client.keep: the lease renewed while they idle, both given
back together when idle too long, when the daemon asks for a shrink, and at exit). No
worker outlives the slots it was granted.

Without a daemon the backend behaves like `lease()`: one warning for the process, then
the configured fallback ($SUPERVISORD_BATT_FALLBACK, `sequential` by default).

It never hangs where plain joblib would: the loky pool is warmed up under the client
executor's guards (a refused tracker, worker or thread is a clean fallback to threads,
its half-built pool killed by pid), the thread pool starts all its threads up front
(a refused one falls back to sequential), and each fallback is reported to the daemon.
Each loky worker gets cpus / workers inner threads (BLAS, OpenMP); a thread pool caps
the process's BLAS with threadpoolctl while it runs. Nested Parallel calls inside a
worker run sequential: the grant counts the workers, and they are busy.

One loky pool per process, as joblib's loky executor is one per process: a call that
starts while another runs on it (another thread; a generator not yet exhausted) leases
threads instead. A forked child forgets its parent's kept pool and lease, and the loky
executor it inherited with them, and builds its own.

# Why one module
The two backends (loky and threads) and the kept pool share one process-wide state: the
grants of the running calls, the kept pool and its lease, its lock, and the handler that
makes a forked child forget them. The pools they run on are `client.pools`', the lease
is `client.leases`'.
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import joblib  # type: ignore[import-untyped]
from joblib import executor as joblib_executor
from joblib._parallel_backends import (  # type: ignore[import-untyped]
    FallbackToBackend,
    LokyBackend,
    ParallelBackendBase,
    SequentialBackend,
    ThreadingBackend,
)
from joblib.externals import loky as joblib_loky  # type: ignore[import-untyped]

from supervisord_batt import paths
from supervisord_batt.client import inner
from supervisord_batt.client.keep import RENEW_EVERY, Claim, Keeper, Kept, Lease
from supervisord_batt.client.leases import DEFAULT_TIMEOUT, KINDS, Grant, acquire
from supervisord_batt.client.notice import warn
from supervisord_batt.client.pools import LokyPool, PoolFailure, ThreadPool

if not hasattr(ParallelBackendBase, "submit"):  # joblib < 1.5 calls apply_async instead
    raise ImportError(f"supervisord_batt.joblib needs joblib>=1.5, found {joblib.__version__}")

BACKEND_NAME = "supervisord-batt"
THREAD_KINDS = ("thread", "sequential")  # what a call that needs shared memory can use
KEEP_ALIVE_S = 5.0  # seconds a process pool and its lease are kept after a call (the default)


def keep_alive_default(env: dict[str, str] | None = None) -> float:
    """$SUPERVISORD_BATT_KEEP_ALIVE (seconds, 0: a pool per call), else KEEP_ALIVE_S."""
    value = (os.environ if env is None else env).get(paths.KEEP_ALIVE_ENV, "").strip()
    if not value:
        return KEEP_ALIVE_S
    try:
        seconds = float(value.removesuffix("s"))
    except ValueError:
        seconds = -1.0
    if not 0 <= seconds < float("inf"):
        warn(f"ignoring {paths.KEEP_ALIVE_ENV}={value!r}: expected seconds like 5 or 0")
        return KEEP_ALIVE_S
    return seconds


@dataclass
class Settings:
    """How the backend leases: the same knobs as lease()."""

    job: str | None = None
    socket_path: str | None = None
    fallback: str = "sequential"
    fallback_workers: int = 1
    timeout: float = DEFAULT_TIMEOUT
    inner_max_num_threads: int | None = None  # joblib's override of the inner threads
    keep_alive: float | None = None  # idle seconds a pool is kept (None: keep_alive_default)

    def idle_s(self) -> float:
        return keep_alive_default() if self.keep_alive is None else max(0.0, self.keep_alive)


@dataclass
class State:
    """What this process leased, for `%batt` and tests: live grants and the last one."""

    live: dict[int, Grant] = field(default_factory=dict)
    last: str = ""
    warned_unreachable: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)


STATE = State()


def describe(grant: Grant) -> str:
    """One line: what was granted and why, as the notebook prints it."""
    if grant.lease_id is None:
        return f"{grant.describe()} (no lease: {grant.reason or 'not leased'})"
    return (
        f"{grant.describe()} (lease {grant.lease_id}, level {grant.level}, "
        f"{grant.inner_threads} inner thread(s) per worker; {grant.reason or 'granted'})"
    )


def _want(n_jobs: int | None) -> int:
    """joblib's meaning of n_jobs: -1 all CPUs, -2 all but one, None 1."""
    if n_jobs is None:
        return 1
    if n_jobs == 0:
        raise ValueError("n_jobs == 0 in Parallel has no meaning")
    if n_jobs < 0:
        return max(inner.cpu_count() + 1 + n_jobs, 1)
    return int(n_jobs)


def _lease(settings: Settings, want: int, kinds: Sequence[str]) -> Grant:
    """A grant for one call; one warning per process when the daemon is away."""
    grant = acquire(
        want,
        kinds=kinds,
        job=settings.job or BACKEND_NAME,
        socket_path=settings.socket_path,
        fallback=settings.fallback,
        fallback_workers=settings.fallback_workers,
        timeout=settings.timeout,
        quiet=True,
    )
    with STATE.lock:
        if grant.lease_id is not None:
            STATE.live[id(grant)] = grant
        elif not STATE.warned_unreachable:
            STATE.warned_unreachable = True
            warn(f"{grant.reason}; joblib runs {grant.describe()} until it answers")
        STATE.last = describe(grant)
    return grant


def _give_back(grant: Grant | None) -> None:
    if grant is None:
        return
    with STATE.lock:
        STATE.live.pop(id(grant), None)
    grant.release()


def _give_back_kept(lease: Lease) -> None:
    assert isinstance(lease, Grant)
    _give_back(lease)


def new_keeper() -> Keeper[LokyPool]:
    """A keeper that gives its leases back as this module does (KEEPER is one)."""
    return Keeper(give_back=_give_back_kept)


KEEPER = new_keeper()
atexit.register(KEEPER.close)


def _after_fork_in_child() -> None:
    """A forked child: its parent's leases, kept pool and loky executor are not its own.
    Their connections are closed here without a word to the daemon (the parent still
    holds them); the executor the parent kept is dropped, so the child's first call
    builds one of its own (an inherited one has no manager thread: plain joblib's call
    in such a child waits forever)."""
    had_pool = KEEPER.forget()
    STATE.lock = threading.Lock()
    for grant in STATE.live.values():
        grant.detach()
    STATE.live.clear()
    if had_pool:
        LokyPool.forget_inherited(joblib_loky)
        joblib_executor._executor_args = None


os.register_at_fork(after_in_child=_after_fork_in_child)


def kept() -> Grant | None:
    """The grant of the loky pool kept idle between calls, if one is."""
    parked = KEEPER.parked()
    return parked.grant if parked is not None and isinstance(parked.grant, Grant) else None


_SETTINGS = tuple(f.name for f in dataclasses.fields(Settings))


def _key(settings: Settings, want: int) -> tuple[Any, ...]:
    """Which calls may take a kept pool: those that would ask for the same lease."""
    return (*(getattr(settings, name) for name in _SETTINGS), want)


def _start_call(
    settings: Settings, want: int, kinds: Sequence[str]
) -> tuple[Grant, Claim | None, LokyPool | None]:
    """The call's grant, with the claim on this process's loky pool when it may use one,
    and the pool a previous call left for the same request (its lease renewed when the
    last renewal is a second old: the daemon may want it smaller now; calls back to back
    pay no round trip each)."""
    claim, parked = None, None
    if "process" in kinds:
        claim, parked = KEEPER.checkout(_key(settings, want))
        if claim is None:
            kinds = THREAD_KINDS  # another call runs this process's loky pool now
    if parked is None:
        return _lease(settings, want, kinds), claim, None
    grant = parked.grant
    assert isinstance(grant, Grant)
    if grant.renew_due(RENEW_EVERY):
        grant.renew(workers_in_use=parked.pool.size)
    with STATE.lock:
        STATE.last = describe(grant)
    return grant, claim, parked.pool


def _end_claim(claim: Claim | None, pool: LokyPool | None) -> None:
    """A call that will not run on the loky pool: close the pool it was left, if any."""
    if pool is not None:
        pool.close()
    KEEPER.checkin(claim, None)


def _kinds_for(prefer: str | None, require: str | None) -> tuple[str, ...]:
    return THREAD_KINDS if require == "sharedmem" or prefer == "threads" else KINDS


def _backend_for(
    grant: Grant,
    settings: Settings,
    nesting_level: int | None,
    claim: Claim | None = None,
    pool: LokyPool | None = None,
) -> Any:
    """The joblib backend that runs on this grant (sequential gives the lease back:
    the caller's own thread costs the budget nothing). `claim` and `pool` go to a loky
    backend; any other ends them."""
    if grant.kind == "process" and grant.size > 1:
        return LeasedLokyBackend(grant, settings, nesting_level, claim=claim, pool=pool)
    _end_claim(claim, pool)
    if grant.kind in ("process", "thread") and grant.size > 1:
        return LeasedThreadingBackend(grant, settings, nesting_level=nesting_level)
    _give_back(grant)
    return SequentialBackend(nesting_level=nesting_level)


class SupervisordBattBackend(ParallelBackendBase):  # type: ignore[misc]
    """The registered backend: leases at configure, then hands the call to the backend
    that fits the grant (joblib's FallbackToBackend), which gives the lease back when
    the call ends. A fresh one per call, so concurrent Parallel calls (threads of one
    kernel) each hold their own lease."""

    supports_inner_max_num_threads = True
    supports_retrieve_callback = True
    supports_sharedmem = True  # require="sharedmem" is honoured: it leases threads only
    uses_threads = True  # so prefer="threads" stays here rather than going to joblib's

    def __init__(
        self,
        nesting_level: int | None = None,
        inner_max_num_threads: int | None = None,
        *,
        job: str | None = None,
        socket_path: str | None = None,
        fallback: str = "sequential",
        fallback_workers: int = 1,
        timeout: float = DEFAULT_TIMEOUT,
        keep_alive: float | None = None,
        **backend_kwargs: Any,
    ) -> None:
        super().__init__(
            nesting_level=nesting_level,
            inner_max_num_threads=inner_max_num_threads,
            **backend_kwargs,
        )
        self.settings = Settings(
            job=job,
            socket_path=socket_path,
            fallback=fallback,
            fallback_workers=fallback_workers,
            timeout=timeout,
            keep_alive=keep_alive,
        )

    def effective_n_jobs(self, n_jobs: int | None) -> int:
        """What a call would ask for (sklearn sizes its chunks by this; no lease)."""
        return _want(n_jobs)

    def configure(
        self,
        n_jobs: int | None = 1,
        parallel: Any = None,
        prefer: str | None = None,
        require: str | None = None,
        **backend_kwargs: Any,
    ) -> int:
        want = _want(n_jobs)
        if want == 1 or (self.nesting_level or 0) > 0:
            # one worker, or inside a worker: the caller's thread, no lease
            raise FallbackToBackend(SequentialBackend(nesting_level=self.nesting_level))
        self.settings.inner_max_num_threads = self.inner_max_num_threads
        grant, claim, pool = _start_call(self.settings, want, _kinds_for(prefer, require))
        raise FallbackToBackend(_backend_for(grant, self.settings, self.nesting_level, claim, pool))


class _Leased:
    """The part both pool backends share: the grant, renewed between batches."""

    grant: Grant | None
    settings: Settings
    _lock: threading.Lock

    def _init_lease(self, grant: Grant, settings: Settings) -> None:
        self.grant = grant
        self.settings = settings
        self._lock = threading.Lock()

    def _grant_for_call(self, n_jobs: int | None, prefer: str | None, require: str | None) -> Grant:
        """The grant held, or a new one when this backend runs a second call."""
        if self.grant is None:
            self.grant = _lease(self.settings, _want(n_jobs), _kinds_for(prefer, require))
        return self.grant

    def _renew_if_due(self, in_use: int) -> None:
        """Called by joblib between batches (dispatch and completion threads)."""
        grant = self.grant
        if grant is None or not grant.renew_due():
            return
        with self._lock:
            grant.renew(workers_in_use=in_use)

    def _fall(self, kind: str, n: int, exc: PoolFailure, to: str) -> None:
        warn(
            f"joblib {kind} pool of {n} failed at {exc.stage} ({exc.reason}); falling back to {to}",
            kind=kind,
            workers=n,
            stage=exc.stage,
            reason=exc.reason,
            fallback=to,
        )
        if self.grant is not None:
            self.grant.report_fallback(kind, to, n, exc.stage, exc.reason)

    def _release(self) -> None:
        grant, self.grant = self.grant, None
        _give_back(grant)


def _nested(nesting_level: int | None) -> tuple[Any, None]:
    return SequentialBackend(nesting_level=(nesting_level or 0) + 1), None


class LeasedLokyBackend(_Leased, LokyBackend):  # type: ignore[misc]
    """joblib's loky backend on a process grant: the pool sized by the grant, built and
    warmed up under the executor's guards, or the pool a previous call left (KEEPER);
    kept with its lease when the call ends, or shut down (workers killed, reaped) with
    it."""

    def __init__(
        self,
        grant: Grant,
        settings: Settings,
        nesting_level: int | None = None,
        *,
        claim: Claim | None = None,
        pool: LokyPool | None = None,
    ) -> None:
        LokyBackend.__init__(
            self, nesting_level=nesting_level, inner_max_num_threads=settings.inner_max_num_threads
        )
        self._init_lease(grant, settings)
        self._pool: LokyPool | None = None
        self._workers: Any = None
        self._claim = claim  # this call's right to the process's loky pool
        self._left = pool  # the pool a previous call left, to run on if it still fits
        self._key = _key(settings, grant.wanted)

    def _grant_for_call(self, n_jobs: int | None, prefer: str | None, require: str | None) -> Grant:
        """The grant held, or (a second call on this backend) the kept pool's or a new one."""
        if self.grant is None:
            want = _want(n_jobs)
            self.grant, self._claim, self._left = _start_call(
                self.settings, want, _kinds_for(prefer, require)
            )
            self._key = _key(self.settings, want)
        return self.grant

    def effective_n_jobs(self, n_jobs: int | None) -> int:
        if self.grant is not None and self._pool is not None:
            return self._pool.size
        return int(LokyBackend.effective_n_jobs(self, n_jobs))

    def configure(
        self,
        n_jobs: int | None = 1,
        parallel: Any = None,
        prefer: str | None = None,
        require: str | None = None,
        idle_worker_timeout: float | None = None,
        **kwargs: Any,
    ) -> int:
        grant = self._grant_for_call(n_jobs, prefer, require)
        if grant.kind != "process" or grant.size < 2:
            self.grant = None  # the new backend owns it now
            claim, self._claim, pool, self._left = self._claim, None, self._left, None
            raise FallbackToBackend(
                _backend_for(grant, self.settings, self.nesting_level, claim, pool)
            )
        n = grant.size
        if self.settings.inner_max_num_threads is None:
            self.inner_max_num_threads = grant.inner_threads

        def make() -> Any:
            LokyBackend.configure(
                self,
                n_jobs=n,
                parallel=parallel,
                prefer=prefer,
                require=require,
                idle_worker_timeout=idle_worker_timeout,
                **kwargs,
            )
            return self._workers

        if self._reuse(n, make):
            return n  # its lease was renewed when the call took it
        try:
            self._pool = LokyPool(n, make=make, loky=joblib_loky)
        except FallbackToBackend:  # joblib's own reasons for one worker (a daemon process)
            self._workers = None
            self._release()
            raise
        except PoolFailure as exc:
            self._workers = None
            self._fall("process", n, exc, "thread")
            threads = LeasedThreadingBackend(
                grant, self.settings, self.nesting_level, after_refusal=True
            )
            self.grant = None
            self._end_claim()
            raise FallbackToBackend(threads) from exc
        grant.renew(workers_in_use=n)  # acknowledge the size in use
        return n

    def _reuse(self, n: int, make: Callable[[], Any]) -> bool:
        """Run on the pool a previous call left, when it is the one this call needs: the
        granted size, healthy, and still joblib's executor for this call's arguments
        (the same inner threads and memmapping settings). Else it is closed."""
        pool, self._left = self._left, None
        if pool is None:
            return False
        broken = pool.check() or (None if pool.workers_alive() else "a worker exited")
        if pool.size == n and broken is None:
            with contextlib.suppress(Exception):  # the new pool's guards will say why
                if make() is pool.ex:
                    self._pool = pool
                    return True
        self._workers = None
        pool.close(stuck=broken is not None)
        return False

    def _release(self) -> None:
        _Leased._release(self)
        self._end_claim()

    def _end_claim(self) -> None:
        claim, self._claim = self._claim, None
        KEEPER.checkin(claim, None)

    def get_nested_backend(self) -> tuple[Any, None]:
        return _nested(self.nesting_level)

    def compute_batch_size(self) -> int:
        self._renew_if_due(self._pool.size if self._pool is not None else 0)
        return int(LokyBackend.compute_batch_size(self))

    def batch_completed(self, batch_size: int, duration: float) -> None:
        LokyBackend.batch_completed(self, batch_size, duration)
        self._renew_if_due(self._pool.size if self._pool is not None else 0)

    def _close_pool(self, *, stuck: bool) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.close(stuck=stuck)

    def terminate(self) -> None:
        """The call ends: keep its pool and lease for the next call (KEEPER), or end both."""
        if self._workers is not None and getattr(self, "parallel", None) is not None:
            LokyBackend.terminate(self)  # joblib's temporary folders of this call
        self._workers = None
        self.reset_batch_stats()
        pool, grant, claim = self._pool, self.grant, self._claim
        self._pool, self.grant, self._claim = None, None, None
        if pool is not None and grant is not None and pool.check() is None:
            idle = self.settings.idle_s()
            KEEPER.checkin(claim, Kept(pool, grant, self._key, idle))
            return
        if pool is not None:
            pool.close(stuck=pool.check() is not None)
        _give_back(grant)
        KEEPER.checkin(claim, None)

    def abort_everything(self, ensure_ready: bool = True) -> None:
        """A task raised: kill the pool; make a new one (same grant) if asked to."""
        workers, self._workers = self._workers, None
        self._close_pool(stuck=True)
        if workers is not None:  # as joblib's terminate(kill_workers=True), without its join
            with contextlib.suppress(Exception):
                workers._temp_folder_manager._clean_temporary_resources(
                    force=True, allow_non_empty=True
                )
        if ensure_ready:
            self.configure(n_jobs=self.parallel.n_jobs, parallel=self.parallel)


class LeasedThreadingBackend(_Leased, ThreadingBackend):  # type: ignore[misc]
    """A thread pool of the granted size, every thread started up front (a refused one
    falls back to sequential); the process's BLAS capped while it runs."""

    def __init__(
        self,
        grant: Grant,
        settings: Settings,
        nesting_level: int | None = None,
        *,
        after_refusal: bool = False,
    ) -> None:
        ThreadingBackend.__init__(self, nesting_level=nesting_level)
        self._init_lease(grant, settings)
        self._threads: ThreadPool | None = None
        self.after_refusal = after_refusal  # no BLAS limit then: see inner.limit_here

    def effective_n_jobs(self, n_jobs: int | None) -> int:
        if self._threads is not None:
            return self._threads.size
        return _want(n_jobs)

    def configure(
        self,
        n_jobs: int | None = 1,
        parallel: Any = None,
        prefer: str | None = None,
        require: str | None = None,
        **kwargs: Any,
    ) -> int:
        grant = self._grant_for_call(n_jobs, prefer, require)
        if grant.kind == "sequential" or grant.size < 2:
            self.grant = None
            raise FallbackToBackend(_backend_for(grant, self.settings, self.nesting_level))
        n = grant.size
        threads = self.settings.inner_max_num_threads or inner.inner_threads(
            "thread", n, tight=grant.tight
        )
        try:
            self._threads = ThreadPool(n, inner_threads=None if self.after_refusal else threads)
        except PoolFailure as exc:
            self._fall("thread", n, exc, "sequential")
            self._release()
            raise FallbackToBackend(SequentialBackend(nesting_level=self.nesting_level)) from exc
        self.parallel = parallel
        self._n_jobs = n
        if grant.kind == "thread":
            grant.renew(workers_in_use=n)
        return n

    def get_nested_backend(self) -> tuple[Any, None]:
        return _nested(self.nesting_level)

    def submit(self, func: Callable[[], Any], callback: Callable[..., Any] | None = None) -> Any:
        if self._threads is None:
            raise RuntimeError("the thread pool is not configured")
        fut: Future[Any] = self._threads.submit(_call, func)
        if callback is not None:
            fut.add_done_callback(callback)
        return fut

    def retrieve_result_callback(self, out: Future[Any]) -> Any:
        return out.result()

    def compute_batch_size(self) -> int:
        self._renew_if_due(self._threads.size if self._threads is not None else 0)
        return 1

    def batch_completed(self, batch_size: int, duration: float) -> None:
        self._renew_if_due(self._threads.size if self._threads is not None else 0)

    def _close_threads(self, *, stuck: bool) -> None:
        threads, self._threads = self._threads, None
        if threads is not None:
            threads.close(stuck=stuck)

    def terminate(self) -> None:
        self._close_threads(stuck=False)
        self._release()

    def abort_everything(self, ensure_ready: bool = True) -> None:
        self._close_threads(stuck=True)
        if ensure_ready:
            self.configure(n_jobs=self.parallel.n_jobs, parallel=self.parallel)


def _call(func: Callable[[], Any]) -> Any:
    return func()


def register(*, make_default: bool = False, **settings: Any) -> None:
    """Register the backend under BACKEND_NAME (done on import, without settings).

    `settings` are Settings' fields (job, socket_path, fallback, ...); `make_default`
    makes it joblib's default backend in this process (joblib's own switch)."""

    def factory(
        nesting_level: int | None = None, inner_max_num_threads: int | None = None, **kw: Any
    ) -> SupervisordBattBackend:
        return SupervisordBattBackend(
            nesting_level=nesting_level,
            inner_max_num_threads=inner_max_num_threads,
            **{**settings, **kw},
        )

    joblib.register_parallel_backend(BACKEND_NAME, factory, make_default=make_default)


def current() -> list[Grant]:
    """The grants this process holds now (one per running Parallel call)."""
    with STATE.lock:
        return list(STATE.live.values())


with contextlib.suppress(Exception):  # registering must never break an import
    register()
