"""Cheap per-process facts the daemon needs on its request path (one small read each)."""

from __future__ import annotations

import functools

from supervisord_batt.host.procfs import (
    Mount,
    cgroup_fs_path,
    find_v1_mount,
    find_v2_mount,
    parse_mountinfo,
    parse_proc_cgroup,
    read_stat,
)


@functools.lru_cache(maxsize=1)
def _pids_mounts() -> tuple[Mount | None, Mount | None]:
    with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as f:
        mounts = parse_mountinfo(f.read())
    return find_v1_mount(mounts, "pids"), find_v2_mount(mounts)


def cgroup_fs_paths(pid: int) -> list[str]:
    """Directories of the pids cgroups (v1 and/or v2) that `pid` is in; [] if it is gone."""
    try:
        with open(f"/proc/{pid}/cgroup", encoding="utf-8", errors="replace") as f:
            entries = parse_proc_cgroup(f.read())
    except OSError:
        return []
    v1, v2 = _pids_mounts()
    paths = []
    for entry in entries:
        if v1 is not None and "pids" in entry.controllers:
            paths.append(cgroup_fs_path(v1.mount_point, v1.root, entry.path))
        elif v2 is not None and entry.hierarchy_id == 0 and not entry.controllers:
            paths.append(cgroup_fs_path(v2.mount_point, v2.root, entry.path))
    return paths


def thread_count(pid: int) -> int:
    """Threads of one process; 1 if it cannot be read."""
    st = read_stat(pid)
    return st.threads if st is not None else 1
