"""The wire protocol: newline-delimited JSON over a Unix stream socket.

Each request is one JSON object on one line with an `op` and, optionally, an `id` the
reply echoes. Each reply is one line in one envelope: `{"ok": true, ...fields}` or
`{"ok": false, "error": {"code": ..., "message": ...}}`. The operations and their fields
are documented in docs/PROTOCOL.md; the schemas below are the single source of truth
for what a request may contain, so the server never sees a field of the wrong type.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, get_args

VERSION = 1
MAX_LINE_DEFAULT = 64 * 1024
# The pool kinds, best first: the one list the protocol, the budget and the executor's
# fallback order (process, then thread, then sequential) all use.
Kind = Literal["process", "thread", "sequential"]
KINDS: tuple[Kind, ...] = get_args(Kind)

# error codes (stable: clients switch on them)
BAD_JSON = "bad_json"
TOO_LARGE = "too_large"
UNKNOWN_OP = "unknown_op"
BAD_REQUEST = "bad_request"
UNSUPPORTED_VERSION = "unsupported_version"
UNKNOWN_LEASE = "unknown_lease"
FORBIDDEN = "forbidden"
TOO_MANY_CONNECTIONS = "too_many_connections"
TOO_MANY_LEASES = "too_many_leases"
SHUTTING_DOWN = "shutting_down"
NOT_FOUND = "not_found"
INTERNAL = "internal"


class ProtocolError(Exception):
    """A request that gets an error reply; `fatal` closes the connection after it."""

    def __init__(self, code: str, message: str, *, fatal: bool = False) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.fatal = fatal


@dataclass(frozen=True)
class Field:
    types: tuple[type, ...]
    required: bool = False


_INT = (int,)
_STR = (str,)
_NUM = (int, float)

# op -> field -> spec; `op` and `id` are accepted on every request
SCHEMAS: dict[str, dict[str, Field]] = {
    "hello": {"version": Field(_INT, True), "client": Field(_STR)},
    "acquire": {
        "want": Field(_INT, True),
        "kinds": Field((list,)),
        "job": Field(_STR),
        "pid": Field(_INT),
        # after the daemon's restart: the lease the job held, and the workers it runs
        "resume": Field(_STR),
        "workers_in_use": Field(_INT),
    },
    "renew": {"lease": Field(_STR, True), "workers_in_use": Field(_INT)},
    "release": {"lease": Field(_STR, True)},
    "heartbeat": {"lease": Field(_STR), "progress": Field(_NUM + _STR)},
    "fallback": {
        "from": Field(_STR, True),
        "to": Field(_STR, True),
        "lease": Field(_STR),
        "workers": Field(_INT),
        "stage": Field(_STR),
        "reason": Field(_STR),
    },
    "status": {},
    "start": {"target": Field(_STR, True)},
    "stop": {"target": Field(_STR, True)},
    "restart": {"target": Field(_STR, True)},
    "reload": {"restart_changed": Field((bool,))},
    "reexec": {},
    "tail": {
        "target": Field(_STR, True),
        "stream": Field(_STR),
        "offset": Field(_INT),
        "bytes": Field(_INT),
    },
}


def decode(line: bytes) -> dict[str, Any]:
    """Parse and validate one request line; raise ProtocolError with the reason."""
    try:
        msg = _DECODE(line.decode())  # UTF-8 by the protocol: no encoding detection
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ProtocolError(BAD_JSON, f"not a JSON object: {exc}") from None
    except RecursionError:  # [[[[...]]]] thousands deep: the decoder's stack, not a bug
        raise ProtocolError(BAD_JSON, "JSON nested too deeply") from None
    if not isinstance(msg, dict):
        raise ProtocolError(BAD_JSON, f"expected a JSON object, got {type(msg).__name__}")
    op = msg.get("op")
    if not isinstance(op, str):
        raise ProtocolError(BAD_REQUEST, "missing 'op' (a string)")
    schema = SCHEMAS.get(op)
    if schema is None:
        raise ProtocolError(UNKNOWN_OP, f"unknown op {op!r}; known: {', '.join(sorted(SCHEMAS))}")
    _validate(op, msg)
    return msg


# per op: field -> accepted types (`op` and `id` included), and the required fields
_TYPES: dict[str, dict[str, tuple[type, ...]]] = {
    op: {"op": _STR, "id": (int, str), **{k: f.types for k, f in schema.items()}}
    for op, schema in SCHEMAS.items()
}
_REQUIRED: dict[str, tuple[str, ...]] = {
    op: tuple(k for k, f in schema.items() if f.required) for op, schema in SCHEMAS.items()
}


def _validate(op: str, msg: Mapping[str, Any]) -> None:
    types = _TYPES[op]
    for key, value in msg.items():
        want = types.get(key)
        if want is None:
            raise ProtocolError(BAD_REQUEST, f"{op}: unknown field {key!r}")
        if value.__class__ not in want and not _is(value, want):
            if key == "id":
                raise ProtocolError(BAD_REQUEST, "'id' must be an integer or a string")
            names = " or ".join(t.__name__ for t in want)
            raise ProtocolError(BAD_REQUEST, f"{op}.{key}: expected {names}, got {value!r:.60}")
    for key in _REQUIRED[op]:
        if key not in msg:
            raise ProtocolError(BAD_REQUEST, f"{op}: missing field {key!r}")
    if op == "tail" and msg.get("stream", "stdout") not in ("stdout", "stderr"):
        raise ProtocolError(BAD_REQUEST, "tail.stream: 'stdout' or 'stderr'")
    if op == "fallback" and (msg["from"] not in KINDS or msg["to"] not in KINDS):
        raise ProtocolError(BAD_REQUEST, f"fallback.from and .to: one of {KINDS}")
    if op == "acquire":
        if msg["want"] < 0:
            raise ProtocolError(BAD_REQUEST, "acquire.want: must be >= 0")
        kinds = msg.get("kinds", list(KINDS))
        if not kinds or any(k not in KINDS for k in kinds):
            raise ProtocolError(BAD_REQUEST, f"acquire.kinds: a non-empty list of {KINDS}")


def _is(value: object, types: tuple[type, ...]) -> bool:
    # bool is an int subclass in Python, never in this protocol
    return isinstance(value, types) and not isinstance(value, bool)


# one encoder and decoder for the daemon's life (json.dumps with options builds one per call)
_ENCODE = json.JSONEncoder(separators=(",", ":"), default=str).encode
_DECODE = json.JSONDecoder().decode


def encode(reply: Mapping[str, Any]) -> bytes:
    return (_ENCODE(reply) + "\n").encode()


def ok(request_id: object = None, **fields: Any) -> dict[str, Any]:
    reply: dict[str, Any] = {"ok": True}
    if request_id is not None:
        reply["id"] = request_id
    reply.update(fields)
    return reply


def error(code: str, message: str, request_id: object = None) -> dict[str, Any]:
    reply: dict[str, Any] = {"ok": False, "error": {"code": code, "message": message}}
    if request_id is not None:
        reply["id"] = request_id
    return reply
