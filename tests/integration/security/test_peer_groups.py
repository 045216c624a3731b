"""A peer's groups come from the socket (SO_PEERGROUPS), as the kernel recorded them at
connect: a pid reused after the peer exits cannot lend its groups to the connection."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.helpers import REPO

SCRIPT = """
import json, os, socket, sys
from supervisord_batt.daemon.peers import peer_credentials
os.setgroups([int(g) for g in sys.argv[1].split(",")])
a, b = socket.socketpair()  # each end's peer credentials: this process, as of now
os.setgroups([])  # its groups change after it connected: /proc says [], the socket not
print(json.dumps(sorted(peer_credentials(a).groups)))
"""


def groups_seen(groups: list[int]) -> list[int]:
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT, ",".join(map(str, groups))],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=30,
        check=True,
    )
    return list(json.loads(out.stdout))


def test_groups_are_the_socket_owners_at_connect(needs_root: None) -> None:
    assert groups_seen([5, 6, 7]) == [5, 6, 7]


def test_more_groups_than_getsockopt_returns_fall_back_to_proc(needs_root: None) -> None:
    # past 256 groups they are read from /proc/PID/status of the live peer (here: [])
    assert groups_seen(list(range(1000, 1300))) == []
    assert groups_seen(list(range(1000, 1256))) == list(range(1000, 1256))
