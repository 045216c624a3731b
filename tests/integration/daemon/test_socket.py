"""The real daemon over its real socket: leases, connection death, TTL, peers, bad input."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from tests.helpers import CALM, drop_to, interpreter_for_others, killing, wait_until
from tests.support.daemons import DaemonHandle

if TYPE_CHECKING:  # imported for annotations only: pytest would try to collect TestUser
    from tests.helpers import TestUser

HOLDER = textwrap.dedent(
    """
    import json, socket, sys
    s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1])
    f = s.makefile("rwb")
    request = {"op": "acquire", "want": int(sys.argv[2]), "job": "holder"}
    f.write(json.dumps(request).encode() + b"\\n")
    f.flush()
    print(f.readline().decode().strip(), flush=True)
    sys.stdin.read()  # hold the lease (and the connection) until stdin closes or we die
    """
)


def start_holder(
    sock: Path,
    want: int,
    python: str = sys.executable,
    preexec_fn: Callable[[], None] | None = None,
) -> tuple[subprocess.Popen[bytes], dict[str, object]]:
    proc = subprocess.Popen(
        [python, "-c", HOLDER, str(sock), str(want)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        preexec_fn=preexec_fn,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    return proc, json.loads(line)


def test_status_answers_with_stable_fields(daemon: Callable[..., DaemonHandle]) -> None:
    d = daemon()
    status = d.status()
    for key in ("level", "capacity", "leased", "leases", "host", "counts"):
        assert key in status
    assert status["level"] in ("normal", "high", "extreme")
    assert status["leases"] == []
    assert d.events("started")


def test_cli_status_exit_codes(daemon: Callable[..., DaemonHandle], tmp_path: Path) -> None:
    d = daemon()
    env = dict(os.environ, SUPERVISORD_BATT_SOCKET=str(d.socket))
    ok = subprocess.run(
        [sys.executable, "-m", "supervisord_batt", "status", "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["level"] in ("normal", "high", "extreme")
    human = subprocess.run(
        [sys.executable, "-m", "supervisord_batt", "status"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert human.returncode == 0 and "capacity" in human.stdout
    env["SUPERVISORD_BATT_SOCKET"] = str(tmp_path / "nobody.sock")
    down = subprocess.run(
        [sys.executable, "-m", "supervisord_batt", "status"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert down.returncode == 2
    assert "not reachable" in down.stderr


def test_acquire_release_round_trip(daemon: Callable[..., DaemonHandle]) -> None:
    d = daemon({"budget": {"cpu_cap": 4}})
    with d.client() as c:
        assert c.request("hello", version=1, client="test")["ok"]
        grant = c.request("acquire", want=2, job="rt", id=7)
        assert grant["ok"] and grant["id"] == 7
        assert grant["kind"] in ("process", "thread", "sequential")
        leases = d.status()["leases"]
        assert [lease["lease"] for lease in leases] == [grant["lease"]]
        assert leases[0]["pid"] == os.getpid()
        renewed = c.request("renew", lease=grant["lease"])
        assert renewed["ok"] and renewed["lease"] == grant["lease"]
        released = c.request("release", lease=grant["lease"])
        assert released["ok"] and released["workers"] == grant["workers"]
        again = c.request("release", lease=grant["lease"])
        assert again["ok"] is False and again["error"]["code"] == "unknown_lease"
    assert d.status()["leases"] == []


def test_cannot_release_another_connections_lease(daemon: Callable[..., DaemonHandle]) -> None:
    d = daemon()
    with d.client() as owner, d.client() as thief:
        lease = owner.request("acquire", want=2)["lease"]
        reply = thief.request("release", lease=lease)
        assert reply["ok"] is False and reply["error"]["code"] == "unknown_lease"
        assert len(d.status()["leases"]) == 1


def test_version_mismatch_is_an_error(daemon: Callable[..., DaemonHandle]) -> None:
    d = daemon()
    with d.client() as c:
        reply = c.request("hello", version=99)
        assert reply["error"]["code"] == "unsupported_version"
        assert c.request("status")["ok"]


def test_sigkilled_holder_frees_its_lease_within_a_second(
    daemon: Callable[..., DaemonHandle],
) -> None:
    d = daemon({"budget": {"cpu_cap": 8}})
    proc, grant = start_holder(d.socket, 2)
    with killing(proc):
        assert grant["ok"]
        assert any(lease["pid"] == proc.pid for lease in d.status()["leases"])
        os.kill(proc.pid, signal.SIGKILL)
        killed_at = time.monotonic()
        wait_until(lambda: not d.status()["leases"], timeout=1.0, what="lease released")
        assert time.monotonic() - killed_at < 1.0
    released = [e for e in d.events("release") if e.get("pid") == proc.pid]
    assert released and released[0]["reason"] == "connection closed"


def test_unrenewed_lease_expires(daemon: Callable[..., DaemonHandle]) -> None:
    d = daemon({"budget": {"lease_ttl": "1s"}})
    with d.client() as c:
        lease = c.request("acquire", want=2)["lease"]
        wait_until(lambda: not d.status()["leases"], timeout=5, what="lease expired")
        assert c.request("renew", lease=lease)["error"]["code"] == "unknown_lease"
    assert any(e["lease"] == lease for e in d.events("lease_expired"))


def test_refused_uid_gets_an_error_and_no_lease(
    daemon: Callable[..., DaemonHandle], test_user: Callable[[], TestUser]
) -> None:
    user = test_user()
    d = daemon({"daemon": {"socket_mode": "0666"}})
    d.workdir.chmod(0o755)
    script = textwrap.dedent(
        """
        import json, socket, sys
        s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1])
        s.sendall(b'{"op":"acquire","want":2}\\n')
        print(s.makefile("rb").readline().decode().strip())
        """
    )

    out = subprocess.run(
        [interpreter_for_others(), "-c", script, str(d.socket)],
        preexec_fn=drop_to(user),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.stdout, f"the refused client printed nothing; stderr: {out.stderr}"
    reply = json.loads(out.stdout)
    assert reply["ok"] is False and reply["error"]["code"] == "forbidden"
    assert d.status()["leases"] == []
    refused = d.events("peer_refused")
    assert refused and refused[0]["uid"] == user.uid and refused[0]["pid"] > 0


def test_allowed_uid_is_served(
    daemon: Callable[..., DaemonHandle], test_user: Callable[[], TestUser]
) -> None:
    user = test_user()
    d = daemon({"daemon": {"socket_mode": "0666", "allowed_uids": [user.uid]}})
    d.workdir.chmod(0o755)

    proc, grant = start_holder(
        d.socket, 2, python=interpreter_for_others(), preexec_fn=drop_to(user)
    )
    with killing(proc):
        assert grant["ok"], grant
        assert [lease["uid"] for lease in d.status()["leases"]] == [user.uid]


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        (b"not json\n", "bad_json"),
        (b"[1, 2]\n", "bad_json"),
        (b'{"op": "fly"}\n', "unknown_op"),
        (b'{"want": 2}\n', "bad_request"),
        (b'{"op": "acquire", "want": "two"}\n', "bad_request"),
        (b'{"op": "acquire", "want": true}\n', "bad_request"),
        (b'{"op": "acquire", "want": -1}\n', "bad_request"),
        (b'{"op": "acquire", "want": 2, "kinds": ["gpu"]}\n', "bad_request"),
        (b'{"op": "release"}\n', "bad_request"),
        (b'{"op": "status", "extra": 1}\n', "bad_request"),
        (b"\xff\xfe\n", "bad_json"),
    ],
)
def test_bad_messages_get_error_replies_and_the_connection_survives(
    daemon_once: DaemonHandle, payload: bytes, code: str
) -> None:
    with daemon_once.client() as c:
        c.send_raw(payload)
        reply = c.read_reply()
        assert reply["ok"] is False and reply["error"]["code"] == code
        assert c.request("status")["ok"]


def test_oversized_message_is_skipped_and_connection_resyncs(
    daemon: Callable[..., DaemonHandle],
) -> None:
    d = daemon({"daemon": {"max_message_bytes": "1KiB"}})
    with d.client() as c:
        c.send_raw(b'{"op":"status","pad":"' + b"x" * 5000 + b'"}\n')
        assert c.read_reply()["error"]["code"] == "too_large"
        assert c.request("status")["ok"]
    with d.client() as c:  # no newline ever: closed after 16x the limit, daemon serves others
        try:
            c.send_raw(b"y" * 40_000)
            assert c.read_reply()["error"]["code"] == "too_large"
        except (ConnectionError, BrokenPipeError):
            pass
    assert d.status()["ok"]


def test_half_message_then_close_does_not_disturb(daemon_once: DaemonHandle) -> None:
    c = daemon_once.client()
    c.send_raw(b'{"op": "acq')
    c.close()
    assert daemon_once.status()["ok"]


def test_connection_limit_refuses_extra_clients(daemon: Callable[..., DaemonHandle]) -> None:
    d = daemon({"daemon": {"max_connections": 3}})
    held = [d.client() for _ in range(3)]
    try:
        for c in held:
            assert c.request("status")["ok"]
        extra = d.client()
        reply = extra.read_reply()
        assert reply["error"]["code"] == "too_many_connections"
        extra.close()
    finally:
        for c in held:
            c.close()
    wait_until(lambda: d.status()["connections"] == 1, timeout=5)


def test_stale_socket_is_replaced_live_one_is_not(
    daemon: Callable[..., DaemonHandle], tmp_path: Path
) -> None:
    d = daemon()
    # a second daemon on the same socket must refuse to start and leave the first serving
    env = dict(os.environ, SUPERVISORD_BATT_SOCKET=str(d.socket))
    second = subprocess.run(
        [sys.executable, "-m", "supervisord_batt", "run", "-c", str(d.config_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert second.returncode != 0
    assert "another daemon" in second.stdout + second.stderr
    assert d.status()["ok"]
    # a stale socket file (nobody listening) is replaced
    stale = Path(d.workdir) / "stale.sock"
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(stale))
    s.close()
    e = daemon({"daemon": {"socket": str(stale)}})
    assert e.status()["ok"]


def test_idle_connections_are_closed(daemon: Callable[..., DaemonHandle]) -> None:
    d = daemon({"daemon": {"idle_timeout": "1s"}})
    c = d.client()
    assert c.request("status")["ok"]

    def closed() -> bool:
        try:
            return c.sock.recv(1) == b""
        except BlockingIOError:
            return False

    c.sock.setblocking(False)
    wait_until(closed, timeout=5, what="the daemon to close an idle connection")
    c.close()
    assert d.events("connection_idle_closed")


def test_pipelined_requests_are_answered_in_order_around_one_that_waits(
    daemon_once: DaemonHandle,
) -> None:
    """Several requests in one write, one of them (reload) answered from a task: every
    reply comes, in request order, with its id."""
    lines = [
        {"op": "status", "id": 1},
        {"op": "reload", "id": "two"},
        {"op": "hello", "version": 1, "id": 3},
        {"op": "acquire", "want": 0, "id": 4},
    ]
    with daemon_once.client() as c:
        c.send_raw(b"".join(json.dumps(m).encode() + b"\n" for m in lines) + b'{"op":"sta')
        replies = [c.read_reply() for _ in lines]
        assert [r["id"] for r in replies] == [1, "two", 3, 4]
        assert all(r["ok"] for r in replies), replies
        assert "unchanged" in replies[1] and replies[2]["version"] == 1
        c.send_raw(b'tus","id":5}\n')  # the rest of the line the first write began
        assert c.read_reply()["id"] == 5


def test_a_request_split_over_many_reads_is_answered(daemon_once: DaemonHandle) -> None:
    message = json.dumps({"op": "hello", "version": 1, "client": "slow", "id": 9}).encode()
    with daemon_once.client() as c:
        for i in range(0, len(message), 7):
            c.send_raw(message[i : i + 7])
            assert daemon_once.status()["ok"]  # the daemon goes round its loop in between
        c.send_raw(b"\n")
        assert c.read_reply()["id"] == 9


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_a_peer_that_never_reads_is_paused_not_buffered_for(daemon_once: DaemonHandle) -> None:
    """A client that sends requests and never reads the replies fills its socket, then
    the daemon stops reading from it: it holds a bounded amount for that peer, and
    everyone else is served."""
    pid = daemon_once.proc.pid
    rss_before = _rss_kib(pid)
    request = b'{"op":"status"}\n'  # a reply is ~1 KiB: unbounded buffering would show
    sent = 0
    with daemon_once.client() as c:
        c.sock.setblocking(False)
        stuck_since = None
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                sent += c.sock.send(request * 64)
                stuck_since = None
            except BlockingIOError:
                stuck_since = stuck_since or time.monotonic()
                if time.monotonic() - stuck_since > 1.0:  # blocked for a second: paused
                    break
                assert daemon_once.status()["ok"]
        assert stuck_since is not None, f"the daemon kept reading: {sent} bytes taken"
        assert sent < 4 * 1024 * 1024, sent  # sockets and the transport's buffer, no more
        assert daemon_once.status()["ok"]
        assert _rss_kib(pid) - rss_before < 64 * 1024
        c.sock.setblocking(True)
        c.sock.settimeout(10)
        assert c.read_reply()["ok"]  # and it answers once the peer reads again


def test_a_burst_of_short_leases_is_logged_within_the_rate_and_summarised(
    daemon: Callable[..., DaemonHandle],
) -> None:
    """lease_log_rate 5: a burst of 40 acquire+release pairs writes at most 5 lease lines
    a second, and the lease_lines_suppressed lines account for every line held back.
    CALM: on a busy host the grants would be denies (sequential), which this does not count."""
    d = daemon({"daemon": {"lease_log_rate": 5}, "budget": {"pressure": CALM}})
    with d.client() as c:
        for _ in range(40):
            grant = c.request("acquire", want=2, job="burst")
            assert c.request("release", lease=grant["lease"])["ok"]

    def accounted() -> bool:
        written = [e for e in d.events() if e["event"] in ("grant", "release")]
        held: int = sum(
            e.get("grant", 0) + e.get("release", 0) for e in d.events("lease_lines_suppressed")
        )
        return len(written) + held == 80

    wait_until(accounted, timeout=10, what="the suppressed lease lines summarised")
    written = [e for e in d.events() if e["event"] in ("grant", "release")]
    per_second: dict[str, int] = {}
    for e in written:
        per_second[e["timestamp"][:19]] = per_second.get(e["timestamp"][:19], 0) + 1
    assert max(per_second.values()) <= 5 * 2, per_second  # the window is the daemon's clock
    assert all(e["job"] == "burst" for e in written)
    assert all(s["jobs"] == 1 for s in d.events("lease_lines_suppressed"))


def test_pipelined_requests_with_big_replies_are_not_all_answered_into_memory(
    daemon: Callable[..., DaemonHandle],
    program: Callable[..., dict[str, Any]],
    py: Callable[[str], list[str]],
) -> None:
    """A peer pipelines thousands of requests whose replies are 64 KiB each (tail) and
    never reads: once its replies fill the socket and the transport's buffer the daemon
    answers no more of them, so what it holds for that peer stays bounded."""
    talk = (
        "import sys, time\nsys.stdout.write('x' * 200_000 + '\\n'); sys.stdout.flush()\n"
        "time.sleep(600)"
    )
    d = daemon({"programs": {"talk": program(py(talk))}})

    def has_output() -> bool:
        with d.client() as c:
            reply = c.request("tail", target="talk:0", bytes=65536)
            return len(str(reply.get("data", ""))) >= 60_000

    wait_until(has_output, timeout=10, what="the worker's 200 kB of output")
    pid = d.proc.pid
    rss_before = _rss_kib(pid)
    request = b'{"op":"tail","target":"talk:0","bytes":65536}\n'
    with d.client() as c:
        c.sock.setblocking(False)
        batch = request * 3000  # ~200 kB of requests: ~190 MiB of replies if all answered
        sent = 0
        deadline = time.monotonic() + 10
        while sent < len(batch) and time.monotonic() < deadline:
            try:
                sent += c.sock.send(batch[sent:])
            except BlockingIOError:
                assert d.status()["ok"]  # the daemon serves others meanwhile
        assert d.status()["ok"]
        grew = _rss_kib(pid) - rss_before
        assert grew < 48 * 1024, f"daemon grew by {grew} KiB for one peer that does not read"
    assert d.status()["ok"]


def test_stopping_releases_every_connections_lease_before_it_says_stopped(
    daemon: Callable[..., DaemonHandle],
) -> None:
    """At shutdown every connection ends, its leases released and logged (or counted when
    over the lease log rate), before the daemon's last line."""
    d = daemon({"daemon": {"lease_log_rate": 2}})
    holders = [d.client() for _ in range(8)]
    try:
        for c in holders:
            assert c.request("acquire", want=2, job="held")["ok"]
        assert d.stop() == 0
    finally:
        for c in holders:
            c.close()
    names = [e["event"] for e in d.events()]
    assert names[-1] == "stopped", names[-5:]
    released = [e for e in d.events("release") if e["reason"] == "connection closed"]
    held = sum(int(e.get("release", 0)) for e in d.events("lease_lines_suppressed"))
    assert len(released) + held == 8, (len(released), held)


def test_a_peer_that_resets_with_requests_unanswered_is_not_called_overlong(
    daemon_once: DaemonHandle,
) -> None:
    with daemon_once.client() as c:
        c.send_raw(b'{"op":"status"}\n' * 12_000)
        c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    assert daemon_once.status()["ok"]
    wait_until(lambda: daemon_once.status()["connections"] == 1, timeout=10)
    assert not daemon_once.events("message_too_large")
