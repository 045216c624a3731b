"""The max-min water-filling of the capacity over the leases: `allocate(...) -> Allocation`.

Pure: it reads the leases' footprints and profiles, the idle book (every lease
sequential) and the demand's sums, and returns each lease's share. When only the CPUs
can bind (`demand.cpu_only`) the outcome is in closed form (`Demand.level`); otherwise
the rounds are simulated on a copy of the idle book, skipping the runs of rounds nobody
contends for.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from supervisord_batt.budget.books import Book
from supervisord_batt.budget.claims import Footprint, Profile
from supervisord_batt.budget.costs import MIN_POOL
from supervisord_batt.budget.demand import Demand, cpu_only
from supervisord_batt.protocol import Kind

Planned = tuple[str, Footprint, Profile]  # a lease as the allocation sees it


@dataclass(frozen=True, slots=True)
class Share:
    """What the allocation gives one lease: a pool of `workers` of `kind` (0: none)."""

    workers: int
    kind: Kind


_SHARES: dict[tuple[int, Kind], Share] = {}  # a few: workers are at most max_per_lease


def share(workers: int, kind: Kind) -> Share:
    """The one Share of (workers, kind): they are frozen, so the allocation shares them
    instead of building one per lease on every recompute."""
    found = _SHARES.get((workers, kind))
    if found is None:
        found = _SHARES[workers, kind] = Share(workers, kind)
    return found


NO_SHARE = share(0, "sequential")


@dataclass(frozen=True, slots=True)
class Allocation:
    """The max-min allocation: each planned lease's share, and the water level reached
    (the fair share: the largest share, 0 when nobody got a pool). Where several users
    hold leases (`users.allocate_users`), the CPUs each user holds at its shares, which
    bound its grants in place of the host's CPUs (`Book.fit`)."""

    shares: Mapping[str, Share]  # the leases given a pool; the others have NO_SHARE
    fair_share: int
    cpus: Mapping[int, int] = field(default_factory=dict)  # uid -> CPUs; {}: one user

    def share(self, lease_id: str) -> Share:
        return self.shares.get(lease_id, NO_SHARE)


EMPTY = Allocation({}, 0)


@dataclass(slots=True, eq=False)
class _Grower:
    """A lease in the simulated water-filling: the kind it grows in, its cap, and what it
    has been given so far."""

    lease_id: str
    fp: Footprint
    kind: Kind
    cap: int
    fallback: bool
    size: int = 0
    size_kind: Kind = "sequential"


def allocate(leases: Iterable[Planned], idle: Book, demand: Demand) -> Allocation:
    """Max-min water-filling of the capacity over the leases that ask for a pool.

    Every lease starts sequential; round f raises each lease still growing to f workers
    if that fits every cap in its scope (the first round goes straight to MIN_POOL). A
    lease that does not fit stops. If any lease could not get its first pool, nobody goes
    beyond MIN_POOL: no second slot while one asker has none. Live pools are served
    first, in the leases' order, so a newcomer that cannot fit takes no pool away.

    `idle` has every lease sequential and `demand` sums their profiles; neither is changed.
    """
    # every lease counts one CPU even sequential, so with this many nobody gets a pool
    if idle.cpu_used - 1 + MIN_POOL > idle.cpus:
        return EMPTY
    live: list[Planned] = []
    rest: list[Planned] = []
    for planned in leases:
        p = planned[2]
        if p.kind is not None:
            (live if p.live else rest).append(planned)
    plan = live + rest
    if not plan:
        return EMPTY
    if cpu_only(demand, idle):
        return _fill(plan, idle, demand)
    return _Rounds(idle).run(plan)


def _fill(plan: list[Planned], idle: Book, demand: Demand) -> Allocation:
    """The water-filling when only the CPU cap can bind, from `Demand.level`: everyone
    gets min(its cap, the level), and the contested round goes in plan order."""
    level, bonus, winners = demand.level(idle.cpus - idle.cpu_used)
    shares: dict[str, Share] = {}
    fair = 0
    for lease_id, _, p in plan:
        cap, kind = p.cap, p.kind
        assert kind is not None  # the plan holds only leases that ask for a pool
        size = cap if cap < level else level
        if winners and cap > level:  # served in plan order while the CPUs last
            size, winners = bonus, winners - 1
        if size:
            shares[lease_id] = share(size, kind)
            fair = max(fair, size)
    return Allocation(shares, fair)


