"""Every PromQL expression of the Grafana dashboard, evaluated by a real Prometheus that
scrapes three daemons: each returns series, with the figures the daemons themselves give
(`status` for what they hold now; their `stats` lines for what they counted).

Grafana's variables are replaced as Grafana would: `$instance` by the three hosts (All),
`$__rate_interval` and `$__range` by a window longer than the whole test, so that a rate
or an increase covers every count (Prometheus extrapolates an increase to the window's
end by up to one scrape interval, 500 ms over 12 s of samples at least: counts are
compared within 10%).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from typing import Any

import pytest

from tests.helpers import wait_until
from tests.integration.prometheus.tools import DASHBOARD, RULES
from tests.support.prometheus import Fleet, Host

WINDOW = "10m"
Result = dict[tuple[str, ...], float]


def expand(expr: str, hosts: list[str]) -> str:
    return (
        expr.replace("$instance", "|".join(hosts))
        .replace("$__rate_interval", WINDOW)
        .replace("$__range", WINDOW)
    )


def targets() -> list[tuple[str, str, str]]:
    """(panel title, refId, expr) of every query of the dashboard."""
    dashboard = json.loads(DASHBOARD.read_text())
    return [
        (panel["title"], t["refId"], t["expr"])
        for panel in dashboard["panels"]
        for t in panel.get("targets", [])
    ]


def status(host: Host) -> dict[str, Any]:
    return host.handle.status()


def near(value: float, expected: float, rel: float = 0.1, abs_: float = 1e-9) -> bool:
    return math.isclose(value, expected, rel_tol=rel, abs_tol=abs_)


def moving(value: float, now: float) -> bool:
    """A figure of the machine's task count, which moves by tens a second while other
    tests run: Prometheus' sample against the daemon's status a moment later, within
    half again (and half a percentage point for a percentage)."""
    low, high = sorted((value, now))
    return high <= 1.5 * low + 0.5


def counted(fleet: Fleet, key: str, *path: str) -> dict[str, float]:
    """A counter of each host's latest stats line, by host (0 where absent)."""
    out = {}
    for name, host in fleet.hosts.items():
        value: Any = host.last_stats().get(key, {})
        for part in path:
            value = value.get(part, {}) if isinstance(value, dict) else 0
        out[name] = float(sum(value.values()) if isinstance(value, dict) else value or 0)
    return out


# -- a check per panel: the query's result against the daemons' own figures ----------


def tightest_headroom(fleet: Fleet, got: Result) -> None:
    for name, host in fleet.hosts.items():
        tight = status(host)["host"]["tightest"]
        value = got[(name, tight["name"])]
        assert near(value, tight["headroom"], rel=0.2), (name, value, tight)


def limit_use(fleet: Fleet, got: Result) -> None:
    for name, host in fleet.hosts.items():
        for limit in status(host)["host"]["limits"]:
            value = got[(name, limit["name"])]
            assert moving(value, limit["percent_used"]), (name, limit, value)


def host_tasks(fleet: Fleet, got: Result) -> None:
    for name, host in fleet.hosts.items():
        threads = status(host)["host"]["threads_total"]
        assert moving(got[(name,)], threads), (name, got[(name,)], threads)


def pressure_level(fleet: Fleet, got: Result) -> None:
    levels = {"normal": 0, "high": 1, "extreme": 2}
    for name, host in fleet.hosts.items():
        assert got[(name,)] == levels[status(host)["level"]]


def sequential_share(fleet: Fleet, got: Result) -> None:
    for name, host in fleet.hosts.items():
        stats = host.last_stats()
        pooled = stats["grants"].get("process", 0) + stats["grants"].get("thread", 0)
        expected = 100 * stats["denied"] / (pooled + stats["denied"])
        assert near(got[(name,)], expected), (name, got, stats)
    assert got[("host-a",)] == pytest.approx(100)  # one CPU: its pool request got sequential


def grants_by_kind(fleet: Fleet, got: Result) -> None:
    for kind in ("process", "thread", "sequential"):
        count = sum(counted(fleet, "grants", kind).values())
        assert near(got[(kind,)] * 600, count), (kind, got, count)  # a rate over 10 minutes


def increase_by(key: str, *path: str) -> Callable[[Fleet, Result], None]:
    def check(fleet: Fleet, got: Result) -> None:
        total = sum(counted(fleet, key, *path).values())
        assert near(sum(got.values()), total), (key, path, got, total)
        assert total > 0  # the fleet did this once at least: the panel shows it

    return check


