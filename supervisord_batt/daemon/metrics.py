"""Prometheus metrics: what the daemon knows, in the names a fleet's dashboards expect.

prometheus-client supplies the metric families, the names' checks and the exposition
format; nothing here writes that format by hand. The figures are not kept twice: one
collector reads the daemon's live state at each scrape (the host sample, the ledger, the
counters of `Tallies` and of the supervisor), so the request path pays for a counter
increment, never for a metrics library call.

Two outputs, each off unless configured (`metrics.listen`, `metrics.textfile`): an HTTP
endpoint served from the daemon's own event loop (`daemon.metricshttp`; the library's
server would start a thread) and a textfile rewritten atomically every tick for
node_exporter's textfile collector (`safepath.HeldDir`).

One format serves both outputs: Prometheus' text format (version 0.0.4), the one
node_exporter's textfile collector reads and every Prometheus accepts. OpenMetrics,
which Prometheus asks for first, is not offered: nothing here needs what it adds
(exemplars, created timestamps), and a second format would be a second rendering every
tick.

Names follow Prometheus' conventions: the `supervisord_batt_` prefix, base units in the
name (`_tasks`, `_workers`, `_bytes`, `_seconds`), `_total` on counters.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, generate_latest
from prometheus_client.registry import Collector

from supervisord_batt import protocol
from supervisord_batt.budget.ledger import BudgetLedger
from supervisord_batt.daemon.tallies import DENIAL_CAUSES, Tallies
from supervisord_batt.host.sample import HostSample
from supervisord_batt.supervise.states import LIMIT_REASONS, RUN_OUTCOMES, State
from supervisord_batt.supervise.supervisor import Supervisor

P = "supervisord_batt_"
TEXT_FORMAT = CONTENT_TYPE_PLAIN_0_0_4
# Labelled counters are announced at 0 for every label set that can occur (each kind
# pair, each configured program's outcomes and limits): Prometheus' increase() and rate()
# see nothing of a series that first appears at 1, so an alert on "any hang" would miss
# the first hang of a program.
FALLBACKS = tuple(
    (a, b) for i, a in enumerate(protocol.KINDS) for b in protocol.KINDS[i + 1 :]
)  # a pool falls back to a later kind only


@dataclass(eq=False)  # compared by identity, like any collector
class DaemonCollector:
    """A prometheus-client collector over the daemon's live state."""

    sample: Callable[[], HostSample | None]
    ledger: BudgetLedger
    tallies: Tallies
    supervisor: Supervisor
    started: float = 0.0  # the daemon's start, Unix time
    level_seconds: Callable[[], Mapping[str, float]] = dict  # time at each pressure level
    # (scrapes answered, endpoint connections dropped by why)
    endpoint: Callable[[], tuple[int, Mapping[str, int]]] = field(default=lambda: (0, Counter()))

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily(
            P + "start_time_seconds", "When this daemon started, Unix time", self.started
        )
        yield from self._host()
        yield from self._budget()
        yield from self._requests()
        yield from self._programs()
        yield from self._endpoint()

    def _host(self) -> Iterator[Metric]:
        sample = self.sample()
        if sample is None:
            return
        yield GaugeMetricFamily(
            P + "host_tasks",
            "Threads and processes on the host (/proc/loadavg)",
            sample.threads_total,
        )
        labels = ["limit", "kind"]
        limit = GaugeMetricFamily(P + "limit_tasks", "Each limit on new tasks", labels=labels)
        used = GaugeMetricFamily(
            P + "limit_in_use_tasks", "Tasks counted by each limit", labels=labels
        )
        room = GaugeMetricFamily(
            P + "limit_headroom_tasks", "Tasks each limit still allows", labels=labels
        )
        for lim in sample.limits:
            key = [lim.name, lim.kind]
            limit.add_metric(key, lim.limit)
            used.add_metric(key, lim.in_use)
            room.add_metric(key, lim.headroom)
        yield from (limit, used, room)
        tightest = sample.tightest()
        tight = GaugeMetricFamily(
            P + "tightest_headroom_tasks",
            "Headroom of the tightest limit (the one that refuses the next thread first)",
            labels=["limit"],
        )
        tight.add_metric([tightest.name], tightest.headroom)
        yield tight
        refused = CounterMetricFamily(
            P + "cgroup_refused_tasks",
            "Task creations a watched pids cgroup refused (pids.events max)",
            labels=["cgroup"],
        )
        for cg in sample.cgroups:
            if cg.pids_events_max is not None:
                refused.add_metric([cg.path], cg.pids_events_max)
        yield refused
        yield GaugeMetricFamily(
            P + "memory_available_bytes", "MemAvailable", sample.mem_available_bytes
        )
        yield from _memory(sample)
        yield GaugeMetricFamily(P + "cpus", "CPUs usable by the workers", sample.cpus)

    def _budget(self) -> Iterator[Metric]:
        stats = self.ledger.statistics()
        yield GaugeMetricFamily(
            P + "capacity_workers",
            "Process workers a new holder could get now (0 unless the level is normal)",
            stats.capacity,
        )
        leased = GaugeMetricFamily(P + "leased_workers", "Workers leased, by kind", labels=["kind"])
        for kind in protocol.KINDS:
            workers = sum(x.workers for x in stats.leases if x.kind == kind)
            leased.add_metric([kind], workers)
        yield leased
        yield GaugeMetricFamily(
            P + "leased_tasks", "Tasks the leased pools cost", stats.leased_tasks
        )
        yield GaugeMetricFamily(P + "leases", "Live leases", len(stats.leases))
        yield GaugeMetricFamily(
            P + "pressure_level",
            "Pressure: 0 normal, 1 high, 2 extreme",
            protocol.LEVELS.index(stats.level),
        )
        at_level = CounterMetricFamily(
            P + "pressure_seconds", "Time spent at each pressure level", labels=["level"]
        )
        spent = self.level_seconds()
        for level in protocol.LEVELS:
            at_level.add_metric([level], spent.get(level, 0.0))
        yield at_level
        grants = CounterMetricFamily(
            P + "grants", "Acquires answered, by the kind granted", labels=["kind"]
        )
        for kind in protocol.KINDS:
            grants.add_metric([kind], self.tallies.grants[kind])
        yield grants
        denials = CounterMetricFamily(
            P + "denials",
            "Acquires that asked for a pool and were granted sequential, by cause",
            labels=["cause"],
        )
        for cause in DENIAL_CAUSES:
            denials.add_metric([cause], self.tallies.denied_by[cause])
        yield denials
        fallbacks = CounterMetricFamily(
            P + "executor_fallbacks",
            "Pools that failed in a job, which then fell back (reported by the jobs)",
            labels=["from", "to"],
        )
        seen = self.tallies.fallbacks
        for old, new in sorted(set(FALLBACKS) | set(seen)):
            fallbacks.add_metric([old, new], seen[(old, new)])
        yield fallbacks

    def _requests(self) -> Iterator[Metric]:
        t = self.tallies
        requests = CounterMetricFamily(
            P + "requests", "Requests answered, by op and result", labels=["op", "result"]
        )
        for (op, result), count in sorted(t.requests.items()):
            requests.add_metric([op, result], count)
        yield requests
        latency = HistogramMetricFamily(
            P + "request_duration_seconds", "Time from a request's line to its reply"
        )
        latency.add_metric([], t.cumulative_latency(), sum_value=t.latency_sum)
        yield latency

    def _programs(self) -> Iterator[Metric]:
        sup = self.supervisor
        instances = GaugeMetricFamily(
            P + "instances", "Instances by program and state", labels=["program", "state"]
        )
        counts: dict[tuple[str, str], int] = {}
        for configured in sup.config.programs:
            for state in State:
                counts[(configured.name, state.value)] = 0
        for inst in sup.instances.values():
            key = (inst.program.name, inst.state.value)
            counts[key] = counts.get(key, 0) + 1
        for key, count in counts.items():
            instances.add_metric(list(key), count)
        yield instances
        names = [p.name for p in sup.config.programs]
        restarts = CounterMetricFamily(
            P + "restarts", "Automatic restarts, by program", labels=["program"]
        )
        for program in sorted(set(names) | set(sup.tally.restarts)):
            restarts.add_metric([program], sup.tally.restarts[program])
        yield restarts
        kills = CounterMetricFamily(
            P + "limit_kills",
            "Trees killed for a wall-clock or no-progress limit",
            labels=["program", "reason"],
        )
        for program, reason in _every(names, LIMIT_REASONS, sup.tally.kills):
            kills.add_metric([program, reason], sup.tally.kills[(program, reason)])
        yield kills
        runs = CounterMetricFamily(
            P + "runs",
            "Runs ended, by program and outcome (completed, failed, killed, stopped, unknown)",
            labels=["program", "outcome"],
        )
        for program, outcome in _every(names, RUN_OUTCOMES, sup.tally.runs):
            runs.add_metric([program, outcome], sup.tally.runs[(program, outcome)])
        yield runs

    def _endpoint(self) -> Iterator[Metric]:
        scrapes, dropped = self.endpoint()
        yield CounterMetricFamily(
            P + "metrics_scrapes", "Requests for /metrics the endpoint answered", scrapes
        )
        closed = CounterMetricFamily(
            P + "metrics_connections_dropped",
            "Endpoint connections closed unanswered: evicted to make room or refused (all "
            "taken), or no whole request within the head timeout",
            labels=["reason"],
        )
        for why in sorted({"evicted", "refused", "timeout", *dropped}):
            closed.add_metric([why], dropped.get(why, 0))
        yield closed


