"""Where the real Prometheus tools are, and the files of contrib/ they are run against."""

from __future__ import annotations

import shutil

import pytest

from tests.helpers import REPO

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
