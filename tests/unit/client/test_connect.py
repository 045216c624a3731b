"""client.connect: what a busy socket does to a connect, and the bounded retry, on real
sockets (a listener that is not listening yet, an accept queue that is full)."""

from __future__ import annotations

import errno
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from supervisord_batt.client import connect


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[socket.socket]:
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(str(tmp_path / "s.sock"))
    try:
        yield srv
    finally:
        srv.close()


def later(seconds: float, action: Callable[[], object]) -> threading.Timer:
    timer = threading.Timer(seconds, action)
    timer.start()
    return timer


def test_a_socket_nobody_listens_on_yet_is_retried(listener: socket.socket) -> None:
    path = Path(listener.getsockname())
    with pytest.raises(ConnectionRefusedError):
        connect.open_socket(path, 1.0)
    timer = later(0.2, lambda: listener.listen(8))  # the daemon starting
    try:
        sock = connect.retrying(lambda: connect.open_socket(path, 1.0))
    finally:
        timer.join()
    sock.close()


def test_a_full_accept_queue_is_retried_until_one_is_accepted(listener: socket.socket) -> None:
    path = Path(listener.getsockname())
    listener.listen(0)
    queued = []
    while True:  # fill the queue as a flood does, until the kernel says EAGAIN
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.setblocking(False)
        try:
            s.connect(str(path))
        except BlockingIOError:
            s.close()
            break
        queued.append(s)
    with pytest.raises(BlockingIOError):
        connect.open_socket(path, 1.0)

    def accept_one() -> None:  # the daemon's next accept batch
        listener.accept()[0].close()

    timer = later(0.2, accept_one)
    try:
        sock = connect.retrying(lambda: connect.open_socket(path, 1.0))
    finally:
        timer.join()
    for s in [sock, *queued]:
        s.close()


def test_it_gives_up_after_the_bound_and_at_once_without_a_socket(tmp_path: Path) -> None:
    attempts = []

    def refused() -> socket.socket:
        attempts.append(time.monotonic())
        raise ConnectionRefusedError(errno.ECONNREFUSED, "refused")

    with pytest.raises(ConnectionRefusedError):
        connect.retrying(refused, retry_for=0.3)
    assert attempts[-1] - attempts[0] >= 0.3 - connect.MAX_DELAY_S and len(attempts) > 3
    # no socket at all (no daemon): the caller's fallback is not delayed
    attempts.clear()

    def missing() -> socket.socket:
        attempts.append(time.monotonic())
        return connect.open_socket(tmp_path / "none.sock", 1.0)

    with pytest.raises(FileNotFoundError):
        connect.retrying(missing)
    assert len(attempts) == 1
