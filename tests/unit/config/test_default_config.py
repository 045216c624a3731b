"""The shipped config/supervisord-batt.yaml: it validates, documents every key, runs the demo,
and every default it claims is the loader's."""

from __future__ import annotations

import dataclasses
import re
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from yaml.nodes import MappingNode, Node

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


# -- the defaults it claims ----------------------------------------------------------------

# A key's line either shows the loader's default, or says `# default: VALUE` (the demo
# program's own settings): the loader is the one source of truth, the file is checked.
_DEFAULT_NOTE = re.compile(r"#\s*default:\s*(.+?)\s*$")
# mappings that are one value (a program's environment, the weights), not a section
_MAPPING_VALUES = {"environment", "user_weights", "group_weights"}
# the only key without a default
_REQUIRED = {("programs", "batt", "command")}


def _leaves(node: Node, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], int]]:
    """(key path, line) of every value of the YAML document (a mapping of sections)."""
    assert isinstance(node, MappingNode)
    for key, value in node.value:
        here = (*path, key.value)
        if isinstance(value, MappingNode) and key.value not in _MAPPING_VALUES:
            yield from _leaves(value, here)
        else:
            yield here, key.start_mark.line


def _at(data: dict[str, Any], path: tuple[str, ...]) -> Any:
    for key in path:
        data = data[key]
    return data


def _nested(path: tuple[str, ...], value: Any) -> dict[str, Any]:
    out: dict[str, Any] = {path[-1]: value}
    for key in reversed(path[:-1]):
        out = {key: out}
    return out


def _loaded(path: tuple[str, ...], value: Any) -> Any:
    """What the loader makes of `value` at `path` (in a config of that key alone, with the
    program's required command), in config_to_dict's plain form: seconds, bytes."""
    doc = _nested(path, value)
    if path[0] == "programs":
        doc["programs"]["batt"].setdefault("command", ["x"])
    return _at(config_to_dict(load_config_text(yaml.safe_dump(doc))), path)


def _claims() -> list[tuple[tuple[str, ...], int, str | None]]:
    """(key path, line number, the `# default:` note or None) of every key in the file."""
    text = SHIPPED.read_text()
    lines = text.splitlines()
    root = yaml.compose(text, Loader=yaml.SafeLoader)
    assert root is not None
    out = []
    for path, line in _leaves(root):
        note = _DEFAULT_NOTE.search(lines[line])
        out.append((path, line + 1, note.group(1) if note else None))
    return out


BUILT_IN = config_to_dict(load_config_text("programs: {batt: {command: [x]}}"))


@pytest.mark.parametrize(
    ("path", "line", "note"), _claims(), ids=[".".join(path) for path, _, _ in _claims()]
)
def test_every_default_the_shipped_config_claims_is_the_loaders(
    path: tuple[str, ...], line: int, note: str | None
) -> None:
    if path in _REQUIRED:
        assert note is None
        return
    built_in = _at(BUILT_IN, path)
    shown = _loaded(path, _at(yaml.safe_load(SHIPPED.read_text()), path))
    where = f"config/supervisord-batt.yaml:{line} {'.'.join(path)}"
    if note is None:
        assert shown == built_in, f"{where} shows {shown!r}, the loader's default is {built_in!r}"
    else:
        claimed = _loaded(path, yaml.safe_load(note))
        assert claimed == built_in, f"{where} says default {note}; the loader's is {built_in!r}"
        assert shown != built_in, f"{where} shows the default: drop its `# default:` note"


def test_the_defaults_check_sees_every_key_and_the_demos_own_settings() -> None:
    claims = _claims()
    assert len(claims) == len({path for path, _, _ in claims}) > 60
    noted = {path[-1] for path, _, note in claims if note is not None}
    assert {"numprocs", "slots", "restart", "mode", "wall_clock_limit"} <= noted
