"""YAML configuration into frozen, typed objects.

`load_config(path)` and `load_config_text(text, source)` return a `Config` or raise
`ConfigError` listing every problem with its key path and YAML line. The dataclasses below
are the contract other modules build against; `config_to_dict` turns a `Config` back into
YAML-shaped plain data (for `check-config` output and for diffing programs on reload).
Reading the node tree and collecting problems is `yamlcheck`'s; checking one value is
`values`'. This module says which keys each section has, their defaults and the checks
that span several keys.

# Why one module
It is the list of every key, section by section, with its default and its checks, read
side by side with the shipped YAML it describes. Walking the YAML and collecting the
problems is `yamlcheck`'s, one value's check is `values`' and `quantities`'.
"""

from __future__ import annotations

import grp
import os
import pwd
import re
import signal
from collections.abc import Iterator
from dataclasses import asdict, fields, replace
from pathlib import Path
from typing import Any, cast, get_args

import yaml
from yaml.nodes import MappingNode, Node, SequenceNode

from supervisord_batt import paths, protocol, safepath
from supervisord_batt.config.records import (
    DEFAULT_BACKOFF,
    DEFAULT_OUTPUT,
    DEFAULT_PRESSURE,
    DEFAULT_START_LIMIT,
    DEFAULT_STOP_GRACE,
    MAX_STOP_GRACE,
    UNIT_STOP_TIMEOUT,
    BackoffConfig,
    BudgetConfig,
    Config,
    DaemonConfig,
    LogFormat,
    MetricsConfig,
    OutputConfig,
    OutputMode,
    PressureThresholds,
    ProgramConfig,
    RestartPolicy,
    StartLimit,
)
from supervisord_batt.config.values import (
    absolute_path,
    boolean,
    command,
    duration,
    environment,
    environment_names,
    integer,
    list_of,
    listen_address,
    number,
    one_of,
    optional,
    psi_threshold,
    size,
    socket_mode,
    stop_signal,
    string,
    weights,
)
from supervisord_batt.config.yamlcheck import (
    ConfigError,
    ConfigIssue,
    Invalid,
    Issues,
    Section,
    is_null,
    mapping_pairs,
    node_kind,
    node_line,
)
from supervisord_batt.paths import DEFAULT_SOCKET, default_socket_path

# The shipped unit's TimeoutStopSec must cover the longest stop (records.UNIT_STOP_TIMEOUT)
_stop_grace = duration(
    positive=False,
    at_most=MAX_STOP_GRACE,
    why=f" (the shipped systemd unit's TimeoutStopSec={UNIT_STOP_TIMEOUT:.0f}s must cover it)",
)


def _worker_memory(node: Node) -> int:
    """The size one worker of a program takes, as its operator declares it: a size, at
    least and at most what an acquire may carry (`protocol.MIN_WORKER_BYTES`, `_MAX`)."""
    nbytes = size(node)
    if nbytes < protocol.MIN_WORKER_BYTES:
        raise Invalid(f"must be at least 1MiB (a bare number is bytes), got {nbytes} bytes")
    if nbytes > protocol.MAX_WORKER_BYTES:
        raise Invalid(f"must be at most 1TiB (1099511627776 bytes), got {nbytes} bytes")
    return nbytes


# A lone job waits one burst window before its pool (budget.ledger), and the client waits
# at most 2 s in all (client.leases.BURST_WAIT_MAX): a window is a fraction of a second.
MAX_BURST_WINDOW = 1.0
DEFAULT_BURST_WINDOW = 0.25

_PROGRAM_NAME = re.compile(r"[A-Za-z0-9_.-]+")


def _keys(cls: Any, *, skip: tuple[str, ...] = ()) -> tuple[str, ...]:
    """The YAML keys of a section: its dataclass's field names."""
    return tuple(f.name for f in fields(cls) if f.name not in skip)


# ------------------------------------------------------------------------- sections


