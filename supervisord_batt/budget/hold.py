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
# A newcomer alike: a job that ends is followed by its user's next within a second, so
# two that end together leave the first successor a share counted without the second,
# and the first grant took it (16 CPUs over three jobs: 5, where the user's pools ran 4)
# and shrank to 4 when the second came, which had got the 3 left and grew to 4 (in the
# users table's 4 jobs beside 60 on 32 CPUs, about one job in six). So a newcomer starts
# no larger pool than its user runs already, or ran in a job that ended less than
# GROW_AFTER ago (`first_size`: a job that follows one of 6 beside one of 5 starts 6,
# the size its user's part had for it), and the rest of its share is a share that rose:
# taken once it has stood. A user that runs no pool, or whose pools are smaller than a
# first pool, gives no bound.
#
# A lease granted less than its start at acquire (its user's other pools had not shrunk
# yet) is owed it: it grows to it at once, and waits only for what rose since.
# With one user the ledger never asks: its leases grow as soon as the room is there, as
# they always did.

from __future__ import annotations

from dataclasses import dataclass, field

from supervisord_batt.budget.allocation import Share, share
from supervisord_batt.budget.costs import MIN_POOL

GROW_AFTER = 2.0  # seconds a share above a lease's pool must stand before it grows into it


def first_size(mine: Share, largest: int) -> Share:
    """A newcomer's share as it starts, where its user runs pools of at most `largest`
    workers: no larger than them (see above)."""
    if MIN_POOL <= largest < mine.workers:
        return share(largest, mine.kind)
    return mine


@dataclass(slots=True)
class GrowHold:
    """Per lease: since when its share has stood above its pool, and the share it was
    granted short of at acquire."""

    rose: dict[str, float] = field(default_factory=dict)  # lease id -> first seen above
    owed: dict[str, int] = field(default_factory=dict)  # lease id -> share at acquire
    # uid -> (when, workers): the largest pool of its that ended in the last GROW_AFTER
    gone: dict[int, tuple[float, int]] = field(default_factory=dict)

    def ended(self, uid: int, workers: int, now: float) -> None:
        """A lease of `uid` running a pool of `workers` ended at `now`."""
        last = self.gone.get(uid)
        if last is None or now - last[0] >= GROW_AFTER or last[1] <= workers:
            self.gone[uid] = (now, workers)

    def recent(self, uid: int, now: float) -> int:
        """The largest pool of `uid` that ended in the last GROW_AFTER seconds (0: none)."""
        last = self.gone.get(uid)
        if last is None:
            return 0
        if now - last[0] >= GROW_AFTER:
            del self.gone[uid]
            return 0
        return last[1]

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