def _every(
    programs: list[str], keys: tuple[str, ...], seen: Counter[tuple[str, str]]
) -> list[tuple[str, str]]:
    """Each configured program with each key, and whatever else was counted (a program
    since removed by a reload), sorted."""
    return sorted({(p, k) for p in programs for k in keys} | set(seen))


class _Family(Collector):
    """One family as a collector: what the library renders."""

    def __init__(self, family: Metric) -> None:
        self.family = family

    def collect(self) -> Iterator[Metric]:
        yield self.family


Rendered = dict[str, tuple[Metric, bytes]]  # family name -> (the family, its text)


def render_families(families: Iterable[Metric], before: Rendered) -> Rendered:
    """Each family in Prometheus' text format (TEXT_FORMAT) by the library, in order;
    joined, the texts are `generate_latest` over all the families (the differential test).

    A shortcut: a family equal to the one of its name in `before` (the last rendering)
    keeps its text. From one tick to the next most families are unchanged, and the
    library's formatting was the larger part of a rendering (0.5 ms with cold caches).
    """
    after: Rendered = {}
    for family in families:
        last = before.get(family.name)
        if last is not None and last[0] == family:
            after[family.name] = last
        else:
            after[family.name] = (family, generate_latest(_Family(family)))
    return after


def exposition(rendered: Rendered) -> bytes:
    return b"".join(text for _, text in rendered.values())


