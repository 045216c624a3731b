"""sd_notify(3) as the daemon speaks it, against a real datagram socket."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from supervisord_batt.daemon.notify import Notifier


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = str(tmp_path / "notify")
    sock.bind(path)
    sock.settimeout(5)
    yield sock, path
    sock.close()


def received(sock: socket.socket) -> list[str]:
    return sock.recv(4096).decode().split("\n")


def test_ready_status_reloading_stopping_one_datagram_each(
    listener: tuple[socket.socket, str],
) -> None:
    sock, path = listener
    n = Notifier({"NOTIFY_SOCKET": path})
    assert n.enabled
    n.ready("2/2 instances running")
    assert received(sock) == ["READY=1", "STATUS=2/2 instances running"]
    n.reloading()
    reloading, usec = received(sock)
    assert reloading == "RELOADING=1"
    assert usec.startswith("MONOTONIC_USEC=") and int(usec.split("=")[1]) > 0
    n.stopping()
    assert received(sock) == ["STOPPING=1", "STATUS=stopping"]
    n.close()


def test_status_is_sent_only_when_it_changes(listener: tuple[socket.socket, str]) -> None:
    sock, path = listener
    n = Notifier({"NOTIFY_SOCKET": path})
    n.status("a")
    n.status("a")
    n.status("b")
    assert received(sock) == ["STATUS=a"]
    assert received(sock) == ["STATUS=b"]
    sock.setblocking(False)
    with pytest.raises(BlockingIOError):
        sock.recv(4096)


def test_abstract_socket() -> None:
    name = f"supervisord-batt-test-{os.getpid()}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.settimeout(5)
    try:
        Notifier({"NOTIFY_SOCKET": "@" + name}).ready("ok")
        assert received(sock) == ["READY=1", "STATUS=ok"]
    finally:
        sock.close()


def test_nothing_is_sent_without_notify_socket() -> None:
    n = Notifier({})
    assert not n.enabled
    assert n.send("READY=1") is True
    assert n.watchdog_due(100.0) is None


def test_the_environment_the_workers_inherit_is_cleared(tmp_path: Path) -> None:
    env = {
        "NOTIFY_SOCKET": str(tmp_path / "n"),
        "WATCHDOG_USEC": "2000000",
        "WATCHDOG_PID": str(os.getpid()),
        "OTHER": "kept",
    }
    n = Notifier(env)
    assert env == {"OTHER": "kept"}
    assert n.watchdog_interval == 1.0


@pytest.mark.parametrize(
    ("usec", "pid", "interval"),
    [
        ("30000000", None, 15.0),
        ("30000000", "self", 15.0),
        ("30000000", "1", None),  # the watchdog is meant for another process
        ("0", None, None),
        ("junk", None, None),
    ],
)
def test_watchdog_interval_is_half_of_watchdog_usec(
    usec: str, pid: str | None, interval: float | None
) -> None:
    env = {"NOTIFY_SOCKET": "/nonexistent/notify", "WATCHDOG_USEC": usec}
    if pid is not None:
        env["WATCHDOG_PID"] = str(os.getpid()) if pid == "self" else pid
    assert Notifier(env).watchdog_interval == interval


def test_watchdog_pings_at_half_the_interval(listener: tuple[socket.socket, str]) -> None:
    sock, path = listener
    n = Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "4000000"})
    assert n.watchdog_due(100.0) == 102.0
    assert received(sock) == ["WATCHDOG=1"]
    assert n.watchdog_due(101.0) == 102.0  # not due: nothing sent
    assert n.watchdog_due(102.5) == 104.5
    assert received(sock) == ["WATCHDOG=1"]
    sock.setblocking(False)
    with pytest.raises(BlockingIOError):
        sock.recv(4096)


def test_a_failed_send_is_logged_once_and_never_raises(tmp_path: Path) -> None:
    n = Notifier({"NOTIFY_SOCKET": str(tmp_path / "nobody-listens")})
    with capture_logs() as logs:
        for _ in range(5):
            assert n.send("WATCHDOG=1") is False
    assert n.failures == 5
    assert [e["event"] for e in logs] == ["notify_failed"]
    assert logs[0]["socket"] == str(tmp_path / "nobody-listens")
