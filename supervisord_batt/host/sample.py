"""What one look at the host yields: immutable records of every limit and its usage.

Records only, no I/O: the monitor fills them, the pure budget reads them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

LimitKind = Literal["threads-max", "pid_max", "cgroup", "nproc", "memory"]


@dataclass(frozen=True)
class Limit:
    """One ceiling that can refuse a new task (thread or process)."""

    name: str  # "threads-max", "pid_max", "cgroup:/batt", "nproc:alice"; "memory:/batt"
    kind: LimitKind
    # cgroup fs path for "cgroup" and "memory", uid for "nproc", None for host-wide
    scope: str | int | None
    limit: int  # tasks; bytes for "memory" (which is never among HostSample.limits)
    in_use: int

    @property
    def headroom(self) -> int:
        return self.limit - self.in_use


@dataclass(frozen=True)
class CgroupUsage:
    path: str  # cgroup path as the kernel names it, e.g. "/batt/job1"
    fs_path: str  # its directory, e.g. "/sys/fs/cgroup/pids/batt/job1"
    version: int  # 1 or 2
    pids_current: int | None  # None when the file is missing or unreadable
    pids_max: int | None  # the cgroup's own pids.max; None = "max" (unlimited)
    pids_events_max: int | None  # refusals counted in pids.events ("max N")
    effective_max: int | None  # the max of the tightest ancestor (itself included)
    headroom: int | None  # min over itself and ancestors of (max - current); None = unlimited
    limited_by: str | None  # cgroup path of that tightest ancestor


@dataclass(frozen=True)
class MemoryCgroupUsage:
    """A watched cgroup's memory controller: its own files and its tightest ancestor."""

    path: str  # cgroup path as the kernel names it, e.g. "/batt/job1"
    fs_path: str  # its directory, e.g. "/sys/fs/cgroup/memory/batt/job1"
    version: int  # 1 or 2
    current: int | None  # bytes charged (memory.usage_in_bytes, memory.current)
    # of those, page cache the kernel reclaims before any OOM kill (read only where the
    # cgroup has a limit of its own: None elsewhere)
    inactive_file: int | None
    max: int | None  # its own limit_in_bytes (v1) or memory.max (v2); None = unlimited
    high: int | None  # its own memory.high (v2, where the kernel throttles); None = none
    effective_max: int | None  # the limit of the tightest ancestor (itself included)
    headroom: int | None  # min over itself and ancestors of limit - (current - inactive_file)
    limited_by: str | None  # cgroup path of that tightest ancestor
    oom_kills: int | None  # processes the OOM killer killed here (oom_kill)


@dataclass(frozen=True)
class UserUsage:
    uid: int
    name: str | None
    tasks: int  # tasks (threads) whose real uid is this uid
    nproc_limit: int | None  # smallest soft RLIMIT_NPROC among its processes; None = unlimited
    exempt: bool  # root (uid 0) is not subject to RLIMIT_NPROC
    # the process whose soft limit is nproc_limit; None when the user has no process and
    # nproc_limit is the daemon's own soft limit (what the workers it spawns inherit)
    limit_pid: int | None
    scanned_at: float  # time.monotonic() of the /proc scan that produced this row


@dataclass(frozen=True)
class Psi:
    cpu_some_avg10: float | None
    memory_some_avg10: float | None


@dataclass(frozen=True)
class HostSample:
    taken_at: float  # time.monotonic()
    wall_time: float  # time.time()
    threads_total: int  # /proc/loadavg field 4, the denominator
    threads_max: int  # kernel.threads-max
    pid_max: int  # kernel.pid_max
    cgroups: tuple[CgroupUsage, ...]
    users: tuple[UserUsage, ...]
    mem_available_bytes: int
    mem_total_bytes: int
    cpus: float  # CPUs usable by the workers (affinity and cgroup quota)
    psi: Psi | None  # None where /proc/pressure is absent
    limits: tuple[Limit, ...]  # every applicable ceiling, derived from the fields above
    memory_cgroups: tuple[MemoryCgroupUsage, ...] = ()
    # each memory cgroup's tightest limit, in bytes (kind "memory"), from memory_cgroups
    memory_limits: tuple[Limit, ...] = ()

    def tightest(self) -> Limit:
        """The limit with the least headroom (it refuses the next thread first)."""
        return min(self.limits, key=lambda lim: lim.headroom)

    def memory_headroom(self) -> tuple[int, str]:
        """Bytes a new worker may take before memory runs out, and where: "MemAvailable"
        (the host) or the name of the memory cgroup limit that is nearer (its OOM killer
        acts there first)."""
        best, _, name = self.memory_room()
        return max(0, best), name

    def memory_room(self) -> tuple[int, int, str]:
        """`memory_headroom` unclamped (a cgroup over its limit is below 0), with the
        bytes of the limit that binds (MemTotal for MemAvailable): the budget keeps a
        percent of it in reserve."""
        best, total, name = self.mem_available_bytes, self.mem_total_bytes, "MemAvailable"
        for lim in self.memory_limits:
            if lim.headroom < best:
                best, total, name = lim.headroom, lim.limit, lim.name
        return best, total, name


@dataclass(frozen=True)
class TreeUsage:
    """A process and all its descendants, and the tasks (threads) they hold together."""

    root: int
    pids: tuple[int, ...]  # root first, then descendants
    tasks: int
    threads: tuple[int, ...] = ()  # the tasks of each of `pids`, in their order
