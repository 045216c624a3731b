"""Parsers for the config's values: one YAML node in, a checked Python value out.

Each parser raises `Invalid` with a message meant for a person ("must be at least 1, got
0"); `Section.get` adds the key path and line. Parsers taking arguments (`integer(1)`,
`one_of(choices)`, `list_of(string)`) return the parser. Durations and sizes are read by
`supervisord_batt.quantities`, which works on plain values; the parsers here add the YAML side.
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
import shlex
import signal
from pathlib import Path
from typing import TypeVar

from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from supervisord_batt.config.yamlcheck import (
    Invalid,
    Parser,
    Problem,
    describe,
    is_null,
    mapping_pairs,
    node_kind,
    scalar,
    suggest,
)
from supervisord_batt.quantities import format_duration, parse_duration, parse_size

T = TypeVar("T")

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
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# execve(2) takes C strings, so no NUL, each one (an argument, or an environment entry
# NAME=value) at most MAX_ARG_STRLEN bytes with its NUL: 32 pages, 131072 bytes on Linux.
# Found at spawn, such a value was a traceback in `run` and an `internal` reply, half
# applied, in a reload; found here, it is an error with its key and line.
MAX_EXEC_STRING = 131072 - 1


def exec_string(value: str) -> str:
    """`value` if exec can pass it as one argument or environment entry, else Invalid."""
    try:
        raw = os.fsencode(value)
    except UnicodeEncodeError as exc:
        raise Invalid(
            f"cannot be encoded for exec ({exc.reason} at character {exc.start})"
        ) from None
    nul = raw.find(b"\0")
    if nul >= 0:
        raise Invalid(f"contains a NUL character (at byte {nul}), which exec cannot pass")
    if len(raw) > MAX_EXEC_STRING:
        raise Invalid(f"is {len(raw)} bytes, more than exec takes ({MAX_EXEC_STRING})")
    return value


def integer(minimum: int) -> Parser[int]:
    """An integer (not a boolean) of at least `minimum`."""

    def parse(node: Node) -> int:
        value = scalar(node, "an integer")
        if isinstance(value, bool) or not isinstance(value, int):
            raise Invalid(f"expected an integer, got {describe(value)}")
        if value < minimum:
            raise Invalid(f"must be at least {minimum}, got {value}")
        return value

    return parse


def number(
    low: float, high: float | None = None, *, low_open: bool = False, high_open: bool = False
) -> Parser[float]:
    """A number in [low, high] (or an open end where asked)."""
    bounds = (
        ("(" if low_open else "[")
        + f"{low:g}, "
        + ("inf)" if high is None else f"{high:g}" + (")" if high_open else "]"))
    )

    def parse(node: Node) -> float:
        value = scalar(node, "a number")
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise Invalid(f"expected a number, got {describe(value)}")
        below = value <= low if low_open else value < low
        above = high is not None and (value >= high if high_open else value > high)
        if below or above or math.isnan(value):
            raise Invalid(f"must be in {bounds}, got {value:g}")
        return float(value)

    return parse


def psi_threshold(node: Node) -> float | None:
    """A PSI percent in [0, 100], or `off` (None): the signal left out of the level.

    PSI reaches 100 on a saturated host, so no number keeps a busy CPU from deciding;
    `off` does (a host whose PSI is not this budget's business, a test on a shared
    machine). YAML reads a bare off as false: the word written is what counts."""
    if isinstance(node, ScalarNode) and str(node.value).lower() == "off":
        return None
    value = scalar(node, "a percent in [0, 100] or off")
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 100:
        raise Invalid(f"expected a percent in [0, 100] or off, got {describe(value)}")
    return float(value)


def duration(
    *, positive: bool = True, at_most: float | None = None, why: str = ""
) -> Parser[float]:
    """Seconds from "600s", "1h30m", 1.5 ...; zero allowed only when not `positive`."""

    def parse(node: Node) -> float:
        value = scalar(node, "a duration such as 600s")
        try:
            seconds = parse_duration(value)
        except ValueError as exc:
            raise Invalid(str(exc)) from None
        if positive and seconds == 0:
            raise Invalid(f"must be longer than 0s, got {describe(value)}")
        if at_most is not None and seconds > at_most:
            limit = format_duration(at_most)
            raise Invalid(f"must be at most {limit}{why}, got {describe(value)}")
        return seconds

    return parse


def size(node: Node) -> int:
    """A positive number of bytes from 1048576, "512MiB", "10MB" ..."""
    value = scalar(node, "a size such as 512MiB")
    try:
        nbytes = parse_size(value)
    except ValueError as exc:
        raise Invalid(str(exc)) from None
    if nbytes == 0:
        raise Invalid(f"must be more than 0 bytes, got {describe(value)}")
    return nbytes


def optional(parse: Parser[T]) -> Parser[T | None]:
    """`parse`, with `null` meaning None."""

    def run(node: Node) -> T | None:
        return None if is_null(node) else parse(node)

    return run


def string(node: Node) -> str:
    """A non-empty string with no NUL (names, paths: the C library cannot take one)."""
    value = scalar(node, "a string")
    if not isinstance(value, str):
        raise Invalid(f"expected a string, got {describe(value)}")
    if not value:
        raise Invalid("must not be empty")
    nul = value.find("\0")
    if nul >= 0:
        raise Invalid(f"contains a NUL character (at {nul}), which no path or name can hold")
    return value


def absolute_path(node: Node) -> Path:
    """An absolute path: the daemon's working directory is / under systemd."""
    text = string(node)
    if not os.path.isabs(text):
        raise Invalid(f"expected an absolute path, got {text!r}")
    if ".." in Path(text).parts:  # after a symlink, ".." is not where it reads as being
        raise Invalid(f"expected a path without '..', got {text!r}")
    return Path(text)


