"""Issue 22: a real daemon's replies have exactly the shapes protocol.py gives them.

One request of every op (and the error replies a client meets most) against a real
daemon supervising a real program; each reply is checked key by key against its
TypedDict, no key missing and none more (tests/unit/test_protocol_doc.py holds the
document to the same types).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from supervisord_batt import protocol, shapes
from tests.helpers import CALM, WireClient, wait_until


def exact(shape: Any, reply: dict[str, Any]) -> dict[str, Any]:
    assert shapes.problems(shape, reply, strict=True) == [], reply
    return reply


def test_issue_22_every_reply_of_a_real_daemon_has_its_ops_shape(
    daemon: Callable[..., Any], program: Callable[..., Any], py: Callable[[str], list[str]]
) -> None:
    worker = py("import time\nprint('hello', flush=True)\ntime.sleep(600)")
    d = daemon({"budget": {"pressure": CALM}, "programs": {"p": program(worker, numprocs=2)}})
    wait_until(
        lambda: d.status()["counts"]["states"].get("RUNNING") == 2, what="both instances running"
    )
    with WireClient(d.socket) as c:

        def ask(op: str, **fields: Any) -> dict[str, Any]:
            reply = c.request(op, **fields)
            return exact(protocol.REPLIES[op] if reply["ok"] else protocol.ErrorReply, reply)

        assert ask("hello", version=1, client="t", id=5)["id"] == 5
        grant = ask("acquire", want=2, kinds=["thread"], job="shapes")
        assert grant["kind"] == "thread"
        ask("renew", lease=grant["lease"], workers_in_use=2)
        sequential = ask("acquire", want=2, kinds=["sequential"], job="shapes")
        # the ledger's meaning, and now the document's: a sequential lease has no pool
        assert (sequential["kind"], sequential["workers"]) == ("sequential", 0)
        ask("heartbeat", lease=grant["lease"], progress="step 1")
        ask("fallback", **{"from": "process", "to": "thread"}, stage="submit", reason="x")
        summary = ask("status")
        assert not {"leases", "instances", "leftovers", "events", "page"} & set(summary)
        full = ask("status", leases=True, instances=True, leftovers=True, events=True)
        assert len(full["leases"]) == 2 and len(full["instances"]) == 2 and full["events"]
        assert full["page"]["next_offset"] is None
        # the line can arrive in two reads: wait for its end, then check it whole
        tail = wait_until(
            lambda: (data := ask("tail", target="p:0")["data"]).endswith("\n") and data,
            what="the worker's whole first line",
        )
        assert tail == "hello\n"
        ask("release", lease=grant["lease"])
        assert ask("stop", target="p:1")["instances"] == {"p:1": "STOPPED"}
        assert ask("start", target="p:1")["instances"] == {"p:1": "RUNNING"}
        ask("restart", target="p:1")
        assert ask("reload")["unchanged"] == ["p"]
        errors = [
            ask("release", lease=grant["lease"]),
            ask("tail", target="nothing:0"),
            ask("acquire", want=1, job="j" * 257),
            ask("hello", version=9),
        ]
        codes = [e["error"]["code"] for e in errors]
        assert codes == ["unknown_lease", "not_found", "bad_request", "unsupported_version"]
