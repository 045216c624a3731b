"""Prometheus metrics from a real daemon: the HTTP endpoint on its loop and the textfile,
both parsed with prometheus-client's own parser; the `stats` line; reported fallbacks."""

from __future__ import annotations

import errno
import os
import select
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers import CALM, REPO, wait_until
from tests.support.daemons import DaemonHandle
from tests.support.metrics import P, free_port, samples

# what Prometheus 3 sends: OpenMetrics first, the text format as a fallback
PROMETHEUS_ACCEPT = (
    "application/openmetrics-text;version=1.0.0;escaping=allow-utf-8;q=0.6,"
    "application/openmetrics-text;version=0.0.1;q=0.5,"
    "text/plain;version=1.0.0;escaping=allow-utf-8;q=0.4,"
    "text/plain;version=0.0.4;q=0.3,*/*;q=0.2"
)


def scrape(port: int, path: str = "/metrics") -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as reply:
        return str(reply.read().decode())


def test_prometheus_gets_the_text_format_it_reads(metered: tuple[DaemonHandle, int]) -> None:
    """Offered OpenMetrics first, the endpoint answers in the text format, the one the
    textfile has too: one rendering a tick serves both."""
    _, port = metered
    url = f"http://127.0.0.1:{port}/metrics"
    request = urllib.request.Request(url, headers={"Accept": PROMETHEUS_ACCEPT})
    with urllib.request.urlopen(request, timeout=5) as reply:
        content_type = reply.headers["Content-Type"]
        text = reply.read().decode()
    assert content_type == "text/plain; version=0.0.4; charset=utf-8"
    assert "# EOF" not in text  # OpenMetrics' end marker
    assert (P + "host_tasks", ()) in samples(text)


def value(found: dict[Any, float], name: str, **labels: str) -> float:
    return found[(name, tuple(sorted(labels.items())))]


@pytest.fixture
def metered(
    daemon: Callable[..., DaemonHandle],
    program: Callable[..., dict[str, Any]],
    py: Callable[[str], list[str]],
) -> tuple[DaemonHandle, int]:
    port = free_port()
    handle = daemon(_config(port, program, py))
    wait_until(lambda: handle.status()["instances"][0]["state"] == "RUNNING")
    return handle, port


def _config(port: int, program: Callable[..., dict[str, Any]], py: Any) -> dict[str, Any]:
    return {
        "daemon": {"stats_interval": "200ms"},
        "budget": {"pressure": CALM},  # a busy host must not change the pressure level
        "metrics": {"listen": f"127.0.0.1:{port}"},
        "programs": {"sleeper": program(py("import time; time.sleep(600)"))},
    }


def test_endpoint_serves_what_the_library_parses(metered: tuple[DaemonHandle, int]) -> None:
    handle, port = metered
    with handle.client() as c:
        grant = c.request("acquire", want=2, job="metrics-test")
        assert grant["ok"], grant
        found = samples(scrape(port))
        kind = str(grant["kind"])
        assert value(found, P + "grants_total", kind=kind) == 1
        assert value(found, P + "leased_workers", kind=kind) == grant["workers"]
        assert value(found, P + "leases") == 1
    status = handle.status()
    tightest = status["host"]["tightest"]
    assert value(found, P + "tightest_headroom_tasks", limit=tightest["name"]) > 0
    assert value(found, P + "host_tasks") > 0
    assert value(found, P + "pressure_level") == 0
    assert value(found, P + "instances", program="sleeper", state="RUNNING") == 1
    assert value(found, P + "instances", program="sleeper", state="FATAL") == 0
    assert value(found, P + "requests_total", op="acquire", result="ok") == 1
    assert value(found, P + "request_duration_seconds_count") >= 1
    limits = {dict(k[1])["limit"] for k in found if k[0] == P + "limit_tasks"}
    assert {"threads-max", "pid_max"} <= limits


def test_endpoint_answers_bad_requests_and_keeps_serving(metered: tuple[DaemonHandle, int]) -> None:
    handle, port = metered
    with pytest.raises(urllib.error.HTTPError) as err:
        scrape(port, "/nothing")
    assert err.value.code == 404
    request = urllib.request.Request(f"http://127.0.0.1:{port}/metrics", data=b"x", method="POST")
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(request, timeout=5)
    assert err.value.code == 405
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"GET /metrics HTTP/1.1\r\nX: " + b"a" * 20000)
        assert s.recv(100).startswith(b"HTTP/1.1 431")
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"\x00\x01garbage\r\n\r\n")
        assert s.recv(100).startswith(b"HTTP/1.1 400")
    assert samples(scrape(port))  # still serving
    assert handle.status()["ok"]


