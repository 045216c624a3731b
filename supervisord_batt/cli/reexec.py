"""`supervisord-batt reexec`: ask the daemon to exec its installed code in place, and
wait until the new program serves the socket.

The daemon answers first (its pid, the command it will run), then execs: the
connection closes. The new program serves the same socket (connects meanwhile wait in
its backlog), and `hello` names its version. An exec that failed is a second reply on
the same connection, and the daemon runs on as it was.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from supervisord_batt import protocol
from supervisord_batt.cli import exits
from supervisord_batt.client.leases import Connection, DaemonError


def reexec(socket: Path, timeout: float) -> int:
    """Exit status: 0 re-executed, 1 refused or failed (the daemon runs on), 2 no daemon."""
    try:
        conn = Connection(socket, timeout=timeout)
    except OSError as exc:
        print(f"supervisord-batt: daemon not reachable at {socket}: {exc}", file=sys.stderr)
        return exits.UNAVAILABLE
    with conn:
        try:
            reply = conn.request("reexec")
        except DaemonError as exc:
            print(f"supervisord-batt: reexec: {exc}", file=sys.stderr)
            return exits.FAILED
        except OSError as exc:
            print(f"supervisord-batt: reexec: {exc}", file=sys.stderr)
            return exits.UNAVAILABLE
        pid = reply.get("pid")
        print(f"re-executing daemon pid {pid}: {' '.join(reply.get('command', []))}")
        try:
            late = conn.next_reply()  # the connection closes at the exec
        except TimeoutError:
            print(f"supervisord-batt: reexec: no exec within {timeout:.0f} s", file=sys.stderr)
            return exits.FAILED
        except OSError:
            late = None  # closed: the exec happened
        if late is not None:
            error = late.get("error") or {}
            print(f"supervisord-batt: reexec: {error.get('message', late)}", file=sys.stderr)
            return exits.FAILED
    return _new_program(socket, timeout, pid)


def _new_program(socket: Path, timeout: float, pid: object) -> int:
    """Wait until the socket answers `hello` again; say which version now serves it."""
    deadline = time.monotonic() + timeout
    why = "no answer"
    while time.monotonic() < deadline:
        try:
            with Connection(socket, timeout=max(0.5, deadline - time.monotonic())) as conn:
                server = conn.request("hello", version=protocol.VERSION).get("server")
        except (OSError, DaemonError) as exc:
            why = str(exc)
            time.sleep(0.1)  # a person waits: a tenth of a second between tries
            continue
        print(f"re-executed in place: pid {pid}, now {server}")
        return exits.OK
    print(f"supervisord-batt: reexec: the new program did not answer: {why}", file=sys.stderr)
    return exits.FAILED
