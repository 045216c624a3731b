"""YAML configuration into frozen, typed objects.

`load_config(path)` and `load_config_text(text, source)` return a `Config` or raise
`ConfigError` listing every problem with its key path and YAML line. The dataclasses below
are the contract other modules build against; `config_to_dict` turns a `Config` back into
YAML-shaped plain data (for `check-config` output and for diffing programs on reload).
"""

# Why compose and not safe_load: yaml.compose gives a node tree in which every key and
# value keeps its position, so an error can say "line 14". Values are checked while the
# tree is walked, every problem is collected, and only then is ConfigError raised: a
# person fixing a config wants the whole list at once, not one error per attempt.

from __future__ import annotations

import difflib
import math
import os
import re
import shlex
import signal
import stat
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Literal, TypeVar, cast, get_args

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from supervisord_batt.durations import parse_duration, parse_size

LogFormat = Literal["json", "console", "auto"]
RestartPolicy = Literal["always", "on-failure", "never"]
OutputMode = Literal["file", "daemon"]


@dataclass(frozen=True)
class DaemonConfig:
    socket: Path
    socket_mode: int  # e.g. 0o660
    socket_group: str | None
    allowed_uids: tuple[int, ...]  # root and the daemon's own uid are always allowed
    allowed_groups: tuple[str, ...]
    sample_interval: float  # seconds
    scan_interval: float  # seconds, the slow /proc scan (per uid, per tree)
    log_format: LogFormat
    log_level: str  # debug|info|warning|error
    log_file: Path | None  # None = stdout
    max_connections: int
    idle_timeout: float  # seconds
    max_message_bytes: int
    pid_file: Path | None = None


@dataclass(frozen=True)
class PressureThresholds:
    # a limit's headroom below this percent of the limit: level "high" / "extreme"
    headroom_high_percent: float
    headroom_extreme_percent: float
    # PSI "some avg10" percentages
    cpu_high: float
    cpu_extreme: float
    memory_high: float
    memory_extreme: float


@dataclass(frozen=True)
class BudgetConfig:
    reserve_tasks: int  # absolute floor kept free under every limit
    reserve_percent: float  # percent of each limit kept free (the larger of the two wins)
    max_per_lease: int
    cpu_cap: float | None  # None = usable CPUs of the host
    memory_per_slot: int  # bytes
    lease_ttl: float  # seconds
    cgroups: tuple[str, ...]  # extra cgroups to watch (cgroup paths like "/batt" or fs paths)
    watch_users: tuple[str, ...]  # extra users whose RLIMIT_NPROC is watched
    pressure: PressureThresholds


@dataclass(frozen=True)
class BackoffConfig:
    initial: float
    max: float
    factor: float


@dataclass(frozen=True)
class StartLimit:
    burst: int
    interval: float


@dataclass(frozen=True)
class OutputConfig:
    mode: OutputMode  # "file": per-instance files with rotation; "daemon": daemon's stream
    directory: Path | None
    max_bytes: int
    backups: int


@dataclass(frozen=True)
class ProgramConfig:
    name: str
    command: tuple[str, ...]  # argv; a string in YAML is split with shlex
    numprocs: int
    cwd: Path | None
    environment: tuple[tuple[str, str], ...]
    user: str | None
    group: str | None
    wall_clock_limit: float | None
    stop_signal: signal.Signals
    stop_grace: float
    restart: RestartPolicy
    backoff: BackoffConfig
    start_limit: StartLimit
    min_runtime: float  # a run at least this long resets the backoff
    progress_timeout: float | None
    slots: int  # slots wanted per instance
    autostart: bool
    output: OutputConfig


@dataclass(frozen=True)
class Config:
    daemon: DaemonConfig
    budget: BudgetConfig
    programs: tuple[ProgramConfig, ...] = field(default_factory=tuple)
    source: Path | None = None


# ---------------------------------------------------------------------------- errors