def _daemon(s: Section) -> DaemonConfig:
    """The daemon section; the socket falls back for a non-root daemon (see below)."""
    sample = s.get("sample_interval", duration(), 1.0)
    scan = s.get("scan_interval", duration(), 10.0)
    if s.ok("sample_interval", "scan_interval") and scan < sample:
        s.fail("scan_interval", f"must be at least sample_interval ({sample:g}s), got {scan:g}s")
    socket = s.get("socket", absolute_path, DEFAULT_SOCKET)
    return DaemonConfig(
        socket=default_socket_path(socket),
        socket_mode=s.get("socket_mode", socket_mode, 0o660),
        socket_group=s.get("socket_group", optional(string), None),
        allowed_uids=s.get("allowed_uids", list_of(integer(0)), ()),
        allowed_groups=s.get("allowed_groups", list_of(string), ()),
        sample_interval=sample,
        scan_interval=scan,
        log_format=cast(LogFormat, s.get("log_format", one_of(get_args(LogFormat)), "auto")),
        log_level=s.get("log_level", one_of(protocol.LOG_LEVELS), "info"),
        log_file=s.get("log_file", optional(absolute_path), None),
        max_connections=s.get("max_connections", integer(1), 256),
        idle_timeout=s.get("idle_timeout", duration(), 300.0),
        max_message_bytes=s.get("max_message_bytes", size, protocol.MAX_LINE_DEFAULT),
        pid_file=s.get("pid_file", optional(absolute_path), None),
        lease_log_rate=s.get("lease_log_rate", integer(0), 100),
        admin_groups=s.get("admin_groups", list_of(string), ()),
        max_connections_per_uid=s.get("max_connections_per_uid", integer(1), 32),
        bad_input_log_rate=s.get("bad_input_log_rate", integer(0), 10),
        stats_interval=s.get("stats_interval", duration(), 60.0),
    )


def _metrics(s: Section) -> MetricsConfig:
    """The metrics section: where to serve and where to write them (both off by default)."""
    textfile = s.get("textfile", optional(absolute_path), None)
    if textfile is not None and textfile.suffix != ".prom":
        s.fail("textfile", f"node_exporter reads only *.prom files, got {textfile.name!r}")
    return MetricsConfig(listen=s.get("listen", optional(listen_address), None), textfile=textfile)


def _pressure(s: Section) -> PressureThresholds:
    """Pressure levels; each "extreme" must lie beyond its "high" (PSI ones may be off)."""
    d, percent = DEFAULT_PRESSURE, number(0, 100)
    th = PressureThresholds(
        headroom_high_percent=s.get("headroom_high_percent", percent, d.headroom_high_percent),
        headroom_extreme_percent=s.get(
            "headroom_extreme_percent", percent, d.headroom_extreme_percent
        ),
        cpu_high=s.get("cpu_high", psi_threshold, d.cpu_high),
        cpu_extreme=s.get("cpu_extreme", psi_threshold, d.cpu_extreme),
        memory_high=s.get("memory_high", psi_threshold, d.memory_high),
        memory_extreme=s.get("memory_extreme", psi_threshold, d.memory_extreme),
    )
    # Headroom shrinks as pressure grows, so its extreme is the smaller percent; PSI grows.
    for high, extreme, extreme_smaller in (
        ("headroom_high_percent", "headroom_extreme_percent", True),
        ("cpu_high", "cpu_extreme", False),
        ("memory_high", "memory_extreme", False),
    ):
        h, e = getattr(th, high), getattr(th, extreme)
        if h is None or e is None or not s.ok(high, extreme):
            continue  # off: no order to keep
        if e >= h if extreme_smaller else e <= h:
            side = "below" if extreme_smaller else "above"
            s.fail(extreme, f"must be {side} {high} ({h:g}), got {e:g}")
    return th


def _budget(s: Section) -> BudgetConfig:
    """The budget section."""
    return BudgetConfig(
        reserve_tasks=s.get("reserve_tasks", integer(0), 64),
        reserve_percent=s.get("reserve_percent", number(0, 100, high_open=True), 5.0),
        max_per_lease=s.get("max_per_lease", integer(1), 8),
        cpu_cap=s.get("cpu_cap", optional(number(0, low_open=True)), None),
        memory_per_slot=s.get("memory_per_slot", size, 512 * 1024**2),
        lease_ttl=s.get("lease_ttl", duration(), 60.0),
        cgroups=s.get("cgroups", list_of(string), ()),
        watch_users=s.get("watch_users", list_of(string), ()),
        pressure=_pressure(s.child("pressure", _keys(PressureThresholds))),
        user_weights=s.get("user_weights", weights, ()),
        group_weights=s.get("group_weights", weights, ()),
        burst_window=s.get(
            "burst_window",
            duration(
                positive=False,
                at_most=MAX_BURST_WINDOW,
                why=" (a lone job waits one window before its pool)",
            ),
            DEFAULT_BURST_WINDOW,
        ),
        memory_reserve_percent=s.get("memory_reserve_percent", number(0, 100, high_open=True), 5.0),
        memory_unwritten=s.get("memory_unwritten", boolean, True),
    )


