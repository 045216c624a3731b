"""The shipped config/supervisord-batt.yaml: it validates, documents every key, runs the demo."""

from __future__ import annotations

import dataclasses
import signal
from pathlib import Path

import yaml

from supervisord_batt.config.loader import (
    config_to_dict,
    load_config,
    load_config_text,
)
from supervisord_batt.config.records import (
    BackoffConfig,
    BudgetConfig,
    DaemonConfig,
    MetricsConfig,
    OutputConfig,
    PressureThresholds,
    ProgramConfig,
    StartLimit,
)
from supervisord_batt.paths import SOURCE_CONFIG, default_socket_path
from tests.helpers import REPO

SHIPPED = REPO / "config" / "supervisord-batt.yaml"


def keys(cls: type) -> set[str]:
    """Field names of a config dataclass."""
    return {f.name for f in dataclasses.fields(cls)} - {"name"}


def test_shipped_config_is_the_source_default() -> None:
    assert SHIPPED.resolve() == SOURCE_CONFIG


def test_shipped_config_validates() -> None:
    c = load_config(SHIPPED)
    assert c.source == SHIPPED
    # /run/supervisord-batt/ as root; a user who cannot create the socket there gets
    # their own directory (tests/unit/test_paths.py), so the suite runs as any user
    assert c.daemon.socket == default_socket_path(
        Path("/run/supervisord-batt/supervisord-batt.sock")
    )
    assert c.daemon.log_format == "auto"


def test_shipped_config_has_the_demo_program() -> None:
    (batt,) = load_config(SHIPPED).programs
    assert batt.name == "batt"
    assert batt.command == (
        "python3",
        "-m",
        "supervisord_batt.demo",
        "--tasks",
        "20",
        "--samples",
        "8",
    )  # fmt: skip  (the pool size comes from `slots`, exported as SUPERVISORD_BATT_WANT)
    assert batt.numprocs == 3
    assert batt.wall_clock_limit == 600.0
    assert batt.stop_grace == 10.0
    assert batt.stop_signal is signal.SIGTERM
    assert batt.restart == "always"  # workers run job after job, as run_card.sh's loop did
    assert batt.progress_timeout == 120.0
    assert batt.slots == 2
    assert batt.output.mode == "daemon"


def test_shipped_config_lists_every_key() -> None:
    raw = yaml.safe_load(SHIPPED.read_text())
    assert set(raw) == {"daemon", "budget", "metrics", "programs"}
    assert set(raw["metrics"]) == keys(MetricsConfig)
    assert set(raw["daemon"]) == keys(DaemonConfig)
    assert set(raw["budget"]) == keys(BudgetConfig)
    assert set(raw["budget"]["pressure"]) == keys(PressureThresholds)
    batt = raw["programs"]["batt"]
    assert set(batt) == keys(ProgramConfig)
    assert set(batt["backoff"]) == keys(BackoffConfig)
    assert set(batt["start_limit"]) == keys(StartLimit)
    assert set(batt["output"]) == keys(OutputConfig)


def test_shipped_daemon_and_budget_equal_the_built_in_defaults() -> None:
    shipped = load_config(SHIPPED)
    built_in = load_config_text("")
    assert shipped.daemon == built_in.daemon
    assert shipped.budget == built_in.budget
    assert shipped.metrics == built_in.metrics


def test_every_key_is_commented() -> None:
    # Each key line is preceded by a comment, directly or through sibling keys of a group.
    lines = SHIPPED.read_text().splitlines()
    for index, line in enumerate(lines):
        stripped = line.strip()
        if not stripped or stripped.startswith("#") or not line.startswith("  "):
            continue
        above = [prev.strip() for prev in lines[:index] if prev.strip()]
        assert any(prev.startswith("#") for prev in above[-4:]), line


def test_shipped_config_round_trips() -> None:
    c = load_config(SHIPPED)
    again = load_config_text(yaml.safe_dump(config_to_dict(c), sort_keys=False))
    assert again == dataclasses.replace(c, source=None)
