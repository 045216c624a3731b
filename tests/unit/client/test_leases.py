"""The job-side client: degraded mode without a daemon, a fake daemon, and `exec`."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, cast

import pytest
import structlog

from supervisord_batt import paths, protocol
from supervisord_batt.client import inner
from supervisord_batt.client import leases as client
from supervisord_batt.client.leases import (
    BURST_POLL,
    BURST_WAIT_MAX,
    Connection,
    DaemonError,
    burst_wait,
    default_socket_path,
    exec_main,
    held_sleep,
    lease,
)
from tests.helpers import REPO, killing, wait_until


@pytest.fixture(autouse=True)
def _plain_stderr(monkeypatch: pytest.MonkeyPatch) -> None:
    """Warnings go to stderr as one line, whatever another test did to structlog."""
    monkeypatch.setattr(structlog, "is_configured", lambda: False)
    monkeypatch.delenv(paths.FALLBACK_ENV, raising=False)
    monkeypatch.delenv(paths.SOCKET_ENV, raising=False)


def _warnings(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("supervisord-batt:")]


# --- no daemon --------------------------------------------------------------------------


def test_no_daemon_yields_sequential_with_one_warning(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "no-such.sock"
    with lease(3, job="batt", socket_path=missing) as grant:
        assert (grant.kind, grant.workers, grant.degraded, grant.lease_id) == (
            "sequential",
            1,
            True,
            None,
        )
        grant.renew(workers_in_use=1)  # no daemon: no-ops, never raise
        grant.heartbeat(progress=1)
        assert grant.kind == "sequential"
    lines = _warnings(capsys.readouterr().err)
    assert len(lines) == 1, lines
    assert f"daemon not reachable at {missing}" in lines[0]
    assert "No such file or directory" in lines[0]
    assert lines[0].endswith("running sequential")


def test_refused_socket_degrades(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "stale.sock"
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(path))
    sock.close()  # a socket file nobody listens on: ECONNREFUSED
    with lease(2, socket_path=path) as grant:
        assert grant.degraded and grant.kind == "sequential"
    assert "Connection refused" in _warnings(capsys.readouterr().err)[0]


@pytest.mark.parametrize(
    "case", [("process:2", "process", 2), ("thread", "thread", 1), ("sequential", "sequential", 1)]
)
def test_fallback_from_env(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    case: tuple[str, str, int],
) -> None:
    spec, kind, workers = case
    monkeypatch.setenv(paths.FALLBACK_ENV, spec)
    with lease(4, socket_path=tmp_path / "none.sock") as grant:
        assert (grant.kind, grant.workers, grant.degraded) == (kind, workers, True)
    desc = kind if kind == "sequential" else f"{kind}:{workers}"
    assert _warnings(capsys.readouterr().err)[0].endswith(f"running {desc}")


def test_bad_fallback_env_is_reported_and_ignored(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv(paths.FALLBACK_ENV, "gpu:9")
    with lease(
        2, socket_path=tmp_path / "none.sock", fallback="thread", fallback_workers=2
    ) as grant:
        assert (grant.kind, grant.workers) == ("thread", 2)
    lines = _warnings(capsys.readouterr().err)
    assert len(lines) == 2 and "gpu:9" in lines[0]


def test_default_socket_path(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(paths.SOCKET_ENV, str(tmp_path / "x.sock"))
    assert default_socket_path() == tmp_path / "x.sock"
    monkeypatch.delenv(paths.SOCKET_ENV)
    if os.geteuid() == 0:
        assert default_socket_path() == Path("/run/supervisord-batt/supervisord-batt.sock")


# --- a fake daemon ------------------------------------------------------------------------


class FakeDaemon:
    """A Unix-socket server in a thread answering with scripted replies; records requests."""

    def __init__(self, path: Path, handler: Callable[[dict[str, Any]], dict[str, Any] | bytes]):
        self.path = path
        self.handler = handler
        self.requests: list[dict[str, Any]] = []
        self.conns: list[socket.socket] = []
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.bind(str(path))
        self.sock.listen()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(conn)
            with contextlib.suppress(OSError), conn, conn.makefile("rb") as lines:
                for line in lines:
                    msg = protocol.decode(line)
                    self.requests.append(msg)
                    reply = self.handler(msg)
                    if isinstance(reply, bytes):
                        conn.sendall(reply)
                        continue
                    if "id" in msg:
                        reply = {**reply, "id": msg["id"]}
                    conn.sendall(protocol.encode(reply))

    def drop(self) -> None:
        for conn in self.conns:
            with contextlib.suppress(OSError):  # already closed by the client's side
                conn.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self.sock.close()
        self.drop()

    def ops(self) -> list[str]:
        return [r["op"] for r in self.requests]


def _grant_reply(workers: int, target: int, kind: str = "process") -> dict[str, Any]:
    return protocol.ok(
        lease="L1",
        kind=kind,
        workers=workers,
        target=target,
        level="normal",
        ttl=60.0,
        reason="headroom",
    )


# what a daemon answers to each op besides acquire and renew (the client checks shapes)
OTHER_REPLIES: dict[str, dict[str, Any]] = {
    "hello": protocol.ok(version=1, server="fake"),
    "heartbeat": protocol.ok(instance=None),
    "release": protocol.ok(lease="L1", kind="process", workers=3),
    "fallback": protocol.ok(),
}


@pytest.fixture
def fake_daemon(tmp_path: Path) -> Iterator[Callable[..., FakeDaemon]]:
    made: list[FakeDaemon] = []

    def make(handler: Callable[[dict[str, Any]], dict[str, Any] | bytes]) -> FakeDaemon:
        d = FakeDaemon(tmp_path / f"d{len(made)}.sock", handler)
        made.append(d)
        return d

    yield make
    for d in made:
        d.close()


def test_lease_renew_shrink_and_release(
    fake_daemon: Callable[..., FakeDaemon], capsys: pytest.CaptureFixture[str]
) -> None:
    target = {"n": 3}

    def handle(msg: dict[str, Any]) -> dict[str, Any]:
        if msg["op"] in ("acquire", "renew"):
            return _grant_reply(3, target["n"])
        return OTHER_REPLIES[msg["op"]]

    d = fake_daemon(handle)
    with lease(3, job="batt", socket_path=d.path) as grant:
        assert (grant.kind, grant.workers, grant.target, grant.lease_id) == ("process", 3, 3, "L1")
        assert not grant.degraded and grant.ttl == 60.0
        target["n"] = 1
        assert grant.renew(workers_in_use=3) is grant
        assert (grant.target, grant.size) == (1, 1)
        grant.heartbeat(progress=5)
    assert d.ops() == ["hello", "acquire", "renew", "heartbeat", "release"]
    acquire = d.requests[1]
    assert (acquire["want"], acquire["job"], acquire["pid"]) == (3, "batt", os.getpid())
    assert d.requests[2]["workers_in_use"] == 3 and d.requests[3]["progress"] == 5
    assert _warnings(capsys.readouterr().err) == []


def test_error_reply_degrades(
    fake_daemon: Callable[..., FakeDaemon], capsys: pytest.CaptureFixture[str]
) -> None:
    d = fake_daemon(
        lambda msg: (
            OTHER_REPLIES["hello"]
            if msg["op"] == "hello"
            else protocol.error(protocol.SHUTTING_DOWN, "daemon is stopping")
        )
    )
    with lease(2, socket_path=d.path) as grant:
        assert grant.degraded and grant.kind == "sequential"
    (line,) = _warnings(capsys.readouterr().err)
    assert "shutting_down: daemon is stopping" in line


def test_connection_loss_keeps_the_pool_and_resumes_the_lease(
    fake_daemon: Callable[..., FakeDaemon], capsys: pytest.CaptureFixture[str]
) -> None:
    d = fake_daemon(
        lambda msg: _grant_reply(2, 2) if msg["op"] == "acquire" else OTHER_REPLIES[msg["op"]]
    )
    with lease(2, socket_path=d.path) as grant:
        d.drop()  # the daemon re-executes: its connections close
        grant.renew(workers_in_use=2)
        assert (grant.kind, grant.size, grant.degraded, grant.away) == ("process", 2, False, True)
        wait_until(lambda: grant.renew(workers_in_use=2) and not grant.away, timeout=5)
        assert (grant.kind, grant.size, grant.lease_id) == ("process", 2, "L1")
    resume = [r for r in d.requests if r["op"] == "acquire"][-1]
    assert (resume["resume"], resume["workers_in_use"], resume["want"]) == ("L1", 2, 2)
    lines = _warnings(capsys.readouterr().err)
    assert len(lines) == 2, lines
    assert "lost the daemon" in lines[0] and "keeping process:2" in lines[0]
    assert "resumed as L1" in lines[1]


def test_a_daemon_that_stays_away_degrades_once_after_the_ttl(
    fake_daemon: Callable[..., FakeDaemon], capsys: pytest.CaptureFixture[str]
) -> None:
    reply = dict(_grant_reply(2, 2), ttl=0.5)
    d = fake_daemon(lambda msg: reply if msg["op"] == "acquire" else OTHER_REPLIES[msg["op"]])
    with lease(2, socket_path=d.path) as grant:
        d.close()  # gone, and not back
        wait_until(lambda: grant.renew().degraded, timeout=10)
        grant.renew()
        grant.heartbeat(progress=1)
        assert (grant.kind, grant.lease_id, grant.away) == ("sequential", None, False)
    lines = _warnings(capsys.readouterr().err)
    assert len(lines) == 2, lines
    assert "keeping process:2" in lines[0] and "not back within" in lines[1]


def test_connection_bounds_the_reply_line(fake_daemon: Callable[..., FakeDaemon]) -> None:
    d = fake_daemon(lambda msg: b"x" * 5000)
    with Connection(d.path, timeout=2, max_line=1024) as conn, pytest.raises(DaemonError) as err:
        conn.request("hello", version=1)
    assert err.value.code == protocol.TOO_LARGE


def test_issue_22_a_reply_may_be_far_longer_than_a_request(
    fake_daemon: Callable[..., FakeDaemon],
) -> None:
    """A status page of hundreds of leases is megabytes: the client reads any reply up to
    the protocol's bound (it stopped at 64 KiB, the request limit)."""
    server = "x" * (3 * 1024 * 1024)
    d = fake_daemon(lambda msg: protocol.ok(version=1, server=server))
    with Connection(d.path, timeout=5) as conn:
        assert conn.call(protocol.HelloReply, "hello", version=1)["server"] == server
        assert conn.call(protocol.HelloReply, "hello", version=1)["version"] == 1


