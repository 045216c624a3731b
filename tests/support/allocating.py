"""A job that leases process workers through the client and, asked to, starts them as
processes that each write a given number of MiB (every page, so it is resident): what
the learned-size tests run, in a memory cgroup or not."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from tests.helpers import REPO, killing
from tests.support.daemons import DaemonHandle

# A job: leases up to `want` process workers through the client, and with "run" starts
# that many worker processes that each write `mib` MiB (every page, so it is resident);
# prints its grant, holds lease and workers until its stdin closes.
ALLOCATING_JOB = textwrap.dedent(
    """
    import json, subprocess, sys
    from supervisord_batt.client import lease
    sock, job, mib, want, run = sys.argv[1:6]
    ALLOC = (
        "import sys\\n"
        "held = [b'\\\\x01' * (1 << 20) for _ in range(int(sys.argv[1]))]\\n"
        "print('up', flush=True)\\n"
        "sys.stdin.read()\\n"
    )
    with lease(int(want), kinds=["process"], job=job, socket_path=sock) as grant:
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
def allocating_job(
    d: DaemonHandle,
    name: str,
    mib: int,
    want: int,
    *,
    run: bool,
    preexec_fn: Callable[[], None] | None = None,
) -> Iterator[dict[str, Any]]:
    """ALLOCATING_JOB holding its lease (and workers, if `run`) for the block; its grant."""
    argv = [str(d.socket), name, str(mib), str(want), "run" * run]
    with holding_job(ALLOCATING_JOB, argv, preexec_fn) as grant:
        yield grant


@contextmanager
def holding_job(
    code: str, argv: list[str], preexec_fn: Callable[[], None] | None = None
) -> Iterator[dict[str, Any]]:
    """A job script (`code`, run with `argv`) that prints its grant as one JSON line and
    holds its lease until its stdin closes: the grant, for the block; then it must exit 0."""
    proc = subprocess.Popen(
        [sys.executable, "-c", code, *argv],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        preexec_fn=preexec_fn,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
    )
    with killing(proc):
        assert proc.stdout is not None and proc.stdin is not None
        line = proc.stdout.readline()
        assert line, "the job ended before it printed its grant"
        yield json.loads(line)
        proc.stdin.close()
        assert proc.wait(timeout=60) == 0


def limit_seen(d: DaemonHandle, path: str) -> int | None:
    """The cgroup's limit in the daemon's last sample (the one its budget was given)."""
    rows = d.status()["host"]["memory"]["cgroups"]
    return next((r["max_bytes"] for r in rows if r["path"] == path), None)
