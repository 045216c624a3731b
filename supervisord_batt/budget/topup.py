"""The last step of the split across users: `top_up(...)`, what the host's book still has
free once every user's leases had their parts, one worker at a time.

Pure, like the rest of the allocation: it reads the idle book and the users' plans, and
grows the `shares` and `held` it is given.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction

from supervisord_batt.budget.allocation import Planned, Share, share
from supervisord_batt.budget.books import Book
from supervisord_batt.budget.costs import MIN_POOL
from supervisord_batt.budget.users import User
from supervisord_batt.protocol import Kind

_Queue = list[tuple[tuple[int, int], "_Grower"]]  # a user's growing leases, smallest first


def top_up(idle: Book, users: Sequence[User], shares: dict[str, Share], held: list[int]) -> int:
    """Grow the users' leases into what the host's book has free after their `shares`:
    while a CPU is free, the user holding the fewest CPUs for its weight (`held`, per
    user in `users` order) grows its smallest lease by a worker (a lease short of its
    first pool takes one). A lease that does not fit stops; a user one of whose leases
    missed its first pool grows no pool beyond the others' first (as `allocate` keeps
    them at MIN_POOL then). `shares` and `held` are updated; the largest share given (0:
    none)."""
    book = idle.copy()
    queues: list[_Queue] = [_queue(book, u, shares) for u in users]
    turns = [(Fraction(held[k]) / u.weight, k) for k, u in enumerate(users) if queues[k]]
    heapq.heapify(turns)
    missed = [False] * len(users)
    fair = 0
    while turns and book.cpus - book.cpu_used >= 1:
        _, k = heapq.heappop(turns)
        mine = queues[k]
        _, g = heapq.heappop(mine)
        if g.size == 0:
            grown = g.first_pool(book)
            missed[k] = missed[k] or not grown
        else:
            grown = not missed[k] and g.grow(book)
        if grown:
            shares[g.lease_id] = share(g.size, g.kind)
            held[k] += 1
            fair = max(fair, g.size)
            if g.size < g.planned[2].cap:
                heapq.heappush(mine, (g.key, g))
        if mine and not (missed[k] and mine[0][1].size):
            heapq.heappush(turns, (Fraction(held[k]) / users[k].weight, k))
    return fair


def _queue(book: Book, u: User, shares: dict[str, Share]) -> _Queue:
    """The user's planned leases that may still grow, smallest first; each lease's share
    is moved into `book` on the way."""
    mine: _Queue = []
    for order, planned in enumerate(u.planned):
        lease_id, fp, p = planned
        assert p.kind is not None  # a plan holds only leases that ask for a pool
        s = shares.get(lease_id)
        if s is not None:
            book.move(fp, ("sequential", 0), (s.kind, s.workers))
        g = _Grower(order, lease_id, planned, s.workers if s else 0, s.kind if s else p.kind)
        if g.size < p.cap:
            mine.append((g.key, g))
    heapq.heapify(mine)
    return mine


@dataclass(slots=True, eq=False)
class _Grower:
    """A planned lease in the top-up: its share so far and the kind it grows in."""

    order: int
    lease_id: str
    planned: Planned
    size: int
    kind: Kind

    @property
    def key(self) -> tuple[int, int]:
        return self.size, self.order

    def first_pool(self, book: Book) -> bool:
        """Take a first pool in the first kind that fits (threads if a process pool may
        fall back); whether one did."""
        _, fp, p = self.planned
        kinds: tuple[Kind, ...] = (self.kind, "thread") if p.fallback else (self.kind,)
        for kind in kinds:
            if book.fits(fp, kind, MIN_POOL, ("sequential", 0)):
                self.kind = kind
                self.take(book, MIN_POOL)
                return True
        return False

    def grow(self, book: Book) -> bool:
        """One worker more, if it fits; whether it did."""
        if not book.fits(self.planned[1], self.kind, self.size + 1, (self.kind, self.size)):
            return False
        self.take(book, self.size + 1)
        return True

    def take(self, book: Book, size: int) -> None:
        old = (self.kind, self.size) if self.size else ("sequential", 0)
        book.move(self.planned[1], old, (self.kind, size))
        self.size = size
