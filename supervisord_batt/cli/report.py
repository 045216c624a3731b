"""`supervisord-batt report`: the incident's monitoring figures, from the daemon's events.

The incident that started this project asked to watch: thread counts, how often jobs fell
back to sequential (target under 20%), how often overload was detected, whether any job
hung (target 0%), and the task completion rate (target over 95%). This computes each from
the events in a window (`--since`):

- `stats` lines (one every `daemon.stats_interval`): host tasks and the tightest limit's
  use (p50, p95, max), the time at each pressure level, and the daemon's counters. A
  counter is a difference between the first and the last line of one daemon (a daemon
  that started inside the window counts from zero); several daemons' figures add up.
- `exit` lines: runs completed, failed, killed by a limit (a hang stopped), stopped.
- `timeout_kill` lines: wall-clock and no-progress kills by program.

Then the advice: which key to change, and why, when the figures point at one.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Any

from supervisord_batt import protocol
from supervisord_batt.cli import exits
from supervisord_batt.cli.events import Filter, NoEvents, events_in, find_source, since_epoch
from supervisord_batt.cli.status import size_line
from supervisord_batt.supervise.states import LIMIT_REASONS, RUN_OUTCOMES

if TYPE_CHECKING:
    from supervisord_batt.config.records import Config

_COUNTERS = ("denied", "refused_spawns", "oom_kills", "requests")
Quantiles = dict[str, float | None]  # p50, p95, max (None: no data)


def _percentiles(values: list[float]) -> Quantiles:
    if not values:
        return {"p50": None, "p95": None, "max": None}
    ordered = sorted(values)

    def at(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    return {"p50": at(0.5), "p95": at(0.95), "max": ordered[-1]}


def _flat(line: dict[str, Any]) -> dict[str, float]:
    """The counters of one stats line, flattened: grants.thread, kills.batt.wall_clock_limit."""
    out: dict[str, float] = {}
    for key in _COUNTERS:
        if isinstance(line.get(key), int):
            out[key] = line[key]
    for key in ("grants", "denied_by", "fallbacks", "restarts", "level_seconds"):
        for name, n in (line.get(key) or {}).items():
            if isinstance(n, int | float):
                out[f"{key}.{name}"] = n
    for key in ("kills", "runs"):
        for program, counts in (line.get(key) or {}).items():
            for name, n in (counts or {}).items():
                if isinstance(n, int):
                    out[f"{key}.{program}.{name}"] = n
    return out


@dataclass
class _Daemon:
    """The stats lines of one daemon (one pid) in the window."""

    started_inside: bool = False
    first: dict[str, float] = field(default_factory=dict)
    last: dict[str, float] = field(default_factory=dict)
    lines: int = 0

    def delta(self) -> dict[str, float]:
        base = {} if self.started_inside else self.first
        return {k: v - base.get(k, 0) for k, v in self.last.items()}


@dataclass(frozen=True)
class LimitKill:
    """Runs of a program killed for one limit (a LIMIT_REASONS reason, in current logs)."""

    program: str
    reason: str
    count: int


@dataclass(frozen=True)
class Window:
    """The first and the last timestamp the figures cover."""

    first: str | None = None
    last: str | None = None


@dataclass(frozen=True)
class Figures:
    """The report's figures over a window: of the daemons in a log (`compute`), of one
    host's or a fleet's metrics in Prometheus (cli.fleetreport). The shares the targets
    are checked on are computed from the counts, so they always agree with them."""

    daemons: int
    stats_lines: int  # the stats lines read (the Prometheus samples, for a host)
    grants: dict[str, int]  # by kind: process, thread, sequential
    denied: int  # pool requests given sequential
    denied_by: dict[str, int]  # those by cause, from the daemon's counters
    executor_fallbacks: dict[str, int]  # pools that failed in jobs, by "from>to"
    refused_spawns: int
    limit_kills: list[LimitKill]
    runs: dict[str, int]  # by RUN_OUTCOMES
    level_seconds: dict[str, float]  # seconds at each pressure level
    host_tasks: Quantiles = field(default_factory=lambda: _percentiles([]))
    tightest_percent: Quantiles = field(default_factory=lambda: _percentiles([]))
    pressure_changes: int = 0
    oom_kills: int | None = None  # None: not counted (Prometheus' figures)
    worker_sizes: list[Any] | None = None  # the latest stats line's learned sizes, as written
    window: Window = Window()

    @property
    def pressure_share(self) -> dict[str, float | None]:
        total = sum(self.level_seconds.values())
        return {
            lv: (self.level_seconds.get(lv, 0.0) / total if total else None)
            for lv in protocol.LEVELS
        }

    @property
    def sequential_share(self) -> float | None:
        asked_pool = self.grants["process"] + self.grants["thread"] + self.denied
        return self.denied / asked_pool if asked_pool else None

    @property
    def completion_rate(self) -> float | None:
        ended = self._ended()
        return self.runs["completed"] / ended if ended else None

    @property
    def hang_rate(self) -> float | None:
        ended = self._ended()
        return self.runs["killed"] / ended if ended else None

    def _ended(self) -> int:
        return self.runs["completed"] + self.runs["failed"] + self.runs["killed"]

    def to_json(self) -> dict[str, Any]:
        """The figures and their shares, as `report --json` prints them (without what
        was not counted)."""
        out = asdict(self)
        for key in ("oom_kills", "worker_sizes"):
            if out[key] is None:
                del out[key]
        return out | {
            "pressure_share": self.pressure_share,
            "sequential_share": self.sequential_share,
            "completion_rate": self.completion_rate,
            "hang_rate": self.hang_rate,
        }


def compute(events: Iterable[dict[str, Any]]) -> Figures:
    """The report's figures from the events, oldest first."""
    daemons: dict[Any, _Daemon] = {}
    tasks: list[float] = []
    percent: list[float] = []
    peaks: list[float] = []
    runs: Counter[str] = Counter()
    kills: Counter[tuple[str, str]] = Counter()
    pressure_changes = 0
    sizes: list[Any] = []  # the latest stats line's learned worker sizes
    first_at = last_at = None
    for event in events:
        name = event.get("event")
        first_at = first_at or event.get("timestamp")
        last_at = event.get("timestamp") or last_at
        if name == "started":
            daemons.setdefault(event.get("pid"), _Daemon()).started_inside = True
        elif name == "stats":
            d = daemons.setdefault(event.get("pid"), _Daemon())
            flat = _flat(event)
            if d.lines == 0:
                d.first = flat
            d.last, d.lines = flat, d.lines + 1
            for target, key in ((tasks, "tasks"), (percent, "tightest_percent")):
                if isinstance(event.get(key), int | float):
                    target.append(float(event[key]))
            peaks.append(float(event.get("tightest_peak_percent") or 0.0))
            sizes = event.get("worker_sizes") or sizes
        elif name == "exit":
            runs[str(event.get("outcome") or _outcome(event))] += 1
        elif name == "timeout_kill":
            kills[(str(event.get("program")), str(event.get("reason")))] += 1
        elif name == "pressure_change":
            pressure_changes += 1
    total: dict[str, float] = {}
    for d in daemons.values():
        for key, n in d.delta().items():
            total[key] = total.get(key, 0) + n
    fig = _figures(total, tasks, percent, peaks, runs, kills, pressure_changes, daemons)
    return replace(fig, window=Window(_text(first_at), _text(last_at)), worker_sizes=sizes)


