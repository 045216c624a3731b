"""The `stats` line: every `daemon.stats_interval`, one event with the figures an
operator's report is computed from (`supervisord-batt report`).

Grant and release lines are rate-limited, and a kill or an exit says nothing about the
time between them; so the figures a report needs over a day are not counted from those
lines but carried here, as the daemon's counters since it started (a report takes the
difference between two lines of one daemon) and as what happened since the last line:
the share of time at each pressure level, the tightest limit's peak use.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from supervisord_batt.budget.records import LedgerStats
from supervisord_batt.daemon.tallies import Tallies
from supervisord_batt.daemon.workersizes import Key, Learned
from supervisord_batt.host.sample import HostSample
from supervisord_batt.protocol import LEVELS
from supervisord_batt.supervise.supervisor import Tally

SIZES_SHOWN = 20  # jobs' learned worker sizes a stats line carries


@dataclass
class StatsLine:
    """Accumulates between lines (`observe` every tick); `fields` makes one line."""

    level_seconds: dict[str, float] = field(default_factory=dict)  # since the daemon started
    peak_percent: float = 0.0  # the tightest limit's highest use since the last line
    _last_at: float | None = None

    def observe(self, now: float, level: str, sample: HostSample) -> None:
        """One tick: the time since the last one counts at the level in force."""
        if self._last_at is not None:
            gone = max(0.0, now - self._last_at)
            self.level_seconds[level] = self.level_seconds.get(level, 0.0) + gone
        self._last_at = now
        self.peak_percent = max(self.peak_percent, _percent(sample))

    def fields(
        self,
        sample: HostSample,
        stats: LedgerStats,
        reason: str,
        tallies: Tallies,
        tally: Tally,
        *,
        sizes: Mapping[Key, Learned] | None = None,
    ) -> dict[str, Any]:
        tightest = sample.tightest()
        line = {
            "tasks": sample.threads_total,
            "tightest": tightest.name,
            "tightest_in_use": tightest.in_use,
            "tightest_limit": tightest.limit,
            "tightest_percent": round(_percent(sample), 2),
            "tightest_peak_percent": round(max(self.peak_percent, _percent(sample)), 2),
            # not "level": that key is the line's log level (info), which `top`, `logs
            # --level` and the journal's priority read; the started and pressure_change
            # lines name the pressure level this way too
            "pressure": stats.level,
            "pressure_reason": reason,
            "level_seconds": {lv: round(self.level_seconds.get(lv, 0.0), 1) for lv in LEVELS},
            "capacity": stats.capacity,
            "leased": stats.leased,
            "leases": len(stats.leases),
            "grants": dict(tallies.grants),
            "denied": tallies.denied,
            "denied_by": dict(tallies.denied_by),
            "fallbacks": {f"{a}>{b}": n for (a, b), n in sorted(tallies.fallbacks.items())},
            "refused_spawns": sum(cg.pids_events_max or 0 for cg in sample.cgroups),
            "oom_kills": sum(cg.oom_kills or 0 for cg in sample.memory_cgroups),
            "restarts": dict(tally.restarts),
            "kills": _nested(tally.kills),
            "runs": _nested(tally.runs),
            "spawn_failures": _nested(tally.spawn_failures),
            "requests": sum(tallies.requests.values()),
            "worker_sizes": _sizes(sizes or {}),
        }
        self.peak_percent = 0.0
        return line


def _sizes(sizes: Mapping[Key, Learned]) -> list[dict[str, Any]]:
    """The jobs' learned memory per worker, those learned from the most runs first, at
    most SIZES_SHOWN of them (the line stays short whatever the daemon learned)."""
    ranked = sorted(sizes.items(), key=lambda kv: (-kv[1].runs, kv[0]))[:SIZES_SHOWN]
    rows: list[dict[str, Any]] = []
    for (job, uid), f in ranked:
        row = {"job": job, "uid": uid, "worker_bytes": f.worker_bytes, "runs": f.runs}
        if f.worker_tasks is not None:
            row |= {"worker_tasks": f.worker_tasks, "pool_tasks": f.pool_tasks}
        if f.from_kill:
            row["from_kill"] = True
        rows.append(row)
    return rows


def _percent(sample: HostSample) -> float:
    tightest = sample.tightest()
    return 100.0 * tightest.in_use / tightest.limit if tightest.limit > 0 else 100.0


def _nested(counts: Counter[tuple[str, str]]) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for (program, key), n in sorted(counts.items()):
        out.setdefault(program, {})[key] = n
    return out
