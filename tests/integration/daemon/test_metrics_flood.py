"""The metrics endpoint under the issue's slowloris: 20 local peers each sending one byte
of a request head a second and reconnecting as soon as they are dropped
(benchmarks/slow_peers.py, the load bench_scrape_flood measures for 30 s). Scrapes made
as Prometheus makes them (a new connection each, its 10 s timeout) are all answered, and
so is every request on the daemon's Unix socket meanwhile; the endpoint evicts its peers
and says so in a counter and a throttled line. No timing is asserted here: the benchmark
prints the success rate and the latencies against a baseline."""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from typing import Any

from tests.helpers import CALM, REPO, wait_until
from tests.support.daemons import DaemonHandle
from tests.support.metrics import P, free_port, samples

PEERS = 20
SCRAPES = 40  # at least; and until every one of the 16 slots has been taken over
EVICTIONS = 16


def scrape(port: int) -> dict[Any, float] | None:
    """One scrape as Prometheus makes it: its figures, or None if it failed."""
    url = f"http://127.0.0.1:{port}/metrics"
    try:
        with urllib.request.urlopen(url, timeout=10) as reply:
            return samples(reply.read().decode()) if reply.status == 200 else None
    except OSError:
        return None


def evicted(found: dict[Any, float]) -> float:
    return found.get((P + "metrics_connections_dropped_total", (("reason", "evicted"),)), 0.0)


def test_issue26_scrapes_and_the_unix_socket_are_answered_under_slow_peers(
    daemon: Callable[..., DaemonHandle],
    program: Callable[..., dict[str, Any]],
    py: Callable[[str], list[str]],
) -> None:
    port = free_port()
    handle = daemon(
        {
            "daemon": {"stats_interval": "200ms"},
            "budget": {"pressure": CALM},
            "metrics": {"listen": f"127.0.0.1:{port}"},
            "programs": {"sleeper": program(py("import time; time.sleep(600)"))},
        }
    )
    peers = subprocess.Popen(
        [sys.executable, str(REPO / "benchmarks" / "slow_peers.py"), str(port), str(PEERS)],
        stdout=subprocess.PIPE,
        text=True,
    )
    results: list[dict[Any, float] | None] = []
    replies: list[dict[str, object]] = []
    try:
        # the peers fill the endpoint and have been dropped once (a line a second each)
        assert peers.stdout is not None
        said = peers.stdout
        wait_until(lambda: int(said.readline() or 0) > 0, what="the peers dropped")
        first = evicted(scrape(port) or {})
        with handle.client() as job:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                results.append(scrape(port))
                grant = job.request("acquire", want=2, job="probe")
                replies.append(grant)
                if grant.get("ok"):
                    replies.append(job.request("release", lease=grant["lease"]))
                last: dict[Any, float] = next((r for r in reversed(results) if r), {})
                if len(results) >= SCRAPES and evicted(last) >= first + EVICTIONS:
                    break
        # the peers saw their drops and came back (they print their count each second)
        wait_until(
            lambda: int(said.readline() or 0) >= EVICTIONS,
            timeout=15,
            what="the peers reconnected",
        )
    finally:
        peers.terminate()
        peers.communicate(timeout=10)
    failed = sum(r is None for r in results)
    assert failed == 0, f"{failed} of {len(results)} scrapes failed"
    assert all(r.get("ok") for r in replies), [r for r in replies if not r.get("ok")]
    found = [r for r in results if r]
    assert len(found) >= SCRAPES and evicted(found[-1]) >= first + EVICTIONS
    # counted, and logged a line a second at most: fewer lines than evictions
    lines = handle.events("metrics_connection_dropped")
    assert lines and all(e["why"] in ("evicted", "refused") for e in lines)
    assert len(lines) < evicted(found[-1])
    wait_until(lambda: handle.events("metrics_lines_suppressed"), what="the summary line")
    assert handle.status()["ok"]
