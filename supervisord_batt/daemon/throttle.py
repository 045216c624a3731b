"""Lines about things a peer can make repeat: at most `rate` a second, the rest counted.

A malformed or oversized message, a refused peer, an error answered: each is worth one
line, with the peer's uid and pid, while it is rare. A peer that repeats it thousands of
times a second (a fuzzer, a broken client in a loop, a connection flood) must not turn
that into thousands of lines: 100,000 fuzzed messages were 104,786 lines, and journald's
default limit (10,000 lines per 30 s per service) then drops the daemon's kill and
pressure lines with them. So past `rate` lines a second they are counted, by event and
by uid, and the daemon's tick writes one `bad_input_suppressed` line with the counts;
a last one at shutdown. A rate of 0 writes every line. Lines about the daemon's own
faults (`handler_failed`) go through here too, but keep their traceback when written.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from supervisord_batt.logs import get_logger

log = get_logger(component="daemon")
_MAX_UIDS = 64  # distinct uids counted per summary; the rest are summed as "other"


@dataclass
class PerSecond:
    """The rate window of Throttle and the lease log: `allow(rate)` is True for the first
    `rate` calls in each whole second of `clock`, and always for a rate of 0 or less. The
    rate is passed each time, as a reload may change it."""

    clock: Callable[[], float]
    _second: int = -1  # the whole second of the clock the count is for
    _passed: int = 0  # calls allowed in that second

    def allow(self, rate: int) -> bool:
        if rate <= 0:
            return True
        second = int(self.clock())
        if second != self._second:
            self._second, self._passed = second, 0
        if self._passed >= rate:
            return False
        self._passed += 1
        return True


class Throttle:
    """Writes within the rate, counts the rest, summarises on `summarize()`."""

    # the wall clock: its seconds are the log lines' own, so "at most `rate` lines in any
    # second of their timestamps" holds exactly (a clock step only starts a new count)
    def __init__(
        self,
        rate: int,
        clock: Callable[[], float] = time.time,
        summary: str = "bad_input_suppressed",
        about: str = "bad input or refused peers",
    ) -> None:
        self.rate = rate
        self.summary, self.about = summary, about
        self._window = PerSecond(clock)
        self._held: Counter[str] = Counter()  # event -> lines held back since the summary
        self._uids: Counter[str] = Counter()  # uid (as text) -> lines held back

    def emit(self, level: str, event: str, uid: int | None = None, **fields: Any) -> bool:
        """Write the line if the rate allows; else count it. True when written."""
        if not self._window.allow(self.rate):
            self._held[event] += 1
            key = str(uid) if len(self._uids) < _MAX_UIDS or str(uid) in self._uids else "other"
            self._uids[key] += 1
            return False
        getattr(log, level)(event, uid=uid, **fields)
        return True

    def summarize(self) -> None:
        """One line for what was held back since the last summary (nothing: no line)."""
        if not self._held:
            return
        log.warning(
            self.summary,
            lines=sum(self._held.values()),
            events=dict(self._held),
            by_uid=dict(self._uids.most_common(10)),
            reason=f"more than {self.rate} lines a second about {self.about}",
        )
        self._held.clear()
        self._uids.clear()
