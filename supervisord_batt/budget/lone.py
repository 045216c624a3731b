"""Which processes ask alone: `LoneAskers`, the processes whose last first ask into an
empty ledger was followed by no other newcomer within `burst_window`.

Pure, like the rest of the budget: the ledger tells it each newcomer's ask.
"""

# Why the burst hold learns who asks alone. A newcomer that asks into an empty ledger is
# held for a window because it may be the first of a burst (ledger.BudgetLedger.__init__):
# answered at once it would start a pool that the rest of the burst drains again. A
# notebook kernel paid that window on its first joblib call, and again on every cell
# that called joblib after its kept pool idled out: a quarter second on a loop of short
# calls that plain joblib runs in about 2 s (docs/NOTEBOOKS.md has the figures). The
# daemon sees whether anyone followed: when the next newcomer asks a window or more
# after a first ask, that first ask was alone. So the next first ask of the same process
# is not held. The notebook extension's probe at load is such a first ask, so a kernel's
# first joblib call is not held either. Any newcomer within the window of another
# forgets both: a process that came in a burst is held again from then on.
#
# Why per process (job name, uid and pid) and not per job name: a new process that asks
# at once for a pool is what the first job of a burst looks like, and a job name seen
# alone often comes next as an array. In benchmarks/simulate.py's table with every job
# under one name learned alone, its first job not held took the 64-core cells from 1.65
# to 1.11 x a reused pool (16 jobs) and from 0.971 to 0.96 of sequential (64 jobs).
# A process that asked alone and later is the first of a burst pays, once, what the
# window-off policy pays; the pid and the job name must both match, so a recycled pid
# rarely passes for another. Kept for the daemon's life, at most LONE_MAX askers (the
# oldest learned forgotten first): one forgotten is held again, as a new one.
#
# Why a process's next ask, once its last lease is given back, is no arrival: a kernel
# or script whose pool is not kept (keep-alive 0, or a call after it idled out) asks
# once per joblib call, and short calls follow each other within the window. Counted as
# a newcomer, the second call was held as a burst ("another job asked 0.23 s before")
# and the process forgotten as asking alone. One process's calls one after another
# start no pools the others need; a second ask while its first lease lives (threads
# asking at once) is still held. Each call still counts as an ask for the others: a
# job asking within the window of one is held as before.
#
# Why kept across a re-execution: an upgrade re-executes the daemon in place while the
# kernels and scripts run on, and a daemon that forgot them held each one's next call a
# window, as a newcomer's. The state record written just before the exec carries them
# (`record`); the new daemon keeps those whose process still runs as the same uid. A
# daemon restarted after a crash starts without them, as it did.

from __future__ import annotations

from collections.abc import Callable, Container
from dataclasses import dataclass, field
from typing import Any

from supervisord_batt.protocol import MAX_CHARS

LONE_MAX = 4096  # askers remembered as asking alone

Asker = tuple[str, int, int]  # (job name, uid, pid)


@dataclass(slots=True)
class LoneAskers:
    """The askers seen asking alone, and the last newcomer's."""

    alone: dict[Asker, None] = field(default_factory=dict)  # in the order learned
    last: Asker | None = None  # the last newcomer's asker
    last_first: bool = False  # whether it asked into an empty ledger
    last_lease: str = ""  # the lease it was granted

    def again(self, asker: Asker, live: Container[str]) -> bool:
        """Whether `asker` is the last newcomer's process asking again with that lease
        no longer in `live` (the leases held): its next call, not a job arriving."""
        return asker == self.last and self.last_lease not in live

    def asked(self, asker: Asker, lease: str, *, in_burst: bool, first: bool) -> None:
        """A newcomer of `asker` asked for `lease`: `in_burst` within the window of the
        last ask, `first` into an empty ledger."""
        if in_burst:  # neither asks alone
            self.alone.pop(asker, None)
            if self.last is not None:
                self.alone.pop(self.last, None)
        elif self.last_first and self.last is not None:  # no one followed that first ask
            self.alone.pop(self.last, None)
            self.alone[self.last] = None
            if len(self.alone) > LONE_MAX:
                del self.alone[next(iter(self.alone))]
        self.last, self.last_first, self.last_lease = asker, first, lease

    def __contains__(self, asker: Asker) -> bool:
        return asker in self.alone

    def record(self) -> dict[str, Any]:
        """What a re-executed daemon needs to go on (JSON-ready; `restored` reads it)."""
        return {
            "alone": [list(asker) for asker in self.alone],
            "last": list(self.last) if self.last is not None else None,
            "last_first": self.last_first,
            "last_lease": self.last_lease,
        }

    @classmethod
    def restored(cls, record: object, live: Callable[[Asker], bool]) -> LoneAskers:
        """The askers `record` kept whose process `live` says still runs; anything
        malformed is left out (the record is a file: checked like any input)."""
        lone = cls()
        if not isinstance(record, dict):
            return lone
        kept = record.get("alone")
        for value in kept[-LONE_MAX:] if isinstance(kept, list) else []:
            if (asker := _asker(value)) is not None and live(asker):
                lone.alone[asker] = None
        last, lease = _asker(record.get("last")), record.get("last_lease")
        if last is not None and live(last) and isinstance(lease, str):
            lone.last, lone.last_lease = last, lease
            lone.last_first = record.get("last_first") is True
        return lone


def _asker(value: object) -> Asker | None:
    """A recorded (job, uid, pid), or None when it is not one."""
    if not isinstance(value, list) or len(value) != 3:
        return None
    job, uid, pid = value
    if not isinstance(job, str) or len(job) > MAX_CHARS["job"]:
        return None
    if not all(isinstance(n, int) and not isinstance(n, bool) for n in (uid, pid)):
        return None
    return (job, uid, pid) if uid >= 0 and pid > 0 else None