@dataclass(frozen=True)
class ConfigIssue:
    """One problem in a config: the key path, the 1-based YAML line, what is wrong."""

    key_path: str
    line: int | None
    message: str

    def __str__(self) -> str:
        where = self.key_path
        if self.line is not None:
            where = f"{where} (line {self.line})" if where else f"line {self.line}"
        return f"{where}: {self.message}" if where else self.message


class ConfigError(Exception):
    """A config that cannot be used; `errors` lists every problem found, in line order."""

    def __init__(self, source: str, errors: list[ConfigIssue]) -> None:
        self.source = source
        self.errors = errors
        super().__init__("\n".join(f"{source}: {issue}" for issue in errors))


# -------------------------------------------------------------------------- defaults

CONFIG_ENV = "SUPERVISORD_BATT_CONFIG"
ETC_CONFIG = Path("/etc/supervisord-batt/supervisord-batt.yaml")
PACKAGE_CONFIG = Path(__file__).resolve().parent / "default-config.yaml"  # wheel builds
SOURCE_CONFIG = Path(__file__).resolve().parent.parent / "config" / "supervisord-batt.yaml"
DEFAULT_SOCKET = Path("/run/supervisord-batt/supervisord-batt.sock")
LOG_LEVELS = ("debug", "info", "warning", "error")

DEFAULT_PRESSURE = PressureThresholds(
    headroom_high_percent=25.0,
    headroom_extreme_percent=10.0,
    cpu_high=60.0,
    cpu_extreme=90.0,
    memory_high=20.0,
    memory_extreme=50.0,
)
DEFAULT_BACKOFF = BackoffConfig(initial=1.0, max=60.0, factor=2.0)
DEFAULT_START_LIMIT = StartLimit(burst=5, interval=60.0)
DEFAULT_OUTPUT = OutputConfig(mode="file", directory=None, max_bytes=10 * 1024**2, backups=3)

# A stop signal must end a process when its default action runs: these stop, continue
# or are ignored by default, so a worker would sit through the grace period for nothing.
_NOT_ENDING = frozenset(
    {
        signal.SIGSTOP,
        signal.SIGTSTP,
        signal.SIGTTIN,
        signal.SIGTTOU,
        signal.SIGCONT,
        signal.SIGCHLD,
        signal.SIGWINCH,
        signal.SIGURG,
    }
)
_PROGRAM_NAME = re.compile(r"[A-Za-z0-9_.-]+")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_STR_TAG = "tag:yaml.org,2002:str"
_NULL_TAG = "tag:yaml.org,2002:null"

T = TypeVar("T")
Parser = Callable[[Node], T]
_Problem = tuple[str, "Node | None", str]  # (key path suffix, node for the line, message)


def _keys(cls: Any, *, skip: tuple[str, ...] = ()) -> tuple[str, ...]:
    """The YAML keys of a section: its dataclass's field names."""
    return tuple(f.name for f in fields(cls) if f.name not in skip)


# ------------------------------------------------------------------ reading nodes


class _Invalid(Exception):
    """A value failed a check; `problems` holds one or more (suffix, node, message)."""

    def __init__(self, message: str, node: Node | None = None, suffix: str = "") -> None:
        super().__init__(message)
        self.problems: list[_Problem] = [(suffix, node, message)]

    @classmethod
    def many(cls, problems: list[_Problem]) -> _Invalid:
        """One exception carrying several problems (every bad item of a list)."""
        exc = cls(problems[0][2])
        exc.problems = problems
        return exc


class _Issues:
    """Every problem found in one load."""

    def __init__(self) -> None:
        self.items: list[ConfigIssue] = []

    def add(self, key_path: str, node: Node | None, message: str, line: int | None = None) -> None:
        """Record a problem; the node, when given, supplies the line."""
        self.items.append(ConfigIssue(key_path, _line(node) if node else line, message))


_CONSTRUCTOR = yaml.constructor.SafeConstructor()


def _line(node: Node | None) -> int | None:
    """The 1-based line a node starts on."""
    return None if node is None else int(node.start_mark.line) + 1


def _is_null(node: Node) -> bool:
    """True for an explicit `null`, `~` or an empty value."""
    return isinstance(node, ScalarNode) and node.tag == _NULL_TAG


