"""The wire protocol: newline-delimited JSON over a Unix stream socket.

Each request is one JSON object on one line with an `op` and, optionally, an `id` the
reply echoes. Each reply is one line in one envelope: `{"ok": true, ...fields}` or
`{"ok": false, "error": {"code": ..., "message": ...}}`. docs/PROTOCOL.md describes the
operations for client authors. This module is the single source of truth for both
directions: `SCHEMAS` says what a request may contain (so the server never sees a field
of the wrong type or length), and the TypedDicts below say what each reply carries (the
daemon builds them, the CLI and the client read them through them; `shapes.check`
verifies a reply read off the wire, and a test checks the document's examples).

# Why one module
It is the contract between the daemon, the CLI, the client and other languages' clients:
every op's request schema, reply type, error code and limit, read side by side. Split by
op, a field's limit and the reply that echoes it would sit in different files, and the
standard-library-only rule (a job imports this) would have to be kept in each.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, TypedDict, get_args

VERSION = 1
MAX_LINE_DEFAULT = 64 * 1024  # a request line, by default (daemon.max_message_bytes)
# The longest reply line the daemon sends (it answers `too_large` instead), so the
# longest a client must be ready to read. Every reply is far below it: status lists come
# in pages of at most STATUS_PAGE_MAX rows, free text is capped (MAX_CHARS), event
# fields are cut (EVENT_TEXT_MAX), a tail chunk is at most TAIL_MAX bytes of output.
MAX_REPLY_BYTES = 16 * 1024 * 1024
TAIL_DEFAULT = 1600  # bytes of output a `tail` returns when the request names none
TAIL_MAX = 64 * 1024  # the most bytes of output one `tail` reply carries
STATUS_PAGE_MAX = 500  # rows of each list in one status reply
EVENT_TEXT_MAX = 400  # characters of each text field of an event in a status reply

# The bytes a job may declare one of its workers takes (acquire's `worker_bytes`, a
# program's `worker_memory`): at least 1 MiB, as no worker is charged less (a bare
# number is bytes, so `1536` meant as MiB would declare a worker 1.5 KiB and undercharge
# the very jobs that declare), at most 1 TiB, beyond any host these jobs run on.
MIN_WORKER_BYTES = 1 << 20
MAX_WORKER_BYTES = 1 << 40

# The most characters (code points) a request's text field may carry. `job` stays with
# its lease and is shown in every status; `client` (hello's name for itself) is checked
# and not kept; the others go into log lines or are looked up. A longer value is refused
# (`bad_request`, naming the field and the limit), never cut: the job learns at once that
# its name is not the one the daemon would show, and the rule is the same for every field.
MAX_CHARS = {
    "job": 256,
    "client": 128,
    "stage": 100,
    "reason": 300,
    "progress": 256,
    "lease": 64,
    "resume": 64,  # a lease id, as `lease`
    "target": 256,
}

# The pool kinds, best first: the one list the protocol, the budget and the executor's
# fallback order (process, then thread, then sequential) all use.
Kind = Literal["process", "thread", "sequential"]
KINDS: tuple[Kind, ...] = get_args(Kind)
Level = Literal["normal", "high", "extreme"]  # the budget's pressure levels
LEVELS: tuple[Level, ...] = get_args(Level)
# The log levels, lowest first: the `level` of every log line the daemon writes, the
# config's `daemon.log_level`, and what `logs --level` filters on.
LogLevel = Literal["debug", "info", "warning", "error"]
LOG_LEVELS: tuple[LogLevel, ...] = get_args(LogLevel)
Stream = Literal["stdout", "stderr"]
# the ops that change what runs: an admin's only (a peer in daemon.admin_groups, or root)
CONTROL_OPS = frozenset({"start", "stop", "restart", "reload", "reexec"})

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
_BOOL = (bool,)

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
        # bytes one of its workers takes, as the job declares it: charged until learned
        "worker_bytes": Field(_INT),
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
    # the summary; each list named true comes as a page of it (rows offset..offset+limit)
    "status": {
        "leases": Field(_BOOL),
        "instances": Field(_BOOL),
        "leftovers": Field(_BOOL),
        "events": Field(_BOOL),
        "offset": Field(_INT),
        "limit": Field(_INT),
    },
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
    except ValueError as exc:  # not UTF-8, not JSON, or an integer of over 4,300 digits
        # (the interpreter's limit on converting one: a ValueError, not a JSONDecodeError)
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
# per op: its text fields that have a length cap, and the cap
_CAPS: dict[str, dict[str, int]] = {
    op: {k: MAX_CHARS[k] for k, f in schema.items() if str in f.types and k in MAX_CHARS}
    for op, schema in SCHEMAS.items()
}


# complexity kept: the one place every field of every request is type- and range-checked, on
# the hot path of each message (a dispatch per field would cost a call per field)
def _validate(op: str, msg: Mapping[str, Any]) -> None:  # noqa: C901, PLR0912
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
    for key, cap in _CAPS[op].items():
        value = msg.get(key)
        if value.__class__ is str and len(value) > cap:
            raise ProtocolError(
                BAD_REQUEST, f"{op}.{key}: at most {cap} characters, got {len(value)}"
            )
    if op == "tail" and msg.get("stream", "stdout") not in ("stdout", "stderr"):
        raise ProtocolError(BAD_REQUEST, "tail.stream: 'stdout' or 'stderr'")
    if op == "fallback" and (msg["from"] not in KINDS or msg["to"] not in KINDS):
        raise ProtocolError(BAD_REQUEST, f"fallback.from and .to: one of {KINDS}")
    if op == "status":
        _check_page(msg)
    elif op == "acquire":
        if msg["want"] < 0:
            raise ProtocolError(BAD_REQUEST, "acquire.want: must be >= 0")
        if not MIN_WORKER_BYTES <= msg.get("worker_bytes", MIN_WORKER_BYTES) <= MAX_WORKER_BYTES:
            raise ProtocolError(
                BAD_REQUEST,
                f"acquire.worker_bytes: {MIN_WORKER_BYTES} to {MAX_WORKER_BYTES} (1MiB to 1TiB)",
            )
        kinds = msg.get("kinds", list(KINDS))
        if not kinds or any(k not in KINDS for k in kinds):
            raise ProtocolError(BAD_REQUEST, f"acquire.kinds: a non-empty list of {KINDS}")


def _check_page(msg: Mapping[str, Any]) -> None:
    if msg.get("offset", 0) < 0:
        raise ProtocolError(BAD_REQUEST, "status.offset: must be >= 0")
    if not 1 <= msg.get("limit", STATUS_PAGE_MAX) <= STATUS_PAGE_MAX:
        raise ProtocolError(BAD_REQUEST, f"status.limit: 1 to {STATUS_PAGE_MAX}")


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


# -- replies ------------------------------------------------------------------------------
# One TypedDict per reply. A client must ignore keys it does not know (a newer daemon
# may add some); the daemon sends exactly these.


class Envelope(TypedDict, total=False):
    id: int | str  # the request's `id`, when it had one


class OkReply(Envelope):
    """fallback's reply, and the base of every other successful one."""

    ok: Literal[True]


