"""The memory controller of the watched cgroups (v1 or v2): each one's usage, its own
limit and its tightest ancestor's, and the OOM killer's count, read from files kept open.

`MemoryWatch` is the memory counterpart of the monitor's pids nodes: the same cgroups
(the daemon's own and `budget.cgroups`), found in whichever hierarchy has the memory
controller, read every tick. The parsers take bytes, so tests hand them any text.
"""

# Design choices:
# - In use = usage - inactive file cache. The kernel counts page cache in usage_in_bytes
#   and memory.current, and reclaims the inactive part before it OOM-kills anyone; a
#   cgroup that once wrote a lot of files sits at its limit without being short of
#   memory. Subtracting only inactive_file (not all file cache) is the working set the
#   kubelet and cAdvisor evict on: active cache stays counted, the safe side.
# - memory.stat is the one costly file here (13 to 27 us a read, against 1 to 3 us for the
#   others, measured on a v1 host): it is read only for a cgroup that has a limit, the
#   only place its figure changes a headroom.
# - v2 memory.high counts as a limit: above it the kernel throttles and reclaims the
#   cgroup hard, so a worker budgeted past it runs at a crawl. v1's soft limit does not
#   (it only orders reclaim under global pressure).
# - v1 reports "no limit" as PAGE_COUNTER_MAX pages (9223372036854771712 with 4 KiB
#   pages); any value from 2**62 up is read as unlimited, whatever the page size.
# - oom_kill: v2's memory.events counts the cgroup and its descendants; v1's
#   memory.oom_control counts only kills of processes in the cgroup itself. Charges that
#   hit the limit are not reported: v1's memory.failcnt and memsw.failcnt stayed 0 on a
#   6.18 kernel while its oom_kill counted the kill (tests/integration/host/
#   test_memory_live.py).
# - The root cgroup is never read: no limit can be set on it (v1 refuses one; v2 has no
#   memory.max there).

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from supervisord_batt.host import procfs
from supervisord_batt.host.procfs import Mount, PreadFile
from supervisord_batt.host.sample import Limit, MemoryCgroupUsage

UNLIMITED_FROM = 1 << 62
# (limit, high, usage, stat, events) file names by cgroup version
_FILES = {
    1: (
        "memory.limit_in_bytes",
        None,
        "memory.usage_in_bytes",
        "memory.stat",
        "memory.oom_control",
    ),
    2: ("memory.max", "memory.high", "memory.current", "memory.stat", "memory.events"),
}
_INACTIVE_FILE = {1: b"total_inactive_file", 2: b"inactive_file"}  # v1: with descendants


def parse_memory_limit(data: bytes | None) -> int | None:
    """memory.max, memory.high or memory.limit_in_bytes in bytes; "max", v1's huge
    "unlimited" value, absent or garbled -> None."""
    if data is None or data.strip() == b"max":
        return None
    value = procfs.parse_int(data)
    return None if value is None or value >= UNLIMITED_FROM else value


def parse_keyed(data: bytes | None, key: bytes) -> int | None:
    """The number on the "key N" line of memory.stat, memory.events or memory.oom_control."""
    if data is None:
        return None
    for line in data.splitlines():
        name, _, value = line.partition(b" ")
        if name == key:
            return procfs.parse_int(value)
    return None


@dataclass(frozen=True, slots=True)
class MemReading:
    """One cgroup's memory files at one tick (None: missing or unreadable)."""

    limit: int | None  # the tighter of its max and high
    max: int | None
    high: int | None
    current: int | None
    inactive_file: int | None
    oom_kills: int | None


_NOTHING = MemReading(None, None, None, None, None, None)


class MemNode:
    """One cgroup directory whose memory files are read every tick."""

    __slots__ = ("current", "events", "fs_path", "high", "max", "path", "stat", "version")

    def __init__(self, path: str, fs_path: str, version: int) -> None:
        self.path, self.fs_path, self.version = path, fs_path, version
        limit, high, usage, stat, events = _FILES[version]
        self.max = PreadFile(os.path.join(fs_path, limit), 64)
        self.high = PreadFile(os.path.join(fs_path, high), 64) if high else None
        self.current = PreadFile(os.path.join(fs_path, usage), 64)
        self.stat = PreadFile(os.path.join(fs_path, stat), 8192)
        self.events = PreadFile(os.path.join(fs_path, events), 512)

    def read(self) -> MemReading:
        mx = parse_memory_limit(self.max.read())
        high = parse_memory_limit(self.high.read()) if self.high else None
        limit = mx if high is None else high if mx is None else min(mx, high)
        inactive = None
        if limit is not None:  # only a limited cgroup's headroom needs the costly file
            inactive = parse_keyed(self.stat.read(), _INACTIVE_FILE[self.version])
        return MemReading(
            limit,
            mx,
            high,
            procfs.parse_int(self.current.read()),
            inactive,
            parse_keyed(self.events.read(), b"oom_kill"),
        )

    def close(self) -> None:
        for f in (self.max, self.high, self.current, self.stat, self.events):
            if f is not None:
                f.close()


@dataclass(frozen=True)
class MemoryHierarchy:
    """Where the memory controller lives: the v1 memory mount or the v2 mount."""

    version: int
    mount_dir: str  # the mount point, rebased under the monitor's sys_root
    mount_root: str  # the cgroup path the mount shows at its top (mountinfo field 4)


