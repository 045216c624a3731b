"""The YAML loader: values, defaults, and errors that name the key path and the line."""

from __future__ import annotations

import dataclasses
import signal
import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from supervisord_batt.config.loader import config_to_dict, load_config, load_config_text
from supervisord_batt.config.records import (
    DEFAULT_BACKOFF,
    DEFAULT_OUTPUT,
    DEFAULT_PRESSURE,
    DEFAULT_START_LIMIT,
    Config,
)
from supervisord_batt.config.values import parse_signal
from supervisord_batt.config.yamlcheck import ConfigError, ConfigIssue
from supervisord_batt.paths import default_socket_path
from supervisord_batt.quantities import (
    format_duration,
    parse_duration,
    parse_size,
)


def load(text: str) -> Config:
    """Load a dedented YAML string."""
    return load_config_text(textwrap.dedent(text), "test.yaml")


def issues(text: str) -> list[ConfigIssue]:
    """The issues a dedented YAML string raises (it must raise)."""
    with pytest.raises(ConfigError) as caught:
        load(text)
    return caught.value.errors


def one_issue(text: str) -> ConfigIssue:
    """The single issue of a YAML string."""
    found = issues(text)
    assert len(found) == 1, found
    return found[0]


# ------------------------------------------------------------------------ defaults


@pytest.mark.parametrize("text", ["", "# only a comment\n", "daemon:\nbudget:\nprograms:\n"])
def test_empty_document_gives_full_defaults(text: str) -> None:
    c = load(text)
    assert c.programs == ()
    # /run/supervisord-batt/ as root; a user who cannot create the socket there gets
    # their own directory (tests/unit/test_paths.py), so the suite runs as any user
    assert c.daemon.socket == default_socket_path(
        Path("/run/supervisord-batt/supervisord-batt.sock")
    )
    assert c.daemon.socket_mode == 0o660
    assert c.daemon.log_format == "auto"
    assert c.daemon.log_level == "info"
    assert c.daemon.sample_interval == 1.0
    assert c.daemon.scan_interval == 10.0
    assert c.daemon.max_message_bytes == 64 * 1024
    assert c.budget.memory_per_slot == 512 * 1024**2
    assert c.budget.pressure == DEFAULT_PRESSURE
    assert c.source is None


def test_minimal_program_gets_defaults() -> None:
    (p,) = load("programs:\n  job:\n    command: [sleep, '1']\n").programs
    assert p.name == "job"
    assert p.command == ("sleep", "1")
    assert p.numprocs == 1
    assert p.wall_clock_limit is None
    assert p.stop_signal is signal.SIGTERM
    assert p.stop_grace == 10.0
    assert p.restart == "on-failure"
    assert p.backoff == DEFAULT_BACKOFF
    assert p.start_limit == DEFAULT_START_LIMIT
    assert p.min_runtime == 10.0
    assert p.progress_timeout is None
    assert p.slots == 1
    assert p.autostart is True
    assert p.output == DEFAULT_OUTPUT


def test_programs_keep_yaml_order() -> None:
    text = "programs:\n" + "".join(f"  {n}:\n    command: x\n" for n in ("zz", "aa", "mm"))
    assert [p.name for p in load(text).programs] == ["zz", "aa", "mm"]


