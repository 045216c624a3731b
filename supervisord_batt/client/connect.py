"""Connecting to the daemon's socket when it is busy: short retries for a bounded time.

# Why retry, and which failures
A Unix socket's connect fails at once with EAGAIN when the listener's accept queue is
full: under one user's connection flood, 83-90% of root's connects failed that way
although the daemon was answering, between two of its accept batches. ECONNREFUSED
(a socket file with nobody listening) is a daemon restarting in place. And a daemon
that refuses a connection says so in its first line (`too_many_connections`: the
peer's account at its cap or its equal part, the daemon at its limit), which a closed
connection can change a moment later. Each of these is retried, with a delay that
starts at `FIRST_DELAY_S`, doubles up to `MAX_DELAY_S` and is jittered (so that many
clients refused together do not come back together), until `RETRY_S` seconds have
passed since the first attempt (a job: it has a fallback to run instead; the CLI waits
up to its own timeout, `CLI_RETRY_S` at most: an operator under a flood would rather
wait than be told the daemon is unreachable); then the last error is the caller's, as
before (a job falls back to its local default, the CLI says the daemon is not
reachable). A missing socket (ENOENT) or one the kernel forbids (EACCES) is not
retried: no daemon, or not ours to use, and waiting would only delay a job's fallback.
A socket left behind by a daemon that died (ECONNREFUSED until the next one binds) costs
a job `RETRY_S` before its fallback.

Measured under one user's flood (docs/FACTS.md): without retries 89 of 90 connects of
root failed at once with EAGAIN; with them all 90 got through, in 0.3-0.6 s at the
median and 2.5 s at the slowest.
"""

from __future__ import annotations

import errno
import random
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")

RETRY_S = 2.0  # how long a job's connect is retried, in all
CLI_RETRY_S = 10.0  # the CLI's (its timeout, when shorter)
FIRST_DELAY_S = 0.002
MAX_DELAY_S = 0.05  # the daemon drains its queue every loop iteration: look again soon
RETRIED_ERRNOS = frozenset({errno.EAGAIN, errno.ECONNREFUSED})


class Busy(Exception):
    """A refusal worth retrying, raised by the `attempt` given to `retrying`."""


def busy(exc: BaseException) -> bool:
    """Whether a failed connect or first request is worth another try."""
    return isinstance(exc, Busy) or (isinstance(exc, OSError) and exc.errno in RETRIED_ERRNOS)


def retrying(attempt: Callable[[], T], retry_for: float = RETRY_S) -> T:
    """`attempt()` until it returns, retrying what `busy` says for `retry_for` seconds;
    then the last failure is raised."""
    deadline = time.monotonic() + retry_for
    delay = FIRST_DELAY_S
    while True:
        try:
            return attempt()
        except Exception as exc:
            left = deadline - time.monotonic()
            if not busy(exc) or left <= 0:
                raise
        time.sleep(min(left, delay * random.uniform(0.5, 1.0)))
        delay = min(MAX_DELAY_S, delay * 2)


def open_socket(path: Path, timeout: float) -> socket.socket:
    """One connect attempt: a connected socket whose reads and writes time out after
    `timeout` seconds, or the OSError of the attempt (nothing left open)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(str(path))
    except BaseException:
        sock.close()
        raise
    return sock