def memory_hierarchy(mounts: Sequence[Mount]) -> MemoryHierarchy | None:
    """The v1 memory mount; else the v2 mount where its root offers the memory controller
    (a hybrid layout's v2 mount has no controllers). `mounts` are already rebased."""
    v1 = procfs.find_v1_mount(list(mounts), "memory")
    if v1 is not None:
        return MemoryHierarchy(1, v1.mount_point, v1.root)
    v2 = procfs.find_v2_mount(list(mounts))
    if v2 is not None and has_memory(v2.mount_point):
        return MemoryHierarchy(2, v2.mount_point, v2.root)
    return None


def has_memory(cgroup_dir: str) -> bool:
    """Whether a v2 cgroup offers the memory controller (its cgroup.controllers)."""
    text = procfs.read_text(os.path.join(cgroup_dir, "cgroup.controllers"))
    return text is not None and "memory" in text.split()


def own_memory_dir(own_cgroup: str, hier: MemoryHierarchy) -> str | None:
    """The memory cgroup directory that a /proc/<pid>/cgroup text names, if any."""
    for e in procfs.parse_proc_cgroup(own_cgroup):
        if hier.version == 1 and "memory" in e.controllers:
            return procfs.cgroup_fs_path(hier.mount_dir, hier.mount_root, e.path)
        if hier.version == 2 and e.hierarchy_id == 0 and not e.controllers:
            d = procfs.cgroup_fs_path(hier.mount_dir, hier.mount_root, e.path)
            return d if has_memory(d) else None
    return None


def spec_memory_dir(
    spec: str, rebase: Callable[[str], str], mounts: Sequence[Mount], hier: MemoryHierarchy
) -> str:
    """A configured cgroup in the memory hierarchy: a directory under any cgroup mount
    (the pids one, say) names the same cgroup path there; anything else is a cgroup path."""
    for candidate in (spec, rebase(spec)):
        for m in mounts:
            top = m.mount_point.rstrip("/")
            if candidate == top or candidate.startswith(top + "/"):
                rel = candidate[len(top) :].strip("/")
                cgroup = "/" + "/".join(p for p in (m.root.strip("/"), rel) if p)
                return procfs.cgroup_fs_path(hier.mount_dir, hier.mount_root, cgroup)
    return procfs.cgroup_fs_path(hier.mount_dir, hier.mount_root, spec)


class MemoryWatch:
    """The memory files of the watched cgroups and their ancestors, kept open."""

    def __init__(self) -> None:
        self._nodes: dict[str, MemNode] = {}
        self._version = 1  # of the hierarchy watched
        self._watched: list[procfs.Watched[MemNode]] = []

    def watch(self, hier: MemoryHierarchy, fs_paths: Sequence[str]) -> None:
        """Watch these directories of `hier` (and their ancestors), replacing any others."""
        self.close()
        self._version = hier.version
        for raw in fs_paths:
            fs = os.path.normpath(raw)
            if any(w.fs_path == fs for w in self._watched):
                continue
            self._watched.append(
                procfs.watch_chain(hier.mount_dir, hier.mount_root, fs, hier.version, self._node)
            )

    def _node(self, path: str, fs_path: str) -> MemNode:
        node = self._nodes.get(fs_path)
        if node is None:
            node = self._nodes[fs_path] = MemNode(path, fs_path, self._version)
        return node

    @property
    def paths(self) -> list[str]:
        return [w.path for w in self._watched]

    def sample(self) -> tuple[tuple[MemoryCgroupUsage, ...], tuple[Limit, ...]]:
        """Each watched cgroup's row, and the limit (in bytes) of those that have one."""
        if not self._watched:
            return (), ()
        readings = {fs: node.read() for fs, node in self._nodes.items()}
        rows, limits = [], []
        for w in self._watched:
            row, limit = _usage(w, readings)
            rows.append(row)
            if limit is not None:
                limits.append(limit)
        return tuple(rows), tuple(limits)

    def close(self) -> None:
        for node in self._nodes.values():
            node.close()
        self._nodes.clear()
        self._watched.clear()


def _usage(
    w: procfs.Watched[MemNode], readings: dict[str, MemReading]
) -> tuple[MemoryCgroupUsage, Limit | None]:
    """The watched cgroup's row and its tightest limit: the ancestor (itself included)
    with the least limit - in use, in use being usage less inactive file cache."""
    own = readings[w.chain[0].fs_path] if w.chain[0] is not None else _NOTHING
    best: tuple[int, MemNode, int, int] | None = None  # (headroom, node, limit, in use)
    for node in w.chain:
        if node is None:
            continue
        r = readings[node.fs_path]
        if r.limit is None or r.current is None:
            continue
        in_use = max(0, r.current - (r.inactive_file or 0))
        if best is None or r.limit - in_use < best[0]:
            best = (r.limit - in_use, node, r.limit, in_use)
    row = MemoryCgroupUsage(
        path=w.path,
        fs_path=w.fs_path,
        version=w.version,
        current=own.current,
        inactive_file=own.inactive_file,
        max=own.max,
        high=own.high,
        effective_max=best[2] if best else None,
        headroom=best[0] if best else None,
        limited_by=best[1].path if best else None,
        oom_kills=own.oom_kills,
    )
    if best is None:
        return row, None
    return row, Limit(f"memory:{w.path}", "memory", best[1].fs_path, best[2], best[3])