def _text(value: object) -> str | None:
    return None if value is None else str(value)


def _outcome(event: dict[str, Any]) -> str:
    """An exit line written before lines carried their outcome."""
    return "completed" if event.get("returncode") == 0 else "failed"


def _figures(  # noqa: PLR0917 (the report's inputs, each named)
    total: dict[str, float],
    tasks: list[float],
    percent: list[float],
    peaks: list[float],
    runs: Counter[str],
    kills: Counter[tuple[str, str]],
    pressure_changes: int,
    daemons: dict[Any, _Daemon],
) -> Figures:
    tight = _percentiles(percent)
    if peaks:
        tight["max"] = max(*peaks, tight["max"] or 0.0)
    return Figures(
        daemons=len(daemons),
        stats_lines=sum(d.lines for d in daemons.values()),
        grants={k: int(total.get(f"grants.{k}", 0)) for k in ("process", "thread", "sequential")},
        denied=int(total.get("denied", 0)),
        denied_by={
            k[len("denied_by.") :]: int(v)
            for k, v in sorted(total.items())
            if k.startswith("denied_by.") and v
        },
        executor_fallbacks={
            k[len("fallbacks.") :]: int(v) for k, v in total.items() if k.startswith("fallbacks.")
        },
        refused_spawns=int(total.get("refused_spawns", 0)),
        limit_kills=[LimitKill(p, r, n) for (p, r), n in sorted(kills.items())],
        runs={k: runs[k] for k in RUN_OUTCOMES},
        level_seconds={lv: float(total.get(f"level_seconds.{lv}", 0.0)) for lv in protocol.LEVELS},
        host_tasks=_percentiles(tasks),
        tightest_percent=tight,
        pressure_changes=pressure_changes,
        oom_kills=int(total.get("oom_kills", 0)),
    )


