"""The `status` reply: a summary for every peer, the lists on request, in pages, and of
the lists only what the asker may read.

# Why a summary by default
`status` used to carry every lease, every instance and the latest log events. One user
holding 512 leases with long job names made it 31.7 MB: root's `status` and `top` failed
and each request stalled the daemon. The summary is now the same size whatever the daemon
holds (counts, level, capacity, host); a list comes only when the request names it, at
most `protocol.STATUS_PAGE_MAX` rows of it per reply (`offset`, `limit`, `next_offset`).

# Who reads what
Root, the daemon's uid and the admin groups read everything (`scope: all`). Any other
peer (`scope: own`) reads its own leases (its uid) and the instances, leftovers and log
events of the programs it may `tail` (those that run as its uid); of the rest it gets
the counts. The log's events carry other users' lease pids and job names, and programs'
output lines (`output` events): a peer refused `tail` of a program read its secrets from
here. An event is the reader's when it is about one of its programs (`instance` or
`program`), or, about no program, when it names the reader's uid; `PUBLIC_EVENTS` are
about the host alone.
"""

from __future__ import annotations

import json
import os
import pwd
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from supervisord_batt import logs, protocol
from supervisord_batt.budget.ledger import BudgetLedger
from supervisord_batt.budget.records import Lease
from supervisord_batt.daemon.workersizes import Key, Learned, WorkerSizes
from supervisord_batt.supervise.supervisor import Supervisor

RECENT_EVENTS = 20  # the latest log events a status reply carries (for `top`)
PUBLIC_EVENTS = frozenset({"pressure_change"})  # about the host alone: every peer's
_LISTS = ("leases", "instances", "leftovers")  # the paged lists


@dataclass(frozen=True)
class Viewer:
    """Who asks: its uid, and whether it reads everything (root, admins)."""

    uid: int
    admin: bool


def user_uid(user: str | None, known: dict[str | None, int | None]) -> int | None:
    """The uid a program's `user` runs as (None: the daemon's own), memoised in `known`;
    None when no such user exists."""
    if user not in known:
        if user is None:
            known[user] = os.geteuid()
        else:
            try:
                known[user] = pwd.getpwnam(user).pw_uid
            except KeyError:
                known[user] = None
    return known[user]


@dataclass
class StatusView:
    """The lists and counts of status replies; keeps the recent lines' parses between
    replies (`top` asks every second, and most of the latest lines are the same)."""

    supervisor: Supervisor
    worker_sizes: WorkerSizes = field(default_factory=WorkerSizes)
    _events: dict[str, protocol.Event] = field(default_factory=dict, repr=False)

    def fill(
        self,
        reply: protocol.StatusListsReply,
        viewer: Viewer,
        msg: dict[str, Any],
        ledger: BudgetLedger,
    ) -> protocol.StatusListsReply:
        """Add the counts, and the lists `msg` names (each row one `viewer` may read)."""
        sup = self.supervisor
        states = Counter(inst.state.value for inst in sup.instances.values())
        reply["counts"] = {
            "leases": ledger.count(),
            "instances": len(sup.instances),
            "programs": len(sup.config.programs),
            "states": dict(states),
            "leftovers": len(sup.leftovers),
        }
        readable = self._reader(viewer)
        if not viewer.admin and reply["host"] is not None:
            for row in reply["host"]["users"]:  # another user's process: counts, no pid
                if row["uid"] != viewer.uid:
                    row["limit_pid"] = None
        if msg.get("events"):
            reply["events"] = self._visible_events(viewer, readable)
        named = [name for name in _LISTS if msg.get(name)]
        if named:
            visible: dict[str, list[Any]] = {
                "instances": [i for i in sup.instances.values() if readable(i.program.name)],
                "leftovers": [x for x in sup.leftovers if readable(_program_of(x["instance"]))],
            }
            uid = None if viewer.admin else viewer.uid
            self._page(reply, named, visible, msg, ledger=ledger, uid=uid)
        return reply

    def _reader(self, viewer: Viewer) -> Callable[[str | None], bool]:
        """Whether `viewer` may read what concerns a program (by name): it runs as its uid."""
        if viewer.admin:
            return lambda program: True
        users = {p.name: p.user for p in self.supervisor.config.programs}
        uids: dict[str | None, int | None] = {}
        return lambda program: program in users and user_uid(users[program], uids) == viewer.uid

    def _page(
        self,
        reply: protocol.StatusListsReply,
        named: list[str],
        visible: dict[str, list[Any]],
        msg: dict[str, Any],
        *,
        ledger: BudgetLedger,
        uid: int | None,
    ) -> None:
        """Rows offset..offset+limit of each list named (of the leases, those of `uid`;
        None: all), and `page`. Only the page's leases are read out of the ledger: the
        snapshot of every lease made a status with 3,000 of them cost 10 ms more."""
        offset = msg.get("offset", 0)
        end = offset + msg.get("limit", protocol.STATUS_PAGE_MAX)
        now = time.monotonic()
        leases, held = ledger.page(uid, offset, end if "leases" in named else offset)
        if "leases" in named:
            learned = self.worker_sizes.figures()
            reply["leases"] = [lease_row(x, now, _worker_size(x, ledger, learned)) for x in leases]
        if "instances" in named:
            by_pid = {pid: lease_id for lease_id, pid in ledger.lease_pids().items()}
            rows = visible["instances"][offset:end]
            reply["instances"] = [self.supervisor.row(i, now, by_pid.get(i.pid)) for i in rows]
        if "leftovers" in named:
            reply["leftovers"] = [leftover_row(x) for x in visible["leftovers"][offset:end]]
        sizes = {name: len(rows) for name, rows in visible.items()}
        sizes["leases"] = held
        reply["page"] = {
            "offset": offset,
            "limit": end - offset,
            "leases": held,
            "instances": sizes["instances"],
            "leftovers": sizes["leftovers"],
            "next_offset": end if any(sizes[n] > end for n in named) else None,
        }

    def _visible_events(
        self, viewer: Viewer, readable: Callable[[str | None], bool]
    ) -> list[protocol.Event]:
        lines = logs.recent()
        events = parse_events(lines, self._events)
        self._events = dict(zip(lines, events, strict=True))
        if not viewer.admin:
            events = [e for e in events if _may_see(e, viewer, readable)]
        return events[-RECENT_EVENTS:]