def test_load_config_sets_source(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("programs:\n  a:\n    command: x\n")
    assert load_config(path).source == path
    assert load_config(str(path)).programs[0].name == "a"


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(tmp_path / "nope.yaml")
    assert "cannot read" in str(caught.value)


# ------------------------------------------------------------- errors: path + line


@pytest.mark.parametrize(
    ("text", "key_path", "line", "message"),
    [
        (
            """\
            programs:
              batt:
                command: x
                wall_clock_limit: ten
            """,
            "programs.batt.wall_clock_limit",
            4,
            "expected a duration such as 600s, got 'ten'",
        ),
        (
            """\
            daemon:
              max_connections: many
            """,
            "daemon.max_connections",
            2,
            "expected an integer, got 'many'",
        ),
        (
            """\
            daemon:
              max_connections: true
            """,
            "daemon.max_connections",
            2,
            "expected an integer, got boolean true",
        ),
        ("daemon: [1, 2]\n", "daemon", 1, "expected a mapping, got a list"),
        ("daemon:\n  allowed_groups: wheel\n", "daemon.allowed_groups", 2, "expected a list"),
        ("daemon:\n  allowed_groups: [wheel, 3]\n", "daemon.allowed_groups[1]", 2, "string"),
        ("daemon:\n  allowed_uids: [0, -1]\n", "daemon.allowed_uids[1]", 2, "at least 0"),
        ("daemon:\n  socket_group: 12\n", "daemon.socket_group", 2, "expected a string"),
        ("daemon:\n  socket: relative.sock\n", "daemon.socket", 2, "absolute path"),
        ("daemon:\n\n  log_format: xml\n", "daemon.log_format", 3, "json, console, auto"),
        ("daemon:\n  log_level: verbose\n", "daemon.log_level", 2, "debug, info"),
        ("daemon:\n  socket_mode: '0999'\n", "daemon.socket_mode", 2, "octal mode"),
        ("daemon:\n  socket_mode: 660\n", "daemon.socket_mode", 2, "quote it"),
        ("daemon:\n  socket_mode: 0o1777\n", "daemon.socket_mode", 2, "octal mode"),
        ("daemon:\n  max_message_bytes: 10XB\n", "daemon.max_message_bytes", 2, "a size"),
        ("daemon:\n  max_message_bytes: 0\n", "daemon.max_message_bytes", 2, "more than 0"),
        ("daemon:\n  idle_timeout: 0s\n", "daemon.idle_timeout", 2, "longer than 0s"),
        (
            "daemon:\n  sample_interval: 5s\n  scan_interval: 2s\n",
            "daemon.scan_interval",
            3,
            "at least sample_interval",
        ),
        ("budget:\n  reserve_percent: 100\n", "budget.reserve_percent", 2, "[0, 100)"),
        ("budget:\n  reserve_percent: -1\n", "budget.reserve_percent", 2, "[0, 100)"),
        (
            "budget:\n  memory_reserve_percent: 100\n",
            "budget.memory_reserve_percent",
            2,
            "[0, 100)",
        ),
        ("budget:\n  reserve_tasks: -5\n", "budget.reserve_tasks", 2, "at least 0"),
        ("budget:\n  max_per_lease: 0\n", "budget.max_per_lease", 2, "at least 1"),
        ("budget:\n  cpu_cap: 0\n", "budget.cpu_cap", 2, "(0, inf)"),
        ("budget:\n  burst_window: soon\n", "budget.burst_window", 2, "a duration"),
        ("budget:\n\n  burst_window: 2s\n", "budget.burst_window", 3, "at most 1s (a lone"),
        ("budget:\n  burst_window: -1s\n", "budget.burst_window", 2, "got '-1s'"),
        ("budget:\n  cgroups: [/a, {x: 1}]\n", "budget.cgroups[1]", 2, "got a mapping"),
        ("budget:\n  user_weights: [alice]\n", "budget.user_weights", 2, "mapping of names"),
        ("budget:\n  user_weights:\n    alice: 0\n", "budget.user_weights.alice", 3, "(0, 1000]"),
        ("budget:\n  group_weights: {staff: two}\n", "budget.group_weights.staff", 2, "'two'"),
        ("budget:\n  group_weights:\n    g: 1001\n", "budget.group_weights.g", 3, "(0, 1000]"),
        ("budget:\n  user_weights:\n    1000: 2\n", "budget.user_weights", 3, "strings"),
        (
            "budget:\n  pressure:\n    headroom_high_percent: 10\n"
            "    headroom_extreme_percent: 20\n",
            "budget.pressure.headroom_extreme_percent",
            4,
            "must be below headroom_high_percent",
        ),
        (
            "budget:\n  pressure:\n    cpu_extreme: 50\n",
            "budget.pressure.cpu_extreme",
            3,
            "must be above cpu_high (60)",
        ),
        (
            "budget:\n  pressure:\n    memory_high: 80\n",
            "budget.pressure.memory_extreme",
            2,  # the key is absent: the line of its section
            "must be above memory_high (80)",
        ),
        ("budget:\n  pressure:\n    cpu_high: 101\n", "budget.pressure.cpu_high", 3, "[0, 100]"),
        (
            "budget:\n  pressure:\n    cpu_high: false\n",  # only the word off turns it off
            "budget.pressure.cpu_high",
            3,
            "expected a percent in [0, 100] or off, got boolean false",
        ),
        (
            "budget:\n  pressure:\n    memory_extreme: offf\n",
            "budget.pressure.memory_extreme",
            3,
            "or off, got 'offf'",
        ),
        ("programs:\n  a b:\n    command: x\n", "programs.a b", 2, "[A-Za-z0-9_.-]+"),
        ("programs:\n  a:b:\n    command: x\n", "programs.a:b", 2, "must not contain ':'"),
        ("programs:\n  ..:\n    command: x\n", "programs...", 2, "only dots"),
        ("programs:\n  a:\n    numprocs: 2\n", "programs.a.command", 2, "missing required key"),
        ("programs:\n  a:\n", "programs.a.command", 2, "missing required key"),
        ("programs:\n  a: 3\n", "programs.a", 2, "expected a mapping, got integer 3"),
        ("programs: [a]\n", "programs", 1, "expected a mapping of names to programs"),
        ("programs:\n  a:\n    command: ''\n", "programs.a.command", 3, "command is empty"),
        ("programs:\n  a:\n    command: []\n", "programs.a.command", 3, "command is empty"),
        ("programs:\n  a:\n    command: ['']\n", "programs.a.command", 3, "empty string"),
        ("programs:\n  a:\n    command: 5\n", "programs.a.command", 3, "list of strings"),
        (
            "programs:\n  a:\n    command:\n      - x\n      - [y]\n",
            "programs.a.command[1]",
            5,
            "expected a string, got a list",
        ),
        (
            'programs:\n  a:\n    command: "sh -c \'echo"\n',
            "programs.a.command",
            3,
            "No closing quotation",
        ),
        (
            "programs:\n  a:\n    command: x\n    numprocs: 0\n",
            "programs.a.numprocs",
            4,
            "at least 1",
        ),
        ("programs:\n  a:\n    command: x\n    slots: -2\n", "programs.a.slots", 4, "at least 1"),
        ("programs:\n  a:\n    command: x\n    autostart: 1\n", "programs.a.autostart", 4, "true"),
        (
            "programs:\n  a:\n    command: x\n    restart: sometimes\n",
            "programs.a.restart",
            4,
            "on-failure",
        ),
        (
            "programs:\n  a:\n    command: x\n    stop_signal: TREM\n",
            "programs.a.stop_signal",
            4,
            "'TREM'",
        ),
        (
            "programs:\n  a:\n    command: x\n    stop_signal: STOP\n",
            "programs.a.stop_signal",
            4,
            "SIGSTOP",
        ),
        (
            "programs:\n  a:\n    command: x\n    stop_signal: 99\n",
            "programs.a.stop_signal",
            4,
            "99",
        ),
        (
            "programs:\n  a:\n    command: x\n    user: 1000\n",
            "programs.a.user",
            4,
            "expected a string",
        ),
        (
            "programs:\n  a:\n    command: x\n    group: [g]\n",
            "programs.a.group",
            4,
            "expected a string",
        ),
        ("programs:\n  a:\n    command: x\n    cwd: tmp\n", "programs.a.cwd", 4, "absolute path"),
        (
            "programs:\n  a:\n    command: x\n    stop_grace: -1s\n",
            "programs.a.stop_grace",
            4,
            "'-1s'",
        ),
        (
            "programs:\n  a:\n    command: x\n    environment:\n      1BAD: x\n",
            "programs.a.environment.1BAD",
            5,
            "not a valid environment variable name",
        ),
        (
            "programs:\n  a:\n    command: x\n    environment:\n      A: {b: 1}\n",
            "programs.a.environment.A",
            5,
            "got a mapping",
        ),
        (
            "programs:\n  a:\n    command: x\n    pass_environment: [LANG, A-B]\n",
            "programs.a.pass_environment[1]",
            4,
            "'A-B' is not a valid environment variable name",
        ),
        (
            "programs:\n  a:\n    command: x\n    pass_environment: LANG\n",
            "programs.a.pass_environment",
            4,
            "expected a list",
        ),
        (
            "programs:\n  a:\n    command: x\n    worker_memory: lots\n",
            "programs.a.worker_memory",
            4,
            "a size such as 512MiB",
        ),
        (
            "programs:\n  a:\n    command: x\n    worker_memory: 2TiB\n",
            "programs.a.worker_memory",
            4,
            "at most 1TiB",
        ),
        (
            "programs:\n  a:\n    command: x\n    worker_memory: 1536\n",
            "programs.a.worker_memory",
            4,
            "at least 1MiB (a bare number is bytes)",
        ),
        (
            "programs:\n  a:\n    command: x\n    backoff:\n      initial: 10s\n      max: 5s\n",
            "programs.a.backoff.max",
            6,
            "at least backoff.initial (10s)",
        ),
        (
            "programs:\n  a:\n    command: x\n    backoff:\n      factor: 0.5\n",
            "programs.a.backoff.factor",
            5,
            "[1, inf)",
        ),
        (
            "programs:\n  a:\n    command: x\n    start_limit:\n      burst: 0\n",
            "programs.a.start_limit.burst",
            5,
            "at least 1",
        ),
        (
            "programs:\n  a:\n    command: x\n    output:\n      mode: syslog\n",
            "programs.a.output.mode",
            5,
            "file, daemon",
        ),
        (
            "programs:\n  a:\n    command: x\n    output:\n      max_bytes: lots\n",
            "programs.a.output.max_bytes",
            5,
            "expected a size such as 512MiB, got 'lots'",
        ),
        (
            "programs:\n  a:\n    command: x\n    output:\n      backups: -1\n",
            "programs.a.output.backups",
            5,
            "at least 0",
        ),
        (
            "daemon:\n  socket: /a\n  socket: /b\n",
            "daemon.socket",
            3,
            "duplicate key (first at line 2)",
        ),
        ("1: x\n", "", 1, "keys must be strings, got integer 1"),
        ("just text\n", "", 1, "expected a mapping, got 'just text'"),
    ],
)
def test_error_names_key_path_and_line(text: str, key_path: str, line: int, message: str) -> None:
    issue = one_issue(text)
    assert issue.key_path == key_path
    assert issue.line == line
    assert message in issue.message


def test_issue_and_error_text() -> None:
    text = "programs:\n  batt:\n    command: x\n    wall_clock_limit: ten\n"
    with pytest.raises(ConfigError) as caught:
        load_config_text(text, "site.yaml")
    expected = (
        "site.yaml: programs.batt.wall_clock_limit (line 4): "
        "expected a duration such as 600s, got 'ten'"
    )
    assert str(caught.value) == expected


def test_all_errors_are_reported_in_line_order() -> None:
    found = issues(
        """\
        daemon:
          log_format: xml
          bogus: 1
        budget:
          max_per_lease: 0
        programs:
          batt:
            command: x
            numprocs: zero
            wall_clok_limit: 10s
          other:
            slots: 2
        """
    )
    assert [(i.key_path, i.line) for i in found] == [
        ("daemon.log_format", 2),
        ("daemon.bogus", 3),
        ("budget.max_per_lease", 5),
        ("programs.batt.numprocs", 9),
        ("programs.batt.wall_clok_limit", 10),
        ("programs.other.command", 11),
    ]


def test_every_bad_list_item_is_reported() -> None:
    found = issues("daemon:\n  allowed_uids:\n    - 0\n    - x\n    - -3\n")
    assert [(i.key_path, i.line) for i in found] == [
        ("daemon.allowed_uids[1]", 4),
        ("daemon.allowed_uids[2]", 5),
    ]


def test_unknown_key_suggests_closest() -> None:
    issue = one_issue("programs:\n  batt:\n    command: x\n    wall_clok_limit: 10s\n")
    assert issue.key_path == "programs.batt.wall_clok_limit"
    assert issue.line == 4
    assert issue.message == "unknown key 'wall_clok_limit'; did you mean 'wall_clock_limit'?"


def test_unknown_key_without_close_match() -> None:
    issue = one_issue("daemon:\n  zzzzzz: 1\n")
    assert issue.message == "unknown key 'zzzzzz'"


def test_unknown_top_level_section_suggests() -> None:
    issue = one_issue("program:\n  a:\n    command: x\n")
    assert issue.key_path == "program"
    assert "did you mean 'programs'?" in issue.message


def test_bad_enum_suggests() -> None:
    issue = one_issue("programs:\n  a:\n    command: x\n    restart: onfailure\n")
    assert issue.message.endswith("did you mean 'on-failure'?")


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ("daemon:\n  socket: [unclosed\nbudget: {}\n", 3),
        ("daemon:\n\tsocket: /x\n", 2),
        ("a: 1\n b: 2\n", 2),
        ("programs:\n  a:\n    command: 'x\n", 4),
    ],
)
def test_yaml_syntax_error_has_line(text: str, line: int) -> None:
    issue = one_issue(text)
    assert issue.line == line
    assert issue.message.startswith("YAML syntax:")
    assert issue.key_path == ""


