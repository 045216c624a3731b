"""Leases that outlive their daemon: kept in the state record, held for their jobs by
the next daemon, resumed by the jobs when they reconnect.

A lease lives as long as its connection, and a connection does not outlive the daemon
(a re-execution, a crash). The job keeps its pool running and reconnects (`client`);
meanwhile the new daemon must not give that pool's slots to a newcomer, or the host
would be over-granted the moment the job resumes. So the new daemon restores every
recorded lease whose job still runs, under its old id, held by no connection: the
ledger counts it as before, and it expires after `lease_ttl` like any lease not renewed.
A job that reconnects asks `acquire` with `resume: <its lease>` and gets that lease
back: same id, its pool counted as it was (what it runs now, at most what it held).

A resume is checked against the record: the same pid (the job that held it) and uid.
Anything else (a lease the record does not have, a crash that lost the last second's
leases) is an ordinary acquire.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TypeGuard

from supervisord_batt.budget.ledger import BudgetLedger
from supervisord_batt.budget.records import Grant, LeaseError, Request
from supervisord_batt.host.procinfo import cgroup_fs_paths, thread_count
from supervisord_batt.logs import get_logger
from supervisord_batt.protocol import KINDS, MAX_WORKER_BYTES, MIN_WORKER_BYTES

log = get_logger(component="leases")

HOLDER = "resume:"  # holder key of a restored lease no connection has claimed yet


def recorded(ledger: BudgetLedger) -> list[dict[str, Any]]:
    """Every lease held by a connection, as the state record keeps it."""
    return [
        {
            "lease": lease_id,
            "pid": req.pid,
            "uid": req.uid,
            "job": req.job,
            "want": req.want,
            "kinds": list(req.kinds),
            "kind": kind,
            "workers": workers,
            "worker_bytes": req.declared_bytes,
        }
        for lease_id, req, kind, workers in ledger.requests()
    ]


def _is_size(value: object) -> TypeGuard[int]:
    """Whether a recorded declared size is one an acquire could have carried (any other,
    refused by the ledger, would lose the lease: it is restored as not declared)."""
    return (
        isinstance(value, int)
        and not isinstance(value, bool)
        and MIN_WORKER_BYTES <= value <= MAX_WORKER_BYTES
    )


def _number(lease_id: object) -> int | None:
    if isinstance(lease_id, str) and lease_id[:1] == "L" and lease_id[1:].isdigit():
        return int(lease_id[1:])
    return None


def runs_as(asker: tuple[str, int, int]) -> bool:
    """Whether a recorded asker's process (job, uid, pid) still runs as its uid."""
    return _owner_uid(asker[2]) == asker[1]


def _owner_uid(pid: int) -> int | None:
    try:
        return os.stat(f"/proc/{pid}").st_uid
    except OSError:
        return None


@dataclass
class Resumable:
    """The restored leases not claimed yet: lease id -> (pid, uid) of its job."""

    ledger: BudgetLedger
    waiting: dict[str, tuple[int, int]] = field(default_factory=dict)

    def restore(self, leases: object, last_id: object) -> None:
        """Hold the recorded leases whose job still runs as the same uid; number new
        leases after the record's last id."""
        restored = skipped = 0
        for rec in leases if isinstance(leases, list) else []:
            number = _number(rec.get("lease")) if isinstance(rec, dict) else None
            if number is None or not self._restore_one(rec, number):
                skipped += 1
                continue
            restored += 1
        last = _number(last_id)
        if last is not None:
            self.ledger.continue_ids(last)
        if restored or skipped:
            log.info(
                "leases_restored",
                restored=restored,
                skipped=skipped,
                leases=sorted(self.waiting),
                reason="held for their jobs to resume",
            )

    def _restore_one(self, rec: Mapping[str, Any], number: int) -> bool:
        pid, uid = rec.get("pid"), rec.get("uid")
        if not isinstance(pid, int) or not isinstance(uid, int) or _owner_uid(pid) != uid:
            return False  # the job ended (or its pid is another user's now)
        kinds = tuple(k for k in rec.get("kinds") or KINDS if k in KINDS) or KINDS
        want, declared = rec.get("want"), rec.get("worker_bytes")
        request = Request(
            holder=f"{HOLDER}L{number}",
            pid=pid,
            uid=uid,
            job=str(rec.get("job") or f"pid{pid}")[:256],
            want=want if isinstance(want, int) and want >= 0 else 0,
            kinds=kinds,
            cgroups=tuple(cgroup_fs_paths(pid)),
            base_tasks=thread_count(pid),
            declared_bytes=declared if _is_size(declared) else 0,
        )
        self.ledger.continue_ids(number - 1)
        try:
            grant = self.ledger.acquire(request, restoring=True)
        except LeaseError:
            return False
        self.waiting[grant.lease_id] = (pid, uid)
        return True

    def claim(
        self, lease_id: str, pid: int, uid: int, holder: str, in_use: int | None
    ) -> Grant | None:
        """The lease back to the job that held it (None: not one of ours to give)."""
        if self.waiting.get(lease_id) != (pid, uid):
            return None
        del self.waiting[lease_id]
        return _hand_over(self.ledger, lease_id, holder, in_use)

    def take_over(
        self, lease_id: str, pid: int, uid: int, holder: str, in_use: int | None
    ) -> Grant | None:
        """A live lease the same process still holds on an earlier connection, moved to
        this one (None: no such lease). A job whose request timed out on a slow daemon
        reconnects and resumes before the daemon has read its old connection's close:
        the kernel's pid and uid of both connections say it is the same job, so it
        keeps its lease instead of getting a new one while the old is released."""
        for lease in self.ledger.held_by([pid]):
            if lease.lease_id == lease_id and lease.uid == uid and lease.holder != holder:
                return _hand_over(self.ledger, lease_id, holder, in_use)
        return None

    def forget(self, gone: set[str]) -> None:
        """Drop those the ledger ended (expired unclaimed)."""
        for lease_id in gone & self.waiting.keys():
            del self.waiting[lease_id]


def _hand_over(
    ledger: BudgetLedger, lease_id: str, holder: str, in_use: int | None
) -> Grant | None:
    """The lease to `holder`, renewed with the workers its job has in use (capped at the
    lease's); None if it ended meanwhile."""
    try:
        ledger.transfer(lease_id, holder)
        held = ledger.lease(lease_id).workers
        use = None if in_use is None else max(0, min(in_use, held))
        return ledger.renew(lease_id, use)
    except LeaseError:
        return None