def boolean(node: Node) -> bool:
    """true or false."""
    value = scalar(node, "true or false")
    if not isinstance(value, bool):
        raise Invalid(f"expected true or false, got {describe(value)}")
    return value


def one_of(choices: tuple[str, ...]) -> Parser[str]:
    """One of `choices`, exactly."""

    def parse(node: Node) -> str:
        value = scalar(node, f"one of {', '.join(choices)}")
        if value not in choices:
            shown = describe(value)
            hint = suggest(value, choices) if isinstance(value, str) else ""
            raise Invalid(f"expected one of {', '.join(choices)}, got {shown}{hint}")
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
        raise ValueError(f"expected a signal such as TERM, got {describe(value)}")
    name = value.strip().upper()
    name = name if name.startswith("SIG") else f"SIG{name}"
    try:
        return signal.Signals[name]
    except KeyError:
        raise ValueError(f"expected a signal such as TERM, got {value!r}") from None


def stop_signal(node: Node) -> signal.Signals:
    """A signal whose default action ends a process (KILL yes, STOP no)."""
    try:
        sig = parse_signal(scalar(node, "a signal such as TERM"))
    except ValueError as exc:
        raise Invalid(str(exc)) from None
    if sig in _NOT_ENDING:
        raise Invalid(f"{sig.name} does not end a process; use TERM, INT, HUP, QUIT or KILL")
    return sig


def socket_mode(node: Node) -> int:
    """Permission bits: "0660", "660" (strings are octal) or an int such as 0o660 (432)."""
    hint = "expected an octal mode such as '0660'"
    value = scalar(node, hint)
    if isinstance(value, str) and re.fullmatch(r"(0o?)?[0-7]{1,4}", value.strip()):
        mode = int(value.strip().removeprefix("0o") or "0", 8)
    elif isinstance(value, int) and not isinstance(value, bool):
        mode = value
    else:
        raise Invalid(f"{hint}, got {describe(value)}")
    if not 0 <= mode <= 0o777:
        quote = " (quote it: an unquoted 660 is the decimal number 660)"
        raise Invalid(f"{hint}, got {describe(value)}{quote if isinstance(value, int) else ''}")
    return mode


def listen_address(node: Node) -> tuple[str, int]:
    """An IP address and a port: "127.0.0.1:9464", "[::1]:9464" (no host names: the
    daemon resolves nothing, and a name could resolve to another interface later)."""
    text = string(node)
    host, sep, port_text = text.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    hint = "expected ADDRESS:PORT with an IP address, such as '127.0.0.1:9464' or '[::1]:9464'"
    if not sep or not port_text.isdecimal() or not port_text.isascii():
        raise Invalid(f"{hint}, got {text!r}")
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise Invalid(f"{hint}, got {text!r}") from None
    port = int(port_text)
    if not 1 <= port <= 65535:
        raise Invalid(f"port must be 1 to 65535, got {port}")
    return str(address), port