def test_issue_22_a_grant_of_another_shape_is_a_bad_reply_and_the_job_degrades(
    fake_daemon: Callable[..., FakeDaemon], capsys: pytest.CaptureFixture[str]
) -> None:
    def handle(msg: dict[str, Any]) -> dict[str, Any]:
        if msg["op"] == "acquire":
            return {**_grant_reply(2, 2), "kind": "gpu"}  # not a kind the protocol has
        return OTHER_REPLIES[msg["op"]]

    d = fake_daemon(handle)
    with lease(2, socket_path=d.path) as grant:
        assert grant.degraded and grant.kind == "sequential"
    (line,) = _warnings(capsys.readouterr().err)
    assert "bad_reply: acquire: GrantReply.kind: expected one of" in line, line


def test_connection_times_out(fake_daemon: Callable[..., FakeDaemon]) -> None:
    d = fake_daemon(lambda msg: b"")  # never answers
    with Connection(d.path, timeout=0.2) as conn, pytest.raises(TimeoutError):
        conn.request("hello", version=1)


# --- exec ---------------------------------------------------------------------------------


def test_exec_exports_env_and_passes_exit_code(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(paths.SOCKET_ENV, str(tmp_path / "none.sock"))
    monkeypatch.setenv(paths.FALLBACK_ENV, "process:2")
    out = tmp_path / "env.json"
    code = (
        "import json, os, sys; "
        f"json.dump({{k: v for k, v in os.environ.items() if k.startswith(('SUPERVISORD_BATT_', "
        "'LOKY_', 'OMP_', 'OPENBLAS_', 'MKL_', 'BLIS_', 'VECLIB_', 'NUMEXPR_'))}, "
        f"open({str(out)!r}, 'w')); sys.exit(3)"
    )
    assert exec_main([sys.executable, "-c", code], want=2, job="t") == 3
    env = json.loads(out.read_text())
    assert env["SUPERVISORD_BATT_WORKERS"] == "2"
    assert env["SUPERVISORD_BATT_KIND"] == "process"
    assert env["SUPERVISORD_BATT_LEASE"] == ""
    assert env["LOKY_MAX_CPU_COUNT"] == "2"  # the pool's size
    inner_threads = str(max(1, inner.cpu_count() // 2))  # each worker's BLAS
    for name in client.INNER_THREAD_ENV_VARS:
        assert env[name] == inner_threads, name


def test_exec_sequential_exports_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(paths.SOCKET_ENV, str(tmp_path / "none.sock"))
    code = "import os, sys; sys.exit(0 if os.environ['OMP_NUM_THREADS'] == '1' else 9)"
    assert exec_main([sys.executable, "-c", code], want=4, job=None) == 0


def test_exec_signal_death_is_128_plus_n(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(paths.SOCKET_ENV, str(tmp_path / "none.sock"))
    code = "import os, signal; os.kill(os.getpid(), signal.SIGTERM)"
    assert exec_main([sys.executable, "-c", code], want=1) == 128 + signal.SIGTERM


def test_exec_missing_program_is_127(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(paths.SOCKET_ENV, str(tmp_path / "none.sock"))
    assert exec_main([str(tmp_path / "no-such-program")], want=1) == 127


def test_exec_forwards_sigterm_to_the_child(tmp_path: Path) -> None:
    ready = tmp_path / "ready"
    child = (
        f"import os, pathlib, time; pathlib.Path({str(ready)!r})"
        ".write_text(str(os.getpid())); [time.sleep(0.05) for _ in range(2000)]"
    )
    wrapper = (
        "import sys; from supervisord_batt.client.leases import exec_main; "
        f"sys.exit(exec_main([sys.executable, '-c', {child!r}], want=1))"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO), paths.SOCKET_ENV: str(tmp_path / "n.sock")}
    proc = subprocess.Popen([sys.executable, "-c", wrapper], env=env, stderr=subprocess.PIPE)
    try:
        with killing(proc):
            wait_until(
                lambda: ready.exists() and ready.read_text(), timeout=20, what="the child to start"
            )
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=20) == 128 + signal.SIGTERM
    finally:
        if ready.exists() and ready.read_text():  # the grandchild, should the test fail
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(ready.read_text()), signal.SIGKILL)


@pytest.mark.parametrize(
    ("sent", "kept"),
    [(None, 0.0), (0.25, 0.25), (0.0, 0.0), (-1.0, 0.0), (float("nan"), 0.0), (1e9, 2.0)],
)
def test_a_grants_retry_after_is_bounded_whatever_the_daemon_sends(
    sent: float | None, kept: float
) -> None:
    """retry_after (a grant held for a burst) is what the client sleeps before its pool:
    absent (an older daemon) or not above 0 is no wait, and at most BURST_WAIT_MAX."""
    reply: dict[str, Any] = {
        "ok": True,
        "lease": "L1",
        "kind": "sequential",
        "workers": 0,
        "target": 0,
        "level": "normal",
        "ttl": 60.0,
        "reason": "burst: the first to ask, others may follow",
    }
    if sent is not None:
        reply["retry_after"] = sent
    assert burst_wait(cast(protocol.GrantReply, reply)) == kept
    assert kept <= BURST_WAIT_MAX


def test_the_client_hears_a_held_grant_let_go_before_its_retry_after(
    fake_daemon: Callable[..., FakeDaemon],
) -> None:
    """A daemon may let a held grant go early (the burst left it no pool): the client
    renews every BURST_POLL while held, so it hears that at the fifth renew here, long
    before the 1 s retry_after each held reply says; a client that slept retry_after
    would renew twice within BURST_WAIT_MAX and return the grant still held."""
    renews = {"n": 0}

    def handle(msg: dict[str, Any]) -> dict[str, Any]:
        if msg["op"] == "renew":
            renews["n"] += 1
        if msg["op"] == "acquire" or (msg["op"] == "renew" and renews["n"] < 5):
            return {**_grant_reply(0, 0, "sequential"), "reason": "burst: held", "retry_after": 1.0}
        if msg["op"] == "renew":
            return {**_grant_reply(0, 0, "sequential"), "reason": "let go"}
        return OTHER_REPLIES[msg["op"]]

    d = fake_daemon(handle)
    grant = client.acquire(2, job="held", socket_path=d.path)
    try:
        assert (grant.kind, grant.reason, grant.retry_after) == ("sequential", "let go", 0.0)
        assert d.ops().count("renew") == 5
    finally:
        grant.release()


def test_a_held_grant_renews_every_poll_until_its_retry_after_and_never_past_the_cap() -> None:
    """The daemon may let a held grant go before its retry_after (the burst left it no
    pool): the client hears it at its next renew, BURST_POLL at most later."""
    sleeps, waited, retry = [], 0.0, 0.12
    while (wait := held_sleep(retry, waited)) > 0:
        sleeps.append(wait)
        waited, retry = waited + wait, max(0.0, retry - wait)
    assert sleeps == pytest.approx([BURST_POLL, BURST_POLL, 0.02])
    assert held_sleep(10.0, 0.0) == BURST_POLL
    assert held_sleep(10.0, BURST_WAIT_MAX - 0.01) == pytest.approx(0.01)
    assert held_sleep(10.0, BURST_WAIT_MAX) == held_sleep(10.0, BURST_WAIT_MAX + 1) == 0.0
    assert held_sleep(0.0, 0.0) == 0.0