def targets(fig: Figures) -> list[dict[str, Any]]:
    """The incident's three targets, each met, missed, or without data."""

    def check(name: str, value: float | None, ok: bool) -> dict[str, Any]:
        return {"target": name, "value": value, "met": None if value is None else ok}

    seq, done, hang = fig.sequential_share, fig.completion_rate, fig.hang_rate
    return [
        check("sequential fallback usage < 20%", seq, seq is not None and seq < 0.20),
        check("successful task completion > 95%", done, done is not None and done > 0.95),
        check("script hangs 0%", hang, hang == 0),
    ]


def _advice_by_cause(seq: float, by: dict[str, int]) -> dict[str, str] | None:
    """The advice for the cause of most refusals (CPUs, then memory), if one has most."""
    known = sum(by.values())
    leased = by.get("cpu", 0) + by.get("fair_share", 0)
    busy = by.get("cpu_pressure", 0)
    memory, memory_psi = by.get("memory", 0), by.get("memory_pressure", 0)
    if (leased + busy) * 2 >= known and busy > leased:
        return {
            "key": "programs.<name>.numprocs / the host's CPUs",
            "why": f"{seq:.0%} of pool requests got sequential, {busy / known:.0%} of them "
            "because the CPUs were busy (PSI cpu pressure at budget.pressure.cpu_high or "
            "above): sequential is right then, the CPUs are busy and a pool would only "
            "queue for them; add CPUs or run fewer jobs at once. Lowering the reserve or "
            "the headroom thresholds changes nothing",
        }
    if (leased + busy) * 2 >= known:
        return {
            "key": "programs.<name>.numprocs / budget.cpu_cap",
            "why": f"{seq:.0%} of pool requests got sequential, {(leased + busy) / known:.0%} "
            "of them because no two CPUs were free for a pool (leased to other jobs, as "
            "when jobs are as many as CPUs or more, or budget.cpu_cap below 2): then "
            "sequential is the fastest way to run them, not a fault, and lowering the "
            "reserve or the thresholds changes nothing; run fewer jobs at once only if "
            "each job must finish sooner",
        }
    if (memory + memory_psi) * 2 >= known and memory_psi > memory:
        return {
            "key": "programs.<name>.numprocs / the host's memory",
            "why": f"{seq:.0%} of pool requests got sequential, {memory_psi / known:.0%} of "
            "them because the host was short of memory (PSI memory pressure at "
            "budget.pressure.memory_high or above): run fewer jobs at once or add memory; "
            "lowering budget.memory_per_slot or the reserve would not help",
        }
    if (memory + memory_psi) * 2 >= known:
        return {
            "key": "budget.memory_per_slot",
            "why": f"{seq:.0%} of pool requests got sequential, mostly for want of memory "
            "(no memory_per_slot free for another process worker): lower it if workers "
            "use less (their RSS is in `status`), else the host's memory is the limit",
        }
    return None


def _advice_by_limit(fig: Figures, seq: float) -> dict[str, str] | None:
    """The advice when a task limit refused (or the lines do not say why): its reserve
    and thresholds if it stayed far from full, else the host is full."""
    peak_p95 = fig.tightest_percent["p95"]
    share = fig.pressure_share
    high = (share["high"] or 0.0) + (share["extreme"] or 0.0)
    if peak_p95 is not None and peak_p95 < 60:
        return {
            "key": "budget.reserve_percent / budget.reserve_tasks / "
            "budget.pressure.headroom_high_percent",
            "why": f"{seq:.0%} of pool requests got sequential while the tightest limit's "
            f"use stayed under {peak_p95:.0f}% (p95): the reserve or the pressure "
            "thresholds hold back more than the host needs; lower them a step",
        }
    if high > 0.2:
        return {
            "key": "programs.<name>.numprocs / the unit's TasksMax",
            "why": f"{seq:.0%} of pool requests got sequential and the host was at high "
            f"or extreme pressure {high:.0%} of the time: the host is really full; run "
            "fewer jobs at once or raise the limit",
        }
    return None


def advice(fig: Figures) -> list[dict[str, str]]:
    """Tuning advice the figures support: a key to change and why (none when all is well).

    Which key depends on why pool requests got sequential (`denied_by`, counted by the
    daemon from each grant's reason and the signal that set the pressure level): CPUs
    all leased or busy is not a key to turn down, memory is memory, a reserve or a
    pressure threshold on a task limit is. The simulation of 8-64 core hosts
    (docs/SIMULATION.md) is the basis: with jobs at least as many as CPUs, sequential is
    the fastest policy; the reserve and the thresholds change throughput by a few percent
    and never caused a failure, so they are worth lowering only when a limit is what
    refused."""
    out: list[dict[str, str]] = []
    seq = fig.sequential_share
    if seq is not None and seq > 0.30:  # mostly sequential
        by = fig.denied_by
        tip = _advice_by_cause(seq, by) if sum(by.values()) else None
        if tip is None:
            tip = _advice_by_limit(fig, seq)
        if tip is not None:
            out.append(tip)
    if fig.refused_spawns or fig.executor_fallbacks:
        out.append(
            {
                "key": "budget.reserve_tasks / programs.<name>.contain",
                "why": f"{fig.refused_spawns} task creations were refused and jobs reported "
                f"{sum(fig.executor_fallbacks.values())} pool fallbacks: something started "
                "more than it leased; raise reserve_tasks, and keep contain: true so a job "
                "that overspends is refused in its own cgroup",
            }
        )
    for kill in fig.limit_kills:
        if kill.reason not in LIMIT_REASONS:  # a log line from another version
            continue
        out.append(
            {
                "key": f"programs.{kill.program}.{kill.reason}",
                "why": f"{kill.count} runs of {kill.program} were killed for "
                f"{kill.reason}: either they hung (read their output: supervisord-batt "
                "tail) or the limit is shorter than a normal run",
            }
        )
    return out


