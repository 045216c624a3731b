"""The request handlers in-process: real ledger, lease log and supervisor, no socket.

The subprocess tests drive the same handlers through the real daemon; these call them
directly, so a handler's reply and error for each case are checked without framing,
timing or a second process in the way. The supervisor is constructed (it makes its
worker-cgroup root where it can) but not started: starting would make this pytest
process a child subreaper for the rest of the run.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import pytest
import structlog.testing

from supervisord_batt import protocol
from supervisord_batt.budget.ledger import BudgetLedger
from supervisord_batt.config.loader import load_config_text
from supervisord_batt.config.records import Config
from supervisord_batt.daemon import reexec
from supervisord_batt.daemon.commands import Commands, ReloadRejected
from supervisord_batt.daemon.leaselog import LeaseLog
from supervisord_batt.daemon.peers import Peer
from supervisord_batt.daemon.server import Connection
from supervisord_batt.host.monitor import HostMonitor
from supervisord_batt.host.sample import HostSample
from supervisord_batt.supervise.supervisor import Supervisor

CONFIG = """
daemon:
  log_format: json
budget:
  reserve_tasks: 0
  reserve_percent: 0
  max_per_lease: 8
  burst_window: 0  # each grant at once (tests/integration/client/test_bursts.py holds them)
  pressure: {cpu_high: off, cpu_extreme: off, memory_high: off, memory_extreme: off}