def _scalar(node: Node, expected: str) -> object:
    """The Python value of a scalar node (int, float, bool, str, None, date)."""
    if isinstance(node, MappingNode | SequenceNode):
        raise _Invalid(f"expected {expected}, got {_kind(node)}")
    construct = _CONSTRUCTOR.yaml_constructors.get(node.tag)
    if construct is None:
        raise _Invalid(f"expected {expected}, got a value tagged {node.tag}")
    try:
        return cast(object, construct(_CONSTRUCTOR, node))
    except (yaml.YAMLError, ValueError) as exc:
        raise _Invalid(f"expected {expected}, got {node.value!r} ({exc})") from None


def _describe(value: object) -> str:
    """A value as an error message shows it: 'ten', integer 5, boolean true, null."""
    if isinstance(value, bool):
        return f"boolean {str(value).lower()}"
    if value is None:
        return "null"
    if isinstance(value, str):
        return repr(value)
    kind = {int: "integer", float: "number"}.get(type(value), type(value).__name__)
    return f"{kind} {value}"


def _kind(node: Node) -> str:
    """What a node holds, for 'expected X, got Y'."""
    if isinstance(node, MappingNode):
        return "a mapping"
    if isinstance(node, SequenceNode):
        return "a list"
    try:
        return _describe(_scalar(node, "a value"))
    except _Invalid:
        return repr(node.value)


def _suggest(word: str, choices: tuple[str, ...]) -> str:
    """The "; did you mean 'x'?" hint for the closest choice, or nothing."""
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return f"; did you mean '{close[0]}'?" if close else ""


def _pairs(node: MappingNode) -> tuple[list[tuple[str, Node, Node]], list[_Problem]]:
    """The (key, key node, value node) of a mapping, merge keys applied, and its problems.

    Keys must be strings and appear once; a key given next to a `<<` merge overrides the
    merged one, as YAML says.
    """
    problems: list[_Problem] = []
    own = {id(key) for key, _ in node.value}
    try:
        _CONSTRUCTOR.flatten_mapping(node)
    except yaml.YAMLError as exc:
        problems.append(("", node, f"bad merge key: {exc}"))
    found: dict[str, tuple[Node, Node]] = {}
    for key_node, value_node in node.value:
        if not (isinstance(key_node, ScalarNode) and key_node.tag == _STR_TAG):
            problems.append(("", key_node, f"keys must be strings, got {_kind(key_node)}"))
            continue
        key = str(key_node.value)
        first = found.get(key)
        if first is not None and id(first[0]) in own and id(key_node) in own:
            problems.append(
                (f".{key}", key_node, f"duplicate key (first at line {_line(first[0])})")
            )
            continue
        found[key] = (key_node, value_node)
    return [(key, k, v) for key, (k, v) in found.items()], problems


class _Section:
    """One YAML mapping being read: unknown keys reported, values parsed on request."""

    def __init__(
        self,
        issues: _Issues,
        node: Node | None,
        path: str,
        known: tuple[str, ...],
        line: int | None,
    ) -> None:
        self.issues, self.path, self.line = issues, path, line
        self.entries: dict[str, tuple[Node, Node]] = {}
        self.failed: set[str] = set()
        self.is_mapping = node is None or _is_null(node) or isinstance(node, MappingNode)
        if not isinstance(node, MappingNode):
            if not self.is_mapping and node is not None:
                issues.add(path, None, f"expected a mapping, got {_kind(node)}", line)
            return
        pairs, problems = _pairs(node)
        for suffix, where, message in problems:
            issues.add(path + suffix if path else suffix.lstrip("."), where, message)
        for key, key_node, value_node in pairs:
            if key in known:
                self.entries[key] = (key_node, value_node)
            else:
                issues.add(
                    self.key_path(key), key_node, f"unknown key '{key}'" + _suggest(key, known)
                )

    def key_path(self, key: str) -> str:
        """The dotted path of one of this section's keys."""
        return f"{self.path}.{key}" if self.path else key

    def key_line(self, key: str) -> int | None:
        """The line of a key, or of the section when the key is absent."""
        entry = self.entries.get(key)
        return _line(entry[0]) if entry else self.line

    def get(self, key: str, parse: Parser[T], default: T) -> T:
        """The parsed value of `key`, or `default` when it is absent or invalid."""
        entry = self.entries.get(key)
        if entry is None:
            return default
        try:
            return parse(entry[1])
        except _Invalid as exc:
            for suffix, node, message in exc.problems:
                self.issues.add(self.key_path(key) + suffix, node or entry[0], message)
            self.failed.add(key)
            return default

    def fail(self, key: str, message: str) -> None:
        """Record a problem with a key found by a check across several keys."""
        self.issues.add(self.key_path(key), None, message, self.key_line(key))
        self.failed.add(key)

    def ok(self, *keys: str) -> bool:
        """True when none of `keys` failed to parse (cross checks need good inputs)."""
        return not self.failed.intersection(keys)

    def child(self, key: str, known: tuple[str, ...]) -> _Section:
        """The nested section under `key` (empty when absent)."""
        entry = self.entries.get(key)
        node = entry[1] if entry else None
        return _Section(self.issues, node, self.key_path(key), known, self.key_line(key))