def test_cross_checks_skip_values_that_failed() -> None:
    # initial is bad: no second, misleading "max below initial" error
    found = issues("programs:\n  a:\n    command: x\n    backoff: {initial: soon, max: 1s}\n")
    assert [i.key_path for i in found] == ["programs.a.backoff.initial"]


def test_users_and_groups_are_not_resolved() -> None:
    text = "programs:\n  a:\n    command: x\n    user: no-such-user-xyz\n    group: nog\n"
    (p,) = load(text).programs
    assert (p.user, p.group) == ("no-such-user-xyz", "nog")


# -------------------------------------------------------------------------- values


def test_socket_mode_forms() -> None:
    for text, mode in [("'0660'", 0o660), ("'660'", 0o660), ("0660", 0o660), ("432", 0o660)]:
        assert load(f"daemon:\n  socket_mode: {text}\n").daemon.socket_mode == mode
    assert load("daemon:\n  socket_mode: '0o600'\n").daemon.socket_mode == 0o600


def test_environment_values_kept_as_written_and_sorted() -> None:
    (p,) = load(
        """\
        programs:
          a:
            command: x
            environment:
              NAME: batt
              DEBUG: true
              N: 3
              MODE: 0660
        """
    ).programs
    # sorted by name: reordering variables is no change on reload
    assert p.environment == (("DEBUG", "true"), ("MODE", "0660"), ("N", "3"), ("NAME", "batt"))


