"""A stop that waits out a worker's stop_grace keeps pinging systemd's watchdog: a stop
longer than WatchdogSec must not be aborted halfway by systemd."""

from __future__ import annotations

import signal
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import wait_until
from tests.support.daemons import DaemonHandle


def test_the_watchdog_is_pinged_while_workers_stop(
    daemon: Callable[..., DaemonHandle],
    program: Callable[..., dict[str, Any]],
    py: Callable[[str], list[str]],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = tmp_path / "notify"
    listener.bind(str(path))
    try:
        monkeypatch.setenv("NOTIFY_SOCKET", str(path))
        monkeypatch.setenv("WATCHDOG_USEC", "1000000")  # a ping every 0.5 s
        ready = tmp_path / "ignoring"
        stubborn = py(
            "import pathlib, signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
            f"pathlib.Path({str(ready)!r}).touch(); time.sleep(600)"
        )
        d = daemon({"programs": {"stubborn": program(stubborn, stop_grace="3s")}})
        wait_until(ready.exists, what="the worker ignoring SIGTERM")
        listener.settimeout(0.2)
        messages: list[tuple[float, str]] = []
        d.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 20
        while d.proc.poll() is None and time.monotonic() < deadline:
            try:
                data = listener.recv(4096).decode()
            except TimeoutError:
                continue
            messages += [(time.monotonic(), m) for m in data.split("\n")]
        assert d.proc.wait(timeout=10) == 0
        stopping = [t for t, m in messages if m == "STOPPING=1"]
        assert stopping, messages
        pings = [t for t, m in messages if m == "WATCHDOG=1" and t > stopping[0]]
        # the grace alone is 3 s: about six pings; two would show the loop kept pinging
        assert len(pings) >= 3, messages
    finally:
        listener.close()
