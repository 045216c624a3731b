"""Low-level readers of /proc and cgroupfs: pure parsers over bytes, cgroup mount discovery,
and a file kept open and reread with pread.

Everything here takes its input (bytes, text or a root path), so tests hand it a tree in a
temp dir. `host` builds the HostSample on top of these.
"""

# Why pread on kept fds: a per-tick read of /proc/loadavg or pids.current is then one
# syscall (no open/close, no path lookup), which is what keeps the daemon's 1 s tick at a
# few microseconds per source. A fd whose file went away (cgroup removed) fails with
# ENODEV/ENOENT: it is closed and reopened on a later read, so a recreated cgroup is seen.

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

_O_FLAGS = os.O_RDONLY | os.O_CLOEXEC
N = TypeVar("N")


class PreadFile:
    """A file kept open; `read()` returns its first `size` bytes, or None when unreadable."""

    __slots__ = ("fd", "path", "size")

    def __init__(self, path: str, size: int = 4096) -> None:
        self.path = path
        self.size = size
        self.fd: int | None = None
        self._open()

    def _open(self) -> bool:
        try:
            self.fd = os.open(self.path, _O_FLAGS)
        except OSError:
            self.fd = None
            return False
        return True

    def read(self) -> bytes | None:
        if self.fd is None and not self._open():
            return None
        assert self.fd is not None
        try:
            return os.pread(self.fd, self.size, 0)
        except OSError:
            # ENODEV after rmdir of the cgroup, EISDIR, EACCES...: drop the fd; the next
            # read tries to open the path again.
            self.close()
            return None

    def close(self) -> None:
        if self.fd is not None:
            fd, self.fd = self.fd, None
            os.close(fd)