def test_pass_environment_names_sorted_once() -> None:
    (p,) = load("programs:\n  a:\n    command: x\n    pass_environment: [TZ, LANG, TZ]\n").programs
    assert p.pass_environment == ("LANG", "TZ")
    (q,) = load("programs:\n  a:\n    command: x\n").programs
    assert q.pass_environment == ()


def test_command_list_numbers_kept_as_written() -> None:
    (p,) = load("programs:\n  a:\n    command: [run, --n, 20, --x, 1.50]\n").programs
    assert p.command == ("run", "--n", "20", "--x", "1.50")


@pytest.mark.parametrize(
    ("command", "argv"),
    [
        ("sleep 10", ("sleep", "10")),
        ("python3 -c 'print(1 + 2)'", ("python3", "-c", "print(1 + 2)")),
        ('sh -c "echo \\"hi there\\""', ("sh", "-c", 'echo "hi there"')),
        ("  spaced   out  ", ("spaced", "out")),
        ("echo $HOME *", ("echo", "$HOME", "*")),
    ],
)
def test_command_string_is_shlex_split(command: str, argv: tuple[str, ...]) -> None:
    text = yaml.safe_dump({"programs": {"a": {"command": command}}})
    assert load_config_text(text).programs[0].command == argv


@pytest.mark.parametrize("command", ["sh -c 'unclosed", 'say "hi', "trailing \\"])
def test_command_shlex_errors(command: str) -> None:
    text = yaml.safe_dump({"programs": {"a": {"command": command}}})
    with pytest.raises(ConfigError) as caught:
        load_config_text(text)
    (issue,) = caught.value.errors
    assert issue.key_path == "programs.a.command"
    assert issue.message.startswith("cannot split command")


