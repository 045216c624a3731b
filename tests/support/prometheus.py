"""The fleet the Prometheus tests share: each host (a daemon, its pids cgroup, its log, a
job holding a lease) and the Prometheus scraping them. The package-scoped fixture that
starts them is tests/integration/prometheus/conftest.py."""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.helpers import PidsCgroup, WireClient
from tests.integration.prometheus.tools import Prometheus
from tests.support.daemons import DaemonHandle


@dataclass
class Host:
    name: str
    handle: DaemonHandle
    cgroup: PidsCgroup
    log: Path
    job: WireClient | None = None  # a job's connection, holding its lease
    grant: dict[str, Any] = field(default_factory=dict)

    def events(self, name: str | None = None) -> list[dict[str, Any]]:
        """The daemon's events, from its log file."""
        out = []
        for line in self.log.read_text(errors="replace").splitlines():
            with contextlib.suppress(json.JSONDecodeError):
                event = json.loads(line)
                if name is None or event.get("event") == name:
                    out.append(event)
        return out

    def last_stats(self) -> dict[str, Any]:
        """The daemon's own counters: its latest `stats` line."""
        return self.events("stats")[-1]


@dataclass
class Fleet:
    prometheus: Prometheus
    hosts: dict[str, Host]