def _may_see(event: protocol.Event, viewer: Viewer, readable: Callable[[str | None], bool]) -> bool:
    """Whether a peer that is not an admin may read this log event (see the module)."""
    if event.get("event") in PUBLIC_EVENTS:
        return True
    instance, program = event.get("instance"), event.get("program")
    if isinstance(instance, str):
        return readable(_program_of(instance))
    if isinstance(program, str):
        return readable(program)
    if instance is not None or program is not None:
        return False
    return event.get("uid") == viewer.uid and event.get("event") != "unparsable"


def _program_of(instance: str) -> str:
    return instance.rpartition(":")[0] or instance


def lease_row(x: Lease, now: float, size: protocol.LeaseSize) -> protocol.LeaseRow:
    return {
        **size,
        "lease": x.lease_id,
        "pid": x.pid,
        "uid": x.uid,
        "job": x.job,
        "kind": x.kind,
        "workers": x.workers,
        "target": x.target,
        "wanted": x.wanted,
        "age_s": round(now - x.created_at, 1),
    }


def _worker_size(x: Lease, ledger: BudgetLedger, learned: dict[Key, Learned]) -> protocol.LeaseSize:
    """What the budget charges a process worker of the lease's job, the runs it was
    learned from (0: never seen, its declared size or `memory_per_slot`) and the size it
    declared."""
    seen = learned.get((x.job, x.uid))
    size: protocol.LeaseSize = {
        "worker_bytes": ledger.worker_bytes(x.job, x.uid, x.declared_bytes),
        "learned_runs": seen.runs if seen is not None else 0,
    }
    if x.declared_bytes:
        size["declared_bytes"] = x.declared_bytes
    if seen is not None and seen.from_kill:
        size["learned_from_kill"] = True
    if seen is not None and seen.worker_tasks is not None:
        size["worker_tasks"], size["pool_tasks"] = ledger.pool_tasks(x.job, x.uid)
    return size


def leftover_row(record: dict[str, Any]) -> protocol.LeftoverRow:
    row: protocol.LeftoverRow = {
        "instance": record["instance"],
        "configured": record["configured"],
        "pids": list(record["pids"]),
        "signal": record["signal"],
        "outcome": record["outcome"],
    }
    if "left" in record:
        row["left"] = record["left"]
    return row


def parse_event(line: str) -> protocol.Event:
    """One log line as the event it encodes, each field cut to EVENT_TEXT_MAX characters
    (an output line may be 8 KiB, a traceback longer; `top` shows one line of each)."""
    try:
        event = json.loads(line)
    except ValueError:  # the daemon encoded it: cannot happen, but never fail a status
        return {"event": "unparsable", "line": line[:200]}
    if not isinstance(event, dict):
        return {"event": "unparsable"}
    return {key: _clip(value) for key, value in event.items()}


def _clip(value: Any) -> Any:
    cap = protocol.EVENT_TEXT_MAX
    if isinstance(value, str):
        return value if len(value) <= cap else value[: cap - 1] + "…"
    if isinstance(value, dict | list):
        text = json.dumps(value)
        return value if len(text) <= cap else text[: cap - 1] + "…"
    return value


def parse_events(lines: Iterable[str], seen: dict[str, protocol.Event]) -> list[protocol.Event]:
    """`[parse_event(line) for line in lines]`, reusing the parse of a line in `seen`.

    A shortcut for `top`'s status every second: from one status to the next, most of the
    latest lines are the same, and parsing them again was 40% of the handler's time. The
    parses are shared between replies, which only encode them.
    """
    return [seen[line] if line in seen else parse_event(line) for line in lines]
