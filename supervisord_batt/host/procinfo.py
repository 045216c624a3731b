"""Cheap per-process facts the daemon needs on its request path (one small read each)."""

from __future__ import annotations

import functools

from supervisord_batt.host.procfs import (
    Mount,
    parse_mountinfo,
    parse_proc_cgroup,
    pids_cgroup_dirs,
    pids_mounts,
    read_stat,
)


@functools.lru_cache(maxsize=1)
def _pids_mounts() -> tuple[Mount | None, Mount | None]:
    with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as f:
        return pids_mounts(parse_mountinfo(f.read()))


def cgroup_fs_paths(pid: int) -> list[str]:
    """Directories of the pids cgroups (v1 and/or v2) that `pid` is in; [] if it is gone."""
    try:
        with open(f"/proc/{pid}/cgroup", encoding="utf-8", errors="replace") as f:
            entries = parse_proc_cgroup(f.read())
    except OSError:
        return []
    return list(pids_cgroup_dirs(entries, *_pids_mounts()).values())


def thread_count(pid: int) -> int:
    """Threads of one process; 1 if it cannot be read."""
    st = read_stat(pid)
    return st.threads if st is not None else 1