def test_merge_keys_share_settings() -> None:
    c = load(
        """\
        programs:
          a: &common
            command: x
            slots: 3
            numprocs: 2
          b:
            <<: *common
            numprocs: 5
        """
    )
    b = c.programs[1]
    assert (b.command, b.slots, b.numprocs) == (("x",), 3, 5)


def test_null_optional_values() -> None:
    (p,) = load(
        "programs:\n  a:\n    command: x\n    wall_clock_limit: null\n"
        "    progress_timeout: ~\n    cwd:\n"
    ).programs
    assert p.wall_clock_limit is None
    assert p.progress_timeout is None
    assert p.cwd is None


# ------------------------------------------------------------------------ durations

DURATIONS = [
    ("600s", 600.0),
    ("10m", 600.0),
    ("1h30m", 5400.0),
    ("1h 30m", 5400.0),
    ("250ms", 0.25),
    ("1.5s", 1.5),
    ("2d", 172800.0),
    ("1m30s", 90.0),
    ("0s", 0.0),
    ("600", 600.0),
    (" 5s ", 5.0),
    (600, 600.0),
    (1.5, 1.5),
    (0, 0.0),
]


@pytest.mark.parametrize(("value", "seconds"), DURATIONS)
def test_parse_duration(value: object, seconds: float) -> None:
    assert parse_duration(value) == pytest.approx(seconds)