# -------------------------------------------------------------------- value parsers


def _int(minimum: int) -> Parser[int]:
    """An integer (not a boolean) of at least `minimum`."""

    def parse(node: Node) -> int:
        value = _scalar(node, "an integer")
        if isinstance(value, bool) or not isinstance(value, int):
            raise _Invalid(f"expected an integer, got {_describe(value)}")
        if value < minimum:
            raise _Invalid(f"must be at least {minimum}, got {value}")
        return value

    return parse


def _number(
    low: float, high: float | None = None, *, low_open: bool = False, high_open: bool = False
) -> Parser[float]:
    """A number in [low, high] (or an open end where asked)."""
    bounds = (
        ("(" if low_open else "[")
        + f"{low:g}, "
        + ("inf)" if high is None else f"{high:g}" + (")" if high_open else "]"))
    )

    def parse(node: Node) -> float:
        value = _scalar(node, "a number")
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise _Invalid(f"expected a number, got {_describe(value)}")
        below = value <= low if low_open else value < low
        above = high is not None and (value >= high if high_open else value > high)
        if below or above or math.isnan(value):
            raise _Invalid(f"must be in {bounds}, got {value:g}")
        return float(value)

    return parse


def _duration(*, positive: bool = True) -> Parser[float]:
    """Seconds from "600s", "1h30m", 1.5 ...; zero allowed only when not `positive`."""

    def parse(node: Node) -> float:
        value = _scalar(node, "a duration such as 600s")
        try:
            seconds = parse_duration(value)
        except ValueError as exc:
            raise _Invalid(str(exc)) from None
        if positive and seconds == 0:
            raise _Invalid(f"must be longer than 0s, got {_describe(value)}")
        return seconds

    return parse


def _size(node: Node) -> int:
    """A positive number of bytes from 1048576, "512MiB", "10MB" ..."""
    value = _scalar(node, "a size such as 512MiB")
    try:
        size = parse_size(value)
    except ValueError as exc:
        raise _Invalid(str(exc)) from None
    if size == 0:
        raise _Invalid(f"must be more than 0 bytes, got {_describe(value)}")
    return size


def _optional(parse: Parser[T]) -> Parser[T | None]:
    """`parse`, with `null` meaning None."""

    def run(node: Node) -> T | None:
        return None if _is_null(node) else parse(node)

    return run


def _str(node: Node) -> str:
    """A non-empty string."""
    value = _scalar(node, "a string")
    if not isinstance(value, str):
        raise _Invalid(f"expected a string, got {_describe(value)}")
    if not value:
        raise _Invalid("must not be empty")
    return value


def _path(node: Node) -> Path:
    """An absolute path: the daemon's working directory is / under systemd."""
    text = _str(node)
    if not os.path.isabs(text):
        raise _Invalid(f"expected an absolute path, got {text!r}")
    return Path(text)


