"""The stop time chain (config/records.py): a program's grace, the daemon's stop of its
workers, the unit's TimeoutStopSec, the CLI's wait for a control op. Each must cover
the one before, and the shipped unit must say what the chain says."""

from __future__ import annotations

import re

import pytest

from supervisord_batt.config.loader import load_config_text
from supervisord_batt.config.records import (
    CONTROL_TIMEOUT,
    LONGEST_STOP,
    MAX_STOP_GRACE,
    UNIT_STOP_TIMEOUT,
)
from supervisord_batt.config.yamlcheck import ConfigError
from tests.helpers import REPO


def unit_seconds(key: str) -> float:
    unit = (REPO / "systemd" / "supervisord-batt.service").read_text()
    found = re.search(rf"^{key}=(\d+)s$", unit, re.M)
    assert found is not None, key
    return float(found.group(1))


def test_each_link_covers_the_one_before() -> None:
    assert MAX_STOP_GRACE < LONGEST_STOP < UNIT_STOP_TIMEOUT < CONTROL_TIMEOUT


def test_the_shipped_unit_waits_as_long_as_the_chain_says() -> None:
    assert unit_seconds("TimeoutStopSec") == UNIT_STOP_TIMEOUT


def test_the_longest_grace_loads_and_one_second_more_names_the_unit() -> None:
    ok = load_config_text(
        f"programs:\n  p:\n    command: [x]\n    stop_grace: {MAX_STOP_GRACE:.0f}s\n"
    )
    assert ok.programs[0].stop_grace == MAX_STOP_GRACE
    with pytest.raises(ConfigError) as err:
        load_config_text(
            f"programs:\n  p:\n    command: [x]\n    stop_grace: {MAX_STOP_GRACE + 1:.0f}s\n"
        )
    assert f"TimeoutStopSec={UNIT_STOP_TIMEOUT:.0f}s" in str(err.value)
