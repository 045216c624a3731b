"""Reading a YAML node tree while collecting every problem with its key path and line.

`Section` wraps one mapping: it reports unknown keys (with a "did you mean" hint) and
duplicate keys, and `Section.get(key, parser, default)` runs a parser on a value node. A
parser is any callable from a node to a value that raises `Invalid` for a bad one; the
problem lands in `Issues` as a `ConfigIssue` and the default is used, so reading goes on
and every problem is found in one pass. The config's own parsers live in `values`.
"""

# Why compose and not safe_load: yaml.compose gives a node tree in which every key and
# value keeps its position, so an error can say "line 14". Values are checked while the
# tree is walked, every problem is collected, and only then is ConfigError raised: a
# person fixing a config wants the whole list at once, not one error per attempt.

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar, cast

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

_STR_TAG = "tag:yaml.org,2002:str"
_NULL_TAG = "tag:yaml.org,2002:null"

T = TypeVar("T")
Parser = Callable[[Node], T]
Problem = tuple[str, "Node | None", str]  # (key path suffix, node for the line, message)

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


# ------------------------------------------------------------------ reading nodes


class Invalid(Exception):
    """A value failed a check; `problems` holds one or more (suffix, node, message)."""

    def __init__(self, message: str, node: Node | None = None, suffix: str = "") -> None:
        super().__init__(message)
        self.problems: list[Problem] = [(suffix, node, message)]

    @classmethod
    def many(cls, problems: list[Problem]) -> Invalid:
        """One exception carrying several problems (every bad item of a list)."""
        exc = cls(problems[0][2])
        exc.problems = problems
        return exc


class Issues:
    """Every problem found in one load."""

    def __init__(self) -> None:
        self.items: list[ConfigIssue] = []

    def add(self, key_path: str, node: Node | None, message: str, line: int | None = None) -> None:
        """Record a problem; the node, when given, supplies the line."""
        self.items.append(ConfigIssue(key_path, node_line(node) if node else line, message))


_CONSTRUCTOR = yaml.constructor.SafeConstructor()


def node_line(node: Node | None) -> int | None:
    """The 1-based line a node starts on."""
    return None if node is None else int(node.start_mark.line) + 1


def is_null(node: Node) -> bool:
    """True for an explicit `null`, `~` or an empty value."""
    return isinstance(node, ScalarNode) and node.tag == _NULL_TAG


def scalar(node: Node, expected: str) -> object:
    """The Python value of a scalar node (int, float, bool, str, None, date)."""
    if isinstance(node, MappingNode | SequenceNode):
        raise Invalid(f"expected {expected}, got {node_kind(node)}")
    construct = _CONSTRUCTOR.yaml_constructors.get(node.tag)
    if construct is None:
        raise Invalid(f"expected {expected}, got a value tagged {node.tag}")
    try:
        return cast(object, construct(_CONSTRUCTOR, node))
    except (yaml.YAMLError, ValueError) as exc:
        raise Invalid(f"expected {expected}, got {node.value!r} ({exc})") from None


def describe(value: object) -> str:
    """A value as an error message shows it: 'ten', integer 5, boolean true, null."""
    if isinstance(value, bool):
        return f"boolean {str(value).lower()}"
    if value is None:
        return "null"
    if isinstance(value, str):
        return repr(value)
    kind = {int: "integer", float: "number"}.get(type(value), type(value).__name__)
    return f"{kind} {value}"


def node_kind(node: Node) -> str:
    """What a node holds, for 'expected X, got Y'."""
    if isinstance(node, MappingNode):
        return "a mapping"
    if isinstance(node, SequenceNode):
        return "a list"
    try:
        return describe(scalar(node, "a value"))
    except Invalid:
        return repr(node.value)


def suggest(word: str, choices: tuple[str, ...]) -> str:
    """The "; did you mean 'x'?" hint for the closest choice, or nothing."""
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return f"; did you mean '{close[0]}'?" if close else ""


def mapping_pairs(node: MappingNode) -> tuple[list[tuple[str, Node, Node]], list[Problem]]:
    """The (key, key node, value node) of a mapping, merge keys applied, and its problems.

    Keys must be strings and appear once; a key given next to a `<<` merge overrides the
    merged one, as YAML says.
    """
    problems: list[Problem] = []
    own = {id(key) for key, _ in node.value}
    try:
        _CONSTRUCTOR.flatten_mapping(node)
    except yaml.YAMLError as exc:
        problems.append(("", node, f"bad merge key: {exc}"))
    found: dict[str, tuple[Node, Node]] = {}
    for key_node, value_node in node.value:
        if not (isinstance(key_node, ScalarNode) and key_node.tag == _STR_TAG):
            problems.append(("", key_node, f"keys must be strings, got {node_kind(key_node)}"))
            continue
        key = str(key_node.value)
        first = found.get(key)
        if first is not None and id(first[0]) in own and id(key_node) in own:
            problems.append(
                (f".{key}", key_node, f"duplicate key (first at line {node_line(first[0])})")
            )
            continue
        found[key] = (key_node, value_node)
    return [(key, k, v) for key, (k, v) in found.items()], problems


class Section:
    """One YAML mapping being read: unknown keys reported, values parsed on request."""

    def __init__(
        self,
        issues: Issues,
        node: Node | None,
        path: str,
        known: tuple[str, ...],
        line: int | None,
    ) -> None:
        self.issues, self.path, self.line = issues, path, line
        self.entries: dict[str, tuple[Node, Node]] = {}
        self.failed: set[str] = set()
        self.is_mapping = node is None or is_null(node) or isinstance(node, MappingNode)
        if not isinstance(node, MappingNode):
            if not self.is_mapping and node is not None:
                issues.add(path, None, f"expected a mapping, got {node_kind(node)}", line)
            return
        pairs, problems = mapping_pairs(node)
        for suffix, where, message in problems:
            issues.add(path + suffix if path else suffix.lstrip("."), where, message)
        for key, key_node, value_node in pairs:
            if key in known:
                self.entries[key] = (key_node, value_node)
            else:
                issues.add(
                    self.key_path(key), key_node, f"unknown key '{key}'" + suggest(key, known)
                )

    def key_path(self, key: str) -> str:
        """The dotted path of one of this section's keys."""
        return f"{self.path}.{key}" if self.path else key

    def key_line(self, key: str) -> int | None:
        """The line of a key, or of the section when the key is absent."""
        entry = self.entries.get(key)
        return node_line(entry[0]) if entry else self.line

    def get(self, key: str, parse: Parser[T], default: T) -> T:
        """The parsed value of `key`, or `default` when it is absent or invalid."""
        entry = self.entries.get(key)
        if entry is None:
            return default
        try:
            return parse(entry[1])
        except Invalid as exc:
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

    def child(self, key: str, known: tuple[str, ...]) -> Section:
        """The nested section under `key` (empty when absent)."""
        entry = self.entries.get(key)
        node = entry[1] if entry else None
        return Section(self.issues, node, self.key_path(key), known, self.key_line(key))