class ErrorBody(TypedDict):
    code: str
    message: str


class ErrorReply(Envelope):
    ok: Literal[False]
    error: ErrorBody


class HelloReply(OkReply):
    version: int
    server: str


class _GrantHeld(TypedDict, total=False):
    # only on a grant held for a burst (budget.burst_window): sequential for now; renew
    # in this many seconds (> 0), before starting a pool, to be granted its share
    retry_after: float


class GrantReply(OkReply, _GrantHeld):
    """acquire and renew. `workers` is the pool granted: 0 for `sequential` (no pool)."""

    lease: str
    kind: Kind
    workers: int
    target: int
    level: Level
    ttl: float
    reason: str


class ReleaseReply(OkReply):
    lease: str
    kind: Kind
    workers: int


class HeartbeatReply(OkReply):
    instance: str | None  # the supervised instance credited, if the peer is in one


class ControlReply(OkReply):
    """start, stop and restart: each instance named by the target, and its state."""

    instances: dict[str, str]


class ReloadReply(OkReply):
    added: list[str]
    removed: list[str]
    changed: list[str]
    unchanged: list[str]
    # per program: "how" (added, removed, changed) and the instances or keys of each of
    # in_place, next_start, restarted, started, stopped
    programs: dict[str, dict[str, Any]]


class ReexecReply(OkReply):
    """reexec: the daemon that answers execs `command` next, keeping `pid`."""

    pid: int
    version: str
    command: list[str]


class TailReply(OkReply):
    instance: str
    stream: Stream
    data: str
    start: int
    offset: int
    truncated: bool
    path: str | None


# -- status -------------------------------------------------------------------------------


class LeaseSize(TypedDict, total=False):
    """What the budget charges one more process worker of a lease's job: its learned
        bytes per worker, and the runs they were learned from (0: the size the job declared,
        else `memory_per_slot`); the size the lease's job declared (sent only where it did:
        acquire's `worker_bytes`); and the tasks a process pool of the job was learned to
        cost, per worker and beyond them (sent only once learned: the budget charges n + 4
        before); `learned_from_kill` (sent only as true) where the learned figure is what an
    OOM-killed worker of the job held at the kill. Optional: a daemon from before they were
    learned does not send them."""

    worker_bytes: int
    learned_runs: int
    declared_bytes: int
    worker_tasks: int
    pool_tasks: int
    learned_from_kill: bool


class LeaseRow(LeaseSize, TypedDict):
    lease: str
    pid: int
    uid: int
    job: str
    kind: Kind
    workers: int
    target: int
    wanted: int
    age_s: float


class ExitRow(TypedDict):
    code: int | None
    signal: str | None
    reason: str
    runtime_s: float
    by_limit: bool
    detail: str | None


