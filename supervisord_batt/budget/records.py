"""The ledger's public records: a request for workers, the grant that answers it, a
lease's snapshot, the ledger's statistics and the outcome of a host sample, with the
error the ledger raises and the check of a request.

Plain frozen dataclasses with slots: the daemon builds a Request, a Grant and a Lease per
acquire + release pair, and a hand-written __init__ would save it a microsecond or two
per pair, far below a socket round trip; not worth its lines.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from supervisord_batt.protocol import KINDS, MAX_WORKER_BYTES, MIN_WORKER_BYTES, Kind, Level


class LeaseError(Exception):
    """A lease operation the ledger refuses; `code` is the protocol's error code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True, slots=True)
class Request:
    """A job asking for up to `want` workers of one of `kinds` (sequential always fits)."""

    holder: str  # the daemon's key for the connection that owns the lease
    pid: int
    uid: int
    job: str
    want: int
    kinds: tuple[Kind, ...] = KINDS
    cgroups: tuple[str, ...] = ()  # the holder's cgroup fs paths
    base_tasks: int = 1  # tasks in the holder's tree when it asks
    # bytes one of its workers takes, as the job declared it (0: not declared): charged
    # for a job never seen, and until its learned figure may replace it (`costs.per_worker`)
    declared_bytes: int = 0


@dataclass(frozen=True, slots=True)
class Grant:
    """The answer to acquire or renew: run `target` workers of `kind`, charged `workers`."""

    lease_id: str
    kind: Kind
    workers: int  # what the lease is charged for (the client may run this many now)
    target: int  # what the client should run; below `workers` means shrink
    level: Level
    ttl: float
    reason: str  # one short line for the daemon's log
    # > 0: held sequential for a burst (`BudgetLedger` burst_window); renew in this many
    # seconds, before starting a pool, to be granted a share that counts the whole burst
    retry_after: float = 0.0


@dataclass(frozen=True, slots=True)
class Lease:
    """A snapshot of one lease."""

    lease_id: str
    holder: str
    pid: int
    uid: int
    job: str
    kind: Kind
    workers: int
    target: int
    wanted: int
    share: int  # its max-min allocation: what it grows to once the others shrink
    cost_tasks: int  # the pool's tasks at `workers`
    charge_tasks: int  # what the lease counts against each limit in its scope
    base_tasks: int
    created_at: float
    renewed_at: float
    last_progress: float
    declared_bytes: int = 0  # its request's (0: not declared)


@dataclass(frozen=True, slots=True)
class LedgerStats:
    capacity: int  # process workers a new holder in every scope could get now (0 unless normal)
    leased: int  # sum of workers over leases
    leased_tasks: int  # sum of pool tasks over leases
    level: Level
    fair_share: int  # the water level of the last max-min allocation (0: nobody pooled)
    free_tasks: Mapping[str, int]  # limit name -> limit - reserve - adjusted usage
    leases: tuple[Lease, ...]


@dataclass(frozen=True, slots=True)
class UpdateResult:
    level: Level
    changed: bool
    previous: Level
    reason: str


_KIND_SET = frozenset(KINDS)


def validate_request(req: Request) -> None:
    """Refuse a request the ledger cannot size, naming every problem."""
    problems = []
    if req.want < 0:
        problems.append(f"want must be >= 0, got {req.want}")
    if req.base_tasks < 0:
        problems.append(f"base_tasks must be >= 0, got {req.base_tasks}")
    if req.declared_bytes and not MIN_WORKER_BYTES <= req.declared_bytes <= MAX_WORKER_BYTES:
        problems.append(
            f"declared_bytes must be 0 or {MIN_WORKER_BYTES} to {MAX_WORKER_BYTES},"
            f" got {req.declared_bytes}"
        )
    if not _KIND_SET.issuperset(req.kinds):
        problems.append(f"kinds must be among {', '.join(KINDS)}, got {req.kinds}")
    if problems:
        raise LeaseError("invalid_request", "; ".join(problems))
