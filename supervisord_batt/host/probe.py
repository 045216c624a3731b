"""What `supervisord-batt probe` prints: a HostSample as JSON with stable field names, and
as a table a person reads at a glance (the tightest limit marked)."""

from __future__ import annotations

from supervisord_batt import protocol
from supervisord_batt.host.sample import HostSample, Limit, MemoryCgroupUsage


def _percent(limit: Limit) -> float:
    return round(100.0 * limit.in_use / limit.limit, 1) if limit.limit > 0 else 100.0


def _limit_row(lim: Limit) -> protocol.LimitRow:
    return {
        "name": lim.name,
        "kind": lim.kind,
        "scope": lim.scope,
        "limit": lim.limit,
        "in_use": lim.in_use,
        "headroom": lim.headroom,
        "percent_used": _percent(lim),
    }


def _memory_row(c: MemoryCgroupUsage) -> protocol.MemoryCgroupRow:
    return {
        "path": c.path,
        "fs_path": c.fs_path,
        "version": c.version,
        "current_bytes": c.current,
        "inactive_file_bytes": c.inactive_file,
        "max_bytes": c.max,
        "high_bytes": c.high,
        "effective_max_bytes": c.effective_max,
        "headroom_bytes": c.headroom,
        "limited_by": c.limited_by,
        "oom_kills": c.oom_kills,
    }


def memory_to_json(sample: HostSample) -> protocol.MemoryJson:
    """The sample's memory as the budget counts it, with each watched memory cgroup."""
    headroom, limited_by = sample.memory_headroom()
    return {
        "headroom_bytes": headroom,
        "limited_by": limited_by,
        "cgroups": [_memory_row(c) for c in sample.memory_cgroups],
        "limits": [_limit_row(lim) for lim in sample.memory_limits],
    }


def sample_to_json(sample: HostSample) -> protocol.HostJson:
    """The sample as JSON-ready data; field names are stable (status, probe --json)."""
    tight = sample.tightest()
    return {
        "wall_time": sample.wall_time,
        "threads_total": sample.threads_total,
        "threads_max": sample.threads_max,
        "pid_max": sample.pid_max,
        "cgroups": [
            {
                "path": c.path,
                "fs_path": c.fs_path,
                "version": c.version,
                "pids_current": c.pids_current,
                "pids_max": c.pids_max,
                "pids_events_max": c.pids_events_max,
                "effective_max": c.effective_max,
                "headroom": c.headroom,
                "limited_by": c.limited_by,
            }
            for c in sample.cgroups
        ],
        "users": [
            {
                "uid": u.uid,
                "name": u.name,
                "tasks": u.tasks,
                "nproc_limit": u.nproc_limit,
                "exempt": u.exempt,
                "limit_pid": u.limit_pid,
                "scan_age_s": round(max(0.0, sample.taken_at - u.scanned_at), 3),
            }
            for u in sample.users
        ],
        "mem_available_bytes": sample.mem_available_bytes,
        "mem_total_bytes": sample.mem_total_bytes,
        "cpus": sample.cpus,
        "psi": None
        if sample.psi is None
        else {
            "cpu_some_avg10": sample.psi.cpu_some_avg10,
            "memory_some_avg10": sample.psi.memory_some_avg10,
        },
        "limits": [_limit_row(lim) for lim in sample.limits],
        "tightest": {
            "name": tight.name,
            "kind": tight.kind,
            "limit": tight.limit,
            "in_use": tight.in_use,
            "headroom": tight.headroom,
        },
        "memory": memory_to_json(sample),
    }


def _fit(text: str, width: int) -> str:
    """Cut long names (cgroup paths) from the left, where they are least telling."""
    return text if len(text) <= width else "…" + text[-(width - 1) :]


def _num(value: int | None, none: str = "-") -> str:
    return none if value is None else str(value)


def _gib(n: int) -> str:
    return f"{n / 2**30:.1f} GiB"


