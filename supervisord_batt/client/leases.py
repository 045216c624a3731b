"""What a job imports: a lease of concurrency slots from the daemon, and a wrapper for
programs that cannot be changed.

    with lease(3, job="batt") as grant:
        with grant.executor(task_timeout=600) as ex:
            results = ex.map(score, tasks)

The daemon is an optimisation of the job, never a dependency of it: when it cannot be
reached (no socket, refused, timed out, an error reply) the job gets a degraded grant
(sequential by default, or $SUPERVISORD_BATT_FALLBACK such as `process:2`) and one line
on stderr saying so. Nothing here raises because of the daemon.

Why a plain blocking socket and no background thread: the job is the thing that runs
out of threads. A lease lives as long as its connection (the daemon frees it when the
socket closes, even after SIGKILL), so the socket stays open for the lease's life and
the TTL is kept alive by `renew()` calls made between tasks.

# Why one module
It is what a job imports: the connection, the grant and `lease()` / `exec`. A grant's
renew, its shrink and its resume after a daemon restart use the connection's reconnect,
so a lease outlives a daemon's restart in one place. The executor is `client.executor`'s.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, TypeVar

from supervisord_batt import paths, protocol, shapes
from supervisord_batt.client import connect, inner
from supervisord_batt.client.notice import warn
from supervisord_batt.quantities import parse_size

if TYPE_CHECKING:
    from supervisord_batt.client.executor import BudgetExecutor

T = TypeVar("T")
DEFAULT_TIMEOUT = 5.0
BAD_REPLY = "bad_reply"  # a reply that is not what the protocol says (the client's own code)
KINDS = protocol.KINDS  # re-exported for jobs: the kinds a grant can be
# env exported by `exec` so loky sizes its pool from the grant (the worker count) ...
WORKER_ENV_VARS = ("LOKY_MAX_CPU_COUNT",)
# ... and OpenMP and BLAS size each worker's inner threads from it (cpus / workers)
INNER_THREAD_ENV_VARS = inner.INNER_THREAD_ENV_VARS


class DaemonError(Exception):
    """An error reply from the daemon (`code` is one of protocol's error codes)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


def default_socket_path() -> Path:
    """$SUPERVISORD_BATT_SOCKET, else the daemon's default socket (see `paths`)."""
    return paths.client_socket_path()


class ImpostorError(PermissionError):
    """The process serving the socket is not the daemon (not root, not our own uid)."""


_UCRED = struct.Struct("3i")


def check_server(sock: socket.socket, path: Path) -> None:
    """Refuse to talk to a server that runs as anyone but root or ourselves.

    Checked before a byte is sent: a socket another user bound at the daemon's path (in
    a directory they could write) must not get a job's requests or answer an admin's
    `stop all`. The kernel reports the server's credentials (SO_PEERCRED).
    """
    _pid, uid, _gid = _UCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
    if uid not in (0, os.geteuid()):
        raise ImpostorError(
            f"the server at {path} runs as uid {uid}, not root or uid {os.geteuid()}: "
            "not the daemon, refusing to talk to it"
        )


class Connection:
    """A small blocking client: one request line out, exactly one reply line in.

    A busy daemon (a full accept queue, a restart, a `too_many_connections` refusal) is
    tried again for up to `retry` seconds (at most `timeout`) from the first connect
    attempt, with short jittered delays; see client.connect.

    A reply may be as long as the protocol allows (`protocol.MAX_REPLY_BYTES`): a status
    page of hundreds of leases is far more than a request's 64 KiB. `call` checks the
    reply against its TypedDict before the caller reads it."""

    def __init__(
        self,
        path: str | os.PathLike[str] | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        max_line: int = protocol.MAX_REPLY_BYTES,
        retry: float = connect.RETRY_S,
    ) -> None:
        self.path = Path(path) if path is not None else default_socket_path()
        self.timeout = timeout
        self.max_line = max_line
        self._buf = bytearray()
        self._next_id = 0
        self._retry_until = time.monotonic() + min(retry, timeout)
        self._sock: socket.socket | None = connect.retrying(self._open, self._retry_left())

    def _retry_left(self) -> float:
        return max(0.0, self._retry_until - time.monotonic())

    def _open(self) -> socket.socket:
        sock = connect.open_socket(self.path, self.timeout)
        try:
            check_server(sock, self.path)
        except BaseException:
            sock.close()
            raise
        return sock

    def request(self, op: str, **fields: Any) -> dict[str, Any]:
        """Send one request; return the reply's fields or raise DaemonError/OSError."""
        if self._sock is None:
            raise ConnectionError("connection closed")
        self._next_id += 1
        request_id = self._next_id
        line = protocol.encode({"op": op, "id": request_id, **fields})
        reply = self._first(line) if request_id == 1 else self._exchange(line)
        if reply.get("id", request_id) != request_id:
            raise DaemonError(BAD_REPLY, f"reply id {reply.get('id')!r} != {request_id}")
        if not reply.get("ok"):
            err = reply.get("error") or {}
            raise DaemonError(str(err.get("code", "unknown")), str(err.get("message", reply)))
        return reply

    def _exchange(self, line: bytes) -> dict[str, Any]:
        assert self._sock is not None
        self._sock.sendall(line)
        return self._read_reply()

    def _first(self, line: bytes) -> dict[str, Any]:
        """The first request, which is where a refused connection learns it was: on
        `too_many_connections`, or a connection the daemon closed at once (a flood),
        connect again and ask again while the retry time lasts."""

        def attempt() -> dict[str, Any]:
            if self._sock is None:
                self._sock = self._open()
            try:
                reply = self._exchange(line)
            except (BrokenPipeError, ConnectionResetError) as exc:
                self.close()
                raise connect.Busy(exc) from exc
            if (reply.get("error") or {}).get("code") == protocol.TOO_MANY_CONNECTIONS:
                self.close()
                raise connect.Busy(reply)
            return reply

        try:
            return connect.retrying(attempt, self._retry_left())
        except connect.Busy as exc:  # refused to the end: the last refusal is the answer
            last = exc.args[0]
            if isinstance(last, OSError):
                raise last from None
            return dict(last)

    def call(self, shape: type[T], op: str, **fields: Any) -> T:
        """`request`, its reply checked to be a `shape` (one of protocol's replies):
        DaemonError `bad_reply` saying what is wrong when it is not."""
        reply = self.request(op, **fields)
        try:
            return shapes.check(shape, reply)
        except shapes.ShapeError as exc:
            raise DaemonError(BAD_REPLY, f"{op}: {exc}") from None

    def next_reply(self) -> dict[str, Any]:
        """A further line the daemon sends unasked (a failed `reexec`'s second reply)."""
        return self._read_reply()

    def _read_reply(self) -> dict[str, Any]:
        assert self._sock is not None
        deadline = time.monotonic() + self.timeout
        buf, searched = self._buf, 0
        while (end := buf.find(b"\n", searched)) < 0:
            if len(buf) > self.max_line:
                raise DaemonError(protocol.TOO_LARGE, f"reply longer than {self.max_line} bytes")
            searched = len(buf)
            self._sock.settimeout(max(0.001, deadline - time.monotonic()))
            chunk = self._sock.recv(min(1 << 20, self.max_line + 1 - len(buf)) or 1)
            if not chunk:
                raise ConnectionError("the daemon closed the connection")
            buf += chunk
        line = bytes(buf[:end])
        del buf[: end + 1]
        try:
            reply = json.loads(line)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise DaemonError(protocol.BAD_JSON, f"reply is not JSON: {exc}") from None
        if not isinstance(reply, dict):
            raise DaemonError(protocol.BAD_JSON, "reply is not a JSON object")
        return reply

    def close(self) -> None:
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.close()
            self._sock = None
        self._buf = bytearray()

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def parse_fallback(spec: str, default_workers: int = 1) -> tuple[str, int]:
    """`sequential`, `thread`, `process:2` -> (kind, workers); ValueError when malformed."""
    kind, _, count = spec.strip().partition(":")
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r} (expected one of {', '.join(KINDS)})")
    workers = int(count) if count else default_workers
    if workers < 1:
        raise ValueError(f"worker count must be >= 1, got {workers}")
    return kind, 1 if kind == "sequential" else workers


