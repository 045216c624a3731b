"""Issue 24: each job's learned figures outlive the daemon. A daemon learns a job's
workers (two of 60 MiB) from one run and stops; the next daemon on the same socket
charges the job's next lease what the first learned, from before any run of its own,
and says where it read them."""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tests.helpers import CALM, wait_until
from tests.support.allocating import allocating_job
from tests.support.daemons import DaemonHandle

MIB = 1 << 20
SIZE = 60  # MiB each worker writes


@contextmanager
def job(d: DaemonHandle, want: int, *, run: bool) -> Iterator[dict[str, Any]]:
    with allocating_job(d, "kept", SIZE, want, run=run) as grant:
        yield grant


def kept_row(d: DaemonHandle) -> dict[str, Any] | None:
    rows = [r for r in d.status()["leases"] if r["job"] == "kept"]
    return rows[0] if rows else None


def test_issue24_a_restarted_daemon_starts_from_the_figures_learned_before(
    daemon: Callable[..., DaemonHandle],
) -> None:
    home = Path(tempfile.mkdtemp(prefix="sbt-", dir="/tmp"))  # both daemons' socket
    try:
        config = {
            "budget": {"memory_per_slot": "512MiB", "pressure": CALM},
            "daemon": {"socket": str(home / "s.sock")},
        }
        first = daemon(json.loads(json.dumps(config)))
        with job(first, 2, run=True) as grant:
            assert (grant["kind"], grant["workers"]) == ("process", 2), grant
            row = wait_until(  # a scan after the workers wrote their memory
                lambda: (
                    (r := kept_row(first))
                    and r["learned_runs"]
                    and r["worker_bytes"] >= SIZE * MIB
                    and r
                ),
                what="the first daemon to learn the job's workers",
            )
            assert row["learned_runs"] == 1 and row["worker_bytes"] < (SIZE + 60) * MIB, row
        assert first.stop() == 0

        second = daemon(json.loads(json.dumps(config)))
        (loaded,) = second.events("worker_sizes_loaded")
        assert loaded["jobs"] == 1, loaded
        with job(second, 2, run=False):
            row = kept_row(second)
            assert row is not None and row["learned_runs"] == 1, row
            assert SIZE * MIB <= row["worker_bytes"] < (SIZE + 60) * MIB, row
    finally:
        shutil.rmtree(home, ignore_errors=True)
