"""Peers of a shared daemon as real users (useradd) see it: the daemon's directory made
reachable, stdlib-only clients run as those users (their requests one per line, a flood
of connections, 512 held leases), and `status` run against a daemon's socket."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from supervisord_batt import protocol
from tests import helpers
from tests.helpers import REPO, drop_to, interpreter_for_others, killing

# one request per argv line, one connection; prints each reply line
ASK = textwrap.dedent(
    """
    import socket, sys
    s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1])
    f = s.makefile("rb")
    for line in sys.argv[2:]:
        s.sendall(line.encode() + b"\\n")
        print(f.readline().decode().strip(), flush=True)
    """
)

STATUS = '{"op":"status"}'
# opens N connections to PATH ("-": the worker's $SUPERVISORD_BATT_SOCKET), each sending
# FIRST, and prints how many were served; then, once GO exists, asks once more on each it
# holds and prints how many are still served
FLOOD = textwrap.dedent(
    """
    import json, os, socket, sys, time
    path, n, first, go = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
    path = os.environ["SUPERVISORD_BATT_SOCKET"] if path == "-" else path
    held, served, refused = [], 0, {}
    for _ in range(n):
        s = socket.socket(socket.AF_UNIX)
        s.connect(path)
        s.sendall(first.encode() + b"\\n")
        reply = json.loads(s.makefile("rb").readline())
        if reply.get("ok"):
            served += 1
            held.append(s)
        else:
            code = reply["error"]["code"]
            refused[code] = refused.get(code, 0) + 1
            s.close()
    print(json.dumps({"served": served, "refused": refused}), flush=True)
    while not os.path.exists(go):
        time.sleep(0.05)
    alive = 0
    for s in held:
        try:
            s.sendall(b'{"op":"hello","version":1}\\n')
            alive += bool(json.loads(s.makefile("rb").readline() or b"{}").get("ok"))
        except OSError:
            pass
    print(json.dumps({"alive": alive}), flush=True)
    time.sleep(600)
    """
)


def ask(sock: Path, user: helpers.TestUser, *requests: dict[str, Any]) -> list[dict[str, Any]]:
    done = subprocess.run(
        [interpreter_for_others(), "-c", ASK, str(sock), *map(json.dumps, requests)],
        preexec_fn=drop_to(user),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines()]


def shared(d: Any) -> Any:
    d.workdir.chmod(0o755)  # the socket's directory: others may reach the socket in it
    return d


USER_LEASES = 512  # 32 connections (the per-uid cap) of 16 leases (the per-connection cap)

JOB = "j" * protocol.MAX_CHARS["job"]
REFUSAL = json.dumps(
    {"code": "bad_request", "message": "acquire.job: at most 256 characters, got 60000"},
    sort_keys=True,
)

# the user's side: each of 512 acquires first with a 60,000-character job name (refused),
# then, refused, with the longest name allowed; the replies to the first counted by error
# (null: granted), the 512 leases held until stdin closes
HOLDER = textwrap.dedent(
    """
    import json, socket, sys
    path, job = sys.argv[1], sys.argv[2]
    def ask(f, s, msg):
        s.sendall(json.dumps(msg).encode() + b"\\n")
        return json.loads(f.readline())
    held, refusals = [], {}
    for n in range(32):
        s = socket.socket(socket.AF_UNIX); s.connect(path)
        f = s.makefile("rb"); held.append((s, f))
        for _ in range(16):
            reply = ask(f, s, {"op": "acquire", "want": 1, "job": "x" * 60000})
            key = json.dumps(reply.get("error"), sort_keys=True)  # null: granted
            refusals[key] = refusals.get(key, 0) + 1
            if not reply["ok"]:
                reply = ask(f, s, {"op": "acquire", "want": 1, "job": job})
            assert reply["ok"], reply
    print(json.dumps(refusals))
    print("held", flush=True)
    sys.stdin.read()
    """
)


def status_cli(d: Any, *args: str) -> subprocess.CompletedProcess[str]:
    """`supervisord-batt status ARGS` against the daemon `d`."""
    env = dict(os.environ, SUPERVISORD_BATT_SOCKET=str(d.socket), PYTHONPATH=str(REPO))
    return subprocess.run(
        [sys.executable, "-m", "supervisord_batt", "status", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@contextlib.contextmanager
def user_holding(d: Any, user: helpers.TestUser) -> Iterator[None]:
    """The user's 512 leases (HOLDER: each asked first with a 60,000-character name, which
    must be refused), held until the block ends."""
    holder = subprocess.Popen(
        [interpreter_for_others(), "-c", HOLDER, str(d.socket), JOB],
        preexec_fn=drop_to(user),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    with killing(holder):
        assert holder.stdout is not None
        assert json.loads(holder.stdout.readline()) == {REFUSAL: USER_LEASES}
        assert holder.stdout.readline() == "held\n"
        yield
