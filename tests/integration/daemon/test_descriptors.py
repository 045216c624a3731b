"""Out of file descriptors (issue 11): a connection flood is refused before the daemon
runs short, so accepting, spawning, scanning and logging go on.

With the usual soft limit of 1024, a flood of connections made `accept` fail 359 times,
left an instance stuck in STARTING after an uncaught OSError in spawn, and the /proc
scan's EMFILE took the daemon down. Here the daemon runs with a limit of 128 (soft and
hard, so raising the soft limit cannot help) while one allowed user floods it.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import textwrap
from collections.abc import Callable
from typing import Any

from tests import helpers
from tests.helpers import drop_to, interpreter_for_others, killing, wait_until

NOFILE = 128
FLOOD = textwrap.dedent(
    """
    import json, socket, sys, time
    path, n = sys.argv[1], int(sys.argv[2])
    held, served, refused = [], 0, {}
    for _ in range(n):
        s = socket.socket(socket.AF_UNIX)
        s.connect(path)
        try:
            s.sendall(b'{"op":"status"}\\n')
        except (BrokenPipeError, ConnectionResetError):
            pass  # refused and closed at once in a flood: its reason is still there to read
        reply = json.loads(s.makefile("rb").readline())
        if reply.get("ok"):
            served += 1
            held.append(s)
        else:
            refused[reply["error"]["code"]] = refused.get(reply["error"]["code"], 0) + 1
            s.close()
    print(json.dumps({"served": served, "refused": refused}), flush=True)
    time.sleep(600)
    """
)


def _low_nofile() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (NOFILE, NOFILE))


def test_a_flood_is_refused_before_descriptors_run_out(
    daemon: Callable[..., Any], test_user: Callable[[], helpers.TestUser]
) -> None:
    flooder = test_user()
    d = daemon(
        {
            "daemon": {
                "socket_mode": "0666",
                "allowed_uids": [flooder.uid],
                "max_connections_per_uid": 1000,  # only the descriptor limit binds here
                "scan_interval": "200ms",
            },
            "programs": {
                "blink": {
                    "command": ["sh", "-c", "sleep 0.3"],
                    "restart": "always",
                    "min_runtime": "0s",
                    "backoff": {"initial": "50ms", "max": "100ms"},
                }
            },
        },
        preexec_fn=_low_nofile,
    )
    d.workdir.chmod(0o755)
    flood = subprocess.Popen(
        [interpreter_for_others(), "-c", FLOOD, str(d.socket), "200"],
        preexec_fn=drop_to(flooder),
        stdout=subprocess.PIPE,
        text=True,
    )
    with killing(flood):
        assert flood.stdout is not None
        counts = json.loads(flood.stdout.readline())
        # 128 descriptors, a quarter (32) kept for the daemon's own work: 96 connections,
        # of which an ordinary user's flood gets three quarters
        assert counts == {"served": 72, "refused": {"too_many_connections": 128}}
        spawned = len(d.events("spawn"))
        # root is still served, and the worker keeps being restarted: pipes and pidfds
        assert d.status()["ok"]
        wait_until(
            lambda: len(d.events("spawn")) >= spawned + 3,
            timeout=10,
            what="respawns during the flood",
        )
        wait_until(lambda: len(d.events("scan_failed")) == 0 and d.status()["ok"], timeout=5)
    assert not d.events("spawn_failed"), d.events("spawn_failed")
    assert not d.events("loop_error") and "Traceback" not in d.log_text()
    assert d.proc.poll() is None


# opens N connections as fast as it can and holds each, reading nothing
HOLDER = textwrap.dedent(
    """
    import socket, sys, time
    path, n = sys.argv[1], int(sys.argv[2])
    held = []
    for _ in range(n):
        s = socket.socket(socket.AF_UNIX)
        s.connect(path)
        held.append(s)
    print(len(held), flush=True)
    time.sleep(600)
    """
)


def test_refused_peers_that_linger_cannot_use_up_the_descriptors(
    daemon: Callable[..., Any], test_user: Callable[[], helpers.TestUser]
) -> None:
    # A refused peer gets its reason and, normally, a second to read it; once lingering
    # sockets and an accept batch would not fit the descriptor room, refused sockets are
    # closed at once. A burst faster than the loop can close still meets EMFILE in
    # asyncio's accept (which pauses accepting for a second): the daemon must come out
    # of it serving, with no descriptor kept.
    stranger = test_user()
    d = daemon({"daemon": {"socket_mode": "0666"}}, preexec_fn=_low_nofile)
    d.workdir.chmod(0o755)
    baseline = len(os.listdir(f"/proc/{d.proc.pid}/fd"))
    holder = subprocess.Popen(
        [interpreter_for_others(), "-c", HOLDER, str(d.socket), "400"],
        preexec_fn=drop_to(stranger),
        stdout=subprocess.PIPE,
        text=True,
    )
    with killing(holder):
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "400"
        wait_until(lambda: d.status()["ok"], timeout=10, what="root served during the flood")
        # at most the room left for lingering, never the whole limit
        assert len(os.listdir(f"/proc/{d.proc.pid}/fd")) < NOFILE
    wait_until(
        lambda: len(os.listdir(f"/proc/{d.proc.pid}/fd")) <= baseline + 1,
        timeout=10,
        what="every refused socket closed",
    )
    assert d.proc.poll() is None and "Traceback" not in d.log_text()


def test_no_descriptor_at_all_for_seconds_neither_stops_nor_misleads_the_daemon(
    daemon: Callable[..., Any],
) -> None:
    """Every new descriptor refused (soft limit 3) across several ticks and scans: the
    daemon keeps ticking, does not take an unreadable /proc/self/cgroup for a move to
    another cgroup, and skips reaping orphans until it can list its children again."""
    d = daemon({"daemon": {"stats_interval": "100ms", "scan_interval": "200ms"}})
    pid = d.proc.pid
    soft, hard = resource.prlimit(pid, resource.RLIMIT_NOFILE)
    try:
        resource.prlimit(pid, resource.RLIMIT_NOFILE, (3, hard))  # 0-2 are open
        ticks = len(d.events("stats"))
        wait_until(lambda: len(d.events("scan_failed")) >= 1, timeout=10, what="a failed scan")
        wait_until(lambda: len(d.events("stats")) >= ticks + 10, timeout=10, what="10 ticks")
        assert d.proc.poll() is None
    finally:
        resource.prlimit(pid, resource.RLIMIT_NOFILE, (soft, hard))
    assert d.status()["ok"]
    assert not d.events("own_cgroup_changed")
    assert "Traceback" not in d.log_text()