def list_of(item: Parser[T]) -> Parser[tuple[T, ...]]:
    """A list (null = empty) whose items all pass `item`; every bad item is reported."""

    def parse(node: Node) -> tuple[T, ...]:
        if is_null(node):
            return ()
        if not isinstance(node, SequenceNode):
            raise Invalid(f"expected a list, got {node_kind(node)}")
        items: list[T] = []
        problems: list[Problem] = []
        for index, child in enumerate(node.value):
            try:
                items.append(item(child))
            except Invalid as exc:
                problems += [(f"[{index}]{s}", n or child, m) for s, n, m in exc.problems]
        if problems:
            raise Invalid.many(problems)
        return tuple(items)

    return parse


MAX_WEIGHT = 1000.0  # a user's weight against another's: beyond this it is a typo
_weight = number(0, MAX_WEIGHT, low_open=True)


def weights(node: Node) -> tuple[tuple[str, float], ...]:
    """name: weight pairs sorted by name (null = none); each weight a number in (0, 1000]."""
    if is_null(node):
        return ()
    if not isinstance(node, MappingNode):
        raise Invalid(f"expected a mapping of names to weights, got {node_kind(node)}")
    pairs, problems = mapping_pairs(node)
    result: list[tuple[str, float]] = []
    for name, key_node, value_node in pairs:
        try:
            result.append((name, _weight(value_node)))
        except Invalid as exc:
            problems.append((f".{name}", key_node, str(exc)))
    if problems:
        raise Invalid.many(problems)
    return tuple(sorted(result))


def _word(node: Node) -> str:
    """One argv word or environment value: any scalar but null, kept as written
    (`true` stays "true", 0660 stays "0660", not 432)."""
    if not isinstance(node, ScalarNode) or is_null(node):
        raise Invalid(f"expected a string, got {node_kind(node)}")
    return str(node.value)


def _argument(node: Node) -> str:
    return exec_string(_word(node))


def command(node: Node) -> tuple[str, ...]:
    """argv from a list of strings, or from a string split as a shell would (no expansion);
    every word one exec can pass (`exec_string`)."""
    if isinstance(node, SequenceNode):
        argv = list_of(_argument)(node)
    else:
        value = scalar(node, "a list of strings or a command string")
        if not isinstance(value, str):
            raise Invalid(f"expected a list of strings or a command string, got {describe(value)}")
        try:
            argv = tuple(shlex.split(value))
        except ValueError as exc:
            raise Invalid(f"cannot split command {value!r}: {exc}") from None
        for index, word in enumerate(argv):
            try:
                exec_string(word)
            except Invalid as exc:
                raise Invalid(f"word {index} {exc}") from None
    if not argv:
        raise Invalid("command is empty")
    if not argv[0]:
        raise Invalid("command's program is an empty string")
    return argv


def _environment_name(node: Node) -> str:
    name = string(node)
    if not _ENV_NAME.fullmatch(name):
        raise Invalid(f"{name!r} is not a valid environment variable name")
    return name


def environment_names(node: Node) -> tuple[str, ...]:
    """A list of environment variable names, sorted, each once (order means nothing)."""
    return tuple(sorted(set(list_of(_environment_name)(node))))


def environment(node: Node) -> tuple[tuple[str, str], ...]:
    """NAME: value pairs sorted by name (order means nothing, so a reload that only
    reorders them changes nothing); values are scalars, kept as written."""
    if is_null(node):
        return ()
    if not isinstance(node, MappingNode):
        raise Invalid(f"expected a mapping of names to values, got {node_kind(node)}")
    pairs, problems = mapping_pairs(node)
    result: list[tuple[str, str]] = []
    for name, key_node, value_node in pairs:
        if not _ENV_NAME.fullmatch(name):
            problems.append((f".{name}", key_node, "not a valid environment variable name"))
        else:
            try:
                value = _word(value_node)
                exec_string(f"{name}={value}")
            except Invalid as exc:
                problems.append((f".{name}", key_node, str(exc)))
            else:
                result.append((name, value))
    if problems:
        raise Invalid.many(problems)
    return tuple(sorted(result))
