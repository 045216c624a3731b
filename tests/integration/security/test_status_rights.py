"""Issue 22: `status` carries to a peer only what that peer may read.

A real daemon runs a program as root that prints a secret, and one as a real user
(useradd) that prints that user's own line; root and the user each hold a lease. The
user, refused `tail` of root's program, used to read its secret from `status` (the log
events it carries include every program's output lines), with root's lease pid and job
name. Now the user's status, summary and every list, carries its own lease and its own
program's output, and of root's only counts; root's status still shows everything.
The user's plain `status` is checked first: a daemon from before this fix answers it
with the secret, root's job name and its lease pid.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Callable, Iterator
from typing import Any

from tests import helpers
from tests.helpers import WireClient, wait_until
from tests.support.peers import ask, shared

EVERYTHING: dict[str, Any] = {
    "op": "status",
    "leases": True,
    "instances": True,
    "leftovers": True,
    "events": True,
}


def values(node: Any, key: str) -> Iterator[Any]:
    """Every value stored under `key`, anywhere in a JSON document."""
    if isinstance(node, dict):
        for k, v in node.items():
            if k == key:
                yield v
            yield from values(v, key)
    elif isinstance(node, list):
        for item in node:
            yield from values(item, key)


def test_issue_22_a_user_reads_its_own_leases_and_output_and_only_counts_of_the_rest(
    daemon: Callable[..., Any], test_user: Callable[[], helpers.TestUser]
) -> None:
    user = test_user()
    secret, own, root_job = (f"{what}-{uuid.uuid4().hex}" for what in ("SECRET", "MINE", "ROOT"))
    say = "while true; do echo {}; sleep 0.2; done"
    to_log = {"mode": "daemon"}  # each line an `output` event in the daemon's log
    d = shared(
        daemon(
            {
                "daemon": {"socket_mode": "0666", "allowed_uids": [user.uid]},
                "programs": {
                    "vault": {"command": ["sh", "-c", say.format(secret)], "output": to_log},
                    "mine": {
                        "command": ["sh", "-c", say.format(own)],
                        "user": user.name,
                        "output": to_log,
                    },
                },
            }
        )
    )
    with WireClient(d.socket) as root:
        root_grant = root.request("acquire", want=1, job=root_job)
        assert root_grant["ok"], root_grant
        # both programs print: the secret is among the daemon's latest events
        wait_until(lambda: secret in d.log_text() and own in d.log_text(), what="both lines")
        summary, grant, first, everything = ask(
            d.socket,
            user,
            {"op": "status"},
            {"op": "acquire", "want": 1, "job": "own-job"},
            EVERYTHING,
            EVERYTHING,
        )

        # the summary first: the request every version of the daemon answers
        for reply in (summary, first, everything):
            text = json.dumps(reply)
            assert secret not in text and root_job not in text, reply
            assert reply["ok"] and reply["scope"] == "own", reply

        def root_status() -> dict[str, Any] | None:
            reply = root.request(**EVERYTHING)
            return reply if secret in json.dumps(reply) else None

        # what the user was not shown was there to be shown: root reads it
        root_sees = wait_until(root_status, timeout=10, what="the secret in root's status")
    assert root_sees["scope"] == "all"
    assert root_job in json.dumps(root_sees["leases"])
    vault_pid = next(i["pid"] for i in root_sees["instances"] if i["name"] == "vault:0")
    for reply in (summary, first, everything):
        assert vault_pid not in set(values(reply, "pid")) | set(values(reply, "limit_pid"))
        assert os.getpid() not in set(values(reply, "pid"))
    assert grant["ok"], grant
    assert summary["counts"]["leases"] == 1 and everything["counts"]["leases"] == 2
    assert everything["counts"]["instances"] == 2
    (lease,) = everything["leases"]
    assert (lease["lease"], lease["uid"], lease["job"]) == (grant["lease"], user.uid, "own-job")
    assert [i["name"] for i in everything["instances"]] == ["mine:0"]
    assert everything["page"]["leases"] == 1 and everything["page"]["instances"] == 1
    # the user's own program's output reaches it (it printed the whole time)
    lines = [e.get("line") for e in everything["events"] + first["events"]]
    assert own in lines, everything["events"]
    for row in everything["host"]["users"]:
        assert row["uid"] == user.uid or row["limit_pid"] is None