@dataclass(slots=True)
class _Rounds:
    """The water-filling round by round on a copy of the idle book (see `allocate`)."""

    book: Book
    fair: int = 0
    growers: list[_Grower] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.book = self.book.copy()

    def run(self, plan: list[Planned]) -> Allocation:
        self.growers = growing = [
            _Grower(lease_id, fp, p.kind, p.cap, p.fallback)
            for lease_id, fp, p in plan
            if p.kind is not None  # all of them: the plan holds only leases that ask
        ]
        top = max(g.cap for g in growing)
        size = self.skip(growing, MIN_POOL - 1, top)
        if size < MIN_POOL:  # someone's first pool is contended: go lease by lease
            growing = self.first_round(growing)
            size = self.skip(growing, MIN_POOL, top)
        while growing := [g for g in growing if g.cap > size]:
            size += 1
            growing = self.round(growing, size)
            size = self.skip(growing, size, top)
        shares = {g.lease_id: share(g.size, g.size_kind) for g in self.growers if g.size}
        return Allocation(shares, self.fair)

    def first_round(self, growing: list[_Grower]) -> list[_Grower]:
        """Round MIN_POOL, lease by lease, each in its first kind that fits (threads when
        a process pool may fall back); empty when anyone missed its first pool."""
        grown: list[_Grower] = []
        for g in growing:
            kinds: tuple[Kind, ...] = (g.kind, "thread") if g.fallback else (g.kind,)
            for kind in kinds:
                if self.book.fits(g.fp, kind, MIN_POOL, ("sequential", 0)):
                    g.kind = kind
                    self.take(g, MIN_POOL)
                    grown.append(g)
                    break
        if grown:
            self.fair = MIN_POOL
        return grown if len(grown) == len(growing) else []

    def skip(self, growing: list[_Grower], size: int, top: int) -> int:
        """Take at once the rounds after `size` in which every lease fits; the last size.

        `fits_all` is monotone in the size, so a binary search finds the last such round.
        """
        low, high = size, top  # fits up to low; not known above
        while low < high:
            mid = (low + high + 1) // 2
            if self.fits_all(growing, mid):
                low = mid
            else:
                high = mid - 1
        if low > size:
            for g in growing:
                if min(g.cap, low) > g.size:
                    self.take(g, min(g.cap, low))
                    self.fair = max(self.fair, min(g.cap, low))
        return low

    def round(self, growing: list[_Grower], size: int) -> list[_Grower]:
        """One round beyond MIN_POOL, lease by lease: the leases that grew to `size`."""
        grown = []
        for g in growing:
            if self.book.fits(g.fp, g.kind, size, (g.kind, size - 1)):
                self.take(g, size)
                grown.append(g)
        if grown:
            self.fair = size
        return grown

    def take(self, g: _Grower, size: int) -> None:
        self.book.move(g.fp, (g.size_kind, g.size), (g.kind, size))
        g.size, g.size_kind = size, g.kind

    def fits_all(self, growing: list[_Grower], top: int) -> bool:
        """Whether every growing lease at min(its cap, top) fits every cap at once.

        Sufficient for each lease's own check in the rounds up to `top`: a round's check
        sees every other lease at or below its final size, charges only grow with size,
        and `Book.fits`' need is at most the charge. So when this holds those rounds are
        skipped.
        """
        book = self.book
        by_scope: dict[tuple[int, ...], int] = {}
        cpu, mem, process = book.cpu_used, book.mem_used, False
        for g in growing:
            size = min(g.cap, top)
            if size <= g.size:
                continue
            fp, kind, old = g.fp, g.kind, (g.size_kind, g.size)
            by_scope[fp.scope] = by_scope.get(fp.scope, 0) + fp.charge(kind, size) - fp.charge(*old)
            cpu += size - max(1, g.size)
            if kind == "process":
                mem += fp.memory(kind, size) - fp.memory(*old)
                process = True
        if cpu > book.cpus or (process and mem > book.mem_bytes):
            return False
        added: dict[int, int] = {}
        for scope, delta in by_scope.items():
            for i in scope:
                added[i] = added.get(i, 0) + delta
        return all(book.usage[i] + d <= book.caps[i] for i, d in added.items())
