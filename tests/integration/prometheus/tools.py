"""Where the real Prometheus tools are, and the files of contrib/ they are run against."""

from __future__ import annotations

import itertools
import json
import shutil
import signal
import subprocess
import tempfile
import urllib.parse
import urllib.request
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.helpers import REPO, wait_until
from tests.support.metrics import free_port

RULES = REPO / "contrib" / "prometheus" / "supervisord-batt.rules.yml"
RULES_TESTS = REPO / "contrib" / "prometheus" / "supervisord-batt.rules.test.yml"
DASHBOARD = REPO / "contrib" / "grafana" / "supervisord-batt.json"
INSTALL = "apt-get install -y prometheus prometheus-node-exporter (bash .ci/run does)"


def tool(name: str) -> str:
    """The path of a Prometheus tool (Debian's packages); skips, naming the install
    command, where it is missing."""
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed: {INSTALL}")
    return path


def get(url: str, timeout: float = 10) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as reply:
        return bytes(reply.read())


class Server:
    """A real server binary on a free loopback port, in its own temp dir; `close` ends it
    (by its pid) and removes the dir."""

    def __init__(self, name: str, args: list[str], ready_path: str) -> None:
        self.port = free_port()
        self.workdir = Path(tempfile.mkdtemp(prefix=f"sbt-{name}-", dir="/tmp"))
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = self.workdir / f"{name}.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115
        argv = [tool(name), *(a.format(port=self.port, dir=self.workdir) for a in args)]
        self.proc = subprocess.Popen(argv, stdout=self._log, stderr=subprocess.STDOUT)
        try:
            wait_until(lambda: self._answers(ready_path), timeout=30, what=f"{name} ready")
        except BaseException:
            self.close()
            raise

    def _answers(self, path: str) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"exited {self.proc.returncode}: {self.log_path.read_text()}")
        try:
            get(self.url + path, timeout=2)
        except OSError:
            return False
        return True

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self._log.close()
        shutil.rmtree(self.workdir, ignore_errors=True)


class Prometheus(Server):
    """Debian's Prometheus scraping `targets` ({instance label: host:port}) twice a
    second and evaluating `rules` every second, with its HTTP API on a free port."""

    def __init__(self, targets: dict[str, str], rules: Path = RULES) -> None:
        self.config = {
            "global": {
                "scrape_interval": "500ms",
                "scrape_timeout": "500ms",
                "evaluation_interval": "1s",
            },
            "rule_files": [str(rules)],
            "scrape_configs": [
                {
                    "job_name": "supervisord-batt",
                    "static_configs": [
                        {"targets": [address], "labels": {"instance": name}}
                        for name, address in targets.items()
                    ],
                }
            ],
        }
        self._config_dir = Path(tempfile.mkdtemp(prefix="sbt-promcfg-", dir="/tmp"))
        config = self._config_dir / "prometheus.yml"
        config.write_text(yaml.safe_dump(self.config))
        args = [
            f"--config.file={config}",
            "--storage.tsdb.path={dir}/data",
            "--web.listen-address=127.0.0.1:{port}",
            "--log.level=warn",
        ]
        try:
            super().__init__("prometheus", args, "/-/ready")
        finally:
            shutil.rmtree(self._config_dir, ignore_errors=True)

    def api(self, path: str, **params: str) -> Any:
        url = f"{self.url}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        reply = json.loads(get(url))
        assert reply["status"] == "success", reply
        return reply["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query's vector (a scalar comes back as one sample without labels)."""
        data = self.api("query", query=expr)
        if data["resultType"] == "scalar":
            return [{"metric": {}, "value": data["result"]}]
        assert data["resultType"] == "vector", data
        return list(data["result"])

    def rules_evaluated_since(self, when: float) -> bool:
        """Whether every rule group was evaluated after `when` (Prometheus' clock)."""
        groups = self.api("rules")["groups"]
        return bool(groups) and all(_epoch(g["lastEvaluation"]) > when for g in groups)

    def values(self, expr: str, *by: str) -> dict[tuple[str, ...], float]:
        """{(label values in `by` order): value} of an instant query."""
        return {
            tuple(s["metric"].get(k, "") for k in by): float(s["value"][1])
            for s in self.query(expr)
        }


def _epoch(rfc3339: str) -> float:
    """Prometheus' timestamps (nanoseconds, a Z or an offset) as Unix time."""
    head, _, rest = rfc3339.partition(".")
    digits = "".join(itertools.takewhile(str.isdigit, rest))
    zone = rest[len(digits) :].replace("Z", "+00:00") if rest else head[19:].replace("Z", "+00:00")
    stamp = datetime.fromisoformat(head[:19] + zone).timestamp()
    return stamp + (float("0." + digits) if digits else 0.0)