@pytest.mark.parametrize(
    "value", ["ten", "", " ", "10x", "-5s", "-5", -1, -0.5, True, False, None, "5s-", "s", "1h30"]
)
def test_parse_duration_rejects(value: object) -> None:
    with pytest.raises(ValueError, match="expected a duration such as 600s"):
        parse_duration(value)


def test_parse_duration_rejects_nan_and_inf() -> None:
    for value in (float("nan"), float("inf"), "inf"):
        with pytest.raises(ValueError):
            parse_duration(value)


@pytest.mark.parametrize(("value", "seconds"), [v for v in DURATIONS if isinstance(v[0], str)])
def test_durations_in_yaml(value: str, seconds: float) -> None:
    (p,) = load(f"programs:\n  a:\n    command: x\n    min_runtime: '{value}'\n").programs
    assert p.min_runtime == pytest.approx(seconds)


def test_stop_grace_is_bounded_by_what_the_unit_waits_for() -> None:
    """The shipped unit's TimeoutStopSec=90s must cover the grace and the kill after it."""
    (p,) = load("programs:\n  a:\n    command: x\n    stop_grace: 60s\n").programs
    assert p.stop_grace == 60.0
    issue = one_issue("programs:\n  a:\n    command: x\n    stop_grace: 61s\n")
    assert issue.key_path == "programs.a.stop_grace" and issue.line == 4
    assert "at most 1m" in issue.message and "TimeoutStopSec=90s" in issue.message


def test_duration_yaml_booleans_rejected() -> None:
    issue = one_issue("programs:\n  a:\n    command: x\n    stop_grace: yes\n")
    assert issue.message == "expected a duration such as 600s, got true"


@given(st.floats(min_value=0, max_value=1e12, allow_nan=False, allow_infinity=False))
def test_duration_round_trip_floats(seconds: float) -> None:
    assert parse_duration(format_duration(seconds)) == seconds


@given(st.integers(min_value=0, max_value=10**9))
def test_duration_round_trip_whole_seconds(seconds: int) -> None:
    text = format_duration(seconds)
    assert parse_duration(text) == seconds
    assert "." not in text


def test_format_duration_examples() -> None:
    assert format_duration(5400) == "1h30m"
    assert format_duration(90) == "1m30s"
    assert format_duration(0) == "0s"
    assert format_duration(0.25) == "0.25s"


# ---------------------------------------------------------------------------- sizes


@pytest.mark.parametrize(
    ("value", "size"),
    [
        (1048576, 1048576),
        ("512MiB", 512 * 1024**2),
        ("1GiB", 1024**3),
        ("64KiB", 64 * 1024),
        ("10MB", 10_000_000),
        ("10kB", 10_000),
        ("1.5G", int(1.5 * 1024**3)),
        ("512M", 512 * 1024**2),
        ("4k", 4096),
        ("100", 100),
        ("100B", 100),
        ("2 mib", 2 * 1024**2),
    ],
)
def test_parse_size(value: object, size: int) -> None:
    assert parse_size(value) == size


@pytest.mark.parametrize("value", ["", "lots", "10XB", "-1", -1, True, "1.5.5M", None, "MiB"])
def test_parse_size_rejects(value: object) -> None:
    with pytest.raises(ValueError, match="expected a size such as 512MiB"):
        parse_size(value)