def _reply_to(s: socket.socket) -> bytes:
    """Everything the endpoint sends before it closes the connection."""
    chunks = []
    while chunk := s.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def test_a_head_in_pieces_is_answered_when_whole(metered: tuple[DaemonHandle, int]) -> None:
    """The endpoint answers at once when the head came with the connection, and waits
    for the rest when it did not."""
    _, port = metered
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"GET /metr")
        s.settimeout(0.3)
        with pytest.raises(TimeoutError):  # half a head: nothing yet
            s.recv(100)
        s.settimeout(5)
        s.sendall(b"ics HTTP/1.1\r\nHost: x\r\n")
        s.sendall(b"\r\n")
        reply = _reply_to(s)
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK")
    length = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
    assert len(body) == length
    assert (P + "host_tasks", ()) in samples(body.decode())


def test_issue26_a_full_endpoint_answers_scrapes_and_evicts_its_oldest_peer(
    metered: tuple[DaemonHandle, int],
) -> None:
    """16 connections that send nothing fill the endpoint. A scrape is still answered
    (before: closed unanswered). A 17th peer with half a head makes room by evicting the
    oldest once that has been open a second, which is counted and logged; the rest are
    dropped when the head timeout (5 s) runs out."""
    handle, port = metered
    opened = time.monotonic()
    silent = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(16)]
    try:
        assert samples(scrape(port))  # served while every slot is taken
        wait_until(lambda: time.monotonic() - opened > 1.2, what="the oldest a second old")
        slow = socket.create_connection(("127.0.0.1", port), timeout=10)
        silent.append(slow)
        slow.sendall(b"GET /metr")
        assert silent[0].recv(100) == b""  # evicted: the endpoint closed it
        oldest = silent[0].getsockname()
        ready, _, _ = select.select(silent[1:], [], [], 0)
        assert not ready  # the younger ones are still open, unanswered
        for s in silent[1:]:  # each is dropped when its head timeout runs out
            assert s.recv(100) == b""
    finally:
        for s in silent:
            s.close()
    evicted = wait_until(lambda: handle.events("metrics_connection_dropped"))[0]
    assert evicted["why"] == "evicted" and evicted["peer"] == f"{oldest[0]}:{oldest[1]}"
    assert evicted["head_bytes"] == 0 and evicted["open_s"] >= 1.0

    def dropped() -> dict[str, float]:
        found = samples(scrape(port))
        return {
            why: value(found, P + "metrics_connections_dropped_total", reason=why)
            for why in ("evicted", "refused", "timeout")
        }

    # (the figures are rendered once a tick: wait for the tick after the timeouts)
    wait_until(lambda: dropped() == {"evicted": 1, "refused": 0, "timeout": 16})
    assert value(samples(scrape(port)), P + "metrics_scrapes_total") >= 1
    assert handle.status()["ok"]


def test_out_of_descriptors_pauses_accepting_then_serves(
    metered: tuple[DaemonHandle, int],
) -> None:
    """With no descriptor left for accept(), the endpoint says so once and pauses instead
    of spinning on a socket that stays readable; the scrape waiting in the kernel's queue
    is answered once a descriptor is free again."""
    import resource

    handle, port = metered
    pid = handle.proc.pid
    soft, hard = resource.prlimit(pid, resource.RLIMIT_NOFILE)
    try:
        # descriptors 0-2 are open: every new one is refused
        resource.prlimit(pid, resource.RLIMIT_NOFILE, (3, hard))
        # the kernel completes the connection; the daemon's accept() gets EMFILE
        with socket.create_connection(("127.0.0.1", port), timeout=10) as waiting:
            waiting.sendall(b"GET /metrics HTTP/1.1\r\n\r\n")
            failed = wait_until(lambda: handle.events("metrics_accept_failed"))
            cpu, ticks = _cpu_seconds(pid), len(handle.events("stats"))
            # the daemon goes on ticking (a stats line every 200 ms): over 8 of them,
            # a spinning accept would have burnt 1.6 s of CPU; a paused one burns ~0
            wait_until(lambda: len(handle.events("stats")) >= ticks + 8, timeout=10)
            assert _cpu_seconds(pid) - cpu < 0.5
            resource.prlimit(pid, resource.RLIMIT_NOFILE, (soft, hard))
            reply = _reply_to(waiting)
    finally:
        resource.prlimit(pid, resource.RLIMIT_NOFILE, (soft, hard))
    assert failed[0]["errno"] == errno.EMFILE and failed[0]["paused_s"] == 1.0
    assert reply.startswith(b"HTTP/1.1 200 OK")
    assert handle.status()["ok"]


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_textfile_is_written_each_tick_and_removed_at_stop(
    daemon: Callable[..., DaemonHandle], program: Callable[..., dict[str, Any]], py: Any
) -> None:
    import tempfile

    directory = Path(tempfile.mkdtemp(prefix="sbt-prom-", dir="/tmp"))
    path = directory / "batt.prom"
    try:
        handle = daemon({"metrics": {"textfile": str(path)}})
        text = wait_until(lambda: path.exists() and path.read_text(), what="the textfile")
        found = samples(text)
        assert value(found, P + "host_tasks") > 0
        with handle.client() as c:
            assert c.request("acquire", want=2, job="t")["ok"]
            wait_until(
                lambda: (
                    (P + "grants_total", (("kind", "process"),)) in samples(path.read_text())
                    or (P + "grants_total", (("kind", "thread"),)) in samples(path.read_text())
                ),
                what="the grant in the textfile",
            )
        assert not list(directory.glob(".*.tmp"))
        assert handle.stop() == 0
        assert not path.exists()
    finally:
        for leftover in directory.iterdir():
            leftover.unlink()
        directory.rmdir()