def refused(fleet: Fleet, got: Result) -> None:
    for name, host in fleet.hosts.items():
        (cgroup,) = [c for c in status(host)["host"]["cgroups"] if c["pids_events_max"] is not None]
        expected = host.last_stats()["refused_spawns"]
        assert near(got[(name, cgroup["path"])], expected), (name, got, expected)
    assert got[("host-a", fleet.hosts["host-a"].cgroup.cgroup_path)] >= 2


def hangs(fleet: Fleet, got: Result) -> None:
    kills = fleet.hosts["host-a"].last_stats()["kills"]
    assert kills == {"hang": {"wall_clock_limit": 1}}
    assert near(got[("hang", "wall_clock_limit")], 1)
    assert all(v == 0 for k, v in got.items() if k != ("hang", "wall_clock_limit"))


def completion(fleet: Fleet, got: Result) -> None:
    done = ended = 0
    for host in fleet.hosts.values():
        for outcomes in host.last_stats()["runs"].values():
            done += outcomes.get("completed", 0)
            ended += sum(outcomes.get(k, 0) for k in ("completed", "failed", "killed"))
    assert near(got[()], 100 * done / ended), (got, done, ended)


def instances(fleet: Fleet, got: Result) -> None:
    states: dict[str, int] = {}
    for host in fleet.hosts.values():
        for inst in status(host)["instances"]:
            states[inst["state"]] = states.get(inst["state"], 0) + 1
    assert {k[0]: v for k, v in got.items() if v} == states
    assert states.get("FATAL") == 1  # host-c's flapping program


def restarts(fleet: Fleet, got: Result) -> None:
    expected: dict[str, float] = {}
    for host in fleet.hosts.values():
        for program, n in host.last_stats()["restarts"].items():
            expected[program] = expected.get(program, 0) + n
    for program, n in expected.items():
        assert near(got[(program,)], n), (program, got, expected)
    assert expected.get("bad", 0) >= 1


def leased(fleet: Fleet, got: Result) -> None:
    expected: dict[str, int] = {}
    for host in fleet.hosts.values():
        for lease in status(host)["leases"]:
            expected[lease["kind"]] = expected.get(lease["kind"], 0) + lease["workers"]
    assert {k[0]: v for k, v in got.items() if v} == {k: v for k, v in expected.items() if v}
    assert expected == {"sequential": 0, "process": 4}  # host-a's job got sequential


def capacity(fleet: Fleet, got: Result) -> None:
    assert got[()] == sum(status(h)["capacity"] for h in fleet.hosts.values())


def latency(fleet: Fleet, got: Result) -> None:
    (value,) = got.values()
    assert 0 < value <= 10  # seconds: the largest finite bucket


def per_host(recorded: str, scale: float = 100) -> Callable[[Fleet, Result], None]:
    """A recording rule per host, against the same figure from each daemon's counters."""

    def check(fleet: Fleet, got: Result) -> None:
        assert set(got) == {(name,) for name in fleet.hosts}
        for name, host in fleet.hosts.items():
            expected = _from_stats(recorded, host.last_stats())
            assert near(got[(name,)], scale * expected), (recorded, name, got, expected)

    return check


def fleet_wide(recorded: str) -> Callable[[Fleet, Result], None]:
    def check(fleet: Fleet, got: Result) -> None:
        stats = [h.last_stats() for h in fleet.hosts.values()]
        parts = [_parts(recorded, s) for s in stats]
        expected = sum(p[0] for p in parts) / sum(p[1] for p in parts)
        assert near(got[()], 100 * expected), (recorded, got, expected)

    return check


def _parts(recorded: str, stats: dict[str, Any]) -> tuple[float, float]:
    if "sequential_share" in recorded:
        pooled = stats["grants"].get("process", 0) + stats["grants"].get("thread", 0)
        return stats["denied"], pooled + stats["denied"]
    runs = list(stats["runs"].values())
    done = sum(o.get("completed", 0) for o in runs)
    return done, sum(o.get(k, 0) for o in runs for k in ("completed", "failed", "killed"))


def _from_stats(recorded: str, stats: dict[str, Any]) -> float:
    if "tightest_use" in recorded:
        return float(stats["tightest_percent"]) / 100
    if "hangs" in recorded:
        return float(sum(n for k in stats["kills"].values() for n in k.values()))
    part, whole = _parts(recorded, stats)
    return part / whole


def tightest_use(fleet: Fleet, got: Result) -> None:
    for name, host in fleet.hosts.items():
        tight = status(host)["host"]["tightest"]
        expected = 100 * tight["in_use"] / tight["limit"]
        assert moving(got[(name,)], expected), (name, got, tight)


