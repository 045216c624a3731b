"""The budget shared per user first: `allocate_users(users, idle) -> Allocation`.

Pure, like `allocation.allocate`, which it calls once per user.
"""

# Why two levels. Max-min across leases let a user take shares by opening leases: one
# with 60 jobs got 60 shares against another's 4, and leases holding a CPU each while
# asking for no worker pushed every other user's job to sequential. So the budget is
# shared first across the users (uids) holding leases, then across each user's leases:
#
# 1. Parts (`entitlements`): each resource a pool needs (the CPUs, the headroom of each
#    task limit, the memory) is water-filled over the users by what they ask of it, in
#    proportion to their weights (`entitle`): each gets min(what it asks, its weighted
#    part of what is left), and what one asks less than its part of goes to the others.
#    A user's CPUs include one per sequential lease (its job's own thread), so a user
#    whose sequential jobs alone exceed its part gets no pool, and takes nothing from
#    anyone else's part: the parts then add up to less than what the users hold, the
#    excess being that user's alone (cutting the others' parts to make room for it
#    would let a user's sequential jobs shrink the others, which is what this stops).
# 2. Within a user (`allocation.allocate`, as for a single user): its leases on a book
#    whose CPUs, headroom and memory are its parts (`user_book`); a remainder of workers
#    goes to the leases whose pools it changes least (`keep_remainders`).
# 3. The top-up (`topup.top_up`): what is still free on the host's book after that (a
#    user held back by one resource leaves its part of the others; parts round down) goes
#    one worker at a time to the user holding the fewest CPUs for its weight, so nothing
#    is left that some lease could take.
#
# With one user its part is the whole book, and the ledger calls `allocate` directly
# (the single-user path is the one it always was).

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction

from supervisord_batt.budget.allocation import EMPTY, Allocation, Share, allocate, share
from supervisord_batt.budget.books import Book
from supervisord_batt.budget.costs import MIN_POOL
from supervisord_batt.budget.demand import cpu_only
from supervisord_batt.budget.topup import top_up
from supervisord_batt.budget.users import User, UserSums, Weight


