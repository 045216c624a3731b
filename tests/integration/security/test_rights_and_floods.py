"""Issue 10: who may do what, and one uid's connection flood locking out no one.

Every peer here is a real process of a real user (useradd), talking to a real daemon
over its socket with a stdlib-only client (the test user cannot run our interpreter).
"""

from __future__ import annotations

import json
import subprocess
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests import helpers
from tests.helpers import drop_to, interpreter_for_others, killing, wait_until
from tests.support.peers import FLOOD, STATUS, ask, shared

SLEEP = ["sleep", "600"]


def test_an_allowed_user_may_lease_and_read_status_but_not_control(
    daemon: Callable[..., Any], test_user: Callable[[], helpers.TestUser]
) -> None:
    user = test_user()
    d = shared(
        daemon(
            {
                "daemon": {"socket_mode": "0666", "allowed_uids": [user.uid]},
                "programs": {"p": {"command": SLEEP}},
            }
        )
    )
    status, grant, stop, reload, restart, tail = ask(
        d.socket,
        user,
        {"op": "status"},
        {"op": "acquire", "want": 1, "kinds": ["thread"]},
        {"op": "stop", "target": "all"},
        {"op": "reload"},
        {"op": "restart", "target": "p"},
        {"op": "tail", "target": "p:0"},
    )
    assert status["ok"] and grant["ok"]
    for refused in (stop, reload, restart, tail):
        assert refused["error"]["code"] == "forbidden", refused
    assert d.status()["instances"][0]["state"] == "RUNNING"
    lines = wait_until(
        lambda: [e for e in d.events("bad_request") if e.get("code") == "forbidden"],
        timeout=5,
        what="the refusal lines",
    )
    assert len(lines) == 4
    assert {(e["uid"], e["gid"]) for e in lines} == {(user.uid, user.gid)}
    assert all(e["pid"] > 0 for e in lines)
    assert not d.events("reloaded") and not d.events("control")


def test_an_admin_group_may_control_and_every_control_names_its_uid(
    daemon: Callable[..., Any], test_user: Callable[[], helpers.TestUser]
) -> None:
    user = test_user()  # useradd made a group of the same name: the user's own
    d = shared(
        daemon(
            {
                "daemon": {"socket_mode": "0666", "admin_groups": [user.name]},
                "programs": {"p": {"command": SLEEP}},
            }
        )
    )
    (stopped,) = ask(d.socket, user, {"op": "stop", "target": "p"})
    assert stopped == {"ok": True, "instances": {"p:0": "STOPPED"}}
    (reloaded,) = ask(d.socket, user, {"op": "reload"})
    assert reloaded["ok"], reloaded
    # the daemon writes an iteration's lines right after it, after the reply went out
    (control,) = wait_until(lambda: d.events("control"), timeout=5, what="the control line")
    assert (control["op"], control["uid"], control["gid"]) == ("stop", user.uid, user.gid)
    (line,) = wait_until(lambda: d.events("reloaded"), timeout=5, what="the reloaded line")
    assert line["uid"] == user.uid and line["pid"] > 0


def test_a_user_may_tail_a_program_that_runs_as_them_and_no_other(
    daemon: Callable[..., Any], test_user: Callable[[], helpers.TestUser]
) -> None:
    user = test_user()
    theirs = ["sh", "-c", "echo theirs; exec sleep 600"]
    rooted = ["sh", "-c", "echo root-only; exec sleep 600"]
    d = shared(
        daemon(
            {
                "daemon": {"socket_mode": "0666", "allowed_uids": [user.uid]},
                "programs": {
                    "mine": {"command": theirs, "user": user.name, "output": {"mode": "daemon"}},
                    "root": {"command": rooted, "output": {"mode": "daemon"}},
                },
            }
        )
    )
    wait_until(lambda: d.events("output"), timeout=10, what="the workers' first lines")
    mine, root = ask(
        d.socket, user, {"op": "tail", "target": "mine:0"}, {"op": "tail", "target": "root:0"}
    )
    assert mine["ok"] and "theirs" in mine["data"], mine
    assert root["error"]["code"] == "forbidden"
    assert "root-only" not in json.dumps(root)