def read_text(path: str) -> str | None:
    """Whole file as text, or None when missing or unreadable (slow-path reads)."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except (OSError, ValueError):
        return None


# ---------------------------------------------------------------- fast-path parsers


def parse_int(data: bytes | None) -> int | None:
    """An integer file such as threads-max or pids.current; None if absent or garbled."""
    if data is None:
        return None
    try:
        return int(data)
    except ValueError:
        return None


def parse_pids_max(data: bytes | None) -> int | None:
    """pids.max: a number, or "max" (unlimited) -> None. Unreadable -> None as well."""
    if data is None or data.strip() == b"max":
        return None
    return parse_int(data)


def parse_pids_events_max(data: bytes | None) -> int | None:
    """The "max N" line of pids.events: how many forks/clones the limit refused."""
    if data is None:
        return None
    for line in data.splitlines():
        key, _, value = line.partition(b" ")
        if key == b"max":
            return parse_int(value)
    return None


def parse_loadavg_threads(data: bytes | None) -> int | None:
    """Field 4 of /proc/loadavg is "running/total"; total is every task on the host."""
    if data is None:
        return None
    try:
        return int(data.split()[3].partition(b"/")[2])
    except (IndexError, ValueError):
        return None


def _kb_field(data: bytes, key: bytes) -> int | None:
    start = data.find(key)
    if start < 0:
        return None
    end = data.find(b"\n", start)
    fields = data[start + len(key) : end if end >= 0 else None].split()
    try:
        return int(fields[0]) * 1024  # meminfo is in kB (KiB)
    except (IndexError, ValueError):
        return None


def parse_meminfo(data: bytes | None) -> tuple[int | None, int | None]:
    """(MemTotal, MemAvailable) in bytes from /proc/meminfo."""
    if data is None:
        return None, None
    return _kb_field(data, b"MemTotal:"), _kb_field(data, b"MemAvailable:")


def parse_psi_some_avg10(data: bytes | None) -> float | None:
    """`some avg10=` of a /proc/pressure file (percent of time stalled over 10 s)."""
    if data is None:
        return None
    start = data.find(b"some avg10=")
    if start < 0:
        return None
    start += len(b"some avg10=")
    end = start
    while end < len(data) and data[end] not in b" \n":
        end += 1
    try:
        return float(data[start:end])
    except ValueError:
        return None


# ---------------------------------------------------------------- slow-path parsers


def parse_status_ppid(data: bytes) -> tuple[int, int, int] | None:
    """(real uid, threads, ppid) from /proc/<pid>/status; None if a field is missing."""
    i = data.find(b"\nUid:")
    j = data.find(b"\nThreads:")
    k = data.find(b"\nPPid:")
    if i < 0 or j < 0 or k < 0:
        return None
    try:
        uid = int(data[i + 5 : data.index(b"\n", i + 5)].split()[0])
        threads = int(data[j + 9 : data.find(b"\n", j + 9)].split()[0])
        ppid = int(data[k + 6 : data.index(b"\n", k + 6)])
    except (IndexError, ValueError):
        return None
    return uid, threads, ppid


def parse_stat(data: bytes) -> tuple[int, int] | None:
    """(ppid, num_threads) from /proc/<pid>/stat; the comm field may hold spaces and ')'."""
    fields = data[data.rfind(b")") + 2 :].split()
    try:
        return int(fields[1]), int(fields[17])  # fields 4 and 20 of proc(5)
    except (IndexError, ValueError):
        return None


def parse_statm_resident(data: bytes) -> int | None:
    """Resident pages from /proc/<pid>/statm (its second field); None if garbled."""
    fields = data.split()
    try:
        return int(fields[1])
    except (IndexError, ValueError):
        return None


@dataclass(frozen=True)
class ProcStat:
    """The fields of /proc/<pid>/stat that process-tree code needs."""

    pid: int
    state: str
    ppid: int
    pgrp: int
    session: int
    threads: int
    starttime: int = 0  # clock ticks after boot: with the pid, a process's identity


def read_stat(pid: int) -> ProcStat | None:
    """Fields of /proc/<pid>/stat; None when the process is gone."""
    try:  # os.open/os.read: a third cheaper than open() on a /proc pass
        fd = os.open(f"/proc/{pid}/stat", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        data = os.read(fd, 4096)
    except OSError:
        return None
    finally:
        os.close(fd)
    fields = data[data.rfind(b")") + 2 :].split()  # comm may hold spaces and ')'
    try:
        return ProcStat(
            pid,
            fields[0].decode(),
            int(fields[1]),
            int(fields[2]),
            int(fields[3]),
            int(fields[17]),
            int(fields[19]),
        )
    except (IndexError, ValueError):
        return None


def parse_status_field(text: str, key: str) -> str | None:
    """One "Key:\\tvalue" line of a status file (e.g. Cpus_allowed_list)."""
    for line in text.splitlines():
        k, sep, value = line.partition(":")
        if sep and k == key:
            return value.strip()
    return None


class LimitMissing(ValueError):
    pass


def parse_limits_nproc(text: str) -> int | None:
    """Soft "Max processes" of /proc/<pid>/limits; "unlimited" -> None."""
    for line in text.splitlines():
        if line.startswith("Max processes"):
            soft = line[len("Max processes") :].split()[0]
            return None if soft == "unlimited" else int(soft)
    raise LimitMissing("no 'Max processes' line")


def parse_cpu_list(text: str) -> int:
    """Count the CPUs of a list such as "0-3,8,10-11"."""
    count = 0
    for part in text.strip().split(","):
        if not part:
            continue
        lo, sep, hi = part.partition("-")
        count += int(hi) - int(lo) + 1 if sep else 1
    return count


def parse_cpu_quota_v1(quota: str | None, period: str | None) -> float | None:
    """cpu.cfs_quota_us / cpu.cfs_period_us in CPUs; None when unlimited (-1) or absent."""
    try:
        q, p = int(quota or ""), int(period or "")
    except ValueError:
        return None
    return q / p if q > 0 and p > 0 else None


def parse_cpu_max_v2(text: str | None) -> float | None:
    """cgroup v2 cpu.max "quota period" in CPUs; "max ..." or absent -> None."""
    if not text:
        return None
    fields = text.split()
    if len(fields) != 2 or fields[0] == "max":
        return None
    try:
        q, p = int(fields[0]), int(fields[1])
    except ValueError:
        return None
    return q / p if q > 0 and p > 0 else None


# ---------------------------------------------------------------- cgroup discovery


@dataclass(frozen=True)
class Mount:
    root: str  # the path inside the filesystem that is mounted (field 4)
    mount_point: str  # where it is mounted (field 5)
    fstype: str
    super_options: tuple[str, ...]


def _unescape(field: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as \ooo
    if "\\" not in field:
        return field
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and field[i + 1 : i + 4].isdigit():
            out.append(chr(int(field[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def parse_mountinfo(text: str) -> list[Mount]:
    """The cgroup and cgroup2 mounts of a /proc/<pid>/mountinfo (other mounts skipped)."""
    mounts = []
    for line in text.splitlines():
        head, sep, tail = line.partition(" - ")
        if not sep:
            continue
        fields, rest = head.split(), tail.split()
        if len(fields) < 5 or len(rest) < 3 or rest[0] not in ("cgroup", "cgroup2"):
            continue
        mounts.append(
            Mount(
                root=_unescape(fields[3]),
                mount_point=_unescape(fields[4]),
                fstype=rest[0],
                super_options=tuple(rest[2].split(",")),
            )
        )
    return mounts


@dataclass(frozen=True)
class ProcCgroup:
    hierarchy_id: int
    controllers: tuple[str, ...]  # () for the v2 line "0::/path"
    path: str


def parse_proc_cgroup(text: str) -> list[ProcCgroup]:
    """Lines of /proc/<pid>/cgroup: "8:pids:/batt", "1:cpu,cpuacct:/", "0::/user.slice"."""
    out = []
    for line in text.splitlines():
        hid, sep1, rest = line.partition(":")
        ctrls, sep2, path = rest.partition(":")
        if not (sep1 and sep2) or not hid.isdigit():
            continue
        out.append(ProcCgroup(int(hid), tuple(c for c in ctrls.split(",") if c), path))
    return out


def find_v1_mount(mounts: list[Mount], controller: str) -> Mount | None:
    """The v1 mount of `controller`, preferring one that mounts the hierarchy's root."""
    found = [m for m in mounts if m.fstype == "cgroup" and controller in m.super_options]
    found.sort(key=lambda m: m.root != "/")
    return found[0] if found else None