def entitle(capacity: int, demands: Sequence[int], weights: Sequence[Weight]) -> list[int]:
    """Weighted max-min water-filling of `capacity` units over `demands`.

    Each gets min(its demand, weight * level), the level as high as the capacity allows,
    in whole units: the units the floors leave go one each to those not satisfied that
    hold the least for their weight (ties in order). So each gets at least
    min(its demand, floor(capacity * weight / sum of weights)), and the sum is
    min(capacity, sum of demands). Exact: the weights are ints or Fractions.
    """
    if sum(demands) <= capacity:
        return list(demands)
    out = [0] * len(demands)
    left, total = max(0, capacity), sum(weights)
    rest = list(range(len(demands)))
    while True:  # satisfy every demand under the level; the level only rises
        under = [u for u in rest if demands[u] * total <= left * weights[u]]
        if not under:
            break
        for u in under:
            out[u] = demands[u]
            left -= demands[u]
            total -= weights[u]
        done = set(under)
        rest = [u for u in rest if u not in done]
    # each of the rest gets floor(left * w / total), and the units left one each to
    # those holding the least for their weight (ties in order)
    for u in rest:
        out[u] = int(left * weights[u] // total)
    spare = left - sum(out[u] for u in rest)
    if spare:
        even = len({weights[u] for u in rest}) == 1  # then the units alone order them
        for u in sorted(rest, key=lambda u: (out[u] if even else out[u] / Fraction(weights[u]), u))[
            :spare
        ]:
            out[u] += 1
    return out


@dataclass(frozen=True, slots=True)
class Entitlements:
    """What each user may use of every resource: CPUs, room per limit, memory bytes."""

    cpus: list[int]  # per user, in `users` order: CPUs, its seats included
    rooms: list[list[int]]  # per user, per limit: tasks beyond the idle book's usage
    mem: list[int]  # per user: memory bytes beyond the idle book's


def entitlements(users: Sequence[User], idle: Book) -> Entitlements:
    """Every resource water-filled over the users by what they ask of it (`entitle`)."""
    weights = [u.weight for u in users]
    asked = [u.cpu_demand() for u in users]
    cpus = entitle(idle.cpus, asked, weights)
    rooms: list[list[int]] = [[] for _ in users]
    for i, (cap, used) in enumerate(zip(idle.caps, idle.usage, strict=True)):
        room = cap - used
        asked = [u.demand.tasks[i] for u in users]
        given = entitle(room, asked, weights) if room > 0 and any(asked) else [room] * len(users)
        for mine, g in zip(rooms, given, strict=True):
            mine.append(g)
    spare = idle.mem_bytes - idle.mem_used
    mem = (
        entitle(spare, [u.demand.mem for u in users], weights)
        if spare > 0
        else [spare] * len(users)
    )
    return Entitlements(cpus, rooms, mem)


def allocate_users(users: Sequence[User], idle: Book) -> Allocation:
    """The two-level max-min allocation (see the top of this module) of the users' leases
    on the idle book (every lease sequential); neither is changed."""
    if not users:
        return EMPTY
    if len(users) == 1:  # the single-user path: the user's leases on the whole book
        u = users[0]
        return allocate(u.planned, idle, u.demand)
    ent = entitlements(users, idle)
    shares: dict[str, Share] = {}
    fair = 0
    for k, u in enumerate(users):
        book = user_book(idle, u, ent.cpus[k], ent.rooms[k], ent.mem[k])
        mine = allocate(u.planned, book, u.demand)
        shares.update(keep_remainders(mine.shares, u, book) if u.held else mine.shares)
        fair = max(fair, mine.fair_share)
    held = [_held_cpus(u, shares) for u in users]
    if idle.cpus - sum(held) >= 1:  # a worker more costs a CPU: none free, no top-up
        fair = max(fair, top_up(idle, users, shares, held))
    return Allocation(shares, fair, {u.uid: cpus for u, cpus in zip(users, held, strict=True)})


# Why a remainder stays where it is. A user's part seldom divides evenly among its
# leases: 11 CPUs over 4 give three pools of 3 and one of 2. `allocate` gives the extra
# workers in plan order (live pools first, in the order they came), so when a job
# holding one ended, the next in order, a live pool of 2, took it over and grew (a new
# pool: the old one drained, every worker started again, for one worker more), while
# the user's next job, which starts a pool anyway, got the 2. In the six-user cell of
# benchmarks/simulate.py's users table that was about one such growth per job of the
# users whose parts did not divide (docs/SIMULATION.md has the figures). So where only
# the CPUs bind inside the user's part (`cpu_only`: any of its leases can hold either
# size), the extra workers go to the leases in this order, each group in plan order:
# those whose pools are of the larger size now (they keep them), those whose pools
# change in any case (a newcomer, a sequential lease, a pool above or below both sizes),
# and last those whose pools are of the smaller size (one worker more would start them
# all again). The sizes and their count are `allocate`'s; only who gets which moves, so
# every bound on the user's leases holds as it did. (A newcomer given the larger size
# where its user's pools run the smaller starts at theirs: `hold.first_size`.)


def keep_remainders(shares: Mapping[str, Share], u: User, book: Book) -> Mapping[str, Share]:
    """`shares`, `allocate`'s for the user's leases on its `book`, with the contested
    round's extra workers given as the comment above says."""
    if not cpu_only(u.demand, book):
        return shares
    level, bonus, winners = u.demand.level(book.cpus - book.cpu_used)
    if not winners or level < MIN_POOL:  # no remainder, or first pools: plan order
        return shares
    held = u.held

    def rank(lease_id: str, live: bool) -> tuple[int, bool]:
        size = held.get(lease_id, 0)
        return (0 if size == bonus else 2 if size == level else 1), not live

    contested = [
        (rank(lease_id, p.live), lease_id, p.kind)
        for lease_id, _, p in u.planned
        if p.kind is not None and p.cap > level
    ]
    contested.sort(key=lambda c: c[0])  # stable: the leases' order within each group
    out = dict(shares)
    for k, (_, lease_id, kind) in enumerate(contested):
        assert kind is not None  # the contested ask for a pool
        out[lease_id] = share(bonus if k < winners else level, kind)
    return out


# Why a user's part, not an equal split, tells who is over it. CPU pressure is put down to
# the users holding more CPUs than their part (ledger `_set_level`): sequential jobs
# beyond it, or pools not given back. A user may hold more than an equal split, the
# part of a user that asks for less having gone to it: 64 CPUs over six users, one of
# them with one job of 8, leave the others 11 each, and ten is the equal split. Judged
# against ten, such a user was over its part whenever it held what it was given, and so
# got the CPU pressure's level: its next jobs no pool until the next sample, then a
# pool, as the sample fell. So it is judged against what `entitle` gives it.


def over_parts(users: Mapping[int, UserSums], cpus: int) -> frozenset[int]:
    """The uids holding more CPUs in the charged book than their part of the `cpus`
    (`entitle` over what each asks, in uid order as `allocate_users` has them). None
    with one user: its part is everything."""
    if len(users) < 2:
        return frozenset()
    uids = sorted(users)
    parts = entitle(cpus, [users[u].cpu_demand() for u in uids], [users[u].weight for u in uids])
    return frozenset(u for u, part in zip(uids, parts, strict=True) if users[u].cpus > part)


def user_book(idle: Book, u: User, cpus: int, rooms: list[int], mem: int) -> Book:
    """The idle book as one user's allocation sees it: its CPUs and seats, and the room
    its parts leave on each limit and in memory (a limit already over its cap stays over
    it: a lease whose measured tree shrank may still fit there)."""
    caps = tuple(used + room for used, room in zip(idle.usage, rooms, strict=True))
    return Book(
        idle.limits, caps, list(idle.usage), cpus, idle.mem_used + mem, u.seats, idle.mem_used
    )


def _held_cpus(u: User, shares: dict[str, Share]) -> int:
    """CPUs the user's leases hold at their shares: its seats, and each pool's workers
    beyond its seat (a planned lease asked for workers: its seat is one)."""
    extra = 0
    for lease_id, _, _ in u.planned:
        s = shares.get(lease_id)
        if s is not None:
            extra += s.workers - 1
    return u.seats + extra
