"""Renders the daemon's `status` reply for a person (the JSON form is the reply itself)."""

from __future__ import annotations

from typing import Any


def _table(headers: list[str], rows: list[list[str]]) -> list[str]:
    widths = [
        max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)
    ]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return [fmt.format(*headers), fmt.format(*("-" * w for w in widths))] + [
        fmt.format(*r) for r in rows
    ]


def render_status(status: dict[str, Any]) -> str:
    lines = [
        f"supervisord-batt {status.get('version', '?')}  pid {status.get('pid')}  "
        f"up {status.get('uptime_s', 0):.0f}s  connections {status.get('connections', 0)}",
        f"level {status['level']}   capacity {status['capacity']} workers   "
        f"leased {status['leased']} workers ({status.get('leased_tasks', 0)} tasks)",
    ]
    host = status.get("host") or {}
    tightest = host.get("tightest")
    if tightest:
        lines.append(
            f"tightest limit {tightest['name']}: {tightest['in_use']}/{tightest['limit']} in use, "
            f"headroom {tightest['headroom']}"
        )
    programs = status.get("programs", [])
    if programs:
        lines.append("")
        rows = [_instance_row(inst) for program in programs for inst in program["instances"]]
        lines += _table(
            ["INSTANCE", "STATE", "PID", "UPTIME", "RESTARTS", "TASKS", "LEASE", "LAST EXIT"], rows
        )
    leases = status.get("leases", [])
    lines.append("")
    if leases:
        rows = [
            [
                str(lease["lease"]),
                str(lease["pid"]),
                str(lease.get("job", "")),
                lease["kind"],
                str(lease["workers"]),
                str(lease.get("target", "")),
                str(lease.get("wanted", "")),
                f"{lease.get('age_s', 0):.0f}s",
            ]
            for lease in leases
        ]
        lines += _table(["LEASE", "PID", "JOB", "KIND", "WORKERS", "TARGET", "WANTED", "AGE"], rows)
    else:
        lines.append("no leases")
    return "\n".join(lines)


def _instance_row(inst: dict[str, Any]) -> list[str]:
    uptime = inst.get("uptime_s")
    backoff = inst.get("backoff_s")
    state = inst["state"] + (f" ({backoff:.0f}s)" if backoff is not None else "")
    return [
        inst["name"],
        state,
        str(inst["pid"] or "-"),
        f"{uptime:.0f}s" if uptime is not None else "-",
        str(inst["restarts"]),
        str(inst.get("tasks") if inst.get("tasks") is not None else "-"),
        str(inst.get("lease") or "-"),
        _describe_exit(inst.get("last_exit")),
    ]


def _describe_exit(info: dict[str, Any] | None) -> str:
    if not info:
        return "-"
    if info.get("signal"):
        text = f"killed by {info['signal']}"
    elif info.get("code") is not None:
        text = f"exit {info['code']}"
    else:
        text = info.get("reason", "?")
    if info.get("by_limit"):
        text += f" ({info['reason']})"
    elif info.get("reason") == "spawn_failed":
        text = f"spawn failed: {info.get('detail') or ''}"
    return text
