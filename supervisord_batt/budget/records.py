"""The ledger's public records: a request for workers, the grant that answers it, a
lease's snapshot, the ledger's statistics and the outcome of a host sample, with the
error the ledger raises and the check of a request."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from supervisord_batt.budget.costs import KINDS, Kind, Level


class LeaseError(Exception):
    """A lease operation the ledger refuses; `code` is the protocol's error code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


# Why Request, Grant and Lease write their own __init__. A frozen dataclass's generated
# one sets each field through object.__setattr__, a call per field (1.7 us for a Lease),
# and the daemon builds one of each per acquire + release pair on its one thread. Theirs
# fill the instance's __dict__ at once instead: same fields, same signature, same object.


@dataclass(frozen=True, init=False)
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

    def __init__(  # noqa: PLR0917 (positional, as the dataclass's own)
        self,
        holder: str,
        pid: int,
        uid: int,
        job: str,
        want: int,
        kinds: tuple[Kind, ...] = KINDS,
        cgroups: tuple[str, ...] = (),
        base_tasks: int = 1,
    ) -> None:
        self.__dict__.update(
            holder=holder,
            pid=pid,
            uid=uid,
            job=job,
            want=want,
            kinds=kinds,
            cgroups=cgroups,
            base_tasks=base_tasks,
        )


@dataclass(frozen=True, init=False)
class Grant:
    """The answer to acquire or renew: run `target` workers of `kind`, charged `workers`."""

    lease_id: str
    kind: Kind
    workers: int  # what the lease is charged for (the client may run this many now)
    target: int  # what the client should run; below `workers` means shrink
    level: Level
    ttl: float
    reason: str  # one short line for the daemon's log

    def __init__(  # noqa: PLR0917 (positional, as the dataclass's own)
        self,
        lease_id: str,
        kind: Kind,
        workers: int,
        target: int,
        level: Level,
        ttl: float,
        reason: str,
    ) -> None:
        self.__dict__.update(
            lease_id=lease_id,
            kind=kind,
            workers=workers,
            target=target,
            level=level,
            ttl=ttl,
            reason=reason,
        )


@dataclass(frozen=True, init=False)
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

    def __init__(  # noqa: PLR0917 (positional, as the dataclass's own)
        self,
        lease_id: str,
        holder: str,
        pid: int,
        uid: int,
        job: str,
        kind: Kind,
        workers: int,
        target: int,
        wanted: int,
        share: int,
        cost_tasks: int,
        charge_tasks: int,
        base_tasks: int,
        created_at: float,
        renewed_at: float,
        last_progress: float,
    ) -> None:
        self.__dict__.update(
            lease_id=lease_id,
            holder=holder,
            pid=pid,
            uid=uid,
            job=job,
            kind=kind,
            workers=workers,
            target=target,
            wanted=wanted,
            share=share,
            cost_tasks=cost_tasks,
            charge_tasks=charge_tasks,
            base_tasks=base_tasks,
            created_at=created_at,
            renewed_at=renewed_at,
            last_progress=last_progress,
        )


@dataclass(frozen=True)
class LedgerStats:
    capacity: int  # process workers a new holder in every scope could get now (0 unless normal)
    leased: int  # sum of workers over leases
    leased_tasks: int  # sum of pool tasks over leases
    level: Level
    fair_share: int  # the water level of the last max-min allocation (0: nobody pooled)
    free_tasks: Mapping[str, int]  # limit name -> limit - reserve - adjusted usage
    leases: tuple[Lease, ...]


@dataclass(frozen=True)
class UpdateResult:
    level: Level
    changed: bool
    previous: Level
    reason: str


def validate_request(req: Request) -> None:
    """Refuse a request the ledger cannot size, naming every problem."""
    problems = []
    if req.want < 0:
        problems.append(f"want must be >= 0, got {req.want}")
    if req.base_tasks < 0:
        problems.append(f"base_tasks must be >= 0, got {req.base_tasks}")
    if any(k not in KINDS for k in req.kinds):
        problems.append(f"kinds must be among {', '.join(KINDS)}, got {req.kinds}")
    if problems:
        raise LeaseError("invalid_request", "; ".join(problems))
