"""The lease lines: one log line per grant, deny and release, at most `rate` a second.

# Why a rate
Every grant, deny and release is one structured line, and that is what an operator
tailing the daemon wants while jobs take leases for minutes. But jobs that take short
leases fast (a job leasing per task, a retry loop, a burst of restarts) would write
thousands of lines a second. journald's default rate limit (RateLimitBurst=10000 per
RateLimitIntervalSec=30s, per service) would then drop the daemon's lines wholesale,
the kill and pressure lines with them; and writing them would cost the daemon more than
answering the requests. So at most `daemon.lease_log_rate` lease lines are written per
second. Past it, lines are counted, not written, and the daemon's next tick (every
`sample_interval`) writes one `lease_lines_suppressed` line with how many of each event
were held back and for how many jobs: one a tick while the flood lasts, and a last one
when the daemon stops. Nothing is lost silently, and a lease line that is
written is whole. Warnings (a lease that expired) are never held back. A rate of 0
writes every line.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from supervisord_batt.budget.records import Grant, Lease, Request
from supervisord_batt.daemon.throttle import PerSecond
from supervisord_batt.logs import get_logger

log = get_logger(component="daemon")
_MAX_JOBS = 1000  # distinct job names counted per summary


class LeaseLog:
    """Writes the lease lines within the rate and counts the rest (see the module)."""

    def __init__(self, rate: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self._clock = clock
        self._window = PerSecond(clock)
        self._held: dict[str, int] = {}  # event -> lines held back since the last summary
        self._jobs: set[str] = set()  # the jobs of those lines, up to _MAX_JOBS of them
        self._held_since = 0.0  # when the first of them was held back

    def granted(self, request: Request, grant: Grant) -> None:
        """The line for an acquire: `grant`, or `deny` when a pool was asked for and none
        could be given (the job runs sequential)."""
        event = "grant" if grant.kind != "sequential" or request.want < 2 else "deny"
        if self._allow(event, request.job):
            log.info(
                event,
                lease=grant.lease_id,
                uid=request.uid,
                pid=request.pid,
                job=request.job,
                want=request.want,
                kind=grant.kind,
                workers=grant.workers,
                pressure=grant.level,
                reason=grant.reason,
            )

    def ended(self, event: str, lease: Lease, reason: str, **extra: Any) -> None:
        """The line for a lease that ends: released, its holder gone, or expired."""
        expired = event == "lease_expired"
        if expired or self._allow(event, lease.job):
            (log.warning if expired else log.info)(
                event,
                lease=lease.lease_id,
                uid=lease.uid,
                pid=lease.pid,
                job=lease.job,
                kind=lease.kind,
                workers=lease.workers,
                reason=reason,
                **extra,
            )

    def summarize(self) -> None:
        """Write the `lease_lines_suppressed` line for what was held back since the last."""
        now = self._clock()
        if not self._held:
            return
        log.info(
            "lease_lines_suppressed",
            **self._held,
            jobs=len(self._jobs),
            jobs_counted_up_to=_MAX_JOBS,
            since_s=round(now - self._held_since, 1),
            rate=self.rate,
            reason=f"over daemon.lease_log_rate ({self.rate} lines a second)",
        )
        self._held, self._jobs = {}, set()

    def _allow(self, event: str, job: str) -> bool:
        if self._window.allow(self.rate):
            return True
        if not self._held:
            self._held_since = self._clock()
        self._held[event] = self._held.get(event, 0) + 1
        if len(self._jobs) < _MAX_JOBS:  # job names come from clients: bounded
            self._jobs.add(job)
        return False
