"""The keeper of an idle pool: which call takes it, when it and its lease go, in order.

Pure logic with a fake clock, a fake pool and a fake grant (the joblib tests run the real
ones against a real daemon); one test runs the keeper's own thread."""

from __future__ import annotations

import gc
import threading
from dataclasses import dataclass, field

import pytest

from supervisord_batt.client.keep import Keeper, Kept, Lease
from tests.fakes import FakeClock
from tests.helpers import wait_until


@dataclass
class Pool:
    size: int = 2
    broken: str | None = None
    log: list[str] = field(default_factory=list)

    def check(self) -> str | None:
        return self.broken

    def close(self, *, stuck: bool = False) -> None:
        self.log.append(f"close stuck={stuck}")


@dataclass
class Grant:
    """A grant whose renewals the test scripts: `target` is what the next renew says."""

    clock: FakeClock
    log: list[str]
    kind: str = "process"
    target: int = 2
    ttl: float = 60.0
    renewed_at: float = 0.0
    renewed_with: list[int | None] = field(default_factory=list)

    @property
    def size(self) -> int:
        return self.target

    def renew_due(self, interval: float | None = None) -> bool:
        return self.renew_in(interval) <= 0

    def renew_in(self, interval: float | None = None) -> float:
        wait = self.ttl / 3 if interval is None else min(interval, self.ttl / 3)
        return max(0.0, self.renewed_at + wait - self.clock())

    def renew(self, workers_in_use: int | None = None) -> object:
        self.renewed_at = self.clock()
        self.renewed_with.append(workers_in_use)
        return self

    def report_fallback(self, old: str, new: str, workers: int, stage: str, reason: str) -> None:
        raise AssertionError("the keeper reports no fallback")


@dataclass
class World:
    clock: FakeClock = field(default_factory=FakeClock)
    log: list[str] = field(default_factory=list)
    keeper: Keeper[Pool] = field(init=False)

    def __post_init__(self) -> None:
        self.keeper = Keeper(give_back=self.give_back, clock=self.clock, start_thread=False)

    def give_back(self, grant: Lease) -> None:
        self.log.append("give back")

    def kept(self, key: str = "k", idle_s: float = 5.0, size: int = 2) -> Kept[Pool]:
        grant = Grant(self.clock, self.log, target=size, renewed_at=self.clock())
        return Kept(Pool(size, log=self.log), grant, key, idle_s)

    def park(self, idle_s: float = 60.0, size: int = 2) -> tuple[Kept[Pool], Grant]:
        """A call's pool and lease, parked as the call ends."""
        kept = self.kept(idle_s=idle_s, size=size)
        claim, _ = self.keeper.checkout(kept.key)
        self.keeper.checkin(claim, kept)
        assert isinstance(kept.grant, Grant)
        return kept, kept.grant


@pytest.fixture
def w() -> World:
    return World()


def test_the_next_call_with_the_same_request_takes_the_parked_pool_and_lease(w: World) -> None:
    claim, none = w.keeper.checkout("k")
    assert claim is not None and none is None
    kept = w.kept()
    w.keeper.checkin(claim, kept)
    assert w.keeper.parked() is kept and w.log == []
    w.clock.advance(4.9)
    claim2, taken = w.keeper.checkout("k")
    assert claim2 is not None and taken is kept and w.keeper.parked() is None
    assert w.log == []  # nothing closed, nothing given back


def test_a_call_with_another_request_ends_the_parked_pool_first(w: World) -> None:
    claim, _ = w.keeper.checkout("k")
    w.keeper.checkin(claim, w.kept("k"))
    claim2, taken = w.keeper.checkout("other")
    assert claim2 is not None and taken is None
    assert w.log == ["close stuck=False", "give back"]  # the pool first, then its lease


def test_one_call_at_a_time_holds_the_pool_and_a_lost_claim_frees_it(w: World) -> None:
    claim, _ = w.keeper.checkout("k")
    assert w.keeper.checkout("k") == (None, None)  # another thread, a nested call
    del claim
    gc.collect()
    claim2, _ = w.keeper.checkout("k")  # the holder was collected without a checkin
    assert claim2 is not None


def test_idle_past_its_keep_alive_the_pool_closes_then_the_lease_goes(w: World) -> None:
    claim, _ = w.keeper.checkout("k")
    w.keeper.checkin(claim, w.kept(idle_s=5.0))
    w.clock.advance(1.0)
    assert w.keeper.step() == pytest.approx(1.0)  # next: a renewal
    w.clock.advance(3.0)
    assert w.keeper.step() == pytest.approx(1.0)
    w.clock.advance(1.0)
    assert w.keeper.step() is None
    assert w.keeper.parked() is None
    assert w.log == ["close stuck=False", "give back"]