def _backoff(s: Section) -> BackoffConfig:
    """Restart delays: initial, times factor after each quick failure, capped at max."""
    d = DEFAULT_BACKOFF
    initial = s.get("initial", duration(), d.initial)
    cap = s.get("max", duration(), d.max)
    if s.ok("initial", "max") and cap < initial:
        s.fail("max", f"must be at least backoff.initial ({initial:g}s), got {cap:g}s")
    factor = s.get("factor", number(1), d.factor)
    return BackoffConfig(initial=initial, max=cap, factor=factor)


def _start_limit(s: Section) -> StartLimit:
    """At most `burst` starts within `interval`, then the program is FATAL."""
    d = DEFAULT_START_LIMIT
    return StartLimit(
        burst=s.get("burst", integer(1), d.burst),
        interval=s.get("interval", duration(), d.interval),
    )


def _output(s: Section) -> OutputConfig:
    """Where a worker's stdout and stderr go."""
    d = DEFAULT_OUTPUT
    mode: str = d.mode
    return OutputConfig(
        mode=cast(OutputMode, s.get("mode", one_of(get_args(OutputMode)), mode)),
        directory=s.get("directory", optional(absolute_path), d.directory),
        max_bytes=s.get("max_bytes", size, d.max_bytes),
        backups=s.get("backups", integer(0), d.backups),
    )


def _program(issues: Issues, name: str, node: Node, line: int | None) -> ProgramConfig:
    """One program; `command` is the only required key."""
    s = Section(issues, node, f"programs.{name}", _keys(ProgramConfig, skip=("name",)), line)
    if s.is_mapping and "command" not in s.entries:
        s.fail("command", "missing required key 'command'")
    return ProgramConfig(
        name=name,
        command=s.get("command", command, ()),
        numprocs=s.get("numprocs", integer(1), 1),
        cwd=s.get("cwd", optional(absolute_path), None),
        environment=s.get("environment", environment, ()),
        user=s.get("user", optional(string), None),
        group=s.get("group", optional(string), None),
        wall_clock_limit=s.get("wall_clock_limit", optional(duration()), None),
        stop_signal=s.get("stop_signal", stop_signal, signal.SIGTERM),
        stop_grace=s.get("stop_grace", _stop_grace, DEFAULT_STOP_GRACE),
        restart=cast(
            RestartPolicy, s.get("restart", one_of(get_args(RestartPolicy)), "on-failure")
        ),
        backoff=_backoff(s.child("backoff", _keys(BackoffConfig))),
        start_limit=_start_limit(s.child("start_limit", _keys(StartLimit))),
        min_runtime=s.get("min_runtime", duration(positive=False), 10.0),
        progress_timeout=s.get("progress_timeout", optional(duration()), None),
        slots=s.get("slots", integer(1), 1),
        autostart=s.get("autostart", boolean, True),
        output=_output(s.child("output", _keys(OutputConfig))),
        contain=s.get("contain", boolean, True),
        tasks_without_lease=s.get("tasks_without_lease", integer(1), 64),
        pass_environment=s.get("pass_environment", environment_names, ()),
        worker_memory=s.get("worker_memory", optional(_worker_memory), None),
    )


def _name_problem(name: str) -> str | None:
    """Why `name` cannot name a program, or None. Names become file names and `name:N`."""
    if ":" in name:
        return f"program name {name!r} must not contain ':' (it separates name and instance)"
    if not _PROGRAM_NAME.fullmatch(name) or set(name) == {"."}:
        return f"program name {name!r} must match [A-Za-z0-9_.-]+ and not be only dots"
    return None


