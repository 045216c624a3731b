"""A real daemon whose budget grants up to 3 workers, the joblib backend pointed at it."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import joblib  # type: ignore[import-untyped]  # joblib ships no type hints
import pytest

from supervisord_batt import joblib as batt_joblib
from supervisord_batt import paths
from supervisord_batt.client.keep import Keeper
from tests.helpers import wait_until
from tests.support.daemons import DaemonHandle
from tests.support.pools import BUDGET, loky_workers


@pytest.fixture(autouse=True)
def keeper(monkeypatch: pytest.MonkeyPatch) -> Iterator[Keeper[Any]]:
    """A keeper of this test's own: the pool a test's last call left is closed, and its
    lease given back, when the test ends (the module's one lives as long as pytest)."""
    fresh: Keeper[Any] = batt_joblib.new_keeper()
    monkeypatch.setattr(batt_joblib, "KEEPER", fresh)
    monkeypatch.delenv(paths.KEEP_ALIVE_ENV, raising=False)
    try:
        yield fresh
    finally:
        fresh.close()


@pytest.fixture
def batt(
    daemon: Callable[..., DaemonHandle],
    monkeypatch: pytest.MonkeyPatch,
    keeper: Keeper[Any],
) -> Iterator[DaemonHandle]:
    """A daemon whose budget grants up to 3 workers, the backend pointed at it."""
    d = daemon({"budget": BUDGET})
    monkeypatch.setenv(paths.SOCKET_ENV, str(d.socket))
    monkeypatch.delenv(paths.FALLBACK_ENV, raising=False)
    monkeypatch.setattr(batt_joblib, "STATE", batt_joblib.State())
    try:
        with joblib.parallel_config(backend=batt_joblib.BACKEND_NAME):
            yield d
    finally:
        keeper.close()
        wait_until(lambda: loky_workers() == [], timeout=10, what="no loky worker left")
