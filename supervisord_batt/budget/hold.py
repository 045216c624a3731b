"""When a lease grows where several users hold leases: `GrowHold`, a raised share taken
only once it has lasted.

Pure, like the rest of the budget: the ledger passes the time in.
"""

# Why a raised share waits. Where the budget is split per user, a user's leases share its
# part, and each time one of its jobs ends the others' shares rise until the next job
# asks. A user that keeps its jobs running starts the next one within the interpreter's
# start, well under a second; the siblings that grew in that gap held their grown pools
# for a moment only: each growth had cost a new pool (the old one drained, every worker
# started again) and was undone by a shrink, another new pool, when the next job came.
# In benchmarks/simulate.py's users table (4 jobs beside 60 on 32 CPUs, jobs of 16
# tasks) that came to about two pools per job of the small user where one suffices, and
# starting pools was then 5% of the host's CPU, which the single queue, running every
# job sequential, never paid (docs/SIMULATION.md has the figures). So a share that rose
# above a lease's pool is taken only once it has stood GROW_AFTER seconds, as its renews
# see it: a gap a job's successor fills in time costs nothing, and a lasting one (a job
# that is not followed, a user that left) is taken a moment later.
#
# A lease granted less than its share at acquire (its user's other pools had not shrunk
# yet) is owed that share: it grows to it at once, and waits only for what rose since.
# With one user the ledger never asks: its leases grow as soon as the room is there, as
# they always did.

from __future__ import annotations

from dataclasses import dataclass, field

GROW_AFTER = 2.0  # seconds a share above a lease's pool must stand before it grows into it


@dataclass(slots=True)
class GrowHold:
    """Per lease: since when its share has stood above its pool, and the share it was
    granted short of at acquire."""

    rose: dict[str, float] = field(default_factory=dict)  # lease id -> first seen above
    owed: dict[str, int] = field(default_factory=dict)  # lease id -> share at acquire

    def granted(self, lease_id: str, share: int, workers: int) -> None:
        """A lease was granted `workers` under a share of `share`: short of it, it is owed."""
        if workers < share:
            self.owed[lease_id] = share

    def size(self, lease_id: str, share: int, workers: int, now: float) -> int:
        """The size a lease holding `workers` may grow to at `now` under its `share`: the
        share once it has stood GROW_AFTER above the pool, else what it is owed, else its
        pool (no growth)."""
        if share <= workers:  # nothing to grow into, nothing owed
            self.forget(lease_id)
            return share
        since = self.rose.setdefault(lease_id, now)
        if now - since >= GROW_AFTER:
            return share
        return max(workers, min(share, self.owed.get(lease_id, 0)))

    def forget(self, lease_id: str) -> None:
        """The lease ended (or its user is alone again: its growth is not held)."""
        self.rose.pop(lease_id, None)
        self.owed.pop(lease_id, None)