class InstanceState(TypedDict):
    """What the state machine knows of an instance (supervise.states)."""

    name: str
    program: str
    state: str
    pid: int | None
    uptime_s: float | None
    restarts: int
    last_exit: ExitRow | None
    backoff_s: float | None
    wall_clock_left_s: float | None
    stop_reason: str | None


class InstanceRow(InstanceState):
    tasks: int | None  # of its whole tree, now
    ok: bool  # running as it should (or stopped on purpose, or done)
    lease: str | None  # the lease its main process holds
    pending: list[str]  # what it takes at its next start (a reload changed it meanwhile)


class _LeftoverLeft(TypedDict, total=False):
    left: str  # why its cgroup could not be removed


class LeftoverRow(_LeftoverLeft):
    """A worker an earlier daemon left running, stopped when this one started."""

    instance: str
    configured: bool
    pids: list[int]
    signal: str
    outcome: str


class CgroupRow(TypedDict):
    path: str
    fs_path: str
    version: int
    pids_current: int | None
    pids_max: int | None
    pids_events_max: int | None
    effective_max: int | None
    headroom: int | None
    limited_by: str | None


class UserRow(TypedDict):
    uid: int
    name: str | None
    tasks: int
    nproc_limit: int | None
    exempt: bool
    limit_pid: int | None
    scan_age_s: float


class PsiRow(TypedDict):
    cpu_some_avg10: float | None
    memory_some_avg10: float | None


class LimitRow(TypedDict):
    name: str
    kind: str
    scope: str | int | None
    limit: int
    in_use: int
    headroom: int
    percent_used: float


class TightestRow(TypedDict):
    name: str
    kind: str
    limit: int
    in_use: int
    headroom: int


class MemoryCgroupRow(TypedDict):
    path: str
    fs_path: str
    version: int
    current_bytes: int | None
    inactive_file_bytes: int | None
    max_bytes: int | None
    high_bytes: int | None
    effective_max_bytes: int | None
    headroom_bytes: int | None
    limited_by: str | None
    oom_kills: int | None


class MemoryJson(TypedDict):
    """Memory as the budget counts it: the least of MemAvailable and each memory cgroup
    limit's headroom (`headroom_bytes`, where `limited_by`), with every watched cgroup."""

    headroom_bytes: int
    limited_by: str  # "MemAvailable" or a limit's name, "memory:/batt"
    cgroups: list[MemoryCgroupRow]
    limits: list[LimitRow]  # in bytes, kind "memory"


class _HostMemory(TypedDict, total=False):
    memory: MemoryJson  # absent from a daemon before memory cgroups were read


class HostJson(_HostMemory):
    """One host sample: `status`'s `host` and `supervisord-batt probe --json`."""

    wall_time: float
    threads_total: int
    threads_max: int
    pid_max: int
    cgroups: list[CgroupRow]
    users: list[UserRow]
    mem_available_bytes: int
    mem_total_bytes: int
    cpus: float
    psi: PsiRow | None
    limits: list[LimitRow]
    tightest: TightestRow


class StatusCounts(TypedDict):
    """Every lease and instance of the daemon, counted whoever asks."""

    leases: int
    instances: int
    programs: int
    states: dict[str, int]  # instances by state
    leftovers: int


class StatusPage(TypedDict):
    """Which rows the lists of this reply are: rows offset..offset+limit of lists of
    `leases`, `instances` and `leftovers` rows (the rows this peer may see)."""

    offset: int
    limit: int
    leases: int
    instances: int
    leftovers: int
    next_offset: int | None  # the offset of the next page; None: this was the last


Event = dict[str, Any]  # a log event: timestamp, level, event, then its own fields


class _StatusCpu(TypedDict, total=False):
    # how the supervised workers' CPU time is shared: "per_user", or "per_thread (why)"
    # (absent from a daemon before cpu cgroups were made)
    cpu_share: str


class StatusReply(OkReply, _StatusCpu):
    """The summary, for everyone. `scope` is `all` for root and the admins, `own` for
    the others: their lists carry only their own leases and the programs they may tail."""

    pid: int
    version: str
    uptime_s: float
    level: Level
    level_reason: str
    capacity: int
    leased: int
    leased_tasks: int
    connections: int
    all_running: bool
    scope: Literal["all", "own"]
    counts: StatusCounts
    host: HostJson | None


class StatusListsReply(StatusReply, total=False):
    """A status reply with the lists the request named (and `page` when it named one)."""

    leases: list[LeaseRow]
    instances: list[InstanceRow]
    leftovers: list[LeftoverRow]
    events: list[Event]
    page: StatusPage


# each op's successful reply
REPLIES: dict[str, type[Mapping[str, Any]]] = {
    "hello": HelloReply,
    "acquire": GrantReply,
    "renew": GrantReply,
    "release": ReleaseReply,
    "heartbeat": HeartbeatReply,
    "fallback": OkReply,
    "status": StatusListsReply,
    "start": ControlReply,
    "stop": ControlReply,
    "restart": ControlReply,
    "reload": ReloadReply,
    "reexec": ReexecReply,
    "tail": TailReply,
}
