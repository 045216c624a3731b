"""Which jobs ask alone: `LoneJobs`, the jobs whose last first ask into an empty ledger
was followed by no other newcomer within `burst_window`.

Pure, like the rest of the budget: the ledger tells it each newcomer's ask.
"""

# Why the burst hold learns who asks alone. A newcomer that asks into an empty ledger is
# held for a window because it may be the first of a burst (ledger.BudgetLedger.__init__):
# answered at once it would start a pool that the rest of the burst drains again. That
# costs a job that always runs alone a window before every first pool: a notebook kernel
# pays it on its first joblib call and again on every cell that calls joblib after its
# kept pool went idle, a quarter second on a loop of short calls that plain joblib
# runs in about 2 s (docs/NOTEBOOKS.md has the figures). The daemon sees whether anyone
# followed: when the next newcomer asks a window or more after a first ask, that first
# ask was alone. So the next first ask of that job (its name and uid, as the learned
# sizes are kept) is not held; a job never seen, or seen in a burst since, still is.
# A job that asks alone and then comes in a burst pays, once, what the window-off
# policy pays (its pool drained as the burst's shares count it), and is held again from
# then on: any newcomer within the window of another forgets both.
#
# Kept in memory for the daemon's life, at most LONE_MAX jobs (the oldest learned
# forgotten first): a job forgotten is held once more, as a new one.

from __future__ import annotations

from dataclasses import dataclass, field

LONE_MAX = 4096  # jobs remembered as asking alone

JobKey = tuple[str, int]  # (job name, uid), as the learned sizes are keyed


@dataclass(slots=True)
class LoneJobs:
    """The jobs seen asking alone, and the last newcomer to ask."""

    alone: dict[JobKey, None] = field(default_factory=dict)  # in the order learned
    last: JobKey | None = None  # the last newcomer's job
    last_first: bool = False  # whether it asked into an empty ledger

    def asked(self, job: JobKey, *, in_burst: bool, first: bool) -> None:
        """A newcomer of `job` asked: `in_burst` within the window of the last ask,
        `first` into an empty ledger."""
        if in_burst:  # neither asks alone
            self.alone.pop(job, None)
            if self.last is not None:
                self.alone.pop(self.last, None)
        elif self.last_first and self.last is not None:  # no one followed that first ask
            self.alone.pop(self.last, None)
            self.alone[self.last] = None
            if len(self.alone) > LONE_MAX:
                del self.alone[next(iter(self.alone))]
        self.last, self.last_first = job, first

    def __contains__(self, job: JobKey) -> bool:
        return job in self.alone
