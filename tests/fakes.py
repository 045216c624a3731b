"""Fakes shared by the unit tests: none of them does I/O or sleeps."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class FakeClock:
    """A clock that stands still until told to move (the ledger's and lease log's)."""

    now: float = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds
