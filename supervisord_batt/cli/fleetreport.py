"""`supervisord-batt report --prometheus URL`: the incident's table for every host that
Prometheus scrapes (or reads through node_exporter), and for the fleet.

The figures, targets and advice are those of the local report (cli.report), computed from
the daemons' metrics in Prometheus over `--since` (1d by default) instead of one host's
`stats` lines:

- a counter (grants, denials by cause, fallbacks, refused task creations, runs, limit
  kills, time at each pressure level) is its value at the window's end less its value at
  the start; a series with no sample at the start counts from zero, as the local report
  counts a daemon that started inside the window; a series that was reset inside the
  window (the daemon restarted) is read sample by sample, each reset counting from zero.
  These are exact, where PromQL's increase() extrapolates to the window's edges;
- host tasks: quantiles over the window's samples; the tightest limit's use: quantiles
  of a subquery (one point every window/1440, at least 1 s and at most 60 s);
- the fleet: counters summed over hosts; for host tasks and the tightest limit's use,
  the busiest host's figure (the fleet is as close to a limit as its closest host).

# Why urllib
Prometheus' HTTP API is GET requests answered with JSON; the standard library's urllib
does that in a dozen lines, and the CLI then needs nothing more on a VM.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import defaultdict
from dataclasses import dataclass, replace
from typing import Any

from supervisord_batt import protocol
from supervisord_batt.cli import exits, report
from supervisord_batt.cli.report import Figures, LimitKill, Quantiles, Window
from supervisord_batt.supervise.states import RUN_OUTCOMES

P = "supervisord_batt_"
QUANTILES = {
    "p50": "quantile_over_time(0.5, {})",
    "p95": "quantile_over_time(0.95, {})",
    "max": "max_over_time({})",
}
Labels = tuple[tuple[str, str], ...]


class PrometheusError(Exception):
    pass


@dataclass
class Prometheus:
    """Instant queries against Prometheus' HTTP API (/api/v1/query), all at `at`."""

    url: str
    at: float
    timeout: float = 30.0

    def query(self, expr: str) -> list[dict[str, Any]]:
        params = urllib.parse.urlencode({"query": expr, "time": f"{self.at:.3f}"})
        url = f"{self.url.rstrip('/')}/api/v1/query?{params}"
        try:
            with urllib.request.urlopen(url, timeout=self.timeout) as reply:
                body = json.loads(reply.read())
        except urllib.error.HTTPError as exc:  # 400/422: the API says why in JSON
            body = _json_or_none(exc.read()) or {"error": f"HTTP {exc.code} {exc.reason}"}
        except (OSError, ValueError) as exc:
            raise PrometheusError(f"cannot query {self.url}: {exc}") from exc
        if body.get("status") != "success":
            raise PrometheusError(f"{self.url} refused {expr!r}: {body.get('error')}")
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    def by_instance(self, expr: str) -> dict[str, float]:
        """{instance: value} of an instant vector summed by instance."""
        return {
            s["metric"].get("instance", ""): float(s["value"][1])
            for s in self.query(f"sum by (instance) ({expr})")
        }


def _json_or_none(data: bytes) -> dict[str, Any] | None:
    try:
        value = json.loads(data)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _key(metric: dict[str, str]) -> Labels:
    return tuple(sorted((k, v) for k, v in metric.items() if k != "__name__"))


def counter_deltas(prom: Prometheus, name: str, window: int) -> dict[Labels, float]:
    """Each series' count inside the window (see the module's docstring), by labels."""
    end = {
        _key(s["metric"]): float(s["value"][1])
        for s in prom.query(f"last_over_time({name}[{window}s])")
    }
    start = {
        _key(s["metric"]): float(s["value"][1]) for s in prom.query(f"{name} offset {window}s")
    }
    reset = {_key(s["metric"]) for s in prom.query(f"resets({name}[{window}s]) > 0")}
    out = {k: v - start.get(k, 0.0) for k, v in end.items()}
    for labels in reset:
        matcher = ", ".join(f'{k}="{_escape(v)}"' for k, v in labels)
        (series,) = prom.query(f"{name}{{{matcher}}}[{window}s]") or [{"values": []}]
        out[labels] = counted(start.get(labels, 0.0), [float(v) for _, v in series["values"]])
    return out


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"')


def counted(base: float, values: list[float]) -> float:
    """What a counter counted over its samples, from `base`; a drop is a reset to zero."""
    total, last = 0.0, base
    for value in values:
        total += value - last if value >= last else value
        last = value
    return total


def _by(deltas: dict[Labels, float], *keys: str) -> dict[str, dict[tuple[str, ...], float]]:
    """{instance: {(label values of keys): sum}}."""
    out: dict[str, dict[tuple[str, ...], float]] = defaultdict(lambda: defaultdict(float))
    for labels, value in deltas.items():
        d = dict(labels)
        out[d.get("instance", "")][tuple(d.get(k, "") for k in keys)] += value
    return out


def _step(window: int) -> int:
    return max(1, min(60, window // 1440))


def host_figures(prom: Prometheus, window: int) -> dict[str, Figures]:
    """The local report's figures, for each instance that had the daemon's metrics."""
    counts = {
        name: _by(counter_deltas(prom, P + name + "_total", window), *keys)
        for name, keys in (
            ("grants", ("kind",)),
            ("denials", ("cause",)),
            ("executor_fallbacks", ("from", "to")),
            ("cgroup_refused_tasks", ()),
            ("runs", ("outcome",)),
            ("limit_kills", ("program", "reason")),
            ("pressure_seconds", ("level",)),
        )
    }
    w = f"[{window}s]"
    use = (
        f"100 * max by (instance) (({P}limit_in_use_tasks / {P}limit_tasks)"
        f" and on (instance, job, limit) {P}tightest_headroom_tasks)"
    )
    over = {  # the window's samples; the tightest limit's use as a subquery
        "host_tasks": f"{P}host_tasks{w}",
        "tightest_percent": f"({use})[{window}s:{_step(window)}s]",
    }
    quantiles = {
        key: {q: prom.by_instance(fn.format(range_)) for q, fn in QUANTILES.items()}
        for key, range_ in over.items()
    }
    samples = prom.by_instance(f"count_over_time({P}host_tasks{w})")
    changes = prom.by_instance(f"changes({P}pressure_level{w})")
    out = {}
    for instance in sorted(samples):
        at = {key: {q: by_q[q].get(instance) for q in QUANTILES} for key, by_q in quantiles.items()}
        out[instance] = replace(
            counter_figures({name: counts[name].get(instance, {}) for name in counts}),
            stats_lines=int(samples[instance]),  # samples, here
            host_tasks=at["host_tasks"],
            tightest_percent=at["tightest_percent"],
            pressure_changes=int(changes.get(instance, 0)),
        )
    return out


def counter_figures(c: dict[str, dict[tuple[str, ...], float]]) -> Figures:
    """One host's counters as the local report's figures (counts are whole numbers); its
    samples and quantiles are host_figures' to add."""

    def n(name: str, *key: str) -> int:
        return round(c[name].get(key, 0.0))

    return Figures(
        daemons=1,
        stats_lines=0,
        grants={k: n("grants", k) for k in ("process", "thread", "sequential")},
        denied=round(sum(c["denials"].values())),
        denied_by={k[0]: round(v) for k, v in sorted(c["denials"].items()) if round(v) and k[0]},
        executor_fallbacks={
            f"{a}>{b}": round(v)
            for (a, b), v in sorted(c["executor_fallbacks"].items())
            if round(v)
        },
        refused_spawns=round(sum(c["cgroup_refused_tasks"].values())),
        limit_kills=[
            LimitKill(p, r, round(v)) for (p, r), v in sorted(c["limit_kills"].items()) if round(v)
        ],
        runs={k: n("runs", k) for k in RUN_OUTCOMES},
        level_seconds={lv: c["pressure_seconds"].get((lv,), 0.0) for lv in protocol.LEVELS},
    )


def fleet_figures(hosts: dict[str, Figures]) -> Figures:
    """The fleet's figures: the hosts' counts summed; host tasks and the tightest limit's
    use of the busiest host."""
    figs = list(hosts.values())

    def summed(counts: list[dict[str, int]]) -> dict[str, int]:
        out: dict[str, int] = defaultdict(int)
        for by_key in counts:
            for k, v in by_key.items():
                out[k] += v
        return dict(sorted(out.items()))

    kills: dict[tuple[str, str], int] = defaultdict(int)
    for f in figs:
        for k in f.limit_kills:
            kills[(k.program, k.reason)] += k.count
    return Figures(
        daemons=len(figs),
        stats_lines=sum(f.stats_lines for f in figs),
        grants={k: sum(f.grants[k] for f in figs) for k in ("process", "thread", "sequential")},
        denied=sum(f.denied for f in figs),
        denied_by=summed([f.denied_by for f in figs]),
        executor_fallbacks=summed([f.executor_fallbacks for f in figs]),
        refused_spawns=sum(f.refused_spawns for f in figs),
        limit_kills=[LimitKill(p, r, v) for (p, r), v in sorted(kills.items())],
        runs={k: sum(f.runs[k] for f in figs) for k in RUN_OUTCOMES},
        level_seconds={lv: sum(f.level_seconds[lv] for f in figs) for lv in protocol.LEVELS},
        host_tasks=_busiest([f.host_tasks for f in figs]),
        tightest_percent=_busiest([f.tightest_percent for f in figs]),
        pressure_changes=sum(f.pressure_changes for f in figs),
    )


def _busiest(quantiles: list[Quantiles]) -> Quantiles:
    out: Quantiles = {}
    for q in ("p50", "p95", "max"):
        values = [v for by_q in quantiles if (v := by_q[q]) is not None]
        out[q] = max(values) if values else None
    return out


def run_fleet_report(args: argparse.Namespace) -> int:
    from supervisord_batt.quantities import parse_duration

    try:
        window = int(parse_duration(args.since or "1d"))
    except ValueError as exc:
        print(f"supervisord-batt report: --since: {exc}", file=sys.stderr)
        return exits.UNAVAILABLE
    now = time.time()
    prom = Prometheus(args.prometheus, now)
    print(f"supervisord-batt report: reading {args.prometheus}", file=sys.stderr)
    try:
        hosts = host_figures(prom, window)
    except PrometheusError as exc:
        print(f"supervisord-batt report: {exc}", file=sys.stderr)
        return exits.UNAVAILABLE
    span = Window(_stamp(now - window), _stamp(now))
    hosts = {instance: replace(fig, window=span) for instance, fig in hosts.items()}
    fleet = replace(fleet_figures(hosts), window=span)
    if args.json:
        print(json.dumps(_with_verdicts(hosts, fleet)))
        return exits.OK
    for instance, fig in hosts.items():
        print(f"== {instance}")
        print(report.render(fig, samples=True))
        print()
    print(f"== fleet: {len(hosts)} host(s)")
    print(report.render(fleet, samples=True))
    return exits.OK


def _with_verdicts(hosts: dict[str, Figures], fleet: Figures) -> dict[str, Any]:
    def full(fig: Figures) -> dict[str, Any]:
        return fig.to_json() | {"targets": report.targets(fig), "advice": report.advice(fig)}

    return {"hosts": {i: full(f) for i, f in hosts.items()}, "fleet": full(fleet)}


def _stamp(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))
