"""The textfile path with the real node_exporter (Debian's prometheus-node-exporter and
its textfile collector): its /metrics carries the daemon's series while the daemon runs,
and none of them once the daemon has stopped (it removes its file)."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import wait_until
from tests.integration.prometheus.tools import Server, get
from tests.support.daemons import DaemonHandle
from tests.support.metrics import samples

P = "supervisord_batt_"


def daemon_series(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {k: v for k, v in samples(text).items() if k[0].startswith(P)}


@pytest.mark.usefixtures("needs_root")  # the textfile's directory must be root's
def test_issue26_node_exporter_serves_the_textfile_then_drops_it(
    daemon: Callable[..., DaemonHandle], program: Callable[..., dict[str, Any]], py: Any
) -> None:
    directory = Path(tempfile.mkdtemp(prefix="sbt-textfile-", dir="/tmp"))
    directory.chmod(0o755)
    textfile = directory / "supervisord-batt.prom"
    exporter = None
    try:
        exporter = Server(
            "prometheus-node-exporter",
            [
                "--web.listen-address=127.0.0.1:{port}",
                "--collector.disable-defaults",
                "--collector.textfile",
                f"--collector.textfile.directory={directory}",
            ],
            "/metrics",
        )
        handle = daemon(
            {
                "metrics": {"textfile": str(textfile)},
                "programs": {"sleeper": program(py("import time; time.sleep(600)"))},
            }
        )
        with handle.client() as job:
            grant = job.request("acquire", want=2, job="textfile")
            assert grant["ok"], grant

            def served() -> dict[Any, float]:
                found = daemon_series(get(exporter.url + "/metrics").decode())
                leases = found.get((P + "leases", ()))
                return found if leases == 1 else {}

            found = wait_until(served, what="the lease in node_exporter's /metrics")
            # what node_exporter serves is the daemon's file, series for series
            in_file = daemon_series(textfile.read_text())
            stable = {k for k in in_file if k[0] in {P + "grants_total", P + "leased_workers"}}
            assert stable and {k: found[k] for k in stable} == {k: in_file[k] for k in stable}
            assert found[(P + "instances", (("program", "sleeper"), ("state", "RUNNING")))] == 1
            assert found[(P + "host_tasks", ())] > 0
            text = get(exporter.url + "/metrics").decode()
            own = samples(text)
            assert own[("node_textfile_scrape_error", ())] == 0
            assert ("node_textfile_mtime_seconds", (("file", str(textfile)),)) in own
        assert handle.stop() == 0
        assert not textfile.exists()
        after = get(exporter.url + "/metrics").decode()
        assert daemon_series(after) == {}
        assert ("node_textfile_mtime_seconds", (("file", str(textfile)),)) not in samples(after)
    finally:
        if exporter is not None:
            exporter.close()
        shutil.rmtree(directory, ignore_errors=True)
