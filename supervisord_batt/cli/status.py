"""Renders the daemon's `status` reply for a person (the JSON form is the reply itself)."""

from __future__ import annotations

from supervisord_batt import protocol


def _table(headers: list[str], rows: list[list[str]]) -> list[str]:
    widths = [
        max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)
    ]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return [fmt.format(*headers), fmt.format(*("-" * w for w in widths))] + [
        fmt.format(*r) for r in rows
    ]


def render_status(status: protocol.StatusListsReply) -> str:
    """The summary, then whichever lists the reply carries (all of them, read page by
    page, for `supervisord-batt status`; none for `--summary`)."""
    counts = status["counts"]
    lines = [
        f"supervisord-batt {status['version']}  pid {status['pid']}  "
        f"up {status['uptime_s']:.0f}s  connections {status['connections']}",
        f"level {status['level']}   capacity {status['capacity']} workers   "
        f"leased {status['leased']} workers ({status['leased_tasks']} tasks) "
        f"in {counts['leases']} leases",
        f"instances {counts['instances']} of {counts['programs']} programs: "
        + (", ".join(f"{n} {state}" for state, n in sorted(counts["states"].items())) or "none"),
    ]
    if (cpu := status.get("cpu_share")) is not None:
        lines.append(f"cpu share: {cpu}")
    if status["scope"] == "own":
        lines.append("(the lists show your own leases and the programs that run as you)")
    tightest = status["host"]["tightest"] if status["host"] else None
    if tightest:
        lines.append(
            f"tightest limit {tightest['name']}: {tightest['in_use']}/{tightest['limit']} in use, "
            f"headroom {tightest['headroom']}"
        )
    memory = status["host"].get("memory") if status["host"] else None
    if memory is not None:
        lines.append(memory_line(memory))
    instances = status.get("instances")
    if instances:
        lines.append("")
        rows = [_instance_row(inst) for inst in instances]
        lines += _table(
            ["INSTANCE", "STATE", "PID", "UPTIME", "RESTARTS", "TASKS", "LEASE", "LAST EXIT"], rows
        )
    leases = status.get("leases")
    if leases is not None:
        lines.append("")
        lines += _lease_table(leases) if leases else ["no leases"]
        lines += worker_size_lines(leases)
    return "\n".join(lines)


def worker_size_lines(leases: list[protocol.LeaseRow]) -> list[str]:
    """Per job of the leases shown whose workers the daemon has seen, the memory the
    budget charges each of its process workers: `batt: 1.8 GiB per worker, learned from
    14 runs`, or `fit: 2.0 GiB per worker, declared` where it is charged the size it
    declared (the others are charged `budget.memory_per_slot`)."""
    seen: dict[tuple[str, int], protocol.LeaseRow] = {}
    for lease in leases:
        if lease.get("worker_bytes") is not None and lease.get("learned_runs") is not None:
            seen[lease["job"], lease["uid"]] = lease
    jobs = {job for job, _ in seen}
    lines = []
    for (job, uid), row in sorted(seen.items()):
        name = job if len(jobs) == len(seen) else f"{job} (uid {uid})"
        size, runs = row.get("worker_bytes", 0), row.get("learned_runs", 0)
        declared = row.get("declared_bytes", 0)
        if size and declared == size:  # charged what the job declared: not learned (yet)
            more = f" ({runs} runs learned)" if runs else ""
            lines.append(f"{name}: {_bytes(size)} per worker, declared{more}")
        elif size and (runs or row.get("learned_from_kill")):  # a kill's margin: 0 runs yet
            tasks = row.get("worker_tasks"), row.get("pool_tasks")
            lines.append(size_line(name, size, runs, tasks, bool(row.get("learned_from_kill"))))
    return ["", *lines] if lines else []


def size_line(
    job: str,
    size: int,
    runs: int,
    tasks: tuple[int | None, int | None] = (None, None),
    from_kill: bool = False,
) -> str:
    """`batt: 1.8 GiB per worker, learned from 14 runs` (`status` and `report`), or
    `learned from an OOM kill` where the figure is what a killed worker held, and where
    its tasks were learned too `; 2 tasks per worker, pool +5 tasks`."""
    source = "an OOM kill" if from_kill else f"{runs} runs"
    line = f"{job}: {_bytes(size)} per worker, learned from {source}"
    each, extra = tasks
    if each is not None and extra is not None:
        line += f"; {each} tasks per worker, pool +{extra} tasks"
    return line


def _bytes(n: int) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"


def _lease_table(leases: list[protocol.LeaseRow]) -> list[str]:
    rows = [
        [
            lease["lease"],
            str(lease["pid"]),
            lease["job"],
            lease["kind"],
            str(lease["workers"]),
            str(lease["target"]),
            str(lease["wanted"]),
            f"{lease['age_s']:.0f}s",
        ]
        for lease in leases
    ]
    return _table(["LEASE", "PID", "JOB", "KIND", "WORKERS", "TARGET", "WANTED", "AGE"], rows)


def _instance_row(inst: protocol.InstanceRow) -> list[str]:
    uptime = inst["uptime_s"]
    backoff = inst["backoff_s"]
    state = inst["state"] + (f" ({backoff:.0f}s)" if backoff is not None else "")
    return [
        inst["name"],
        state,
        str(inst["pid"] or "-"),
        f"{uptime:.0f}s" if uptime is not None else "-",
        str(inst["restarts"]),
        str(inst["tasks"] if inst["tasks"] is not None else "-"),
        inst["lease"] or "-",
        _describe_exit(inst["last_exit"]),
    ]


def _describe_exit(info: protocol.ExitRow | None) -> str:
    if not info:
        return "-"
    if info["signal"]:
        text = f"killed by {info['signal']}"
    elif info["code"] is not None:
        text = f"exit {info['code']}"
    else:
        text = info["reason"]
    if info["by_limit"]:
        text += f" ({info['reason']})"
    elif info["reason"] == "spawn_failed":
        text = f"spawn failed: {info['detail'] or ''}"
    return text


def memory_line(memory: protocol.MemoryJson) -> str:
    """What the budget counts on for process workers and where, then each memory cgroup
    with a limit or an OOM kill: `/batt 0.25/1.00 GiB, 2 OOM kills`."""
    gib = 2**30
    line = f"memory headroom {memory['headroom_bytes'] / gib:.2f} GiB ({memory['limited_by']})"
    for row in memory["cgroups"]:
        limit, room, kills = row["effective_max_bytes"], row["headroom_bytes"], row["oom_kills"]
        parts = []
        if limit is not None and room is not None:
            parts.append(f"{(limit - room) / gib:.2f}/{limit / gib:.2f} GiB")
        if kills:
            parts.append(f"{kills} OOM kills")
        if parts:
            line += f"; {row['path']} " + ", ".join(parts)
    return line
