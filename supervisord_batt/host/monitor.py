"""The host monitor: /proc, cgroup, rlimit and PSI readers into one immutable HostSample.

The records it fills are in `host.sample`; the parsers it calls in `host.procfs`.
`HostMonitor.sample()` is the fast path the daemon runs every tick: a handful of pread()s
on file descriptors it keeps open (loadavg, threads-max, pid_max, each watched cgroup's
pids and memory files and its ancestors' (`host.memcg`), meminfo, PSI).
`HostMonitor.scan()` is the slow O(processes) pass over /proc for the per-user
RLIMIT_NPROC counts, run on its own longer interval; `sample()` reports the users of the
last scan. `host.probe` renders a sample for `status` and `probe`.

# Why one module
`HostMonitor` owns the open file descriptors every reader uses, and the readers share
its caches (the cgroup ancestors, the last scan): split, each part would hold a
reference back to the monitor. The pure parsers and records are already apart
(`host.procfs`, `host.sample`, `host.memcg`).
"""

# Design choices:
# - threads-max and pid_max are reread every tick (one pread each, ~1 us): an operator
#   raising kernel.threads-max should be seen at once. CPUs (affinity and cgroup quota)
#   change rarely and cost several opens, so they are refreshed by scan().
# - The host-wide files cannot vanish on a live kernel; should a read fail anyway, the
#   last good value is kept (the fields are ints). Cgroup and PSI fields become None.
# - The root cgroup has no pids files in v1 or v2 (CFTYPE_NOT_ON_ROOT) and no limit: it
#   is not read at all.

from __future__ import annotations

import os
import pwd
import resource
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from types import TracebackType

from supervisord_batt.host import memcg, procfs
from supervisord_batt.host.procfs import PreadFile
from supervisord_batt.host.sample import (
    CgroupUsage,
    HostSample,
    Limit,
    Psi,
    TreeUsage,
    UserUsage,
)
from supervisord_batt.logs import get_logger

log = get_logger(component="host")
_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")  # statm counts pages

# ---------------------------------------------------------------- cgroups


class _Node:
    """One cgroup directory whose pids files are read every tick."""

    __slots__ = ("current", "events", "fs_path", "max", "path")

    def __init__(self, path: str, fs_path: str) -> None:
        self.path = path
        self.fs_path = fs_path
        self.current = PreadFile(os.path.join(fs_path, "pids.current"), 64)
        self.max = PreadFile(os.path.join(fs_path, "pids.max"), 64)
        self.events = PreadFile(os.path.join(fs_path, "pids.events"), 256)

    def read(self) -> tuple[int | None, int | None, int | None]:
        return (
            procfs.parse_int(self.current.read()),
            procfs.parse_pids_max(self.max.read()),
            procfs.parse_pids_events_max(self.events.read()),
        )

    def close(self) -> None:
        for f in (self.current, self.max, self.events):
            f.close()


@dataclass(frozen=True)
class _Hierarchy:
    """Where the pids controller lives: a v1 pids mount or the v2 unified mount."""

    version: int
    mount_dir: str  # the mount point, rebased under sys_root
    mount_root: str  # the cgroup path the mount shows at its top (mountinfo field 4)