def _bool(node: Node) -> bool:
    """true or false."""
    value = _scalar(node, "true or false")
    if not isinstance(value, bool):
        raise _Invalid(f"expected true or false, got {_describe(value)}")
    return value


def _enum(choices: tuple[str, ...]) -> Parser[str]:
    """One of `choices`, exactly."""

    def parse(node: Node) -> str:
        value = _scalar(node, f"one of {', '.join(choices)}")
        if value not in choices:
            shown = _describe(value)
            hint = _suggest(value, choices) if isinstance(value, str) else ""
            raise _Invalid(f"expected one of {', '.join(choices)}, got {shown}{hint}")
        return str(value)

    return parse


def parse_signal(value: object) -> signal.Signals:
    """A signal from "TERM", "SIGTERM", "term" or 15; ValueError for anything else."""
    if isinstance(value, int) and not isinstance(value, bool):
        try:
            return signal.Signals(value)
        except ValueError:
            raise ValueError(f"unknown signal number {value}") from None
    if not isinstance(value, str):
        raise ValueError(f"expected a signal such as TERM, got {_describe(value)}")
    name = value.strip().upper()
    name = name if name.startswith("SIG") else f"SIG{name}"
    try:
        return signal.Signals[name]
    except KeyError:
        raise ValueError(f"expected a signal such as TERM, got {value!r}") from None


def _stop_signal(node: Node) -> signal.Signals:
    """A signal whose default action ends a process (KILL yes, STOP no)."""
    try:
        sig = parse_signal(_scalar(node, "a signal such as TERM"))
    except ValueError as exc:
        raise _Invalid(str(exc)) from None
    if sig in _NOT_ENDING:
        raise _Invalid(f"{sig.name} does not end a process; use TERM, INT, HUP, QUIT or KILL")
    return sig


def _socket_mode(node: Node) -> int:
    """Permission bits: "0660", "660" (strings are octal) or an int such as 0o660 (432)."""
    hint = "expected an octal mode such as '0660'"
    value = _scalar(node, hint)
    if isinstance(value, str) and re.fullmatch(r"(0o?)?[0-7]{1,4}", value.strip()):
        mode = int(value.strip().removeprefix("0o") or "0", 8)
    elif isinstance(value, int) and not isinstance(value, bool):
        mode = value
    else:
        raise _Invalid(f"{hint}, got {_describe(value)}")
    if not 0 <= mode <= 0o777:
        quote = " (quote it: an unquoted 660 is the decimal number 660)"
        raise _Invalid(f"{hint}, got {_describe(value)}{quote if isinstance(value, int) else ''}")
    return mode


def _list(item: Parser[T]) -> Parser[tuple[T, ...]]:
    """A list (null = empty) whose items all pass `item`; every bad item is reported."""

    def parse(node: Node) -> tuple[T, ...]:
        if _is_null(node):
            return ()
        if not isinstance(node, SequenceNode):
            raise _Invalid(f"expected a list, got {_kind(node)}")
        items: list[T] = []
        problems: list[_Problem] = []
        for index, child in enumerate(node.value):
            try:
                items.append(item(child))
            except _Invalid as exc:
                problems += [(f"[{index}]{s}", n or child, m) for s, n, m in exc.problems]
        if problems:
            raise _Invalid.many(problems)
        return tuple(items)

    return parse


def _word(node: Node) -> str:
    """One argv word or environment value: any scalar but null, kept as written
    (`true` stays "true", 0660 stays "0660", not 432)."""
    if not isinstance(node, ScalarNode) or _is_null(node):
        raise _Invalid(f"expected a string, got {_kind(node)}")
    return str(node.value)


def _command(node: Node) -> tuple[str, ...]:
    """argv from a list of strings, or from a string split as a shell would (no expansion)."""
    if isinstance(node, SequenceNode):
        argv = _list(_word)(node)
    else:
        value = _scalar(node, "a list of strings or a command string")
        if not isinstance(value, str):
            raise _Invalid(
                f"expected a list of strings or a command string, got {_describe(value)}"
            )
        try:
            argv = tuple(shlex.split(value))
        except ValueError as exc:
            raise _Invalid(f"cannot split command {value!r}: {exc}") from None
    if not argv:
        raise _Invalid("command is empty")
    if not argv[0]:
        raise _Invalid("command's program is an empty string")
    return argv