@given(st.integers(min_value=0, max_value=2**40), st.sampled_from(["B", "KiB", "MiB", "GiB"]))
def test_a_whole_number_of_any_unit_parses_exactly(number: int, unit: str) -> None:
    factor = {"B": 1, "KiB": 1024, "MiB": 1024**2, "GiB": 1024**3}[unit]
    assert parse_size(f"{number}{unit}") == number * factor


def test_sizes_in_yaml() -> None:
    c = load("budget:\n  memory_per_slot: 1GiB\ndaemon:\n  max_message_bytes: 1MB\n")
    assert c.budget.memory_per_slot == 1024**3
    assert c.daemon.max_message_bytes == 1_000_000


# -------------------------------------------------------------------------- signals


@pytest.mark.parametrize(
    ("value", "sig"),
    [
        ("TERM", signal.SIGTERM),
        ("SIGTERM", signal.SIGTERM),
        ("term", signal.SIGTERM),
        ("sigint", signal.SIGINT),
        (15, signal.SIGTERM),
        ("KILL", signal.SIGKILL),
        (9, signal.SIGKILL),
        ("HUP", signal.SIGHUP),
    ],
)
def test_parse_signal(value: object, sig: signal.Signals) -> None:
    assert parse_signal(value) is sig


@pytest.mark.parametrize("value", ["TREM", "", "SIG", 0, 999, True, None, 1.5])
def test_parse_signal_rejects(value: object) -> None:
    with pytest.raises(ValueError):
        parse_signal(value)


def test_stop_signal_kill_allowed_stop_not() -> None:
    (p,) = load("programs:\n  a:\n    command: x\n    stop_signal: KILL\n").programs
    assert p.stop_signal is signal.SIGKILL
    for name in ("STOP", "SIGTSTP", "CONT", "CHLD"):
        issue = one_issue(f"programs:\n  a:\n    command: x\n    stop_signal: {name}\n")
        assert "does not end a process" in issue.message


# --------------------------------------------------------------------- round trip

EVERY_KEY = """\
daemon:
  socket: {socket}
  socket_mode: "0600"
  socket_group: jupyter
  allowed_uids: [1000, 1001]
  allowed_groups: [jupyter, staff]
  sample_interval: 500ms
  scan_interval: 30s
  log_format: json
  log_level: debug
  log_file: /var/log/sb.log
  max_connections: 32
  idle_timeout: 1h
  max_message_bytes: 1MiB
  pid_file: /run/sb.pid
  lease_log_rate: 0
  admin_groups: [wheel]
  max_connections_per_uid: 4
  bad_input_log_rate: 0
  stats_interval: 15s
budget:
  reserve_tasks: 128
  reserve_percent: 12.5
  max_per_lease: 3
  cpu_cap: 2.5
  memory_per_slot: 1GiB
  memory_reserve_percent: 7.5
  memory_unwritten: false
  lease_ttl: 2m
  cgroups: [/batt, /sys/fs/cgroup/pids/user.slice]
  watch_users: [alice, bob]
  user_weights: {alice: 2, "1001": 0.5}
  group_weights: {staff: 3}
  burst_window: 100ms
  pressure:
    headroom_high_percent: 40
    headroom_extreme_percent: 15.5
    cpu_high: 50
    cpu_extreme: 80
    memory_high: 10
    memory_extreme: 30
metrics:
  listen: "[::1]:9200"
  textfile: /var/lib/node_exporter/textfile/batt.prom
programs:
  zeta:
    command: "python3 -c 'import time; time.sleep(5)'"
    numprocs: 4
    cwd: /srv/jobs
    environment: {OMP_NUM_THREADS: 1, MODE: fast}
    user: batt
    group: batt
    wall_clock_limit: 1h30m
    stop_signal: INT
    stop_grace: 0s
    restart: always
    backoff: {initial: 250ms, max: 5m, factor: 1.5}
    start_limit: {burst: 9, interval: 10m}
    min_runtime: 1m
    progress_timeout: 45s
    slots: 4
    autostart: false
    output: {mode: daemon, directory: /var/log/zeta, max_bytes: 1GB, backups: 0}
    contain: false
    tasks_without_lease: 8
    pass_environment: [LANG, http_proxy]
    worker_memory: 1536MiB
  alpha:
    command: [echo, hi]
    restart: never
    stop_signal: 9
"""


