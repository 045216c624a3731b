"""Reading the daemon's metrics: the family prefix, a free local port for the endpoint,
and every sample of an exposition through prometheus-client's own parser."""

from __future__ import annotations

import socket

from prometheus_client.parser import text_string_to_metric_families

P = "supervisord_batt_"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample, by name and sorted labels, through the library's parser."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out
