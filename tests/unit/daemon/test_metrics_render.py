"""The metrics rendering's shortcut (render_families) against the library rendering every
family (generate_latest), over random ticks where some families change and some don't."""

from __future__ import annotations

import random
from collections.abc import Iterator

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector, CollectorRegistry

from supervisord_batt.daemon.metrics import exposition, render_families


class _All(Collector):
    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> Iterator[Metric]:
        yield from self.families


def _families(rng: random.Random, values: list[float]) -> list[Metric]:
    """A tick's families: a few values drawn from `values` so that some repeat."""
    gauge = GaugeMetricFamily("x_host_tasks", "Tasks", rng.choice(values))
    limits = GaugeMetricFamily("x_limit_tasks", 'A "limit"\nper line', labels=["limit", "kind"])
    for name in rng.sample(["pid_max", "threads-max", "cgroup /a\\b"], rng.randrange(1, 4)):
        limits.add_metric([name, "kind"], rng.choice(values))
    grants = CounterMetricFamily("x_grants", "Grants", labels=["kind"])
    for kind in ("process", "thread"):
        grants.add_metric([kind], rng.choice(values))
    latency = HistogramMetricFamily("x_request_duration_seconds", "Latency")
    count = rng.choice(values)
    buckets = [("0.001", count / 2), ("0.1", count), ("+Inf", count)]
    latency.add_metric([], buckets, sum_value=rng.choice(values))
    families: list[Metric] = [gauge, limits, grants, latency]
    if rng.random() < 0.7:  # a family that is there on some ticks only (no host sample)
        families.insert(1, GaugeMetricFamily("x_memory_available_bytes", "Memory", 2.5e10))
    return families


def test_the_shortcut_renders_what_the_library_renders_every_time() -> None:
    rng = random.Random(12)
    values = [0.0, 1.0, 3.0, 1e-9, 2.5e10, float("inf")]
    before: dict[str, tuple[Metric, bytes]] = {}
    reused = 0
    for _ in range(300):
        families = _families(rng, values)
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_All(families))
        after = render_families(families, before)
        assert exposition(after) == generate_latest(registry)
        reused += sum(1 for name, pair in after.items() if before.get(name) is pair)
        before = after
    assert reused > 100  # the shortcut was taken, not only the library's path


def test_a_changed_family_is_rendered_again() -> None:
    old = GaugeMetricFamily("x_tasks", "Tasks", 1)
    first = render_families([old], {})
    new = GaugeMetricFamily("x_tasks", "Tasks", 2)
    second = render_families([new], first)
    assert exposition(second).endswith(b"x_tasks 2.0\n")
    same = render_families([GaugeMetricFamily("x_tasks", "Tasks", 2)], second)
    assert same["x_tasks"] is second["x_tasks"]