def _programs(issues: Issues, top: Section) -> tuple[ProgramConfig, ...]:
    """The programs mapping, in YAML order."""
    entry = top.entries.get("programs")
    if entry is None or is_null(entry[1]):
        return ()
    if not isinstance(entry[1], MappingNode):
        top.fail("programs", f"expected a mapping of names to programs, got {node_kind(entry[1])}")
        return ()
    pairs, problems = mapping_pairs(entry[1])
    for suffix, node, message in problems:
        issues.add(f"programs{suffix}", node, message)
    programs = []
    for name, key_node, value_node in pairs:
        problem = _name_problem(name)
        if problem:
            issues.add(f"programs.{name}", key_node, problem)
        programs.append(_program(issues, name, value_node, node_line(key_node)))
    return tuple(programs)


def _build(issues: Issues, root: Node | None) -> Config:
    """A Config from a composed document; problems go to `issues`."""
    top = Section(issues, root, "", _keys(Config, skip=("source",)), node_line(root))
    return Config(
        daemon=_daemon(top.child("daemon", _keys(DaemonConfig))),
        budget=_budget(top.child("budget", _keys(BudgetConfig))),
        programs=_programs(issues, top),
        metrics=_metrics(top.child("metrics", _keys(MetricsConfig))),
    )


# ---------------------------------------------------------------------- host checks

# What the YAML alone cannot tell but this host can: users and groups that do not exist,
# a directory that cannot be made (a path under a regular file) or that another user
# controls (`safepath`). Found here, they are errors with a key and a line in
# `check-config` and a rejected reload; found at spawn or at start, they were a
# traceback, or a reload applied by half.


# complexity kept: a flat list of independent checks of this host, one `if` each, every one
# naming its key; a table of lambdas would hide the key and line each reports
def host_checks(issues: Issues, root: Node | None, config: Config) -> None:  # noqa: C901, PLR0912
    """Add an issue for every value this host cannot honour."""
    d = config.daemon

    def fail(message: str, *keys: str | int) -> None:
        issues.add(".".join(str(k) for k in keys), _node_at(root, *keys), message)

    if why := paths.socket_path_problem(d.socket) or safepath.make_dir_problem(d.socket.parent):
        fail(why, "daemon", "socket")
    if d.socket_group is not None and (why := _no_group(d.socket_group)):
        fail(why, "daemon", "socket_group")
    for key in ("allowed_groups", "admin_groups"):
        for i, name in enumerate(getattr(d, key)):
            if why := _no_group(name):
                fail(why, "daemon", key, i)
    for key in ("log_file", "pid_file"):
        path = getattr(d, key)
        # the log file is appended to (a link refused); the pid file replaced (renamed over)
        check = safepath.file_problem if key == "log_file" else lambda path: None
        if path is not None and (why := safepath.make_dir_problem(path.parent) or check(path)):
            fail(why, "daemon", key)
    textfile = config.metrics.textfile
    if textfile is not None and (why := safepath.make_dir_problem(textfile.parent)):
        fail(why, "metrics", "textfile")
    for i, name in enumerate(config.budget.watch_users):
        if not name.isdigit() and (why := _no_user(name)):
            fail(why, "budget", "watch_users", i)
    for name, _ in config.budget.user_weights:
        if not name.isdigit() and (why := _no_user(name)):
            fail(why, "budget", "user_weights", name)
    for name, _ in config.budget.group_weights:
        if why := _no_group(name):
            fail(why, "budget", "group_weights", name)
    for program in config.programs:
        at = ("programs", program.name)
        if program.user is not None and (why := _no_user(program.user)):
            fail(why, *at, "user")
        if program.group is not None and (why := _no_group(program.group)):
            fail(why, *at, "group")
        if program.cwd is not None and not program.cwd.is_dir():
            fail(f"{program.cwd} is not a directory on this host", *at, "cwd")
        if program.output.mode == "file":
            for where, why in _output_problems(program):
                fail(why, *at, *where)