def render_table(sample: HostSample) -> str:
    """What `supervisord-batt probe` prints: every limit at a glance, in 100 columns."""
    tight = sample.tightest()
    out = [f"{'LIMIT':<30} {'IN USE':>9} {'LIMIT':>9} {'HEADROOM':>9} {'USED':>6}"]
    for lim in sample.limits:
        mark = "  <- tightest" if lim is tight else ""
        out.append(
            f"{_fit(lim.name, 30):<30} {lim.in_use:>9} {lim.limit:>9} {lim.headroom:>9} "
            f"{_percent(lim):>5.1f}%{mark}"
        )
    out.append(
        f"tightest: {tight.name}: the next thread is refused here first ({tight.headroom} left)"
    )
    if sample.cgroups:
        out += [
            "",
            f"{'CGROUP':<30} {'V':>1} {'CURRENT':>8} {'OWN MAX':>8} {'EFFECT.':>8} "
            f"{'REFUSED':>8}  LIMITED BY",
        ]
        for c in sample.cgroups:
            out.append(
                f"{_fit(c.path, 30):<30} {c.version:>1} {_num(c.pids_current):>8} "
                f"{_num(c.pids_max, 'max'):>8} {_num(c.effective_max, 'none'):>8} "
                f"{_num(c.pids_events_max):>8}  {_fit(c.limited_by or '-', 30)}"
            )
    if sample.users:
        age = max(0.0, sample.taken_at - min(u.scanned_at for u in sample.users))
        out += [
            "",
            f"{'USER':<20} {'UID':>7} {'TASKS':>8}  RLIMIT_NPROC (soft; scanned {age:.0f}s ago)",
        ]
        for u in sample.users:
            if u.exempt:
                nproc = "exempt (root)"
            elif u.nproc_limit is None:
                nproc = "unlimited"
            else:
                src = f"pid {u.limit_pid}" if u.limit_pid else "daemon's own, no process"
                nproc = f"{u.nproc_limit} ({src})"
            out.append(f"{_fit(u.name or '?', 20):<20} {u.uid:>7} {u.tasks:>8}  {nproc}")
    out += _memory_lines(sample)
    out.append(f"cpus     {sample.cpus:g}")
    if sample.psi is None:
        out.append("psi      not available (no /proc/pressure)")
    else:
        cpu, memp = sample.psi.cpu_some_avg10, sample.psi.memory_some_avg10
        out.append(
            f"psi      cpu some avg10 {'-' if cpu is None else f'{cpu:.2f}%'}   "
            f"memory some avg10 {'-' if memp is None else f'{memp:.2f}%'}"
        )
    return "\n".join(out)


def _size(n: int | None, none: str = "-") -> str:
    """Bytes in at most 8 characters: 512.0M, 1.50G."""
    if n is None:
        return none
    return f"{n / 2**30:.2f}G" if abs(n) >= 2**30 else f"{n / 2**20:.1f}M"


def _memory_lines(sample: HostSample) -> list[str]:
    """The memory cgroups (where any is watched), then what the budget counts on."""
    out = [""]
    if sample.memory_cgroups:
        out += [
            f"{'MEMORY CGROUP':<30} {'V':>1} {'CURRENT':>8} {'OWN MAX':>8} {'EFFECT.':>8} "
            f"{'HEADROOM':>8} {'OOM KILLS':>9}  LIMITED BY",
        ]
        for c in sample.memory_cgroups:
            out.append(
                f"{_fit(c.path, 30):<30} {c.version:>1} {_size(c.current):>8} "
                f"{_size(c.max, 'max'):>8} {_size(c.effective_max, 'none'):>8} "
                f"{_size(c.headroom):>8} {_num(c.oom_kills):>9}  {_fit(c.limited_by or '-', 19)}"
            )
        out.append("")
    mem = sample.mem_available_bytes
    share = 100.0 * mem / sample.mem_total_bytes if sample.mem_total_bytes else 0.0
    headroom, where = sample.memory_headroom()
    out.append(f"memory   {_gib(mem)} available of {_gib(sample.mem_total_bytes)} ({share:.0f}%)")
    if where != "MemAvailable":
        out.append(f"         {_gib(headroom)} before {where}: the budget counts on that")
    return out