def find_v2_mount(mounts: list[Mount]) -> Mount | None:
    found = [m for m in mounts if m.fstype == "cgroup2"]
    found.sort(key=lambda m: m.root != "/")
    return found[0] if found else None


def pids_mounts(mounts: list[Mount]) -> tuple[Mount | None, Mount | None]:
    """Where the pids controller can live: the v1 pids mount and the v2 mount (or None)."""
    return find_v1_mount(mounts, "pids"), find_v2_mount(mounts)


def pids_cgroup_dirs(
    entries: list[ProcCgroup], v1: Mount | None, v2: Mount | None
) -> dict[int, str]:
    """The directories of the pids cgroups a process is in, by cgroup version (1, 2).

    The one lookup every caller uses (the monitor for the daemon's own cgroup, the
    request path for a peer's, the supervisor for where to make worker cgroups). The v2
    entry is the "0::/path" line; whether that cgroup has the pids controller enabled is
    the caller's question (`cgroup.controllers`). Insertion order follows `entries`.
    """
    out: dict[int, str] = {}
    for e in entries:
        if v1 is not None and "pids" in e.controllers:
            out[1] = cgroup_fs_path(v1.mount_point, v1.root, e.path)
        elif v2 is not None and e.hierarchy_id == 0 and not e.controllers:
            out[2] = cgroup_fs_path(v2.mount_point, v2.root, e.path)
    return out


def cgroup_fs_path(mount_dir: str, mount_root: str, cgroup_path: str) -> str:
    """Directory of `cgroup_path` under a mount whose filesystem root is `mount_root`."""
    rel = cgroup_path
    if mount_root != "/" and (rel == mount_root or rel.startswith(mount_root + "/")):
        rel = rel[len(mount_root) :]
    rel = rel.strip("/")
    return os.path.join(mount_dir, rel) if rel else mount_dir


def cgroup_chain(mount_dir: str, mount_root: str, fs_path: str) -> list[tuple[str, str]]:
    """(cgroup path, fs path) of `fs_path` and each ancestor up to the mount, self first."""
    chain = []
    rel = os.path.relpath(fs_path, mount_dir)
    parts = [] if rel == "." else rel.split(os.sep)
    while True:
        tail = "/".join(parts)
        cg = "/" + "/".join(p for p in (mount_root.strip("/"), tail) if p)
        chain.append((cg, os.path.join(mount_dir, *parts) if parts else mount_dir))
        if not parts:
            return chain
        parts.pop()


@dataclass(frozen=True)
class Watched(Generic[N]):
    """A watched cgroup and the nodes read for it, itself first, then its ancestors up to
    the mount (None for the root cgroup, which has no limit)."""

    path: str
    fs_path: str
    version: int
    chain: tuple[N | None, ...]


def watch_chain(
    mount_dir: str, mount_root: str, fs_path: str, version: int, node: Callable[[str, str], N]
) -> Watched[N]:
    """`fs_path` watched: `node(cgroup path, fs path)` for it and each ancestor but the root."""
    chain = cgroup_chain(mount_dir, mount_root, fs_path)
    nodes = tuple(None if cg == "/" else node(cg, d) for cg, d in chain)
    return Watched(chain[0][0], chain[0][1], version, nodes)