class HostMonitor:
    """Samples every limit that can refuse a new task, cheaply, from kept-open files.

    `cgroups` are cgroup paths ("/batt") or directories under the pids mount; the daemon's
    own pids cgroup is added when `include_self_cgroup`. `users` are uids or user names
    whose RLIMIT_NPROC usage `scan()` counts.
    """

    def __init__(
        self,
        proc_root: str = "/proc",
        sys_root: str = "/sys",
        cgroups: Sequence[str] = (),
        users: Sequence[int | str] = (),
        include_self_cgroup: bool = True,
    ) -> None:
        self.proc_root = proc_root
        self.sys_root = sys_root
        self._real_proc = os.path.realpath(proc_root) == "/proc"
        self._files: list[PreadFile] = []
        self._nodes: dict[str, _Node] = {}
        self._watched: list[procfs.Watched[_Node]] = []
        self._memory = memcg.MemoryWatch()
        self._users = [_resolve_user(u) for u in users]
        self._user_rows: tuple[UserUsage, ...] = ()
        try:
            self._loadavg = self._open("loadavg", 256)
            self._threads_max = self._open("sys/kernel/threads-max", 32)
            self._pid_max = self._open("sys/kernel/pid_max", 32)
            self._meminfo = self._open("meminfo", 512)
            self._psi_cpu = self._open("pressure/cpu", 256)
            self._psi_mem = self._open("pressure/memory", 256)
            self._has_psi = os.path.isdir(os.path.join(proc_root, "pressure"))
            self._last: dict[str, int] = {}
            self._specs, self._include_self = tuple(cgroups), include_self_cgroup
            self._self_cgroup = self._self_text("cgroup")
            own = self._self_cgroup if include_self_cgroup else None
            self._init_cgroups(cgroups, own, self._self_text("mountinfo"))
            self.cpus = 1.0
            self.scan()
            # the host-wide values are ints in HostSample: fail now, loudly, not later
            self.sample()
        except BaseException:
            self.close()
            raise

    def _open(self, rel: str, size: int) -> PreadFile:
        f = PreadFile(os.path.join(self.proc_root, rel), size)
        self._files.append(f)
        return f

    # ------------------------------------------------------------ setup

    def _rebase(self, mount_point: str) -> str:
        """mountinfo names real paths; move those under /sys to our (maybe fake) sys_root."""
        if mount_point == "/sys" or mount_point.startswith("/sys/"):
            return self.sys_root.rstrip("/") + mount_point[len("/sys") :]
        return mount_point

    def _self_text(self, name: str) -> str:
        return procfs.read_text(os.path.join(self.proc_root, "self", name)) or ""

    def _pids_hierarchies(self, mountinfo: str) -> tuple[procfs.Mount | None, procfs.Mount | None]:
        """The pids mounts, their mount points moved under our (maybe fake) sys_root."""
        v1, v2 = procfs.pids_mounts(procfs.parse_mountinfo(mountinfo))
        return (
            replace(v1, mount_point=self._rebase(v1.mount_point)) if v1 else None,
            replace(v2, mount_point=self._rebase(v2.mount_point)) if v2 else None,
        )

    def _init_cgroups(self, specs: Sequence[str], own_cgroup: str | None, mountinfo: str) -> None:
        """Watch `specs`, and the cgroup that /proc/self/cgroup's text `own_cgroup` names
        (None: not the daemon's own), in the hierarchies of /proc/self/mountinfo's text."""
        m1, m2 = self._pids_hierarchies(mountinfo)
        v1 = _Hierarchy(1, m1.mount_point, m1.root) if m1 else None
        v2 = _Hierarchy(2, m2.mount_point, m2.root) if m2 else None
        v2_pids = v2 if v2 and _has_pids(v2.mount_dir) else None
        found: list[tuple[_Hierarchy, str]] = []  # (hierarchy, fs path)
        if own_cgroup is not None:
            own = procfs.pids_cgroup_dirs(procfs.parse_proc_cgroup(own_cgroup), m1, m2)
            if v1 is not None and 1 in own:
                found.append((v1, own[1]))
            elif v2 is not None and 2 in own and _has_pids(own[2]):
                found.append((v2, own[2]))
        for spec in specs:
            found.append(_place(spec, self._rebase(spec), v1 or v2_pids, (v1, v2)))
        for hier, raw in found:
            fs = os.path.normpath(raw)
            if any(w.fs_path == fs for w in self._watched):
                continue
            self._watched.append(
                procfs.watch_chain(hier.mount_dir, hier.mount_root, fs, hier.version, self._node)
            )
        self._init_memory(specs, own_cgroup, mountinfo)

    def _init_memory(self, specs: Sequence[str], own_cgroup: str | None, mountinfo: str) -> None:
        """Watch the memory controller of the same cgroups, where it is mounted: a spec
        whose cgroup has no memory directory reads as None until one is made."""
        mounts = [
            replace(m, mount_point=self._rebase(m.mount_point))
            for m in procfs.parse_mountinfo(mountinfo)
        ]
        hier = memcg.memory_hierarchy(mounts)
        if hier is None:
            self._memory.close()
            return
        dirs = [memcg.spec_memory_dir(spec, self._rebase, mounts, hier) for spec in specs]
        own = memcg.own_memory_dir(own_cgroup, hier) if own_cgroup is not None else None
        self._memory.watch(hier, ([own] if own is not None else []) + dirs)

    def _follow_own_cgroup(self) -> None:
        """Watch the cgroup the process is in now, if it moved since the last look."""
        if not self._include_self:
            return
        text = self._self_text("cgroup")
        if not text or text == self._self_cgroup:  # "": unreadable now (out of descriptors)
            return
        mountinfo = self._self_text("mountinfo")
        if not mountinfo:  # the same: look again at the next tick
            return
        before = [w.path for w in self._watched]
        for node in self._nodes.values():
            node.close()
        self._nodes.clear()
        self._watched.clear()
        self._init_cgroups(self._specs, text, mountinfo)
        self._self_cgroup = text
        log.warning(
            "own_cgroup_changed",
            old=before[:1],
            new=[w.path for w in self._watched][:1],
            memory=self._memory.paths[:1],
            reason="the daemon was moved to another cgroup: its limits are watched now",
        )

    def _node(self, path: str, fs_path: str) -> _Node:
        node = self._nodes.get(fs_path)
        if node is None:
            node = self._nodes[fs_path] = _Node(path, fs_path)
        return node

    # ------------------------------------------------------------ fast path

    def _int(self, key: str, value: int | None) -> int:
        if value is None:
            if key not in self._last:
                raise OSError(f"cannot read {key} under {self.proc_root}")
            return self._last[key]
        self._last[key] = value
        return value

    def sample(self) -> HostSample:
        """The per-tick sample; `users` are those of the last scan()."""
        taken_at, wall = time.monotonic(), time.time()
        threads_total = self._int("loadavg", procfs.parse_loadavg_threads(self._loadavg.read()))
        threads_max = self._int("threads-max", procfs.parse_int(self._threads_max.read()))
        pid_max = self._int("pid_max", procfs.parse_int(self._pid_max.read()))
        readings = {fs: node.read() for fs, node in self._nodes.items()}
        usages = [_usage(w, readings) for w in self._watched]
        mem_total, mem_avail = procfs.parse_meminfo(self._meminfo.read())
        memory_cgroups, memory_limits = self._memory.sample()
        psi = None
        if self._has_psi:
            psi = Psi(
                procfs.parse_psi_some_avg10(self._psi_cpu.read()),
                procfs.parse_psi_some_avg10(self._psi_mem.read()),
            )
        limits = [
            Limit("threads-max", "threads-max", None, threads_max, threads_total),
            Limit("pid_max", "pid_max", None, pid_max, threads_total),
        ]
        for cg, lim_node, in_use in usages:
            if cg.headroom is not None and lim_node is not None:
                limit = in_use + cg.headroom
                limits.append(Limit(f"cgroup:{cg.path}", "cgroup", lim_node.fs_path, limit, in_use))
        for user in self._user_rows:
            if not user.exempt and user.nproc_limit is not None:
                name = f"nproc:{user.name if user.name is not None else user.uid}"
                limits.append(Limit(name, "nproc", user.uid, user.nproc_limit, user.tasks))
        return HostSample(
            taken_at=taken_at,
            wall_time=wall,
            threads_total=threads_total,
            threads_max=threads_max,
            pid_max=pid_max,
            cgroups=tuple(u[0] for u in usages),
            users=self._user_rows,
            mem_available_bytes=self._int("MemAvailable", mem_avail),
            mem_total_bytes=self._int("MemTotal", mem_total),
            cpus=self.cpus,
            psi=psi,
            limits=tuple(limits),
            memory_cgroups=memory_cgroups,
            memory_limits=memory_limits,
        )

    def oom_kills(self) -> dict[str, int]:
        """Each watched memory cgroup's OOM kill count now (`oom_kill`), by its path: read
        afresh, not the last sample's (a run that ended since must be judged by it)."""
        rows, _ = self._memory.sample()
        return {c.path: c.oom_kills for c in rows if c.oom_kills is not None}

    # ------------------------------------------------------------ slow path

    def scan(self, roots: Iterable[int] = ()) -> dict[int, TreeUsage]:
        """The O(processes) pass: per watched uid, its tasks and smallest RLIMIT_NPROC;
        and, from the same reads, the process tree of each pid in `roots`.

        Also refreshes `cpus`, and follows the process into another cgroup (one read of
        /proc/self/cgroup): moved into a cgroup with a tighter pids.max, the daemon
        must budget against that one, not the cgroup it started in. With no watched
        users and no roots there is no pass over /proc at all.
        """
        self.cpus = self._read_cpus()
        self._follow_own_cgroup()
        roots = list(roots)
        if not self._users and not roots:
            return {}
        uids = {uid for uid, _ in self._users}
        tasks = dict.fromkeys(uids, 0)
        best: dict[int, tuple[int | None, int]] = {}  # uid -> (soft limit, pid)
        children: dict[int, list[int]] = {}
        threads: dict[int, int] = {}
        proc_fd = os.open(self.proc_root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            with os.scandir(self.proc_root) as it:
                for entry in it:
                    name = entry.name
                    if not name.isdigit():
                        continue
                    parsed = read_pid_status(proc_fd, name)
                    if parsed is None:
                        continue  # vanished mid-scan
                    uid, count, ppid = parsed
                    threads[int(name)] = count
                    children.setdefault(ppid, []).append(int(name))
                    if uid not in uids:
                        continue
                    tasks[uid] += count
                    if uid != 0:  # root is exempt: its limit does not matter
                        self._nproc_of(name, uid, best)
        finally:
            os.close(proc_fd)
        self._user_rows = self._rows(tasks, best)
        return _trees(roots, children, threads)

    def _nproc_of(self, name: str, uid: int, best: dict[int, tuple[int | None, int]]) -> None:
        """Keep the smallest soft RLIMIT_NPROC seen for `uid`, with its pid."""
        limits = procfs.read_text(os.path.join(self.proc_root, name, "limits"))
        try:
            soft = procfs.parse_limits_nproc(limits or "")
        except ValueError:
            return
        prev = best.get(uid)
        if prev is None or (soft is not None and (prev[0] is None or soft < prev[0])):
            best[uid] = (soft, int(name))

    def _rows(
        self, tasks: dict[int, int], best: dict[int, tuple[int | None, int]]
    ) -> tuple[UserUsage, ...]:
        now = time.monotonic()
        own = self._own_nproc()
        rows = []
        for uid, uname in self._users:
            limit, pid = best.get(uid, (own, None))
            exempt = uid == 0
            rows.append(
                UserUsage(
                    uid=uid,
                    name=uname,
                    tasks=tasks[uid],
                    nproc_limit=None if exempt else limit,
                    exempt=exempt,
                    limit_pid=None if exempt else pid,
                    scanned_at=now,
                )
            )
        return tuple(rows)

    def _own_nproc(self) -> int | None:
        if self._real_proc:
            soft = resource.getrlimit(resource.RLIMIT_NPROC)[0]
            return None if soft == resource.RLIM_INFINITY else soft
        try:
            return procfs.parse_limits_nproc(self._self_text("limits"))
        except ValueError:
            return None

    def _read_cpus(self) -> float:
        if self._real_proc:
            cpus = float(len(os.sched_getaffinity(0)))
        else:
            allowed = procfs.parse_status_field(self._self_text("status"), "Cpus_allowed_list")
            cpus = float(procfs.parse_cpu_list(allowed) if allowed else os.cpu_count() or 1)
        quota = self._cpu_quota()
        return min(cpus, quota) if quota is not None else cpus

    def _cpu_quota(self) -> float | None:
        """The tightest CPU quota over the daemon's cpu cgroup and its ancestors."""
        mounts = procfs.parse_mountinfo(self._self_text("mountinfo"))
        v1, v2 = procfs.find_v1_mount(mounts, "cpu"), procfs.find_v2_mount(mounts)
        quotas: list[float] = []
        for line in procfs.parse_proc_cgroup(self._self_text("cgroup")):
            if v1 and "cpu" in line.controllers:
                mount_dir = self._rebase(v1.mount_point)
                fs = procfs.cgroup_fs_path(mount_dir, v1.root, line.path)
                for _, d in procfs.cgroup_chain(mount_dir, v1.root, fs):
                    q = procfs.parse_cpu_quota_v1(
                        procfs.read_text(os.path.join(d, "cpu.cfs_quota_us")),
                        procfs.read_text(os.path.join(d, "cpu.cfs_period_us")),
                    )
                    quotas += [q] if q is not None else []
            elif v2 and v1 is None and line.hierarchy_id == 0 and not line.controllers:
                mount_dir = self._rebase(v2.mount_point)
                fs = procfs.cgroup_fs_path(mount_dir, v2.root, line.path)
                for _, d in procfs.cgroup_chain(mount_dir, v2.root, fs):
                    q = procfs.parse_cpu_max_v2(procfs.read_text(os.path.join(d, "cpu.max")))
                    quotas += [q] if q is not None else []
        return min(quotas) if quotas else None

    def tree_tasks(self, pids: Iterable[int]) -> dict[int, TreeUsage]:
        """Each root's process tree and its thread count; roots that are gone are left out.

        One pass over /proc/<pid>/stat (ppid and num_threads in one read) serves every
        root. Measured with 1,000 processes: this pass ~11 ms for any number of roots;
        psutil's `Process.children(recursive=True)` ~16 ms per root; `process_iter` ~45 ms.
        Processes that exit meanwhile are skipped.
        """
        roots = list(pids)
        if not roots:
            return {}
        children: dict[int, list[int]] = {}
        threads: dict[int, int] = {}
        proc_fd = os.open(self.proc_root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            with os.scandir(self.proc_root) as it:
                for entry in it:
                    if entry.name.isdigit():
                        parsed = _read_stat(proc_fd, entry.name)
                        if parsed is not None:
                            pid = int(entry.name)
                            threads[pid] = parsed[1]
                            children.setdefault(parsed[0], []).append(pid)
        finally:
            os.close(proc_fd)
        return _trees(roots, children, threads)

    def resident_bytes(self, pids: Iterable[int]) -> dict[int, int]:
        """Resident bytes of each pid (the RSS of /proc/<pid>/statm, one short read
        each); pids that are gone, or whose statm is garbled, are left out. Read for the
        lease holders' descendants only, after `scan` found them: one read per worker."""
        out: dict[int, int] = {}
        proc_fd = os.open(self.proc_root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            for pid in pids:
                try:
                    fd = os.open(f"{pid}/statm", os.O_RDONLY | os.O_CLOEXEC, dir_fd=proc_fd)
                except OSError:
                    continue
                try:
                    pages = procfs.parse_statm_resident(os.read(fd, 256))
                except OSError:
                    pages = None
                finally:
                    os.close(fd)
                if pages is not None:
                    out[pid] = pages * _PAGE_SIZE
        finally:
            os.close(proc_fd)
        return out

    # ------------------------------------------------------------ lifetime

    def close(self) -> None:
        for f in self._files:
            f.close()
        for node in self._nodes.values():
            node.close()
        self._memory.close()

    def __enter__(self) -> HostMonitor:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


# ---------------------------------------------------------------- helpers


def _has_pids(cgroup_dir: str) -> bool:
    """Whether the pids controller is available in this v2 cgroup (root included)."""
    text = procfs.read_text(os.path.join(cgroup_dir, "cgroup.controllers"))
    return text is not None and "pids" in text.split()


def _place(
    spec: str,
    rebased: str,
    default: _Hierarchy | None,
    hierarchies: tuple[_Hierarchy | None, _Hierarchy | None],
) -> tuple[_Hierarchy, str]:
    """A configured cgroup: a directory under a cgroup mount, or a cgroup path."""
    for hier in hierarchies:
        if hier is None:
            continue
        for candidate in (spec, rebased):
            top = hier.mount_dir.rstrip("/")
            if candidate == top or candidate.startswith(top + "/"):
                return hier, candidate
    if default is None:
        raise ValueError(f"cannot watch cgroup {spec!r}: no pids cgroup hierarchy is mounted")
    return default, procfs.cgroup_fs_path(default.mount_dir, default.mount_root, spec)


def _usage(
    w: procfs.Watched[_Node], readings: dict[str, tuple[int | None, int | None, int | None]]
) -> tuple[CgroupUsage, _Node | None, int]:
    """The watched cgroup's row, plus the limiting node and its current count."""
    own = readings[w.chain[0].fs_path] if w.chain[0] is not None else (None, None, None)
    headroom: int | None = None
    limiting: _Node | None = None
    lim_max = lim_cur = 0
    for node in w.chain:
        if node is None:
            continue
        cur, mx, _ = readings[node.fs_path]
        if cur is None or mx is None:
            continue
        if headroom is None or mx - cur < headroom:
            headroom, limiting, lim_max, lim_cur = mx - cur, node, mx, cur
    usage = CgroupUsage(
        path=w.path,
        fs_path=w.fs_path,
        version=w.version,
        pids_current=own[0],
        pids_max=own[1],
        pids_events_max=own[2],
        effective_max=lim_max if limiting else None,
        headroom=headroom,
        limited_by=limiting.path if limiting else None,
    )
    return usage, limiting, lim_cur


def _resolve_user(user: int | str) -> tuple[int, str | None]:
    if isinstance(user, int) or user.isdigit():
        uid = int(user)
        try:
            return uid, pwd.getpwuid(uid).pw_name
        except KeyError:
            return uid, None
    try:
        return pwd.getpwnam(user).pw_uid, user
    except KeyError:
        raise ValueError(f"unknown user {user!r}") from None


def _trees(
    roots: list[int], children: dict[int, list[int]], threads: dict[int, int]
) -> dict[int, TreeUsage]:
    """Each root's tree from a ppid -> children map; roots that are gone are left out."""
    out = {}
    for root in roots:
        if root not in threads:
            continue
        tree, todo = [], [root]
        while todo:
            pid = todo.pop()
            tree.append(pid)
            todo += children.get(pid, ())
        counts = tuple(threads.get(p, 0) for p in tree)
        out[root] = TreeUsage(root, tuple(tree), sum(counts), counts)
    return out


def read_pid_status(proc_fd: int, pid: str) -> tuple[int, int, int] | None:
    """(real uid, threads, ppid) of one process, or None if it vanished mid-scan."""
    try:
        fd = os.open(f"{pid}/status", os.O_RDONLY | os.O_CLOEXEC, dir_fd=proc_fd)
    except OSError:
        return None
    try:
        return procfs.parse_status_ppid(os.read(fd, 4096))
    except OSError:
        return None
    finally:
        os.close(fd)


def _read_stat(proc_fd: int, pid: str) -> tuple[int, int] | None:
    """(ppid, threads) of one process, or None if it vanished mid-scan."""
    try:
        fd = os.open(f"{pid}/stat", os.O_RDONLY | os.O_CLOEXEC, dir_fd=proc_fd)
    except OSError:
        return None
    try:
        return procfs.parse_stat(os.read(fd, 4096))
    except OSError:
        return None
    finally:
        os.close(fd)
