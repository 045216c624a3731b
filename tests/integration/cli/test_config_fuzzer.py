"""Generated configs through the one loader and through a live reload (issue 11): an
error with a key path, or a config that works; never a traceback, never a partial apply.

The documents are built from the real keys with wrong types, unknown and duplicate keys,
anchors and aliases (a billion-laughs bomb among them), and users, groups and
directories this host does not have.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from supervisord_batt.config.loader import load_config
from supervisord_batt.config.yamlcheck import ConfigError

KEYS = {
    "daemon": [
        "socket",
        "socket_mode",
        "socket_group",
        "allowed_uids",
        "allowed_groups",
        "admin_groups",
        "sample_interval",
        "scan_interval",
        "log_format",
        "log_level",
        "log_file",
        "max_connections",
        "max_connections_per_uid",
        "idle_timeout",
        "max_message_bytes",
        "pid_file",
        "lease_log_rate",
        "bad_input_log_rate",
    ],
    "budget": [
        "reserve_tasks",
        "reserve_percent",
        "max_per_lease",
        "cpu_cap",
        "memory_per_slot",
        "lease_ttl",
        "cgroups",
        "watch_users",
        "pressure",
    ],
    "program": [
        "command",
        "numprocs",
        "cwd",
        "environment",
        "user",
        "group",
        "wall_clock_limit",
        "stop_signal",
        "stop_grace",
        "restart",
        "backoff",
        "start_limit",
        "min_runtime",
        "progress_timeout",
        "slots",
        "autostart",
        "output",
        "contain",
        "tasks_without_lease",
    ],
}
VALUES: list[str] = [
    "1",
    "0",
    "-3",
    "1.5",
    "true",
    "null",
    "'x'",
    "[]",
    "{}",
    "[1, a]",
    "10s",
    "ten",
    "600s",
    "0660",
    "'0777'",
    "TERM",
    "KILL",
    "always",
    "/nonexistent-sbt/x",
    "/etc/passwd/x",
    "nosuchuser-sbt",
    "[nosuchgroup-sbt]",
    "{mode: file}",
    "1e999",
    "'\\u0000'",
    "99999999999999999999999",
    "[sleep, '1']",
    "*a",
    "!!python/object:os.system x",
]
BOMB = (
    "a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\n"
    "c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]\n"
    "e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]\nf: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e]\n"
    "programs:\n  p:\n    command: *f\n"
)


def document(seed: int) -> str:
    rng = random.Random(seed)
    lines = ["x: &a 1"] if rng.random() < 0.3 else []
    for section in ("daemon", "budget"):
        if rng.random() < 0.7:
            lines.append(f"{section}:")
            for _ in range(rng.randint(0, 5)):
                key = rng.choice([*KEYS[section], "nosuchkey"])
                lines.append(f"  {key}: {rng.choice(VALUES)}")
    if rng.random() < 0.9:
        lines.append("programs:")
        for name in rng.sample(["a", "b", "a:b", "ok"], rng.randint(1, 2)):
            lines.append(f"  {name}:")
            lines.append("    command: [sleep, '600']")
            for _ in range(rng.randint(0, 5)):
                key = rng.choice([*KEYS["program"], "nosuchkey", "command"])
                lines.append(f"    {key}: {rng.choice(VALUES)}")
    return "\n".join(lines) + "\n"


SETTINGS = settings(
    max_examples=400,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@SETTINGS
@given(seed=st.integers(0, 2**32))
def test_generated_configs_load_or_name_their_keys(tmp_path: Path, seed: int) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(document(seed))
    try:
        load_config(path)
    except ConfigError as exc:
        assert exc.errors
        for issue in exc.errors:
            assert issue.message
            # every issue points somewhere: a key path, or a line for a YAML-level problem
            assert issue.key_path or issue.line is not None, issue


def test_an_alias_bomb_is_refused_quickly(tmp_path: Path) -> None:
    path = tmp_path / "bomb.yaml"
    path.write_text(BOMB)
    try:
        load_config(path)
    except ConfigError as exc:
        assert any("programs.p.command" in str(i.key_path) for i in exc.errors), exc
    else:
        raise AssertionError("a command of 531,441 words loaded")


def test_reloads_of_generated_configs_apply_whole_or_not_at_all(
    daemon: Callable[..., Any],
) -> None:
    d = daemon({"programs": {"keep": {"command": ["sleep", "600"]}}})
    good = d.config_path.read_text()
    applied = rejected = 0
    with d.client() as c:
        for seed in range(40):
            text = document(seed)
            d.config_path.write_text(text)
            reply = c.request("reload")
            if reply["ok"]:
                applied += 1
                expected = set((yaml.safe_load(text) or {}).get("programs") or {})
            else:
                rejected += 1
                assert reply["error"]["code"] == "bad_request", reply
                expected = {"keep"}  # rejected: the programs before it, all of them
            names = {i["program"] for i in c.request("status", instances=True)["instances"]}
            assert names == expected, (seed, text)
            d.config_path.write_text(good)
            assert c.request("reload")["ok"]
    assert rejected > 0 and d.proc.poll() is None
    assert "Traceback" not in d.log_text() and not d.events("handler_failed")
    print(f"\n40 generated reloads: {applied} applied, {rejected} rejected")
