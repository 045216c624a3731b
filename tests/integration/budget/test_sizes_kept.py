"""Issue 24: each job's learned figures outlive the daemon. A daemon learns a job's
workers (two of 60 MiB) from one run and stops; the next daemon on the same socket
charges the job's next lease what the first learned, from before any run of its own,
and says where it read them."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tests.helpers import CALM, REPO, killing, wait_until
from tests.support.daemons import DaemonHandle

MIB = 1 << 20
SIZE = 60  # MiB each worker writes

# A job: leases `want` process workers of job "kept"; with "run" starts that many worker
# processes that each write SIZE MiB; prints its grant and holds all until stdin closes.
JOB = textwrap.dedent(
    """
    import json, subprocess, sys
    from supervisord_batt.client import lease
    sock, mib, want, run = sys.argv[1:5]
    ALLOC = (
        "import sys\\n"
        "held = [b'\\\\x01' * (1 << 20) for _ in range(int(sys.argv[1]))]\\n"
        "print('up', flush=True)\\n"
        "sys.stdin.read()\\n"
    )
    with lease(int(want), kinds=["process"], job="kept", socket_path=sock) as grant:
        workers = []
        if run == "run" and grant.kind == "process":
            for _ in range(grant.workers):
                workers.append(subprocess.Popen(
                    [sys.executable, "-c", ALLOC, mib],
                    stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                ))
            for w in workers:
                assert w.stdout.readline() == b"up\\n"
        print(json.dumps({"kind": grant.kind, "workers": grant.workers}), flush=True)
        sys.stdin.read()
        for w in workers:
            w.stdin.close()
            w.wait()
    """
)


@contextmanager
def job(d: DaemonHandle, want: int, *, run: bool) -> Iterator[dict[str, Any]]:
    proc = subprocess.Popen(
        [sys.executable, "-c", JOB, str(d.socket), str(SIZE), str(want), "run" * run],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
    )
    with killing(proc):
        assert proc.stdout is not None and proc.stdin is not None
        line = proc.stdout.readline()
        assert line, "the job ended before it printed its grant"
        yield json.loads(line)
        proc.stdin.close()
        assert proc.wait(timeout=60) == 0


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
