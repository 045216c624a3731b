"""Whether a JSON value has the shape a TypedDict says: for replies read off the wire,
and for the protocol document's examples (tests/unit/test_protocol_doc.py).

A TypedDict is only a promise to the type checker; what arrives on a socket is whatever
the other end sent. `check` turns the promise into a check at the one place a reply
enters the client (`client.leases.Connection.call`), so the code after it may rely on
the types mypy was told. Unknown keys pass unless `strict` (a newer daemon may add
fields; the document and the daemon's own replies are held to exactly the shape).
Standard library only, like the protocol it checks.
"""

from __future__ import annotations

import functools
import types
from typing import Any, Literal, TypeVar, Union, cast, get_args, get_origin, get_type_hints

T = TypeVar("T")


class ShapeError(ValueError):
    """A value that does not have the expected shape; `problems` says where and how."""

    def __init__(self, problems: list[str]) -> None:
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        super().__init__("; ".join(problems[:3]) + more)
        self.problems = problems


def check(shape: type[T], value: object) -> T:
    """`value`, typed as `shape`; ShapeError when it does not have that shape."""
    found = problems(shape, value)
    if found:
        raise ShapeError(found)
    return cast(T, value)


def problems(shape: Any, value: object, *, strict: bool = False, where: str = "") -> list[str]:
    """What is wrong with `value` as a `shape` ([]: nothing), each with its path."""
    out: list[str] = []
    _check(shape, value, strict, where or getattr(shape, "__name__", "value"), out)
    return out


@functools.cache
def _fields(shape: Any) -> tuple[dict[str, Any], frozenset[str]]:
    return get_type_hints(shape), shape.__required_keys__


_PLAIN = {
    int: lambda v: isinstance(v, int) and not isinstance(v, bool),
    float: lambda v: isinstance(v, int | float) and not isinstance(v, bool),
    str: lambda v: isinstance(v, str),
    bool: lambda v: isinstance(v, bool),
    type(None): lambda v: v is None,
}


# complexity kept: one branch per kind of type annotation (TypedDict, Literal, union, list,
# tuple, dict, a class), the structure of the typing module itself
def _check(shape: Any, value: object, strict: bool, where: str, out: list[str]) -> None:  # noqa: C901, PLR0912
    if shape is Any:
        return
    if hasattr(shape, "__required_keys__"):  # a TypedDict
        _check_keys(shape, value, strict, where, out)
        return
    origin, args = get_origin(shape), get_args(shape)
    if origin is Literal:
        if not any(value == a and type(value) is type(a) for a in args):
            out.append(f"{where}: expected one of {list(args)}, got {value!r:.60}")
    elif origin is Union or origin is types.UnionType:
        _check_union(args, value, strict, where, out)
    elif origin is list:
        if not isinstance(value, list):
            out.append(f"{where}: expected a list, got {_kind(value)}")
            return
        for i, item in enumerate(value):
            _check(args[0], item, strict, f"{where}[{i}]", out)
    elif origin is dict:
        if not isinstance(value, dict):
            out.append(f"{where}: expected an object, got {_kind(value)}")
            return
        for key, item in value.items():
            _check(args[0], key, strict, f"{where} key", out)
            _check(args[1], item, strict, f"{where}[{key!r}]", out)
    elif shape in _PLAIN:
        if not _PLAIN[shape](value):
            out.append(f"{where}: expected {shape.__name__}, got {value!r:.60}")
    else:
        raise TypeError(f"shapes: no rule for {shape!r} at {where}")


def _check_keys(shape: Any, value: object, strict: bool, where: str, out: list[str]) -> None:
    if not isinstance(value, dict):
        out.append(f"{where}: expected an object, got {_kind(value)}")
        return
    hints, required = _fields(shape)
    out += [f"{where}: missing {key!r}" for key in sorted(required - value.keys())]
    for key, item in value.items():
        if key in hints:
            _check(hints[key], item, strict, f"{where}.{key}", out)
        elif strict:
            out.append(f"{where}: unknown key {key!r}")


def _check_union(
    args: tuple[Any, ...], value: object, strict: bool, where: str, out: list[str]
) -> None:
    fitting = [a for a in args if not problems(a, value, strict=strict)]
    if fitting:
        return
    others = [a for a in args if a is not type(None)]
    if value is not None and len(others) == 1:  # X | None: say what is wrong inside X
        _check(others[0], value, strict, where, out)
        return
    names = " or ".join(getattr(a, "__name__", str(a)) for a in args)
    out.append(f"{where}: expected {names}, got {value!r:.60}")


def _kind(value: object) -> str:
    return "null" if value is None else type(value).__name__