def render(fig: Figures, samples: bool = False) -> str:
    """The table; `samples`: the figures came from Prometheus' samples of one host or
    more (the fleet report), not from `stats` lines of daemons."""

    def pct(v: float | None) -> str:
        return "-" if v is None else f"{v:.1%}"

    def trio(d: Quantiles, unit: str = "") -> str:
        return "  ".join(f"{k} {'-' if v is None else f'{v:.0f}{unit}'}" for k, v in d.items())

    w = fig.window
    source = "samples" if samples else "stats lines"
    from_ = "host(s)" if samples else "daemon(s)"
    lines = [
        f"supervisord-batt report: {w.first or '-'} .. {w.last or '-'}, "
        f"{fig.stats_lines} {source} from {fig.daemons} {from_}",
        "",
        "TARGET                               VALUE    MET",
    ]
    for t in targets(fig):
        met = {True: "yes", False: "NO", None: "no data"}[t["met"]]
        lines.append(f"{t['target']:<36} {pct(t['value']):<8} {met}")
    g = fig.grants
    lines += [
        "",
        f"host tasks          {trio(fig.host_tasks)}",
        f"tightest limit use  {trio(fig.tightest_percent, '%')}",
        "time at pressure    "
        + "  ".join(f"{lv} {pct(s)}" for lv, s in fig.pressure_share.items())
        + f"  ({fig.pressure_changes} changes)",
        f"grants              process {g['process']}  thread {g['thread']}  "
        f"sequential {g['sequential']}  (pool asked, sequential given: {fig.denied})",
        "  sequential because " + (", ".join(f"{k} {v}" for k, v in fig.denied_by.items()) or "-"),
        "executor fallbacks  "
        + (", ".join(f"{k} {v}" for k, v in fig.executor_fallbacks.items()) or "0"),
        f"refused spawns      {fig.refused_spawns}",
        *([f"oom kills           {fig.oom_kills}"] if fig.oom_kills is not None else []),
        "limit kills         "
        + (", ".join(f"{k.program} {k.reason} {k.count}" for k in fig.limit_kills) or "0"),
        "runs                " + "  ".join(f"{k} {v}" for k, v in fig.runs.items()),
        *_size_lines(fig.worker_sizes or []),
        "",
    ]
    tips = advice(fig)
    if not tips:
        missed = [t for t in targets(fig) if t["met"] is False]
        lines.append("advice: none" + ("" if missed else "; no target missed"))
    for tip in tips:
        lines.append(f"advice: {tip['key']}: {tip['why']}")
    if fig.stats_lines == 0 and not samples:
        lines.append(
            "note: no stats lines in this window (the daemon writes one every "
            "daemon.stats_interval): the host and grant figures are empty"
        )
    return "\n".join(lines)


def _size_lines(sizes: list[Any]) -> list[str]:
    """The learned memory per worker of the jobs in the latest stats line."""
    out = []
    for row in sizes:
        with contextlib.suppress(KeyError, TypeError, AttributeError, ValueError):
            tasks = row.get("worker_tasks"), row.get("pool_tasks")
            each, extra = (int(t) if t is not None else None for t in tasks)
            out.append(
                size_line(
                    str(row["job"]),
                    int(row["worker_bytes"]),
                    int(row["runs"]),
                    (each, extra),
                    row.get("from_kill") is True,
                )
            )
    return (
        ["worker sizes        " + out[0], *("                    " + x for x in out[1:])]
        if out
        else []
    )


def run_report(args: argparse.Namespace, config: Config | None) -> int:
    try:
        source = find_source(args, config)
        keep = Filter(since=since_epoch(args.since))
    except (NoEvents, ValueError) as exc:
        print(f"supervisord-batt report: {exc}", file=sys.stderr)
        return exits.UNAVAILABLE
    print(f"supervisord-batt report: reading {source.describe()}", file=sys.stderr)
    try:
        fig = compute(event for _, event in events_in(source, keep) if event is not None)
    except FileNotFoundError as exc:
        print(f"supervisord-batt report: {exc.filename}: no such file", file=sys.stderr)
        return exits.UNAVAILABLE
    if args.json:
        print(json.dumps(fig.to_json() | {"targets": targets(fig), "advice": advice(fig)}))
    else:
        print(render(fig))
    return exits.OK