def _output_problems(program: ProgramConfig) -> Iterator[tuple[tuple[str, ...], str]]:
    """What would stop the daemon opening a file-mode program's output files (it refuses
    to start, or a reload, on any of them): the directory, a name longer than its file
    system takes (the program's name is in it), a file that is a link."""
    out = program.output
    directory = out.directory or paths.default_output_dir()
    key = ("output", "directory") if out.directory is not None else ("output",)
    if why := safepath.make_dir_problem(directory):
        yield key, why
        return
    longest = paths.output_file_name(f"{program.name}:{program.numprocs - 1}", "stderr")
    longest += f".{out.backups}" if out.backups else ""
    name_max = _name_max(directory)
    size = len(os.fsencode(longest))
    if size > name_max:
        too_long = f"the program's output file names, such as {longest!r} ({size} bytes), "
        yield key, too_long + f"are longer than the {name_max} bytes a name may have in {directory}"
        return
    for index in range(program.numprocs):
        for stream in ("stdout", "stderr"):
            name = paths.output_file_name(f"{program.name}:{index}", stream)
            if why := safepath.file_problem(directory / name):
                yield key, f"the daemon refuses it: {why}"


def _name_max(directory: Path) -> int:
    """The longest file name the file system holding `directory` (or where it would be
    made) takes; 255, Linux's NAME_MAX, when it cannot say."""
    existing = directory
    while not os.path.lexists(existing):
        existing = existing.parent
    try:
        return os.pathconf(existing, "PC_NAME_MAX")
    except (OSError, ValueError):
        return 255


def _no_user(name: str) -> str | None:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return f"no user {name!r} on this host"
    return None


def _no_group(name: str) -> str | None:
    try:
        grp.getgrnam(name)
    except KeyError:
        return f"no group {name!r} on this host"
    return None


def _node_at(root: Node | None, *keys: str | int) -> Node | None:
    """The node at a key path (a mapping key or a sequence index), for its line."""
    node = root
    for key in keys:
        if isinstance(node, MappingNode):
            node = next((v for k, v in node.value if getattr(k, "value", None) == key), None)
        elif isinstance(node, SequenceNode) and isinstance(key, int) and key < len(node.value):
            node = node.value[key]
        else:
            return None
    return node


# ----------------------------------------------------------------------- public API


def load_config_text(text: str, source: str = "<string>", *, check_host: bool = False) -> Config:
    """Parse and validate a YAML document; raise ConfigError listing every problem.

    `check_host` also checks what only this host can tell (`host_checks`): the file
    loader does, so `check-config`, `run` and a reload reject the same configs."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = None if mark is None else int(mark.line) + 1
        message = " ".join(part for part in (exc.context, exc.problem) if part)
        raise ConfigError(source, [ConfigIssue("", line, f"YAML syntax: {message}")]) from None
    except yaml.YAMLError as exc:
        raise ConfigError(source, [ConfigIssue("", None, f"YAML: {exc}")]) from None
    issues = Issues()
    config = _build(issues, root)
    if check_host and not issues.items:
        host_checks(issues, root, config)
    if issues.items:
        raise ConfigError(source, sorted(issues.items, key=lambda i: i.line or 0))
    return config


def load_config(path: str | Path) -> Config:
    """Read, parse and validate a config file; raise ConfigError listing every problem."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        raise ConfigError(str(path), [ConfigIssue("", None, f"cannot read: {reason}")]) from None
    return replace(load_config_text(text, str(path), check_host=True), source=path)


def config_to_dict(config: Config) -> dict[str, Any]:
    """YAML-shaped plain data: durations in seconds, sizes in bytes, signals and paths as
    text. `load_config_text(yaml.safe_dump(config_to_dict(c)))` equals `c` but for source.
    """
    daemon = _plain(asdict(config.daemon))
    daemon["socket_mode"] = f"{config.daemon.socket_mode:04o}"
    programs = {}
    for program in config.programs:
        body = _plain(asdict(program))
        del body["name"]
        body["environment"] = dict(program.environment)
        programs[program.name] = body
    metrics = _plain(asdict(config.metrics))
    if config.metrics.listen is not None:
        host, port = config.metrics.listen
        metrics["listen"] = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    budget = _plain(asdict(config.budget))
    pressure = budget["pressure"]
    for key, value in pressure.items():
        pressure[key] = "off" if value is None else value
    budget["user_weights"] = dict(config.budget.user_weights)
    budget["group_weights"] = dict(config.budget.group_weights)
    return {
        "daemon": daemon,
        "budget": budget,
        "programs": programs,
        "metrics": metrics,
    }


def _plain(value: Any) -> Any:
    """Paths to str, signals to names, tuples to lists, recursively."""
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    if isinstance(value, signal.Signals):
        return value.name
    if isinstance(value, Path):
        return str(value)
    return value
