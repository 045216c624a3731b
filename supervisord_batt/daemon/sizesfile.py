"""Each job's learned figures kept across restarts (issue 24): the ended runs of
`WorkerSizes` and the OOM kills' margins it still charges, in a small file beside the
socket.

# Why beside the socket
That directory is one only root (or the daemon's user) can write in, checked at bind
(`safepath`), as the state record's (`daemon.staterecord`). Under systemd it is the
unit's RuntimeDirectory, kept across an automatic restart and removed at stop: a daemon
re-executed or restarted after a crash (or run outside systemd, stopped and started)
starts from what the one before learned; one started after `systemctl stop` learns again
within a run of each job, as before.

# Why it is trusted so little
The daemon runs as root and the figures size every job's grants: a file that is not a
plain file of the daemon's user with one link, that is reached through a symlink, that
is larger than MAX_BYTES or not exactly this module's shape is not read at all, said once
(`worker_sizes_ignored`), and the daemon learns from scratch. Written atomically
(`safepath.replace_file`): a crash mid-write leaves the file before, never half of one.
Written when a run ended or a margin changed since the last write (at most once a scan),
before a re-execution and at a clean stop, where the live runs end.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from supervisord_batt import safepath
from supervisord_batt.daemon.workersizes import MAX_JOBS, RUNS, Key, Peak, WorkerSizes
from supervisord_batt.logs import get_logger

log = get_logger(component="daemon")

VERSION = 1
# a job name of 256 characters, 32 runs of three figures of 20 digits each, 4,096 jobs,
# and a margin each
MAX_BYTES = MAX_JOBS * (300 + RUNS * 70 + 300)
MAX_JOB_NAME = 256


def sizes_path(socket: Path) -> Path:
    return socket.with_name(socket.name + ".sizes")


class SizesFile:
    """The learned figures of one daemon (by its socket)."""

    def __init__(self, socket: Path) -> None:
        self.path = sizes_path(socket)
        self.failures = 0

    def load(self, sizes: WorkerSizes) -> int:
        """Restore into `sizes` the runs a daemon before saved; the jobs restored (0: none,
        or a file not to be trusted, said once with why)."""
        try:
            fd = safepath.open_read(self.path)
        except FileNotFoundError:
            return 0
        except OSError as exc:  # a symlink, another user's file, a directory not private
            log.warning("worker_sizes_ignored", path=str(self.path), reason=str(exc))
            return 0
        with os.fdopen(fd, "rb") as f:
            data = f.read(MAX_BYTES + 1)
        try:
            ended, margins = _parse(data)
        except ValueError as exc:  # json's errors are ValueErrors too
            log.warning("worker_sizes_ignored", path=str(self.path), reason=str(exc))
            return 0
        sizes.restore(ended, margins)
        return len(ended.keys() | margins.keys())

    def save(self, sizes: WorkerSizes) -> None:
        """Replace the file with the ended runs of `sizes`; a failure is said once in a row."""
        jobs = [[job, uid, [list(p) for p in runs]] for (job, uid), runs in sizes.ended().items()]
        margins = [[job, uid, size] for (job, uid), size in sizes.margins().items()]
        record = {"version": VERSION, "jobs": jobs, "margins": margins}
        data = json.dumps(record, separators=(",", ":")).encode()
        try:
            safepath.replace_file(self.path, data, 0o600)
        except OSError as exc:
            self.failures += 1
            if self.failures == 1:
                log.error("worker_sizes_not_saved", path=str(self.path), reason=str(exc))
            return
        sizes.changed = False
        self.failures = 0


def _parse(data: bytes) -> tuple[dict[Key, list[Peak]], dict[Key, int]]:
    """The runs and the kills' margins of a saved file, checked to the last figure
    (ValueError: why not). A file of a release before the margins has none."""
    if len(data) > MAX_BYTES:
        raise ValueError(f"larger than {MAX_BYTES} bytes")
    record = json.loads(data)
    if not isinstance(record, dict) or record.get("version") != VERSION:
        raise ValueError("not a version 1 sizes file")
    jobs = record.get("jobs")
    if not isinstance(jobs, list) or len(jobs) > MAX_JOBS:
        raise ValueError(f"jobs: not a list of at most {MAX_JOBS}")
    out: dict[Key, list[Peak]] = {}
    for entry in jobs:
        job, uid, runs = _keyed(entry, "[job, uid, runs] entry")
        if not (isinstance(runs, list) and 0 < len(runs) <= RUNS):
            raise ValueError(f"{job}: not a list of 1 to {RUNS} runs")
        if not all(isinstance(r, list) and len(r) == 3 and all(map(_count, r)) for r in runs):
            raise ValueError(f"{job}: a run is not three counts")
        out[job, uid] = [Peak(*r) for r in runs]
    return out, _margins(record.get("margins", []))


def _margins(entries: Any) -> dict[Key, int]:
    if not isinstance(entries, list) or len(entries) > MAX_JOBS:
        raise ValueError(f"margins: not a list of at most {MAX_JOBS}")
    margins: dict[Key, int] = {}
    for entry in entries:
        job, uid, size = _keyed(entry, "[job, uid, bytes] margin")
        if not (_count(size) and size > 0):
            raise ValueError(f"{job}: a margin is not a count of bytes")
        margins[job, uid] = size
    return margins


def _keyed(entry: Any, what: str) -> tuple[str, int, Any]:
    """A [job, uid, value] entry, its job and uid checked (ValueError: why not)."""
    if not (isinstance(entry, list) and len(entry) == 3):
        raise ValueError(f"not a {what}: {entry!r:.80}")
    job, uid, value = entry
    if not (isinstance(job, str) and 0 < len(job) <= MAX_JOB_NAME and _count(uid)):
        raise ValueError(f"not a job and uid: {job!r:.80}, {uid!r:.20}")
    return job, uid, value


def _count(x: Any) -> bool:
    return type(x) is int and 0 <= x < 1 << 63
