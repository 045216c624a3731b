"""A real daemon whose budget grants up to 3 workers, the joblib backend pointed at it."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import joblib
import psutil
import pytest

from supervisord_batt import joblib as batt_joblib
from supervisord_batt import paths
from tests.helpers import CALM, wait_until
from tests.integration.conftest import DaemonHandle

BUDGET = {
    "cpu_cap": 3,
    "memory_per_slot": "1MiB",
    "reserve_tasks": 0,
    "reserve_percent": 0,
    "max_per_lease": 8,
    "pressure": CALM,
}


def loky_workers() -> list[int]:
    out = []
    for child in psutil.Process().children():
        try:
            if any("popen_loky_posix" in part for part in child.cmdline()):
                out.append(child.pid)
        except psutil.Error:
            continue
    return out


@pytest.fixture
def batt(
    daemon: Callable[..., DaemonHandle], monkeypatch: pytest.MonkeyPatch
) -> Iterator[DaemonHandle]:
    """A daemon whose budget grants up to 3 workers, the backend pointed at it."""
    d = daemon({"budget": BUDGET})
    monkeypatch.setenv(paths.SOCKET_ENV, str(d.socket))
    monkeypatch.delenv(paths.FALLBACK_ENV, raising=False)
    monkeypatch.setattr(batt_joblib, "STATE", batt_joblib._State())
    try:
        with joblib.parallel_config(backend=batt_joblib.BACKEND_NAME):
            yield d
    finally:
        wait_until(lambda: loky_workers() == [], timeout=10, what="no loky worker left")