def _memory(sample: HostSample) -> Iterator[Metric]:
    """The memory cgroup limits as the task limits are shown (`limit_tasks` and its
    kin, in bytes), the memory the budget counts on, and the OOM killer's counts."""
    labels = ["limit"]
    limit = GaugeMetricFamily(
        P + "memory_limit_bytes",
        "Each memory cgroup limit (its tightest ancestor's)",
        labels=labels,
    )
    used = GaugeMetricFamily(
        P + "memory_limit_in_use_bytes",
        "Memory counted by each limit (usage less inactive file cache)",
        labels=labels,
    )
    room = GaugeMetricFamily(
        P + "memory_limit_headroom_bytes", "Memory each limit still allows", labels=labels
    )
    for lim in sample.memory_limits:
        limit.add_metric([lim.name], lim.limit)
        used.add_metric([lim.name], lim.in_use)
        room.add_metric([lim.name], lim.headroom)
    yield from (limit, used, room)
    headroom, where = sample.memory_headroom()
    budget = GaugeMetricFamily(
        P + "memory_headroom_bytes",
        "Memory the budget counts on: the least of MemAvailable and each limit's headroom",
        labels=labels,
    )
    budget.add_metric([where], headroom)
    yield budget
    kills = CounterMetricFamily(
        P + "cgroup_oom_kills",
        "Processes the OOM killer killed in a watched memory cgroup (oom_kill)",
        labels=["cgroup"],
    )
    for cg in sample.memory_cgroups:
        if cg.oom_kills is not None:
            kills.add_metric([cg.path], cg.oom_kills)
    yield kills