def _environment(node: Node) -> tuple[tuple[str, str], ...]:
    """NAME: value pairs sorted by name (order means nothing, so a reload that only
    reorders them changes nothing); values are scalars, kept as written."""
    if _is_null(node):
        return ()
    if not isinstance(node, MappingNode):
        raise _Invalid(f"expected a mapping of names to values, got {_kind(node)}")
    pairs, problems = _pairs(node)
    result: list[tuple[str, str]] = []
    for name, key_node, value_node in pairs:
        if not _ENV_NAME.fullmatch(name):
            problems.append((f".{name}", key_node, "not a valid environment variable name"))
        else:
            try:
                result.append((name, _word(value_node)))
            except _Invalid as exc:
                problems.append((f".{name}", key_node, str(exc)))
    if problems:
        raise _Invalid.many(problems)
    return tuple(sorted(result))


# ------------------------------------------------------------------------- sections


def _daemon(s: _Section) -> DaemonConfig:
    """The daemon section; the socket falls back for a non-root daemon (see below)."""
    sample = s.get("sample_interval", _duration(), 1.0)
    scan = s.get("scan_interval", _duration(), 10.0)
    if s.ok("sample_interval", "scan_interval") and scan < sample:
        s.fail("scan_interval", f"must be at least sample_interval ({sample:g}s), got {scan:g}s")
    socket = s.get("socket", _path, DEFAULT_SOCKET)
    return DaemonConfig(
        socket=default_socket_path(socket),
        socket_mode=s.get("socket_mode", _socket_mode, 0o660),
        socket_group=s.get("socket_group", _optional(_str), None),
        allowed_uids=s.get("allowed_uids", _list(_int(0)), ()),
        allowed_groups=s.get("allowed_groups", _list(_str), ()),
        sample_interval=sample,
        scan_interval=scan,
        log_format=cast(LogFormat, s.get("log_format", _enum(get_args(LogFormat)), "auto")),
        log_level=s.get("log_level", _enum(LOG_LEVELS), "info"),
        log_file=s.get("log_file", _optional(_path), None),
        max_connections=s.get("max_connections", _int(1), 256),
        idle_timeout=s.get("idle_timeout", _duration(), 300.0),
        max_message_bytes=s.get("max_message_bytes", _size, 64 * 1024),
        pid_file=s.get("pid_file", _optional(_path), None),
    )


def _pressure(s: _Section) -> PressureThresholds:
    """Pressure levels; each "extreme" must lie beyond its "high"."""
    d = DEFAULT_PRESSURE
    values = {key: s.get(key, _number(0, 100), getattr(d, key)) for key in _keys(type(d))}
    # Headroom shrinks as pressure grows, so its extreme is the smaller percent; PSI grows.
    for high, extreme, extreme_smaller in (
        ("headroom_high_percent", "headroom_extreme_percent", True),
        ("cpu_high", "cpu_extreme", False),
        ("memory_high", "memory_extreme", False),
    ):
        h, e = values[high], values[extreme]
        wrong = e >= h if extreme_smaller else e <= h
        if s.ok(high, extreme) and wrong:
            side = "below" if extreme_smaller else "above"
            s.fail(extreme, f"must be {side} {high} ({h:g}), got {e:g}")
    return PressureThresholds(**values)


def _budget(s: _Section) -> BudgetConfig:
    """The budget section."""
    return BudgetConfig(
        reserve_tasks=s.get("reserve_tasks", _int(0), 64),
        reserve_percent=s.get("reserve_percent", _number(0, 100, high_open=True), 5.0),
        max_per_lease=s.get("max_per_lease", _int(1), 8),
        cpu_cap=s.get("cpu_cap", _optional(_number(0, low_open=True)), None),
        memory_per_slot=s.get("memory_per_slot", _size, 512 * 1024**2),
        lease_ttl=s.get("lease_ttl", _duration(), 60.0),
        cgroups=s.get("cgroups", _list(_str), ()),
        watch_users=s.get("watch_users", _list(_str), ()),
        pressure=_pressure(s.child("pressure", _keys(PressureThresholds))),
    )