def test_the_parked_lease_is_renewed_at_the_pool_size_and_a_shrink_ends_both(w: World) -> None:
    _, grant = w.park(size=3)
    w.clock.advance(1.0)
    w.keeper.step()
    assert grant.renewed_with == [3] and w.log == []
    grant.target = 2  # the daemon wants fewer workers than the pool runs
    w.clock.advance(1.0)
    assert w.keeper.step() is None
    assert w.log == ["close stuck=False", "give back"]


def test_a_lease_the_daemon_took_away_ends_the_pool(w: World) -> None:
    _, grant = w.park()
    grant.kind = "sequential"  # what a renew makes of a lost or expired lease
    w.clock.advance(1.0)
    assert w.keeper.step() is None
    assert w.log == ["close stuck=False", "give back"]


def test_a_short_ttl_is_renewed_in_time(w: World) -> None:
    _, grant = w.park()
    grant.ttl = 0.75
    assert w.keeper.step() == 0.25  # a third of the TTL, not renew_every
    w.clock.advance(0.125)
    assert w.keeper.step() == 0.125  # when the renewal is due, not later
    w.clock.advance(0.125)
    assert w.keeper.step() == 0.25 and grant.renewed_with == [2]


def test_dead_workers_end_the_pool_as_stuck(w: World) -> None:
    kept, _ = w.park()
    kept.pool.broken = "pool broken: a worker was killed"
    assert w.keeper.step() is None
    assert w.log == ["close stuck=True", "give back"]


def test_a_health_check_that_raises_ends_the_pool_as_stuck(w: World) -> None:
    kept, _ = w.park()

    def raises() -> str | None:
        raise OSError("no such process")

    kept.pool.check = raises  # type: ignore[method-assign]
    assert w.keeper.step() is None
    assert w.log == ["close stuck=True", "give back"]


def test_nothing_is_kept_with_no_keep_alive_a_stale_claim_or_after_close(w: World) -> None:
    claim, _ = w.keeper.checkout("k")
    w.keeper.checkin(claim, w.kept(idle_s=0.0))
    assert w.keeper.parked() is None and w.log == ["close stuck=False", "give back"]
    w.keeper.checkin(None, w.kept())  # a call that had no claim
    assert w.keeper.parked() is None and len(w.log) == 4
    claim, _ = w.keeper.checkout("k")
    w.keeper.checkin(claim, w.kept())
    w.keeper.close()  # interpreter exit
    assert w.keeper.parked() is None and len(w.log) == 6
    claim, _ = w.keeper.checkout("k")
    w.keeper.checkin(claim, w.kept())
    assert w.keeper.parked() is None and len(w.log) == 8


def test_a_forked_child_forgets_without_closing(w: World) -> None:
    claim, _ = w.keeper.checkout("k")
    w.keeper.checkin(claim, w.kept())
    assert w.keeper.forget() is True
    assert w.keeper.parked() is None and w.log == []  # the parent's workers and lease
    assert w.keeper.forget() is False


def test_no_thread_to_watch_the_pool_keeps_nothing(
    w: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refused(self: threading.Thread) -> None:
        raise RuntimeError("can't start new thread")

    keeper: Keeper[Pool] = Keeper(give_back=w.give_back, clock=w.clock)
    monkeypatch.setattr(threading.Thread, "start", refused)
    claim, _ = keeper.checkout("k")
    keeper.checkin(claim, w.kept())
    assert keeper.parked() is None and w.log == ["close stuck=False", "give back"]


def test_the_keeper_thread_gives_back_an_idle_pool_and_ends() -> None:
    log: list[str] = []
    keeper: Keeper[Pool] = Keeper(give_back=lambda grant: log.append("give back"))
    clock = FakeClock()
    before = set(threading.enumerate())
    for _ in range(2):  # the thread waits through a call, then ends once nothing is left
        claim, _ = keeper.checkout("k")
        grant = Grant(clock, log, ttl=60.0, renewed_at=clock())
        keeper.checkin(claim, Kept(Pool(2, log=log), grant, "k", idle_s=0.2))
        (thread,) = [t for t in threading.enumerate() if t not in before]  # the keeper's
        assert thread.name == "supervisord-batt-keeper" and thread.is_alive()
        claim, kept = keeper.checkout("k")
        assert kept is not None
        keeper.checkin(claim, kept)
    wait_until(lambda: keeper.parked() is None, timeout=5, what="the idle pool given back")
    assert log == ["close stuck=False", "give back"]
    assert thread is not None  # the loop's last one
    wait_until(lambda: not thread.is_alive(), timeout=5, what="the keeper's thread ended")