def test_a_taken_port_is_an_error_line_not_a_dead_daemon(
    daemon: Callable[..., DaemonHandle],
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        handle = daemon({"metrics": {"listen": f"127.0.0.1:{port}"}})
        failed = wait_until(lambda: handle.events("metrics_listen_failed"))
        assert failed[0]["port"] == port
        assert handle.status()["ok"]


def test_stats_line_and_reported_fallbacks(metered: tuple[DaemonHandle, int]) -> None:
    handle, port = metered
    with handle.client() as c:
        reply = c.request(
            "fallback", **{"from": "process", "to": "thread"}, workers=2, stage="spawn", reason="x"
        )
        assert reply["ok"], reply
        bad = c.request("fallback", **{"from": "process", "to": "nowhere"})
        assert bad["error"]["code"] == "bad_request"
    found = samples(scrape(port))
    assert value(found, P + "executor_fallbacks_total", **{"from": "process", "to": "thread"}) == 1
    event = wait_until(lambda: handle.events("executor_fallback"))[0]
    assert event["from"] == "process" and event["to"] == "thread" and event["pid"] > 0
    line = wait_until(
        lambda: [e for e in handle.events("stats") if e["fallbacks"]], what="a stats line"
    )[-1]
    assert line["fallbacks"] == {"process>thread": 1}
    assert line["tasks"] > 0 and line["tightest_limit"] > 0
    assert set(line["level_seconds"]) == {"normal", "high", "extreme"}
    assert line["level_seconds"]["normal"] > 0


def test_reload_moves_the_endpoint(metered: tuple[DaemonHandle, int]) -> None:
    import yaml

    handle, port = metered
    new_port = free_port()
    config = yaml.safe_load(handle.config_path.read_text())
    config["metrics"]["listen"] = f"127.0.0.1:{new_port}"
    handle.config_path.write_text(yaml.safe_dump(config))
    with handle.client() as c:
        assert c.request("reload")["ok"]
    assert samples(scrape(new_port))
    with pytest.raises(OSError):
        scrape(port)


def test_every_metric_the_grafana_dashboard_queries_is_exposed(
    metered: tuple[DaemonHandle, int],
) -> None:
    import json
    import re

    handle, port = metered
    with handle.client() as c:  # so that the labelled counters have a sample each
        assert c.request("acquire", want=2, job="g")["ok"]
        c.request("fallback", **{"from": "process", "to": "thread"})
    exposed = set()  # every sample name a family announces, with or without samples yet
    for family in text_string_to_metric_families(scrape(port)):
        suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count")}
        exposed |= {family.name + s for s in suffixes.get(family.type, ("",))}
    dashboard = json.loads((REPO / "contrib" / "grafana" / "supervisord-batt.json").read_text())
    # the daemon's own names; recording rules' (level:metric:op) are the rules' to record
    name = r"(?<![:\w])supervisord_batt_[a-z_]+\b(?!:)"
    queried = {
        found
        for panel in dashboard["panels"]
        for target in panel.get("targets", [])  # (a row has none)
        for found in re.findall(name, target["expr"])
    }
    queried |= set(re.findall(name, json.dumps(dashboard["templating"])))
    assert queried and queried <= exposed, queried - exposed


def test_the_daemon_loads_neither_rich_nor_the_notebook_libraries(
    daemon: Callable[..., DaemonHandle], monkeypatch: pytest.MonkeyPatch
) -> None:
    # -X importtime lines on stderr (in the daemon's log here) name every module loaded
    monkeypatch.setenv("PYTHONPROFILEIMPORTTIME", "1")
    port = free_port()
    handle = daemon({"metrics": {"listen": f"127.0.0.1:{port}"}})
    assert samples(scrape(port))  # prometheus-client is loaded at the first scrape

    def loaded() -> set[str]:
        return {
            line.rsplit("|", 1)[1].strip()
            for line in handle.log_text().splitlines()
            if line.startswith("import time:") and "|" in line
        }

    modules = loaded()
    assert {"structlog", "prometheus_client"} <= modules, sorted(modules)  # the list is real
    # ("rich" itself is listed as the blocked attempt, in microseconds: nothing of it loads)
    assert not {m for m in modules if m.startswith(("rich.", "joblib", "threadpoolctl"))}