def _backoff(s: _Section) -> BackoffConfig:
    """Restart delays: initial, times factor after each quick failure, capped at max."""
    d = DEFAULT_BACKOFF
    initial = s.get("initial", _duration(), d.initial)
    cap = s.get("max", _duration(), d.max)
    if s.ok("initial", "max") and cap < initial:
        s.fail("max", f"must be at least backoff.initial ({initial:g}s), got {cap:g}s")
    factor = s.get("factor", _number(1), d.factor)
    return BackoffConfig(initial=initial, max=cap, factor=factor)


def _start_limit(s: _Section) -> StartLimit:
    """At most `burst` starts within `interval`, then the program is FATAL."""
    d = DEFAULT_START_LIMIT
    return StartLimit(
        burst=s.get("burst", _int(1), d.burst),
        interval=s.get("interval", _duration(), d.interval),
    )


def _output(s: _Section) -> OutputConfig:
    """Where a worker's stdout and stderr go."""
    d = DEFAULT_OUTPUT
    mode: str = d.mode
    return OutputConfig(
        mode=cast(OutputMode, s.get("mode", _enum(get_args(OutputMode)), mode)),
        directory=s.get("directory", _optional(_path), d.directory),
        max_bytes=s.get("max_bytes", _size, d.max_bytes),
        backups=s.get("backups", _int(0), d.backups),
    )


def _program(issues: _Issues, name: str, node: Node, line: int | None) -> ProgramConfig:
    """One program; `command` is the only required key."""
    s = _Section(issues, node, f"programs.{name}", _keys(ProgramConfig, skip=("name",)), line)
    if s.is_mapping and "command" not in s.entries:
        s.fail("command", "missing required key 'command'")
    return ProgramConfig(
        name=name,
        command=s.get("command", _command, ()),
        numprocs=s.get("numprocs", _int(1), 1),
        cwd=s.get("cwd", _optional(_path), None),
        environment=s.get("environment", _environment, ()),
        user=s.get("user", _optional(_str), None),
        group=s.get("group", _optional(_str), None),
        wall_clock_limit=s.get("wall_clock_limit", _optional(_duration()), None),
        stop_signal=s.get("stop_signal", _stop_signal, signal.SIGTERM),
        stop_grace=s.get("stop_grace", _duration(positive=False), 10.0),
        restart=cast(RestartPolicy, s.get("restart", _enum(get_args(RestartPolicy)), "on-failure")),
        backoff=_backoff(s.child("backoff", _keys(BackoffConfig))),
        start_limit=_start_limit(s.child("start_limit", _keys(StartLimit))),
        min_runtime=s.get("min_runtime", _duration(positive=False), 10.0),
        progress_timeout=s.get("progress_timeout", _optional(_duration()), None),
        slots=s.get("slots", _int(1), 1),
        autostart=s.get("autostart", _bool, True),
        output=_output(s.child("output", _keys(OutputConfig))),
    )


def _name_problem(name: str) -> str | None:
    """Why `name` cannot name a program, or None. Names become file names and `name:N`."""
    if ":" in name:
        return f"program name {name!r} must not contain ':' (it separates name and instance)"
    if not _PROGRAM_NAME.fullmatch(name) or set(name) == {"."}:
        return f"program name {name!r} must match [A-Za-z0-9_.-]+ and not be only dots"
    return None


def _programs(issues: _Issues, top: _Section) -> tuple[ProgramConfig, ...]:
    """The programs mapping, in YAML order."""
    entry = top.entries.get("programs")
    if entry is None or _is_null(entry[1]):
        return ()
    if not isinstance(entry[1], MappingNode):
        top.fail("programs", f"expected a mapping of names to programs, got {_kind(entry[1])}")
        return ()
    pairs, problems = _pairs(entry[1])
    for suffix, node, message in problems:
        issues.add(f"programs{suffix}", node, message)
    programs = []
    for name, key_node, value_node in pairs:
        problem = _name_problem(name)
        if problem:
            issues.add(f"programs.{name}", key_node, problem)
        programs.append(_program(issues, name, value_node, _line(key_node)))
    return tuple(programs)


