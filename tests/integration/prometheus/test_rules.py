"""The alert and recording rules (contrib/prometheus) under the real `promtool`: they
load, their unit tests pass, and every alert has a case where it fires and one where it
stays quiet, and annotations that say what to look at."""

from __future__ import annotations

import re
import subprocess

import yaml

from supervisord_batt.config.loader import config_to_dict, load_config
from tests.helpers import REPO
from tests.integration.prometheus.tools import RULES, RULES_TESTS, tool


def alerts() -> dict[str, dict[str, object]]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return {r["alert"]: r for g in groups for r in g["rules"] if "alert" in r}


def test_the_rules_load() -> None:
    out = subprocess.run(
        [tool("promtool"), "check", "rules", str(RULES)], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS" in out.stdout


def test_the_rules_unit_tests_pass() -> None:
    out = subprocess.run(
        [tool("promtool"), "test", "rules", RULES_TESTS.name],
        capture_output=True,
        text=True,
        cwd=RULES_TESTS.parent,
        timeout=60,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS" in out.stdout


def test_every_alert_is_tested_firing_and_quiet() -> None:
    cases = yaml.safe_load(RULES_TESTS.read_text())["tests"]
    fires: set[str] = set()
    quiet: set[str] = set()
    for case in cases:
        for check in case.get("alert_rule_test", []):
            (fires if check.get("exp_alerts") else quiet).add(check["alertname"])
    names = set(alerts())
    assert len(names) >= 15
    assert names - fires == set(), "alerts with no case where they fire"
    assert names - quiet == set(), "alerts with no case where they stay quiet"


def test_every_alert_says_what_to_look_at_and_what_to_tune() -> None:
    for name, rule in alerts().items():
        notes = rule["annotations"]
        assert isinstance(notes, dict)
        assert set(notes) >= {"summary", "description"}, name
        text = str(notes["description"])
        # a command to run (`...`) or a query to read, and a config key or unit setting
        assert "`" in text or "supervisord_batt_" in text, name
        assert any(
            k in text for k in ("programs.", "budget.", "metrics.", "TasksMax", "Watchdog")
        ), name


# a key as the annotations name it: budget.pressure.headroom_high_percent,
# programs.<name>.contain, programs.{{ $labels.program }}.start_limit, and as promtool's
# tests expect it rendered: programs.batt.wall_clock_limit
KEY = re.compile(
    r"\b(?:(daemon|budget|metrics)|programs\.(<name>|\{\{ \$labels\.program \}\}|[a-z]+))"
    r"\.([a-z_]+(?:\.[a-z_]+)*)"
)


def descriptions() -> list[tuple[str, str]]:
    """(alert, description) as written in the rules, and as rendered in their tests."""
    out = []
    for name, rule in alerts().items():
        notes = rule["annotations"]
        assert isinstance(notes, dict)
        out.append((name, str(notes["description"])))
    for case in yaml.safe_load(RULES_TESTS.read_text())["tests"]:
        for check in case.get("alert_rule_test", []):
            for alert in check.get("exp_alerts") or []:
                out.append((check["alertname"], alert["exp_annotations"]["description"]))
    return out


def test_every_config_key_an_alert_names_exists() -> None:
    """A key to tune that the config does not have sends the on-call engineer nowhere;
    and every alert names one (or the unit's TasksMax / WatchdogSec)."""
    shipped = config_to_dict(load_config(REPO / "config" / "supervisord-batt.yaml"))
    program = next(iter(shipped["programs"].values()))
    tuned = set()
    for name, text in descriptions():
        for section, _program, path in KEY.findall(text):
            node = shipped[section] if section else program
            for part in path.split("."):
                assert isinstance(node, dict) and part in node, (name, section, path)
                node = node[part]
            tuned.add(name)
        if "TasksMax" in text or "WatchdogSec" in text:
            tuned.add(name)
    assert tuned == set(alerts()), set(alerts()) - tuned
