"""Who makes room when the ordinary peers' connections are all taken (pure).

# Accounts
Root and the admins are counted against nothing but `max_connections`: the last quarter
of it is theirs alone, so that root's `status` and `stop` always get in. Every other
connection counts against an account: its peer's uid, or, for a supervised worker of an
ordinary user, its instance (a program with 20 instances runs 20 jobs of one uid, each of
which is a job like a user's). An account holds at most `max_connections_per_uid`, and
all of them together at most the ordinary share (three quarters of `max_connections`).

# Why an equal part, and the heaviest account's idle connection
Those two caps alone were first come, first served: six users holding 32 connections
each took the whole share of 192, and every further user was refused until one of them
let go. So when the share is full, a newcomer whose account holds less than its equal
part (the share divided among the accounts holding connections, itself included) is
not refused because others hold more: the heaviest account above its part gives up one
idle connection instead, and the newcomer is served. One above its part is refused, so
the place never goes back and forth: the account that lost a connection still holds at
least its part, and the newcomer at most its own.

# Why a connection holding a lease is the last to be closed
Closing a connection releases every lease it holds, at once: the ledger hands those
slots to others while the job still runs its pool until its next renew, and a supervised
worker's pids cgroup drops to `tasks_without_lease`, so its pool's next process gets
EAGAIN. The client does not reconnect; it runs sequential from then on. A connection
with no lease loses nothing but the socket (the client sees EOF at its next request and
runs its fallback, as with no daemon). So among the idle connections of the accounts
above their part, one without a lease goes first, the heaviest account's first, the one
silent longest first; one with a lease only when there is no other, and still only from
an account above its part, which by then holds more leased connections than its part
and cannot claim them all against a user who holds fewer. A connection in the middle of
a request (one that waits, a reply not yet read) is never closed for room.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class Idle:
    """An open connection that could be closed to make room."""

    conn: int  # the connection's id
    account: str
    leased: bool  # holds a live lease
    last_active: float  # when it last sent a request (monotonic seconds)


def equal_part(share: int, held: Mapping[str, int], newcomer: str) -> int:
    """Connections each account may count on: the share divided among the accounts that
    hold connections, the newcomer's included (at least one)."""
    accounts = len(held) + (newcomer not in held)
    return max(1, share // accounts)


def over_part(held: Mapping[str, int], part: int) -> list[str]:
    """The accounts holding more than `part`, heaviest first."""
    return sorted((a for a, n in held.items() if n > part), key=lambda a: -held[a])


def victim(idle: Iterable[Idle], held: Mapping[str, int]) -> Idle | None:
    """The connection to close: no lease before a lease, then the heaviest account's,
    then the one silent longest. None when there is none to close."""
    return min(idle, key=lambda c: (c.leased, -held[c.account], c.last_active), default=None)
