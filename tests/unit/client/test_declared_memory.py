"""The worker size a job declares through its environment (issue 24): what a program's
`worker_memory` sets, read by the client for its acquire's `worker_bytes`."""

from __future__ import annotations

import pytest
import structlog
import structlog.testing

from supervisord_batt import paths
from supervisord_batt.client import acquire
from supervisord_batt.client.leases import declared_worker_bytes


@pytest.mark.parametrize(
    ("text", "nbytes"),
    [
        ("1610612736", 1536 << 20),
        ("1536MiB", 1536 << 20),
        ("1.5G", 1536 << 20),
        (" 64M ", 64 << 20),
        ("1TiB", 1 << 40),
    ],
)
def test_a_declared_size_is_read_in_bytes(text: str, nbytes: int) -> None:
    assert declared_worker_bytes({paths.WORKER_MEMORY_ENV: text}) == nbytes


@pytest.mark.parametrize("text", ["lots", "-5", "0", "MiB", "nan", "2TiB", "1.5 PB", "1536", "64k"])
def test_a_size_not_understood_declares_nothing_and_says_so(text: str) -> None:
    # structlog configured (as here, to capture), the warning is its line; where another
    # test left it configured to a sink of its own, stderr would not show it
    with structlog.testing.capture_logs() as said:
        assert declared_worker_bytes({paths.WORKER_MEMORY_ENV: text}) is None
    assert [e["log_level"] for e in said] == ["warning"], said
    assert paths.WORKER_MEMORY_ENV in said[0]["event"], said


def test_nothing_set_declares_nothing() -> None:
    assert declared_worker_bytes({}) is None


@pytest.mark.parametrize("nbytes", [0, -1, (1 << 40) + 1])
def test_an_argument_out_of_bounds_is_a_mistake_of_the_caller(nbytes: int) -> None:
    with pytest.raises(ValueError, match="worker_bytes"):
        acquire(2, worker_bytes=nbytes, socket_path="/nonexistent/s.sock", quiet=True)
