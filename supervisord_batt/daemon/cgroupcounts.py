"""The kernel's counts of what a watched cgroup's limit did: processes its OOM killer
killed (memory) and task creations it refused (pids.events max), logged when they move.

The counts themselves are in every sample (status, probe, the metrics, the stats line);
what the log needs is the moment one moves, with the cgroup and how much. A count that
moves tick after tick (a job OOM-killed and restarted in a loop, a fork storm against
pids.max) must not become a line a tick: the first increase is written at once, later
ones at most once per `gap` seconds for that cgroup and count, each line carrying the
increase since the last line.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from supervisord_batt.host.sample import HostSample
from supervisord_batt.logs import get_logger

log = get_logger(component="daemon")

GAP = 60.0  # seconds between two lines about one cgroup's count


@dataclass
class _Seen:
    logged: int  # the count the last line said (or the first one seen)
    at: float  # when that line was written (-inf: never)


@dataclass
class CgroupCounts:
    """Observes each sample; writes `cgroup_oom_kill` and `cgroup_tasks_refused`."""

    gap: float = GAP
    _seen: dict[tuple[str, str], _Seen] = field(default_factory=dict)

    def observe(self, now: float, sample: HostSample) -> None:
        for mem in sample.memory_cgroups:
            self._count(now, "cgroup_oom_kill", mem.path, mem.oom_kills, mem.headroom)
        for cg in sample.cgroups:
            self._count(now, "cgroup_tasks_refused", cg.path, cg.pids_events_max, cg.headroom)

    def _count(
        self, now: float, event: str, path: str, count: int | None, headroom: int | None
    ) -> None:
        if count is None:  # unreadable now (removed): the last count stands
            return
        seen = self._seen.get((event, path))
        if seen is None or count < seen.logged:  # first look, or a cgroup made again
            self._seen[(event, path)] = _Seen(count, float("-inf"))
            return
        if count == seen.logged or now - seen.at < self.gap:
            return
        log.warning(
            event,
            cgroup=path,
            count=count,
            increase=count - seen.logged,
            headroom=headroom,
            reason=_REASONS[event],
        )
        seen.logged, seen.at = count, now


_REASONS = {
    "cgroup_oom_kill": "the cgroup's memory limit was reached: the kernel killed a process",
    "cgroup_tasks_refused": "the cgroup's pids.max was reached: a thread or process start failed",
}
