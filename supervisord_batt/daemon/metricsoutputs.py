"""The metrics' two outputs, each on only when configured: the HTTP endpoint
(daemon.metricshttp) and the textfile for node_exporter, both from one rendering a tick
(daemon.metrics). Also what the endpoint drops: connections evicted to make room or
timed out, counted for the metrics and logged at most a line a second, the rest summed
up each tick (daemon.throttle).
"""

from __future__ import annotations

import contextlib
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from supervisord_batt import safepath
from supervisord_batt.budget.ledger import BudgetLedger
from supervisord_batt.config.records import MetricsConfig
from supervisord_batt.daemon.tallies import Tallies
from supervisord_batt.daemon.throttle import Throttle
from supervisord_batt.host.sample import HostSample
from supervisord_batt.logs import get_logger
from supervisord_batt.supervise.supervisor import Supervisor

if TYPE_CHECKING:  # both import prometheus-client, loaded only when metrics are on
    from supervisord_batt.daemon.metrics import DaemonCollector, Rendered
    from supervisord_batt.daemon.metricshttp import MetricsEndpoint

log = get_logger(component="daemon")

_DROPPED_WHY = {
    "evicted": "every connection was taken: the oldest, open longest without a whole "
    "request head, made room for a new one",
    "refused": "every connection was taken, none open long enough to be evicted: this "
    "one, without a whole request head, was closed (accepting pauses briefly)",
    "timeout": "no whole request head, or the reply not read, within the head timeout",
}


@dataclass(frozen=True)
class Sources:
    """What the metrics read of the daemon's live state (the lifecycle's)."""

    sample: Callable[[], HostSample | None]
    ledger: BudgetLedger
    tallies: Tallies
    supervisor: Supervisor
    level_seconds: Callable[[], Mapping[str, float]]  # time at each pressure level


class MetricsOutputs:
    """The metrics' endpoint and textfile, each on only when configured. prometheus-client
    is imported the first time either is on: a daemon without metrics never loads it."""

    def __init__(self, sources: Sources, faults: Throttle) -> None:
        self.sources = sources
        self.faults = faults  # the daemon's own faults, counted and summarised
        self.config = MetricsConfig()
        self.collector: DaemonCollector | None = None  # once metrics are on
        self.endpoint: MetricsEndpoint | None = None  # while listening
        # one exposition per tick: the host figures change once a tick, and a scrape
        # between two ticks gets the textfile's bytes (counters as of the tick)
        self._rendered: bytes | None = None
        self._families: Rendered = {}  # the last rendering, by family
        self._textdir: safepath.HeldDir | None = None  # the textfile's directory, held
        self.started = time.time()  # this daemon's start, for the metrics
        self.dropped: Counter[str] = Counter()  # endpoint connections closed unanswered
        self._scrapes_before = 0  # answered by endpoints closed since (a reload moved it)
        self.drop_log = Throttle(
            1, summary="metrics_lines_suppressed", about="metrics connections dropped"
        )

    def _collector(self) -> DaemonCollector:
        if self.collector is None:
            from supervisord_batt.daemon.metrics import DaemonCollector  # noqa: PLC0415

            s = self.sources
            self.collector = DaemonCollector(
                s.sample,
                s.ledger,
                s.tallies,
                s.supervisor,
                started=self.started,
                level_seconds=s.level_seconds,
                endpoint=self._endpoint_counts,
            )
        return self.collector

    async def apply(self, config: MetricsConfig) -> None:
        """Take a (new) metrics config: (re)start the endpoint when its address moved.
        A port that cannot be bound is an error line, never a daemon that stops."""
        old, self.config = self.config, config
        if config.listen is not None or config.textfile is not None:
            self._collector()  # imported now, not at a first scrape that may find no descriptor
        if old.textfile is not None and old.textfile != config.textfile:
            with contextlib.suppress(OSError):
                old.textfile.unlink()
            self._release_textdir()
        if config.listen == old.listen and (self.endpoint is not None or config.listen is None):
            return
        await self.close_endpoint()
        if config.listen is None:
            return
        from supervisord_batt.daemon.metricshttp import MetricsEndpoint  # noqa: PLC0415

        endpoint = MetricsEndpoint(
            config.listen, self.render, self._scrape_failed, self._accept_failed, self._dropped
        )
        try:
            await endpoint.start()
        except OSError as exc:
            host, port = config.listen
            log.error("metrics_listen_failed", address=host, port=port, reason=str(exc))
            return
        self.endpoint = endpoint

    def render(self) -> tuple[bytes, str]:
        """The exposition and its content type, rendered at most once a tick (see
        daemon.metrics for why one format serves both outputs)."""
        from supervisord_batt.daemon.metrics import (  # noqa: PLC0415
            TEXT_FORMAT,
            exposition,
            render_families,
        )

        if self._rendered is None:
            self._families = render_families(self._collector().collect(), self._families)
            self._rendered = exposition(self._families)
        return self._rendered, TEXT_FORMAT

    def _scrape_failed(self, exc: Exception) -> None:
        self.faults.emit("error", "metrics_failed", reason=repr(exc), exc_info=exc)

    def _accept_failed(self, exc: OSError) -> None:
        self.faults.emit(
            "warning", "metrics_accept_failed", errno=exc.errno, reason=str(exc), paused_s=1.0
        )

    def _dropped(self, why: str, peer: str, age: float, received: int) -> None:
        self.dropped[why] += 1
        self.drop_log.emit(
            "warning",
            "metrics_connection_dropped",
            why=why,
            peer=peer,
            open_s=round(age, 3),
            head_bytes=received,
            reason=_DROPPED_WHY.get(why, why),
        )

    def _endpoint_counts(self) -> tuple[int, Counter[str]]:
        """(scrapes answered by the endpoint now listening, connections dropped since start)"""
        now = 0 if self.endpoint is None else self.endpoint.scrapes
        return self._scrapes_before + now, self.dropped

    def tick(self) -> None:
        """Rewrite the textfile; a full disk or a bad directory is counted, not fatal."""
        self.drop_log.summarize()
        self._rendered = None
        path = self.config.textfile
        if path is None:
            return
        if self._textdir is None:
            self._textdir = safepath.HeldDir(path.parent)
        try:
            self._textdir.replace_file(path.name, self.render()[0], 0o644)
        except OSError as exc:
            self.faults.emit(
                "error", "metrics_textfile_failed", path=str(path), errno=exc.errno, reason=str(exc)
            )

    def _release_textdir(self) -> None:
        if self._textdir is not None:
            self._textdir.close()
            self._textdir = None

    async def close_endpoint(self) -> None:
        endpoint, self.endpoint = self.endpoint, None
        if endpoint is not None:
            self._scrapes_before += endpoint.scrapes
            await endpoint.close()

    async def close(self) -> None:
        """At stop: no endpoint, and no textfile left to be read as if the daemon ran."""
        await self.close_endpoint()
        self.drop_log.summarize()
        self._release_textdir()
        if self.config.textfile is not None:
            with contextlib.suppress(OSError):
                self.config.textfile.unlink()
