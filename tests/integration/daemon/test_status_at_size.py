"""Issue 22: root's `status` and `top` work with 3,000 leases and 1,000 instances.

One ordinary user with 512 leases whose job names were 60,000 characters made root's
`supervisord-batt status` and `top` fail (`too_large`: the reply was 31.7 MB). Here, for
real: 1,000 instances of `sleep` under a real daemon, a real user (useradd) holding 512
leases on 32 connections with job names at the 256-character cap (each asked first with
a 60,000-character name, refused naming the field and the cap), root holding 2,488 more. Root's CLI
reads every lease and instance (`status`, `status --json`), its summary stays small,
and `top`'s request and screen work. How fast is benchmarks/bench_scale.py's business.
The whole test takes about 45 s here, most of it starting and stopping 1,000 workers.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from typing import Any

import pytest

from supervisord_batt.cli.top import StatusFeed, render_screen
from tests import helpers
from tests.helpers import WireClient, wait_until
from tests.support.peers import JOB, USER_LEASES, shared, status_cli, user_holding

INSTANCES = 1000
ROOT_LEASES = 3000 - USER_LEASES


def test_issue_22_roots_status_and_top_read_3000_leases_and_1000_instances(
    daemon: Callable[..., Any], test_user: Callable[[], helpers.TestUser]
) -> None:
    user = test_user()
    sleeper = {
        "command": ["sleep", "100000"],
        "numprocs": INSTANCES,
        "output": {"mode": "daemon"},
        # started below, once the daemon answers: 1,000 spawns at startup can take longer
        # on a busy host than the fixture waits for a first answer
        "autostart": False,
    }
    d = shared(
        daemon(
            {
                "daemon": {
                    "socket_mode": "0666",
                    "allowed_uids": [user.uid],
                    "max_connections": 400,
                    "sample_interval": "1s",
                    "scan_interval": "10s",
                },
                "budget": {"pressure": helpers.CALM},
                "programs": {"sleeper": sleeper},
            }
        )
    )
    try:
        with WireClient(d.socket, timeout=120) as c:
            assert c.request("start", target="sleeper")["ok"]
            wait_until(
                lambda: c.request("status")["counts"]["states"].get("RUNNING") == INSTANCES,
                timeout=120,
                interval=0.2,
                what=f"{INSTANCES} instances running",
            )
        hold_and_check(d, user)
    finally:
        # stopping 1,000 trees takes the daemon longer (18 s here) than the fixture waits
        # for its exit before a SIGKILL that would leave them running
        with WireClient(d.socket, timeout=120) as c:
            assert c.request("stop", target="all")["ok"]


def hold_and_check(d: Any, user: helpers.TestUser) -> None:
    """The user's 512 leases and root's 2,488 held while root reads status and top."""
    held: list[WireClient] = []
    with user_holding(d, user):
        try:
            for start in range(0, ROOT_LEASES, 16):
                held.append(WireClient(d.socket))
                for _ in range(min(16, ROOT_LEASES - start)):
                    assert held[-1].request("acquire", want=1, job=JOB)["ok"]
            check_status_and_top(d)
        finally:
            for c in held:
                c.close()


def check_status_and_top(d: Any) -> None:
    with WireClient(d.socket) as c:
        summary = c.request("status")
        line = json.dumps(summary)
    assert summary["counts"]["leases"] == 3000 and summary["counts"]["instances"] == INSTANCES
    assert len(line) < 8 * 1024, f"the summary is {len(line)} bytes"

    as_json = status_cli(d, "--json")
    assert as_json.returncode == 0, as_json.stderr
    status = json.loads(as_json.stdout)
    assert len(status["leases"]) == 3000 and {x["job"] for x in status["leases"]} == {JOB}
    assert [i["name"] for i in status["instances"]] == [f"sleeper:{i}" for i in range(INSTANCES)]
    text = status_cli(d)
    assert text.returncode == 0, text.stderr
    assert "in 3000 leases" in text.stdout
    assert sum(1 for row in text.stdout.splitlines() if row.startswith("sleeper:")) == INSTANCES
    assert sum(1 for row in text.stdout.splitlines() if JOB in row) == 3000

    feed = StatusFeed(d.socket, timeout=5.0)
    try:
        reply = feed.status()
    finally:
        feed.close()
    assert len(reply["instances"]) == len(reply["leases"]) == 24
    pytest.importorskip("rich")
    from rich.console import Console

    console = Console(width=100, height=24, record=True, color_system=None, file=io.StringIO())
    console.print(render_screen(reply, 100, 24, clock="12:00:00"))
    screen = console.export_text()
    assert f"{INSTANCES}/{INSTANCES} running" in screen
    more = [int(r.split()[0][1:]) for r in screen.splitlines() if r.split()[1:2] == ["more"]]
    rows = screen.splitlines()
    instances = sum(1 for r in rows if r.startswith("sleeper:"))
    leases = sum(1 for r in rows if r[:1] == "L" and r[1:2].isdigit())
    assert more[:2] == [INSTANCES - instances, 3000 - leases], screen