"""


@dataclass
class World:
    """The handlers and what they were given, as the daemon wires them."""

    commands: Commands
    supervisor: Supervisor
    accepting: bool = True
    reloads: list[str] = field(default_factory=list)
    reload_error: str | None = None
    sample: HostSample | None = None
    next_id: int = 0

    def connect(self, uid: int | None = None, admin: bool = True) -> Connection:
        self.next_id += 1
        peer = Peer(pid=os.getpid(), uid=os.geteuid() if uid is None else uid, gid=os.getegid())
        transport = cast(asyncio.Transport, None)
        return Connection(self.next_id, peer, transport, time.monotonic(), admin=admin)

    def call(self, conn: Connection, **msg: Any) -> dict[str, Any]:
        """One request, decoded as the server decodes it; an error comes back as a reply."""
        decoded = protocol.decode(protocol.encode(msg))
        try:
            reply = self.commands.handle(conn, decoded)
            if not isinstance(reply, dict):
                reply = asyncio.run(_wait(reply))
        except protocol.ProtocolError as exc:
            return protocol.error(exc.code, str(exc), decoded.get("id"))
        return reply


async def _wait(pending: Awaitable[dict[str, Any]]) -> dict[str, Any]:
    return await pending


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    config: Config = load_config_text(CONFIG, "test.yaml")
    monitor = HostMonitor(cgroups=(), users=[os.geteuid()])
    ledger = BudgetLedger(config.budget, clock=time.monotonic)
    state: dict[str, World] = {}

    async def reload(by: dict[str, int], restart_changed: bool = False) -> dict[str, Any]:
        w = state["w"]
        if w.reload_error is not None:
            raise ReloadRejected(w.reload_error)
        w.reloads.append(f"uid {by['uid']}")
        return {"added": [], "removed": [], "changed": [], "unchanged": [], "programs": {}}

    supervisor = Supervisor(config, tmp_path / "s.sock", lambda *_: None, dict)
    try:
        sample = monitor.sample()
        ledger.update(sample, {})
        commands = Commands(
            ledger=ledger,
            lease_log=LeaseLog(0),
            supervisor=supervisor,
            reload=reload,
            accepting=lambda: state["w"].accepting,
            connections=lambda: 1,
            sample=lambda: state["w"].sample,
        )
        w = World(commands, supervisor, sample=sample)
        state["w"] = w
        yield w
    finally:
        monitor.close()
        asyncio.run(supervisor.shutdown(1.0))
        root = supervisor.cgroups.root
        assert root is None or not root.exists(), f"worker cgroup root left behind: {root}"


def test_hello_checks_the_version(world: World) -> None:
    conn = world.connect()
    assert world.call(conn, op="hello", version=protocol.VERSION, client="t")["ok"]
    reply = world.call(conn, op="hello", version=protocol.VERSION + 1)
    assert reply["error"]["code"] == protocol.UNSUPPORTED_VERSION


def test_acquire_renew_release_round_trip_and_status_shows_the_lease(world: World) -> None:
    conn = world.connect()
    grant = world.call(conn, op="acquire", want=2, kinds=["thread"], job="t", id=7)
    assert grant["ok"] and grant["id"] == 7
    assert grant["kind"] == "thread" and grant["workers"] == 2
    status = world.call(conn, op="status", leases=True)
    assert [lease["lease"] for lease in status["leases"]] == [grant["lease"]]
    assert status["leased"] == 2 and status["connections"] == 1
    assert status["host"]["threads_total"] == world.sample.threads_total  # type: ignore[union-attr]
    renewed = world.call(conn, op="renew", lease=grant["lease"], workers_in_use=2)
    assert renewed["ok"] and renewed["lease"] == grant["lease"]
    released = world.call(conn, op="release", lease=grant["lease"])
    assert released == {"ok": True, "lease": grant["lease"], "kind": "thread", "workers": 2}
    assert world.call(conn, op="status", leases=True)["leases"] == []


def test_a_lease_is_only_its_own_connections(world: World) -> None:
    owner, other = world.connect(), world.connect()
    grant = world.call(owner, op="acquire", want=1, kinds=["thread"])
    for op in ("renew", "release", "heartbeat"):
        reply = world.call(other, op=op, lease=grant["lease"])
        assert reply["error"]["code"] == protocol.UNKNOWN_LEASE, op
    assert world.call(owner, op="release", lease="L999")["error"]["code"] == protocol.UNKNOWN_LEASE
    assert world.call(owner, op="release", lease=grant["lease"])["ok"]


def test_no_lease_while_shutting_down(world: World) -> None:
    world.accepting = False
    reply = world.call(world.connect(), op="acquire", want=1)
    assert reply["error"]["code"] == protocol.SHUTTING_DOWN


def test_heartbeat_names_no_instance_for_a_peer_the_supervisor_did_not_start(
    world: World,
) -> None:
    reply = world.call(world.connect(), op="heartbeat", progress=3)
    assert reply == {"ok": True, "instance": None}


def test_reload_replies_with_the_diff_or_the_rejection(world: World) -> None:
    conn = world.connect()
    assert world.call(conn, op="reload")["added"] == []
    assert world.reloads == [f"uid {os.geteuid()}"]  # the reload names who asked
    world.reload_error = "config rejected, the old one stays:\nx.yaml: budget.nope (line 2)"
    reply = world.call(conn, op="reload")
    assert reply["error"]["code"] == protocol.BAD_REQUEST
    assert "budget.nope (line 2)" in reply["error"]["message"]


@pytest.mark.parametrize(
    ("msg", "code"),
    [
        ({"op": "start", "target": "nosuch"}, protocol.NOT_FOUND),
        ({"op": "stop", "target": "nosuch:3"}, protocol.NOT_FOUND),
        ({"op": "tail", "target": "nosuch"}, protocol.NOT_FOUND),
    ],
)
def test_control_of_what_does_not_exist_is_not_found(
    world: World, msg: dict[str, Any], code: str
) -> None:
    assert world.call(world.connect(), **msg)["error"]["code"] == code


def test_an_op_without_a_handler_is_unknown(world: World) -> None:
    handle: Callable[..., Any] = world.commands.handle
    with pytest.raises(protocol.ProtocolError) as caught:
        handle(world.connect(), {"op": "no_such_op"})
    assert caught.value.code == protocol.UNKNOWN_OP


@pytest.mark.parametrize(
    "msg",
    [
        {"op": "start", "target": "all"},
        {"op": "stop", "target": "all"},
        {"op": "restart", "target": "all"},
        {"op": "reload"},
    ],
)
def test_control_is_for_admins_only(world: World, msg: dict[str, Any]) -> None:
    user = world.connect(uid=4242, admin=False)
    reply = world.call(user, **msg)
    assert reply["error"]["code"] == protocol.FORBIDDEN
    assert f"uid 4242 may not {msg['op']}" in reply["error"]["message"]
    assert world.reloads == []  # nothing was done


def test_a_peer_that_is_not_an_admin_may_still_lease_and_read_status(world: World) -> None:
    user = world.connect(uid=4242, admin=False)
    grant = world.call(user, op="acquire", want=1, kinds=["thread"])
    assert grant["ok"]
    assert world.call(user, op="status")["ok"]
    assert world.call(user, op="release", lease=grant["lease"])["ok"]


def test_a_connection_holds_at_most_16_leases(world: World) -> None:
    conn = world.connect()
    leases = [world.call(conn, op="acquire", want=1, kinds=["thread"]) for _ in range(16)]
    assert all(grant["ok"] for grant in leases)
    refused = world.call(conn, op="acquire", want=1, kinds=["thread"])
    assert refused["error"]["code"] == protocol.TOO_MANY_LEASES
    assert world.call(conn, op="release", lease=leases[0]["lease"])["ok"]
    assert world.call(conn, op="acquire", want=1, kinds=["thread"])["ok"]  # room again
    assert world.call(world.connect(), op="acquire", want=1, kinds=["thread"])["ok"]


def test_a_failing_containment_still_tells_the_holder_its_lease(world: World) -> None:
    def broken(conn: Connection) -> None:
        raise RuntimeError("a bug in containment")

    world.commands.lease_changed = broken
    conn = world.connect()
    with structlog.testing.capture_logs() as lines:
        reply = world.call(conn, op="acquire", want=2)
    assert reply["ok"] and reply["lease"], reply
    assert [x["event"] for x in lines if x["event"] == "containment_failed"] == [
        "containment_failed"
    ]
    assert world.call(conn, op="release", lease=reply["lease"])["ok"]


def test_fallback_reports_are_counted_and_logged(world: World) -> None:
    conn = world.connect()
    for _ in range(3):
        reply = world.call(conn, op="fallback", **{"from": "thread", "to": "sequential"})
        assert reply["ok"], reply
    assert world.commands.tallies.fallbacks[("thread", "sequential")] == 3


def test_a_peer_without_rights_learns_nothing_from_tail(world: World) -> None:
    stranger = world.connect(uid=54321, admin=False)
    reply = world.call(stranger, op="tail", target="nosuch:0")
    assert reply["error"]["code"] == protocol.FORBIDDEN  # not not_found: no oracle


def test_the_reap_of_adopted_orphans_leaves_the_reexec_check_to_its_own_reader(
    world: World, tmp_path: Path
) -> None:
    """The reexec's check of the new code ran while a scan reaped adopted orphans: its
    child, a zombie then, was reaped by it, Popen took the lost status for success, and
    the daemon exec'd into a config its new code refused (seen on a busy host). Here the
    supervisor reaps as often as it can while the check runs."""
    bad = tmp_path / "bad.yaml"
    bad.write_text("budget_typo: 1\n")

    async def check_while_reaping() -> str | None:
        check = asyncio.ensure_future(reexec.preflight(bad, world.supervisor.helpers))
        while not check.done():
            world.supervisor.reap()
            await asyncio.sleep(0.001)
        return check.result()

    said = asyncio.run(check_while_reaping())
    assert said is not None and "budget_typo" in said, said
    assert world.supervisor.helpers == set()