def test_one_uids_connection_flood_locks_out_no_one(
    daemon: Callable[..., Any], test_user: Callable[[], helpers.TestUser], open_dir: Path
) -> None:
    flooder, neighbour = test_user(), test_user()
    go, never = open_dir / "go", open_dir / "never"
    # a supervised worker of the flooder's own uid: it connects only once the flood is on
    worker = textwrap.dedent(
        f"""
        import os, socket, sys, time
        while not os.path.exists({str(go)!r}):
            time.sleep(0.05)
        s = socket.socket(socket.AF_UNIX); s.connect(os.environ["SUPERVISORD_BATT_SOCKET"])
        s.sendall(b'{{"op":"acquire","want":1,"kinds":["thread"]}}\\n')
        print(s.makefile("rb").readline().decode().strip(), flush=True)
        time.sleep(600)
        """
    )
    d = shared(
        daemon(
            {
                "daemon": {
                    "socket_mode": "0666",
                    "allowed_uids": [flooder.uid, neighbour.uid],
                    # the defaults: 256 connections, 32 per uid, 10 refusal lines a second
                },
                "programs": {
                    "w": {
                        "command": [interpreter_for_others(), "-c", worker],
                        "user": flooder.name,
                        "output": {"mode": "daemon"},
                    }
                },
            }
        )
    )
    flood = subprocess.Popen(
        [interpreter_for_others(), "-c", FLOOD, str(d.socket), "256", STATUS, str(never)],
        preexec_fn=drop_to(flooder),
        stdout=subprocess.PIPE,
        text=True,
    )
    with killing(flood):
        assert flood.stdout is not None
        counts = json.loads(flood.stdout.readline())
        # the case as reproduced: one allowed uid opening 256 connections (all there are)
        assert counts == {"served": 32, "refused": {"too_many_connections": 224}}
        # root, another allowed user, and the flooder's own supervised worker still get in
        assert d.status()["connections"] >= 32
        (neighbour_grant,) = ask(
            d.socket, neighbour, {"op": "acquire", "want": 1, "kinds": ["thread"]}
        )
        assert neighbour_grant["ok"], neighbour_grant
        go.touch()
        granted = wait_until(
            lambda: [e for e in d.events("output") if '"lease"' in e.get("line", "")],
            timeout=15,
            what="the worker's grant",
        )
        assert json.loads(granted[0]["line"])["ok"] is True
        # 224 refusals, but at most 10 lines a second, and the rest summarised
        refused_lines = d.events("connection_refused")
        assert 0 < len(refused_lines) < 224
        assert all(e["uid"] == flooder.uid for e in refused_lines)

        def held_back() -> int:
            summaries = d.events("bad_input_suppressed")
            return sum(s["events"].get("connection_refused", 0) for s in summaries)

        # every refusal is a line or counted in a summary (one a tick): none is lost
        wait_until(
            lambda: held_back() + len(refused_lines) == 224,
            timeout=10,
            what="the summaries to account for every refusal",
        )


# connects, is served once, then waits until the daemon closes the connection
HOLD = textwrap.dedent(
    """
    import json, socket, sys
    s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1])
    s.sendall(b'{"op":"status"}\\n')
    f = s.makefile("rb")
    print("served" if json.loads(f.readline()).get("ok") else "refused", flush=True)
    print("closed" if f.readline() == b"" else "open", flush=True)
    """
)


def test_a_reload_that_drops_a_user_closes_its_open_connection(
    daemon: Callable[..., Any], test_user: Callable[[], helpers.TestUser]
) -> None:
    import yaml

    user = test_user()
    d = shared(daemon({"daemon": {"socket_mode": "0666", "allowed_uids": [user.uid]}}))
    proc = subprocess.Popen(
        [interpreter_for_others(), "-c", HOLD, str(d.socket)],
        preexec_fn=drop_to(user),
        stdout=subprocess.PIPE,
        text=True,
    )
    with killing(proc):
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "served"
        config = yaml.safe_load(d.config_path.read_text())
        config["daemon"]["allowed_uids"] = []
        d.config_path.write_text(yaml.safe_dump(config))
        with d.client() as c:
            assert c.request("reload")["ok"]
        assert proc.stdout.readline().strip() == "closed"
        proc.wait(timeout=30)
    refused = wait_until(lambda: d.events("peer_refused"))
    assert refused[0]["uid"] == user.uid and "reload" in refused[0]["reason"]


def test_a_reload_applies_the_message_limit_to_open_connections(
    daemon: Callable[..., Any],
) -> None:
    import yaml

    d = daemon({})
    with d.client() as c:
        padded = {"op": "status", "id": "x" * 4000}
        assert c.request(**padded)["ok"]
        config = yaml.safe_load(d.config_path.read_text())
        config["daemon"]["max_message_bytes"] = 1024
        d.config_path.write_text(yaml.safe_dump(config))
        assert c.request("reload")["ok"]
        reply = c.request(**padded)
        assert reply["error"]["code"] == "too_large", reply