def test_round_trip_every_key(tmp_path: Path) -> None:
    original = load(EVERY_KEY.replace("{socket}", str(tmp_path / "s.sock")))
    plain = config_to_dict(original)
    again = load_config_text(yaml.safe_dump(plain, sort_keys=False))
    assert again == original
    assert config_to_dict(again) == plain


def test_round_trip_with_sorted_keys_only_reorders_programs(tmp_path: Path) -> None:
    # yaml.safe_dump sorts mapping keys by default, and program order is YAML order.
    original = load(EVERY_KEY.replace("{socket}", str(tmp_path / "s.sock")))
    again = load_config_text(yaml.safe_dump(config_to_dict(original)))
    assert [p.name for p in again.programs] == ["alpha", "zeta"]
    by_name = tuple(sorted(original.programs, key=lambda p: p.name))
    assert again == dataclasses.replace(original, programs=by_name)


def test_round_trip_sets_every_key_to_a_non_default(tmp_path: Path) -> None:
    # The round trip proves something only if every field differs from its default.
    every = load(EVERY_KEY.replace("{socket}", str(tmp_path / "s.sock")))
    default = load("programs:\n  zeta:\n    command: x\n")
    pairs: list[tuple[Any, Any]] = [
        (every.daemon, default.daemon),
        (every.budget, default.budget),
        (every.budget.pressure, default.budget.pressure),
        (every.programs[0], default.programs[0]),
        (every.programs[0].backoff, default.programs[0].backoff),
        (every.programs[0].start_limit, default.programs[0].start_limit),
        (every.programs[0].output, default.programs[0].output),
        (every.metrics, default.metrics),
    ]
    for ours, theirs in pairs:
        for f in dataclasses.fields(ours):
            if f.name != "name":
                assert getattr(ours, f.name) != getattr(theirs, f.name), f.name


def test_config_to_dict_shape(tmp_path: Path) -> None:
    plain = config_to_dict(load(EVERY_KEY.replace("{socket}", str(tmp_path / "s.sock"))))
    zeta = plain["programs"]["zeta"]
    assert list(plain["programs"]) == ["zeta", "alpha"]
    assert zeta["stop_signal"] == "SIGINT"
    assert zeta["wall_clock_limit"] == 5400.0
    assert zeta["environment"] == {"OMP_NUM_THREADS": "1", "MODE": "fast"}
    assert zeta["cwd"] == "/srv/jobs"
    assert "name" not in zeta
    assert plain["daemon"]["socket_mode"] == "0600"
    assert plain["budget"]["memory_per_slot"] == 1024**3
    assert plain["programs"]["alpha"]["stop_signal"] == "SIGKILL"


def test_issue25_psi_thresholds_may_be_off() -> None:
    """PSI reaches 100 on a saturated host: `off` takes a signal out of the level (no
    number could), and round-trips as off."""
    config = load_config_text(
        "budget:\n  pressure:\n    cpu_high: off\n    cpu_extreme: 'OFF'\n"
        "    memory_high: off\n    memory_extreme: 40\n"
    )
    th = config.budget.pressure
    assert (th.cpu_high, th.cpu_extreme, th.memory_high, th.memory_extreme) == (
        None,
        None,
        None,
        40.0,
    )
    plain = config_to_dict(config)["budget"]["pressure"]
    assert plain["cpu_high"] == "off" and plain["memory_extreme"] == 40.0
    again = load_config_text(yaml.safe_dump(config_to_dict(config)))
    assert again.budget.pressure == th
    with pytest.raises(ConfigError) as err:  # a headroom threshold is a number
        load_config_text("budget:\n  pressure:\n    headroom_high_percent: off\n")
    assert "budget.pressure.headroom_high_percent (line 3)" in str(err.value)


def test_a_path_with_dot_dot_is_refused_with_its_key() -> None:
    with pytest.raises(ConfigError) as err:
        load_config_text("daemon:\n  log_file: /var/log/link/../x.log\n")
    assert "daemon.log_file (line 2)" in str(err.value) and "'..'" in str(err.value)
