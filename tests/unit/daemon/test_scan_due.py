"""The daemon's /proc scan runs every `scan_interval`, counted in ticks, however late
each tick of the fixed cadence runs (daemon.lifecycle.scan_due, with a fake clock)."""

from __future__ import annotations

import itertools

import pytest

from supervisord_batt.daemon.lifecycle import scan_due

# how late each tick runs after its slot, in seconds: a loaded host's event loop
LATENESS = (0.0, 0.012, 0.003, 0.030, 0.001, 0.0, 0.018, 0.002)


def scanning_ticks(scan_interval: float, sample_interval: float, ticks: int) -> list[int]:
    """The ticks (1..ticks) that scan, the startup scan at tick 0's slot, each tick
    running LATENESS late as Daemon.main_loop's cadence runs them."""
    last, scanned = 0.0, []
    late = itertools.cycle(LATENESS)
    for k in range(1, ticks + 1):
        now = k * sample_interval + next(late)
        if scan_due(now, last, scan_interval, sample_interval):
            scanned.append(k)
            last = now
    return scanned


def test_a_scan_interval_of_one_tick_scans_at_every_tick() -> None:
    # a scan at a tick 12 ms late was not due at the next one, 991 ms on: the memory
    # proof's learned daemon (1 s each) scanned every other second
    assert scanning_ticks(1.0, 1.0, 40) == list(range(1, 41))


@pytest.mark.parametrize(("scan", "every"), [(10.0, 10), (5.0, 5), (2.0, 2)])
def test_a_scan_interval_of_n_ticks_scans_at_every_nth_tick(scan: float, every: int) -> None:
    assert scanning_ticks(scan, 1.0, 60) == list(range(every, 61, every))


def test_sub_second_ticks_scan_at_the_tick_nearest_the_interval() -> None:
    assert scanning_ticks(1.0, 0.25, 40) == list(range(4, 41, 4))