def _build(issues: _Issues, root: Node | None) -> Config:
    """A Config from a composed document; problems go to `issues`."""
    top = _Section(issues, root, "", _keys(Config, skip=("source",)), _line(root))
    return Config(
        daemon=_daemon(top.child("daemon", _keys(DaemonConfig))),
        budget=_budget(top.child("budget", _keys(BudgetConfig))),
        programs=_programs(issues, top),
    )


# ----------------------------------------------------------------------- public API


def load_config_text(text: str, source: str = "<string>") -> Config:
    """Parse and validate a YAML document; raise ConfigError listing every problem."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = None if mark is None else int(mark.line) + 1
        message = " ".join(part for part in (exc.context, exc.problem) if part)
        raise ConfigError(source, [ConfigIssue("", line, f"YAML syntax: {message}")]) from None
    except yaml.YAMLError as exc:
        raise ConfigError(source, [ConfigIssue("", None, f"YAML: {exc}")]) from None
    issues = _Issues()
    config = _build(issues, root)
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
    return replace(load_config_text(text, str(path)), source=path)


def default_config_path(env: Mapping[str, str] | None = None) -> Path:
    """The config to use when none is given.

    In order: $SUPERVISORD_BATT_CONFIG; /etc/supervisord-batt/supervisord-batt.yaml if it
    exists; the `default-config.yaml` a wheel installs next to this module; the source
    checkout's config/supervisord-batt.yaml.
    """
    env = os.environ if env is None else env
    if env.get(CONFIG_ENV):
        return Path(env[CONFIG_ENV])
    for candidate in (ETC_CONFIG, PACKAGE_CONFIG):
        if candidate.is_file():
            return candidate
    return SOURCE_CONFIG


# The socket's directory is /run/supervisord-batt, which systemd makes for a root daemon
# (RuntimeDirectory=). A daemon started by hand as another user cannot create it, so it
# moves to that user's runtime directory. A socket that already exists at the configured
# path is kept: that is a client (or a second daemon) talking to a root daemon, and both
# must find, or collide with, the real socket rather than quietly go somewhere else.


def default_socket_path(
    configured: Path, *, uid: int | None = None, env: Mapping[str, str] | None = None
) -> Path:
    """The socket path to use: `configured` unless a non-root uid cannot create it there."""
    uid = os.geteuid() if uid is None else uid
    env = os.environ if env is None else env
    if uid == 0 or _exists(configured) or _can_create_in(configured.parent, uid):
        return configured
    runtime = env.get("XDG_RUNTIME_DIR", "")
    if os.path.isabs(runtime):
        return Path(runtime) / "supervisord-batt" / "supervisord-batt.sock"
    return Path("/tmp") / f"supervisord-batt-{uid}" / "supervisord-batt.sock"


def _exists(path: Path) -> bool:
    """Path.exists that treats an unreadable directory as 'no'."""
    try:
        return path.exists()
    except OSError:
        return False


def _can_create_in(directory: Path, uid: int) -> bool:
    """Whether `uid` can write in `directory`, or create it under its nearest ancestor."""
    for candidate in (directory, *directory.parents):
        try:
            st = candidate.stat()
        except FileNotFoundError:
            continue
        except OSError:
            return False
        if not stat.S_ISDIR(st.st_mode):
            return False
        if uid == os.geteuid():
            return os.access(candidate, os.W_OK | os.X_OK)
        # Another uid (tests inject one): owner and "other" bits; groups are not resolved.
        owner = st.st_uid == uid and st.st_mode & 0o300 == 0o300
        return bool(owner or st.st_mode & 0o003 == 0o003)
    return False


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
    return {"daemon": daemon, "budget": _plain(asdict(config.budget)), "programs": programs}


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