@dataclass(frozen=True)
class _Origin:
    """Where and how a lease was asked for: enough to ask for it again."""

    path: Path
    want: int
    kinds: list[str]
    job: str | None
    timeout: float
    worker_bytes: int | None = None


RETRY_FIRST, RETRY_MAX = 0.1, 2.0  # seconds between reconnects to a restarting daemon
RESUME_TIMEOUT = 0.25  # seconds one try to resume may block the job
# The most a job waits, in all, on grants held for a burst (`retry_after`) before it
# starts what it has and grows at its renews: a bound against any daemon's value.
BURST_WAIT_MAX = 2.0
# How often a held grant renews while it waits: the daemon lets it go early once the
# burst has left it no pool (budget.ledger), and a job should hear that soon.
BURST_POLL = 0.05


def burst_wait(reply: protocol.GrantReply) -> float:
    """How long a grant held for a burst waits before its pool: the reply's `retry_after`,
    no wait where it is absent (a daemon before bursts) or not above 0 (NaN too), and at
    most BURST_WAIT_MAX whatever the daemon sends."""
    retry = reply.get("retry_after", 0.0)
    return min(retry, BURST_WAIT_MAX) if retry > 0 else 0.0


def held_sleep(retry_after: float, waited: float) -> float:
    """The next sleep of a grant held for a burst, `waited` seconds into its wait: until
    its `retry_after`, at most BURST_POLL, and never past BURST_WAIT_MAX in all (0: wait
    no more)."""
    return max(0.0, min(retry_after, BURST_POLL, BURST_WAIT_MAX - waited))


