"""A newcomer's share without the others': `newcomer_share(...) -> QuickShare | None`.

Why a shortcut at all: the daemon acquires on every job's start, and acquire needs only
the newcomer's share, while `allocation.allocate` costs a water-filling over every lease.
The newcomer is last in plan order, so in three cases its share is in closed form: when
only the CPU cap can bind (off the water level, `Demand.level`), when memory can bind too
but no task limit can (from the sums in `Demand`), and when the newcomer is alone in the
plan. Anywhere else it answers None, and the ledger allocates in full.

Pure, like `allocate`, and tested against it: for any leases, books and demand,
`newcomer_share(...)` is None or its share is `allocate(...).share(newcomer)`.

Where several users hold leases, `newcomer_user_share` is the same one level down: when
only the CPUs can bind inside every user's part, the newcomer's share is
`newcomer_share` on its own user's part, and its user's CPUs follow from the parts; it
is tested against `hierarchy.allocate_users` alike.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import NamedTuple

from supervisord_batt.budget.allocation import NO_SHARE, Share, share
from supervisord_batt.budget.books import Book
from supervisord_batt.budget.claims import Footprint, Profile
from supervisord_batt.budget.costs import MIN_POOL, UNBOUNDED
from supervisord_batt.budget.demand import (
    Demand,
    Groups,
    cpu_only,
    first_pools_fit_tasks,
    task_limits_hold,
)
from supervisord_batt.budget.hierarchy import entitlements, user_book
from supervisord_batt.budget.users import User
from supervisord_batt.protocol import Kind


class QuickShare(NamedTuple):
    """The newcomer's share as `allocate` would give it, and the fair share acquire
    explains a refusal with: the full allocation's whenever the newcomer gets no pool
    (where it got one, the shortcut may not know the others' and gives its own).

    A named tuple, as the claims are: one is built per acquire."""

    share: Share
    fair_share: int


_NONE = QuickShare(NO_SHARE, 0)


def newcomer_share(
    newcomer: Profile,
    footprint: Footprint,
    others: Iterable[Profile],
    idle: Book,
    demand: Demand,
) -> QuickShare | None:
    """The newcomer's share without the others' (None: no shortcut applies).

    `newcomer` is last in plan order and sequential in `idle`, and `demand` counts it;
    `others` are the other leases' profiles in the ledger's order (read only when memory
    runs out in the first round).
    """
    spare = idle.cpus - idle.cpu_used
    if spare < 1 or not demand.n:  # no sample, level extreme, or no CPU for anyone
        return _NONE
    if not cpu_only(demand, idle):
        return _first_round_share(newcomer, footprint, others, idle, demand, spare)
    # the newcomer never wins the contested round: its share is min(its cap, the level)
    level, bonus, winners = demand.level(spare)
    fair = bonus if winners else level
    if newcomer.kind is not None and level:
        size = newcomer.cap if newcomer.cap < level else level
        return QuickShare(share(size, newcomer.kind), fair)
    return QuickShare(NO_SHARE, fair)


def newcomer_user_share(  # noqa: PLR0917 (newcomer_share's, its user, and the user's pools)
    newcomer: Profile,
    footprint: Footprint,
    mine: int,
    users: Sequence[User],
    idle: Book,
    pools: Mapping[int, int] | None = None,
) -> tuple[QuickShare, int] | None:
    """The newcomer's share where several users hold leases, and the CPUs its user holds
    at the allocation, without allocating (None: no shortcut).

    `users[mine]` is the newcomer's user, whose demand and seats count the newcomer
    (last in its plan order); the users' plans are not read, only their sums. When only
    the CPUs can bind inside every user's part (`cpu_only` on each user's book), each
    user holds min(what it asks, its CPU part), or its seats if more: with the CPUs all
    taken, or every lease at its cap, the top-up finds nothing to grow. So the newcomer's
    share is `newcomer_share` on its user's book, which the others do not change, unless
    the newcomer may take an extra worker of its user's remainder: it goes ahead of the
    user's pools of the smaller size (`hierarchy.keep_remainders`), so `pools` (the
    user's pools by workers, its others; None: not known) tells where it cannot.
    """
    ent = entitlements(users, idle)
    for k, u in enumerate(users):
        if not cpu_only(u.demand, user_book(idle, u, ent.cpus[k], ent.rooms[k], ent.mem[k])):
            return None
    u = users[mine]
    book = user_book(idle, u, ent.cpus[mine], ent.rooms[mine], ent.mem[mine])
    if newcomer.kind is not None and _may_take_remainder(newcomer.cap, u, book, pools):
        return None
    quick = newcomer_share(newcomer, footprint, (), book, u.demand)
    if quick is None:
        return None
    return quick, max(u.seats, min(u.cpu_demand(), ent.cpus[mine]))


def _may_take_remainder(cap: int, u: User, book: Book, pools: Mapping[int, int] | None) -> bool:
    """Whether a newcomer capped at `cap` may get an extra worker of its user's remainder
    on its `book`, where only the CPUs bind (`hierarchy.keep_remainders`). It is last of
    the leases that contest it but for those whose pools are of the smaller size, which
    are at most `pools`' count of that size: so where the extra workers run out before
    the others less those, it cannot."""
    level, _, winners = u.demand.level(book.cpus - book.cpu_used)
    if not winners or level < MIN_POOL or cap <= level:
        return False
    others = sum(n for c, n in u.demand.caps.items() if c > level) - 1  # it counts there
    smaller = others if pools is None else pools.get(level, 0)
    return winners > others - smaller


def _first_round_share(  # noqa: PLR0917 (newcomer_share's arguments, and the spare CPUs)
    e: Profile,
    footprint: Footprint,
    others: Iterable[Profile],
    idle: Book,
    d: Demand,
    spare: int,
) -> QuickShare | None:
    """`newcomer_share` when more than the CPUs can bind (None: no shortcut).

    Three cases are in closed form. The newcomer alone in the plan grows, round by round,
    as far as it fits (`Book.fit`). Otherwise no task limit may bind in the first round
    (`first_tasks`); the others' first round is then a walk over memory alone
    (`_first_walk`, or none when their first pools fit the memory at once) until the CPUs
    run out, each taking one. The newcomer's sequential task and CPU are in the idle book
    it starts from, and it adds no memory there. If somebody misses a first pool, nobody
    goes beyond MIN_POOL, so the first round is all: the newcomer, last in plan order,
    gets MIN_POOL if a CPU and its memory are left after the others. If nobody does, the
    later rounds decide (`_later_share`), with the others that fell back to threads in the
    walk counted as threads (`Demand.fallen`): with many holders, memory for only some of
    their first pools is the daemon's common case.
    """
    if e.kind is not None and d.n == 1:
        return _lone_share(e, footprint, idle)
    if not first_pools_fit_tasks(d, idle):
        return None
    mem = idle.mem_bytes - idle.mem_used
    others_mem = d.first_mem - e.first_mem
    moved: Groups = {}  # the others that fell back to threads, by (lo, cap)
    if others_mem <= mem:  # nobody runs out of memory
        passed, missed, mem = d.n - (e.kind is not None), 0, mem - others_mem
    else:
        passed, missed, mem = _first_walk(others, mem, spare, moved)
    kind: Kind | None = None
    if e.kind is not None and passed < spare:  # a CPU is left for the newcomer
        if e.first_mem == 0 or e.first_mem <= mem:
            kind = e.kind
        elif e.fallback:
            kind = "thread"
    if not missed and passed <= spare and (kind is not None or e.kind is None):
        # everyone has a first pool: the later rounds decide
        if kind is None:
            return None
        # a fallback to threads took no memory slot, and needs none later (lo = cap)
        own = kind == e.kind
        lo = e.lo if own else e.cap
        groups = d.fallen(moved) if moved else None
        size = _later_share(e, idle, d, spare - d.n, mem - e.first_mem if own else mem, lo, groups)
        if size is None:
            return None
        return QuickShare(share(size, kind), size)  # the others' fair share is not known
    fair = MIN_POOL if kind is not None or min(passed, spare) > 0 else 0
    if kind is not None:
        return QuickShare(share(MIN_POOL, kind), fair)
    return QuickShare(NO_SHARE, fair)


def _later_share(  # noqa: PLR0917 (the state of the rounds after the first)
    e: Profile,
    idle: Book,
    d: Demand,
    cpu: int,
    mem: int,
    lo: int,
    groups: Groups | None = None,
) -> int | None:
    """The newcomer's share when every planned lease took a first pool, leaving `cpu`
    CPUs and `mem` bytes of memory (None: no shortcut, as where the planned process
    pools' workers differ in size: a memory slot is then no one figure). A memory slot
    is the bytes of one worker of that size. The others hold their first kind, or
    threads for those `groups` counts at (cap, cap) (`Demand.fallen`; None: none fell
    back). `lo` is the last size the newcomer grows to without a memory slot: its `lo`, or
    its cap if it fell back to threads (the sums count it at its `lo` regardless).

    With no task limit binding at any size, a round costs each growing lease a CPU and, a
    process pool past its sampled size, a memory slot. The rounds in which everyone fits
    follow from the sums over (lo, cap) (`Demand.used`). In the next, the others go first:
    the newcomer grows if a CPU is left after them and, if it needs one, a memory slot. If
    it grows there, the others took the last memory slot, so from then on only leases that
    need none grow, and it grows while they leave it a CPU. A fallback to threads costs
    fewer tasks than its first kind, which `d.tasks` counts, so the check that no task
    limit binds holds for it too; and it grows as threads in the later rounds, needing no
    memory slot, as `groups` counts it.
    """
    if not task_limits_hold(d, idle):
        return None
    unit = d.unit()
    if unit is None:  # the planned pools' workers differ in size: no count of rounds
        return None
    # bytes to memory slots of that size (floored, as the books' checks are); with no
    # planned process pool, or memory not budgeted, nobody needs one. Below the reserve
    # (spare below 0) no slot is free, as with none: no pool here is measured.
    mem = max(0, mem) // unit if unit else UNBOUNDED
    cap, counted = e.cap, e.lo  # counted: its lo as the sums have it
    low, high = MIN_POOL, cap  # everyone fits up to low; not known above
    while low < high:
        mid = (low + high + 1) // 2
        used_cpu, used_mem = d.used(mid, groups)
        used_mem -= max(0, mid - counted) - max(0, mid - lo)  # mid <= cap
        if used_cpu <= cpu and used_mem <= mem:
            low = mid
        else:
            high = mid - 1
    if low >= cap:
        return cap
    used_cpu, used_mem = d.used(low, groups)
    used_mem -= max(0, low - counted) - max(0, low - lo)
    cpu, mem = cpu - used_cpu, mem - used_mem
    size = low + 1
    grow, needy, _ = d.growing(size, groups)
    own = lo < size  # the newcomer needs a memory slot
    grow, needy = grow - 1, needy - (counted < size)  # the others
    passed = grow - needy + min(mem, needy)
    if passed >= cpu or (own and mem <= needy):
        return low  # the CPUs or memory ran out before its turn
    if own or needy <= mem:
        return None  # everyone fit after all: not the round the sums say
    cpu -= passed + 1
    while size < cap:  # no memory left: only leases that need none grow
        size += 1
        _, _, free = d.growing(size, groups)
        free -= counted >= size
        if free >= cpu or lo < size:
            return size - 1
        cpu -= free + 1
    return size


def _first_walk(
    others: Iterable[Profile], mem: int, spare: int, moved: Groups
) -> tuple[int, int, int]:
    """The first round of the other planned leases, in plan order (live pools first),
    with CPUs to spare and no task limit binding: (first pools, misses, memory slots
    left). Those that fell back to threads are counted in `moved` by (lo, cap).

    It stops once more than `spare` leases took a first pool: the CPUs ran out before the
    newcomer's turn, which is all `_first_round_share` reads then. `others` is read once:
    the live pools are walked as they come, the rest after them. (One loop body for both
    walks, with no call per lease: with many holders the walk is most of an acquire.)
    """
    passed = missed = 0
    later: list[Profile] = []
    for walk in (others, later):
        for o in walk:
            if o.kind is None:
                continue
            if walk is others and not o.live:
                later.append(o)  # walked after the live pools
                continue
            first_mem = o.first_mem
            if first_mem == 0 or first_mem <= mem:
                mem -= first_mem
            elif o.fallback:  # threads need no memory
                key = (o.lo, o.cap)
                moved[key] = moved.get(key, 0) + 1
            else:
                missed += 1
                continue
            passed += 1
            if passed > spare:
                return passed, missed, mem
    return passed, missed, mem


def _lone_share(e: Profile, footprint: Footprint, idle: Book) -> QuickShare:
    """The newcomer alone in the plan: its first kind that fits a first pool, grown as far
    as every cap lets it (each round's check is `fit` of the same book)."""
    assert e.kind is not None
    kinds: tuple[Kind, ...] = (e.kind, "thread") if e.fallback else (e.kind,)
    for kind in kinds:
        fit, _ = idle.fit(footprint, kind, ("sequential", 0))
        if fit >= MIN_POOL:
            size = min(e.cap, fit)
            return QuickShare(share(size, kind), size)
    return _NONE