def hung_per_host(fleet: Fleet, got: Result) -> None:
    for name, host in fleet.hosts.items():
        kills = sum(n for k in host.last_stats()["kills"].values() for n in k.values())
        assert near(got[(name,)], kills), (name, got, kills)
    assert got[("host-a",)] >= 1


# panel title -> (labels the result is keyed by, the check)
CHECKS: dict[str, tuple[tuple[str, ...], Callable[[Fleet, Result], None]]] = {
    "Tightest limit: headroom": (("instance", "limit"), tightest_headroom),
    "Limit use (% of each limit)": (("instance", "limit"), limit_use),
    "Host tasks": (("instance",), host_tasks),
    "Pressure level": (("instance",), pressure_level),
    "Sequential fallback share (target < 20%)": (("instance",), sequential_share),
    "Grants by kind": (("kind",), grants_by_kind),
    "Executor fallbacks reported by jobs": (("from", "to"), increase_by("fallbacks")),
    "Refused task creations (pids.events max)": (("instance", "cgroup"), refused),
    "Hangs: wall-clock and no-progress kills": (("program", "reason"), hangs),
    "Run completion rate (target > 95%)": ((), completion),
    "Instances by state": (("state",), instances),
    "Restarts by program": (("program",), restarts),
    "Leased workers and capacity/A": (("kind",), leased),
    "Leased workers and capacity/B": ((), capacity),
    "Daemon request latency": ((), latency),
    "Fleet: sequential fallback share, 1h (target < 20%)": (
        (),
        fleet_wide("sequential_share"),
    ),
    "Fleet: run completion rate, 6h (target > 95%)": ((), fleet_wide("completion")),
    "Per host: sequential fallback share, 1h (target < 20%)": (
        ("instance",),
        per_host("sequential_share"),
    ),
    "Per host: run completion rate, 6h (target > 95%)": (("instance",), per_host("completion")),
    "Per host: tightest limit use": (("instance",), tightest_use),
    "Per host: hung runs, 6h (target 0)": (("instance",), hung_per_host),
}


def _check_for(title: str, ref: str) -> tuple[tuple[str, ...], Callable[[Fleet, Result], None]]:
    return CHECKS.get(f"{title}/{ref}") or CHECKS[title]


def test_every_query_has_a_check() -> None:
    for title, ref, _ in targets():
        assert f"{title}/{ref}" in CHECKS or title in CHECKS, f"no check for {title!r} {ref}"


@pytest.mark.usefixtures("needs_root")  # the fleet's cgroups; marks them `root`
@pytest.mark.parametrize(("title", "ref", "expr"), targets(), ids=lambda x: str(x)[:40])
def test_issue26_every_dashboard_query_returns_the_daemons_figures(
    fleet: Fleet, title: str, ref: str, expr: str
) -> None:
    hosts = sorted(fleet.hosts)
    query = expand(expr, hosts)
    # (a scrape that failed on a loaded machine marks a host's series stale until the
    # next one, half a second later: an empty answer is asked again for a few seconds)
    series = wait_until(lambda: fleet.prometheus.query(query), timeout=5, what=f"{title}: {query}")
    by, check = _check_for(title, ref)
    got = {tuple(s["metric"].get(k, "") for k in by): float(s["value"][1]) for s in series}
    assert all(math.isfinite(v) for v in got.values()), got
    check(fleet, got)


def test_the_fleet_row_reads_recording_rules_the_rules_file_records() -> None:
    recorded = set(re.findall(r"record: (\S+)", RULES.read_text()))
    used = {
        name
        for _, _, expr in targets()
        for name in re.findall(r"\b[a-z]+:[a-z_]+:[a-z0-9_]+", expr)
    }
    assert used and used <= recorded, used - recorded


@pytest.mark.usefixtures("needs_root")
def test_issue26_the_rules_fire_on_the_fleet(fleet: Fleet) -> None:
    """The alerts without a `for:` fire in the real Prometheus on the host that earned
    them, and on no other: the hang, the refused forks, the reported fallback."""

    def firing() -> set[tuple[str, str]]:
        alerts = fleet.prometheus.api("alerts")["alerts"]
        return {
            (a["labels"]["alertname"], a["labels"]["instance"])
            for a in alerts
            if a["state"] == "firing"
        }

    expected = {
        ("SupervisordBattRunHung", "host-a"),
        ("SupervisordBattTaskCreationsRefused", "host-a"),
        ("SupervisordBattExecutorFallbacks", "host-a"),
    }
    seen = wait_until(lambda: expected <= firing() and firing(), what="the alerts firing")
    assert {a for a in seen if a[0] in {e[0] for e in expected}} == expected