@dataclass
class Grant:
    """What the job may run now. Mutable: renew() updates it in place.

    `workers` is the size granted, `target` the size the daemon wants the job at (lower:
    shrink between tasks; higher: may grow). A degraded grant has no lease and no daemon.
    """

    kind: str = "sequential"
    workers: int = 1
    target: int = 1
    lease_id: str | None = None
    level: str = "unknown"
    degraded: bool = True
    reason: str = ""
    ttl: float = 60.0
    wanted: int = 0  # workers asked for (0: not known)
    retry_after: float = 0.0  # > 0: held for a burst, renew in this many seconds
    _conn: Connection | None = field(default=None, repr=False, compare=False)
    _renewed_at: float = field(default_factory=time.monotonic, repr=False, compare=False)
    # while the daemon is away (re-executing, restarting): since when, and the next try
    _origin: _Origin | None = field(default=None, repr=False, compare=False)
    _away_since: float | None = field(default=None, repr=False, compare=False)
    _next_try: float = field(default=0.0, repr=False, compare=False)
    _delay: float = field(default=RETRY_FIRST, repr=False, compare=False)

    @classmethod
    def local(cls, kind: str = "sequential", workers: int = 1, reason: str = "local") -> Grant:
        """A grant with no daemon behind it (tests, scripts, the fallback)."""
        workers = 1 if kind == "sequential" else max(1, workers)
        return cls(kind=kind, workers=workers, target=workers, reason=reason)

    @property
    def size(self) -> int:
        """Workers the job should run now: the daemon's target (lower: shrink, higher:
        grow), 1 (in the calling thread) when sequential; 0 means go sequential."""
        if self.kind == "sequential":
            return 1
        return max(0, self.target)

    @property
    def away(self) -> bool:
        """The daemon is away (re-executing, restarting) and the lease not resumed yet."""
        return self._away_since is not None

    @property
    def tight(self) -> bool:
        """The budget has no CPU to spare for inner threads: the daemon is under
        pressure, or it granted fewer workers than were wanted."""
        if self.level in inner.TIGHT_LEVELS:
            return True
        return not self.degraded and 0 < self.size < self.wanted

    @property
    def inner_threads(self) -> int:
        """Threads each worker may start inside (BLAS, OpenMP); see client.inner."""
        return inner.for_grant(self)

    def describe(self) -> str:
        """`process:2`, `thread:3` or `sequential`, as the daemon's logs write a grant."""
        return self.kind if self.kind == "sequential" else f"{self.kind}:{self.size}"

    def _update(self, reply: protocol.GrantReply) -> None:
        self.kind, self.workers, self.target = reply["kind"], reply["workers"], reply["target"]
        self.level, self.reason, self.ttl = reply["level"], reply["reason"], reply["ttl"]
        self.retry_after = burst_wait(reply)
        self._renewed_at = time.monotonic()
        if self.kind != "sequential" and self.size < 1:
            self.kind = "sequential"

    def _wait_held(self) -> None:
        """A grant held for a burst (`retry_after`): sleep that long and renew, before
        the job starts a pool, so that it starts at a share that counts the whole burst
        and not at one the next renew drains again (renewing every BURST_POLL, to hear
        the daemon let it go early). At most BURST_WAIT_MAX in all; then the job starts
        sequential and grows at its renews, as with any grant."""
        start = time.monotonic()
        while self.retry_after > 0 and self._conn is not None:
            wait = held_sleep(self.retry_after, time.monotonic() - start)
            if wait <= 0:
                return
            time.sleep(wait)
            self.renew()

    def _lose(self, why: str, *, keep_connection: bool = False) -> None:
        """Run sequential from now on. An expired lease (`keep_connection`) keeps the
        connection, so heartbeats still reach the daemon's no-progress watch."""
        if self._conn is not None and not keep_connection:
            self._conn.close()
            self._conn = None
        lost = "lease expired" if keep_connection else "lost the daemon"
        warn(
            f"{lost} ({why}); lease {self.lease_id} gone, running sequential",
            lease=self.lease_id,
            reason=why,
        )
        self.kind, self.workers, self.target = "sequential", 1, 1
        self.lease_id, self.degraded, self.reason = None, True, f"{lost}: {why}"
        self._away_since = None

    def _away(self, why: str) -> None:
        """The connection broke (the daemon re-executes, restarts or crashed): keep the
        pool as granted and resume the lease once the daemon is back, for up to one
        TTL (the time the new daemon holds the lease for us); then run sequential."""
        if self._origin is None or self.lease_id is None:
            self._lose(why)
            return
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        if self._away_since is None:
            self._away_since = time.monotonic()
            self._next_try, self._delay = self._away_since, RETRY_FIRST
            warn(
                f"lost the daemon ({why}); keeping {self.describe()} and resuming lease "
                f"{self.lease_id} when it is back (up to {self.ttl:.0f} s)",
                lease=self.lease_id,
                reason=why,
            )

    def _resume(self, workers_in_use: int | None) -> None:
        """One try to reconnect and resume the lease; none before its backoff is due,
        so a job calling this between tasks does not spin on a missing socket."""
        now = time.monotonic()
        if self._away_since is None or self._origin is None or now < self._next_try:
            return
        origin, old = self._origin, self.lease_id
        fields: dict[str, Any] = {"resume": old}
        if workers_in_use is not None:
            fields["workers_in_use"] = int(workers_in_use)
        conn: Connection | None = None
        try:
            # a short wait and no retry inside it: the job's pool idles while it waits
            # here, and a daemon still starting is asked again at the next try
            timeout = min(origin.timeout, RESUME_TIMEOUT)
            conn = Connection(origin.path, timeout=timeout, retry=0.0)
            reply = _ask(conn, origin.want, origin.kinds, origin.job, fields, origin.worker_bytes)
        except (OSError, DaemonError, ValueError, KeyError, TypeError) as exc:
            if conn is not None:
                conn.close()
            self._next_try, self._delay = now + self._delay, min(RETRY_MAX, self._delay * 2)
            if now - self._away_since >= self.ttl:
                self._lose(f"not back within {self.ttl:.0f} s: {_describe(exc)}")
            return
        away, self._conn, self._away_since = now - self._away_since, conn, None
        self.lease_id = str(reply["lease"])
        self._update(reply)
        warn(
            f"the daemon is back after {away:.1f} s; lease {old} resumed as "
            f"{self.lease_id}, running {self.describe()}",
            lease=self.lease_id,
        )

    def renew(self, workers_in_use: int | None = None) -> Grant:
        """Keep the lease alive and learn the current target; returns self, updated."""
        if self._away_since is not None:
            self._resume(workers_in_use)
            return self
        if self._conn is None or self.lease_id is None:
            return self
        fields: dict[str, Any] = {"lease": self.lease_id}
        if workers_in_use is not None:
            fields["workers_in_use"] = int(workers_in_use)
        try:
            self._update(self._conn.call(protocol.GrantReply, "renew", **fields))
        except DaemonError as exc:
            self._failed(exc)
        except (OSError, ValueError, TypeError) as exc:
            self._away(_describe(exc))
        return self

    def _failed(self, exc: DaemonError) -> None:
        if exc.code == protocol.SHUTTING_DOWN:
            self._away(_describe(exc))  # it may be back in a moment
        else:
            self._lose(_describe(exc), keep_connection=exc.code == protocol.UNKNOWN_LEASE)

    def renew_due(self, interval: float | None = None) -> bool:
        """True when `interval` (default ttl/3) passed since the last renew, and while
        the daemon is away (each renew is then a try to resume, when one is due)."""
        return self.renew_in(interval) <= 0

    def renew_in(self, interval: float | None = None) -> float:
        """Seconds until renew_due(interval) (0: now; infinite with no lease to renew),
        for a caller that sleeps between renewals (client.keep)."""
        now = time.monotonic()
        if self._away_since is not None:
            return max(0.0, self._next_try - now)
        if self._conn is None:
            return math.inf
        wait = self.ttl / 3 if interval is None else min(interval, self.ttl / 3)
        return max(0.0, self._renewed_at + wait - now)

    def heartbeat(self, progress: float | str | None = None) -> None:
        """Tell the daemon the job is alive; also renews when the TTL needs it. Works
        without a lease too (it expired): the daemon's no-progress watch still hears it."""
        if self._away_since is not None:
            self._resume(None)
            return
        if self._conn is None:
            return
        fields: dict[str, Any] = {"lease": self.lease_id} if self.lease_id else {}
        if progress is not None:
            fields["progress"] = progress
        try:
            self._conn.call(protocol.HeartbeatReply, "heartbeat", **fields)
        except DaemonError as exc:
            self._failed(exc)
            return
        except (OSError, ValueError) as exc:
            self._away(_describe(exc))
            return
        if self.renew_due():
            self.renew()

    def report_fallback(self, old: str, new: str, workers: int, stage: str, reason: str) -> None:
        """Tell the daemon a pool failed and the job fell back (its `report` counts them).
        Best effort: a report that cannot be sent changes nothing for the job."""
        if self._conn is None:
            return
        fields: dict[str, Any] = {"lease": self.lease_id} if self.lease_id else {}
        with contextlib.suppress(OSError, DaemonError, ValueError):
            self._conn.call(
                protocol.OkReply,
                "fallback",
                **fields,
                **{"from": old, "to": new},
                workers=int(workers),
                stage=stage[: protocol.MAX_CHARS["stage"]],
                reason=reason[: protocol.MAX_CHARS["reason"]],
            )

    def executor(self, **kwargs: Any) -> BudgetExecutor:
        """An executor sized (and resized) by this grant; see supervisord_batt.client.executor."""
        # imported here, not at the top: a job that only leases does not load loky
        from supervisord_batt.client.executor import BudgetExecutor  # noqa: PLC0415

        return BudgetExecutor(self, **kwargs)

    def detach(self) -> None:
        """Forget the lease without a word to the daemon, and run sequential: for a
        forked child, whose copy of the connection is its parent's lease (closing the
        child's descriptor leaves the parent's connection open)."""
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()
        self.kind, self.workers, self.target = "sequential", 1, 1
        self.lease_id, self.degraded, self.reason = None, True, "a forked copy of the lease"
        self._origin, self._away_since = None, None

    def release(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        with contextlib.suppress(OSError, DaemonError, ValueError):
            if self.lease_id is not None:
                conn.call(protocol.ReleaseReply, "release", lease=self.lease_id)
        conn.close()


def _describe(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    if isinstance(exc, socket.timeout | TimeoutError):
        return "timed out"
    return str(exc) or type(exc).__name__


def _degraded(fallback: str, fallback_workers: int) -> Grant:
    spec = os.environ.get(paths.FALLBACK_ENV) or fallback
    try:
        kind, workers = parse_fallback(spec, fallback_workers)
    except ValueError as exc:
        warn(f"ignoring {paths.FALLBACK_ENV}={spec!r}: {exc}")
        kind, workers = parse_fallback(fallback, fallback_workers)
    return Grant.local(kind, workers, reason="degraded: daemon not reachable")


@contextmanager
def lease(
    want: int,
    *,
    kinds: Sequence[str] = KINDS,
    job: str | None = None,
    socket_path: str | os.PathLike[str] | None = None,
    fallback: str = "sequential",
    fallback_workers: int = 1,
    timeout: float = DEFAULT_TIMEOUT,
    worker_bytes: int | None = None,
) -> Iterator[Grant]:
    """Lease up to `want` workers for the block; degrade (never raise) without a daemon."""
    grant = acquire(
        want,
        kinds=kinds,
        job=job,
        socket_path=socket_path,
        fallback=fallback,
        fallback_workers=fallback_workers,
        timeout=timeout,
        worker_bytes=worker_bytes,
    )
    try:
        yield grant
    finally:
        grant.release()


def acquire(
    want: int,
    *,
    kinds: Sequence[str] = KINDS,
    job: str | None = None,
    socket_path: str | os.PathLike[str] | None = None,
    fallback: str = "sequential",
    fallback_workers: int = 1,
    timeout: float = DEFAULT_TIMEOUT,
    quiet: bool = False,
    worker_bytes: int | None = None,
) -> Grant:
    """lease() without the block: the caller must call release(). For code whose lease
    does not follow a `with` (a joblib backend: configure, then terminate). `quiet`
    leaves the warning about an unreachable daemon to the caller. `worker_bytes`: the
    bytes one of the job's workers takes, declared (protocol.MIN_WORKER_BYTES to _MAX;
    None: $SUPERVISORD_BATT_WORKER_MEMORY, else nothing): the budget charges it until it
    has learned the job's size."""
    if worker_bytes is not None and not _declarable(worker_bytes):
        raise ValueError(
            f"worker_bytes: {protocol.MIN_WORKER_BYTES} to {protocol.MAX_WORKER_BYTES}"
            f" (1MiB to 1TiB), got {worker_bytes}"
        )
    path = Path(socket_path) if socket_path is not None else default_socket_path()
    grant = _acquire(path, want, list(kinds), job, timeout, worker_bytes)
    if grant is None or grant.degraded:
        why = grant.reason if grant is not None else "unknown"
        grant = _degraded(fallback, fallback_workers)
        if grant.kind not in kinds:  # the fallback steps down to a kind the job can use
            usable = [k for k in KINDS[KINDS.index(grant.kind) :] if k in kinds]
            grant = Grant.local(usable[0] if usable else "sequential", grant.workers)
        grant.reason = f"daemon not reachable at {path} ({why})"
        if not quiet:
            warn(f"{grant.reason}; running {grant.describe()}")
    grant.wanted = max(0, int(want))
    return grant


def _acquire(  # noqa: PLR0917 (the request's parts)
    path: Path,
    want: int,
    kinds: list[str],
    job: str | None,
    timeout: float,
    worker_bytes: int | None = None,
) -> Grant | None:
    """A live grant, or a Grant with degraded=True whose reason says what failed."""
    conn: Connection | None = None
    try:
        conn = Connection(path, timeout=timeout)
        reply = _ask(conn, want, kinds, job, {}, worker_bytes)
        origin = _Origin(path, want, kinds, job, timeout, worker_bytes)
        grant = Grant(lease_id=reply["lease"], degraded=False, _conn=conn, _origin=origin)
        grant._update(reply)
        grant._wait_held()
        return grant
    except (OSError, DaemonError, ValueError, KeyError, TypeError) as exc:
        if conn is not None:
            conn.close()
        return Grant(degraded=True, reason=_describe(exc))


def _ask(  # noqa: PLR0917 (the request's parts)
    conn: Connection,
    want: int,
    kinds: list[str],
    job: str | None,
    extra: dict[str, Any],
    worker_bytes: int | None = None,
) -> protocol.GrantReply:
    """hello, then acquire (with `extra`: a resume); the acquire's reply."""
    hello = {"version": protocol.VERSION, "client": f"supervisord-batt/{os.getpid()}"}
    conn.call(protocol.HelloReply, "hello", **hello)
    fields: dict[str, Any] = {"want": max(0, int(want)), "kinds": kinds, "pid": os.getpid()}
    if job:  # cut, not refused: a long name must not cost the job its lease
        fields["job"] = job[: protocol.MAX_CHARS["job"]]
    declared = worker_bytes if worker_bytes is not None else declared_worker_bytes()
    if declared is not None:
        fields["worker_bytes"] = declared
    return conn.call(protocol.GrantReply, "acquire", **fields, **extra)


def declared_worker_bytes(env: Mapping[str, str] | None = None) -> int | None:
    """$SUPERVISORD_BATT_WORKER_MEMORY in bytes: 1610612736, "1536MiB", "1.5G", read as
    the config reads sizes (`quantities.parse_size`); None where unset, or not a size
    from 1 MiB to 1 TiB (protocol.MIN_WORKER_BYTES and _MAX; said once, and the acquire
    declares nothing)."""
    text = (os.environ if env is None else env).get(paths.WORKER_MEMORY_ENV, "").strip()
    if not text:
        return None
    try:
        nbytes = parse_size(text)
    except ValueError:
        nbytes = 0
    if not _declarable(nbytes):
        if text not in _IGNORED:  # once per value: a job may acquire at every call
            _IGNORED.add(text)
            warn(f"ignoring {paths.WORKER_MEMORY_ENV}={text!r}: expected a size like 1536MiB")
        return None
    return nbytes


_IGNORED: set[str] = set()


def _declarable(nbytes: int) -> bool:
    return protocol.MIN_WORKER_BYTES <= nbytes <= protocol.MAX_WORKER_BYTES


# --- `supervisord-batt exec`: lease for a program that knows nothing about us ----------

_FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def child_env(grant: Grant, base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment that sizes an unmodified program from the grant: its pool from
    the worker count, each worker's inner threads (BLAS, OpenMP) from cpus / workers,
    so n workers never run n threads each on fewer than n x n CPUs."""
    env = dict(os.environ if base is None else base)
    n = 1 if grant.kind == "sequential" else max(1, grant.size)
    env[paths.WORKERS_ENV] = str(n)
    env[paths.KIND_ENV] = grant.kind
    env[paths.LEASE_ENV] = grant.lease_id or ""
    for name in WORKER_ENV_VARS:
        env[name] = str(n)
    env.update(inner.inner_env(grant.inner_threads))
    return env


def exit_code(returncode: int) -> int:
    """A child's status as a shell reports it: 128+n when killed by signal n."""
    return 128 - returncode if returncode < 0 else returncode


def exec_main(
    argv: list[str],
    want: int,
    job: str | None = None,
    *,
    socket_path: str | os.PathLike[str] | None = None,
) -> int:
    """Lease slots, run argv as a child sized by them, hold the lease until it exits."""
    if not argv:
        sys.stderr.write("supervisord-batt exec: no command given\n")
        return 2
    with lease(want, job=job or Path(argv[0]).name, socket_path=socket_path) as grant:
        env = child_env(grant)
        # what the lease is charged for: a sequential grant's program runs in the slot
        # every job has, no worker of the lease (the daemon granted 0)
        in_use = 0 if grant.kind == "sequential" else int(env[paths.WORKERS_ENV])
        try:
            proc = subprocess.Popen(argv, env=env)
        except OSError as exc:
            sys.stderr.write(f"supervisord-batt exec: {argv[0]}: {exc.strerror or exc}\n")
            return 127 if isinstance(exc, FileNotFoundError) else 126

        def forward(signum: int, _frame: FrameType | None) -> None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signum)

        previous = {sig: signal.signal(sig, forward) for sig in _FORWARDED}
        try:
            while True:
                try:
                    # while the daemon is away, each renew is a try to resume
                    pause = RETRY_FIRST if grant.away else max(0.5, grant.ttl / 3)
                    returncode = proc.wait(timeout=pause)
                    break
                except subprocess.TimeoutExpired:
                    grant.renew(workers_in_use=in_use)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            if proc.poll() is None:  # only when we are unwinding from an error of our own
                proc.kill()
                proc.wait()
        return exit_code(returncode)
