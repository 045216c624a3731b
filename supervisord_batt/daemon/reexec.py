"""`supervisord-batt reexec`: the daemon replaces its program in place, keeping its pid.

An upgrade or a code fix must not cost the running jobs, and `systemctl restart` is a
stop and a start. A re-execution is neither: the process execs the (possibly new)
installed code with the same arguments. It keeps its pid, so its workers stay its
children and systemd sees the same MainPID; it keeps the descriptors it hands over, and
the new program starts from the state record exactly as after a crash, but with its
children's exit statuses still its own to read.

What goes across the exec:
- the listening socket: connects made meanwhile wait in its backlog, none is refused;
- each running worker's output pipe: a worker never sees EPIPE, no line is lost but a
  partial one the old program had read;
- systemd's notify environment (the Notifier took it out of the workers' environment);
- the state record, written just before (instances and leases; `staterecord`).

The client connections do not go across: each closes at the exec, and the jobs reconnect
and resume their leases (`resume`), which the new daemon holds for them meanwhile.

Before the exec, the new code is tried: `check-config` of the daemon's config by the
same interpreter, in a child. A package that does not import, or a config the new code
refuses, leaves the daemon running as it was, with the reason in the reply.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import time
from collections.abc import MutableMapping
from pathlib import Path

from supervisord_batt import paths
from supervisord_batt.logs import get_logger

log = get_logger(component="daemon")

PREFLIGHT_TIMEOUT = 60.0


class ReexecRefused(Exception):
    """The daemon did not re-execute (the new code failed its check, or instances are
    starting or stopping); it runs on as it was."""


def inherited(env: MutableMapping[str, str] | None = None) -> tuple[bool, dict[str, list[int]]]:
    """(re-executed, name -> descriptors) from the program this one replaced; the
    variable is taken out of the environment (workers must not inherit it) and each
    descriptor made close-on-exec again."""
    env = os.environ if env is None else env
    value = env.pop(paths.REEXEC_FDS_ENV, "")
    pid, _, pairs = value.partition(";")
    if not (pid.isdigit() and int(pid) == os.getpid()):
        return False, {}
    out: dict[str, list[int]] = {}
    for pair in filter(None, pairs.split(",")):
        name, _, fd = pair.partition("=")
        if not fd.isdigit():
            continue
        try:
            os.set_inheritable(int(fd), False)
        except OSError:
            continue
        out.setdefault(name, []).append(int(fd))
    return True, out


def command() -> list[str]:
    """The same program, run the way the daemon was: by its interpreter, as a module."""
    return [sys.executable, "-m", "supervisord_batt", *sys.argv[1:]]


def exec_self(fds: dict[str, int], environment: dict[str, str]) -> OSError:
    """Exec the daemon's own command with `fds` passed by name and `environment` added.
    Returns only when the exec failed (the descriptors are close-on-exec again)."""
    env = dict(os.environ)  # the daemon's own (not a worker's): it execs itself
    env.update(environment)
    env[paths.REEXEC_FDS_ENV] = f"{os.getpid()};" + ",".join(f"{n}={fd}" for n, fd in fds.items())
    try:
        for fd in fds.values():
            os.set_inheritable(fd, True)
        argv = command()
        os.execve(argv[0], argv, env)
    except OSError as exc:
        for fd in fds.values():
            with contextlib.suppress(OSError):
                os.set_inheritable(fd, False)
        return exc
    raise AssertionError("execve returned")  # pragma: no cover


async def preflight(config: Path | None, helpers: set[int]) -> str | None:
    """Run the installed code's `check-config` (or its import, with no config file) in a
    child; None when it passed, else what it said. Waited for without a thread: the
    child's exit is polled, and nothing else of the daemon stops meanwhile.

    The child's pid is in `helpers` while it runs: the set of the daemon's children its
    reaper of adopted orphans leaves alone. Reaped by it, the child's status was lost,
    and Popen takes a lost status (ECHILD) for success: the daemon exec'd into a config
    its new code refused, and exited."""
    if config is None:
        argv = [sys.executable, "-c", "import supervisord_batt.cli.main"]
    else:
        argv = [sys.executable, "-m", "supervisord_batt", "check-config", str(config)]
    try:
        child = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            close_fds=True,
        )
    except OSError as exc:
        return f"cannot run {argv[0]}: {exc.strerror or exc}"
    helpers.add(child.pid)
    try:
        deadline = time.monotonic() + PREFLIGHT_TIMEOUT
        delay = 0.01
        while child.poll() is None:
            if time.monotonic() > deadline:
                child.kill()
                child.wait()
                return f"the new code's check did not finish in {PREFLIGHT_TIMEOUT:.0f} s"
            await asyncio.sleep(delay)
            delay = min(0.1, delay * 2)
    finally:
        helpers.discard(child.pid)
    assert child.stdout is not None
    said = child.stdout.read(64 * 1024).decode(errors="replace").strip()
    child.stdout.close()
    if child.returncode == 0:
        return None
    return said[-2000:] or f"exit status {child.returncode}"
