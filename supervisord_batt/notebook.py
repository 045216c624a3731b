"""The IPython extension: `%load_ext supervisord_batt` makes every joblib call in the
kernel lease its workers from the daemon, unchanged notebook code included.

    %load_ext supervisord_batt
    supervisord-batt: joblib leases from the daemon in this kernel; Parallel(n_jobs=-1)
    gets process:2 now (level normal, 1 inner thread(s) per worker; ...)   [one line]

    %batt
    lease L7: process:2 (lease L7, level normal, 1 inner thread(s) per worker; ...)
    ...
    daemon: level normal, 2/2 workers leased; this kernel's leases: L7 process:2

Loading it registers the joblib backend "supervisord-batt" and makes it the default
twice over: joblib's process-wide default (every thread), and an explicit
`parallel_config` in the kernel's main thread, where cells run, so that joblib passes
a call's `prefer`/`require` hints to the backend instead of to its own thread backend.
`%unload_ext supervisord_batt` puts both back. With $SUPERVISORD_BATT_NOTEBOOK=0 in
the kernel's environment the extension loads and changes nothing (an opt-out that works
when an operator loads it for every kernel; docs/NOTEBOOKS.md).

Loaded from the kernel's config, the extension runs before any cell, and what it prints
then reaches no cell (the kernel sends it with no request to answer). So when the daemon
is not reachable, that line does not count as the warning: the first cell that calls
joblib shows it instead (once per kernel, as the backend warns).
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import Any

import joblib  # type: ignore[import-untyped]
import joblib.parallel  # type: ignore[import-untyped]

from supervisord_batt import joblib as batt_joblib
from supervisord_batt import paths
from supervisord_batt.client import inner
from supervisord_batt.client.leases import Connection, DaemonError, acquire
from supervisord_batt.client.status import read_status

JOB = "notebook"
PREFIX = "supervisord-batt:"


@dataclass
class _Loaded:
    """What loading changed, so that unloading puts it back."""

    previous_default: str
    config: Any  # the joblib.parallel_config set in the kernel's main thread


@dataclass
class _Kernel:
    loaded: _Loaded | None = None


KERNEL = _Kernel()


def opted_out(env: dict[str, str] | None = None) -> bool:
    value = (os.environ if env is None else env).get(paths.NOTEBOOK_ENV, "")
    return value.strip().lower() in ("0", "off", "no", "false")


def output_reaches_a_cell() -> bool:
    """False while nothing printed can reach a cell: in a kernel before its first
    request (ipykernel's stdout has an empty parent header then; a cell's is its
    request's). Terminal IPython and plain Python: True."""
    parent = getattr(sys.stdout, "parent_header", None)
    return not (isinstance(parent, dict) and not parent)


def probe_line(shown: bool = True) -> str:
    """One line: what a Parallel(n_jobs=-1) would be granted now (leased, then given
    back at once: a call leases again when it runs). `shown`: the line reaches the user,
    so when it says the daemon is not reachable the backend need not say it again."""
    grant = acquire(inner.cpu_count(), job=JOB, quiet=True)
    try:
        if grant.lease_id is None:
            if shown:
                batt_joblib.STATE.warned_unreachable = True  # this line was the warning
            return (
                f"{PREFIX} joblib will lease from the daemon in this kernel, but {grant.reason}; "
                f"until it answers Parallel calls run {grant.describe()}"
            )
        return (
            f"{PREFIX} joblib leases from the daemon in this kernel; Parallel(n_jobs=-1) "
            f"gets {grant.describe()} now (level {grant.level}, "
            f"{grant.inner_threads} inner thread(s) per worker; {grant.reason or 'granted'})"
        )
    finally:
        grant.release()


def load(print_line: bool = True) -> None:
    """Make the leasing backend joblib's default in this process (idempotent)."""
    if opted_out():
        said = os.environ[paths.NOTEBOOK_ENV]
        print(f"{PREFIX} off (${paths.NOTEBOOK_ENV}={said}); joblib unchanged")  # noqa: T201
        return
    if KERNEL.loaded is None:
        previous = str(joblib.parallel.DEFAULT_BACKEND)
        batt_joblib.register(make_default=True, job=JOB)
        config = joblib.parallel_config(backend=batt_joblib.BACKEND_NAME)  # set until unload
        KERNEL.loaded = _Loaded(previous_default=previous, config=config)
    if print_line:
        print(probe_line(shown=output_reaches_a_cell()))  # noqa: T201


def unload() -> None:
    """Put joblib's default back as it was before load()."""
    loaded, KERNEL.loaded = KERNEL.loaded, None
    if loaded is None:
        return
    loaded.config.unregister()
    batt_joblib.register(make_default=False)
    joblib.parallel.DEFAULT_BACKEND = loaded.previous_default


def status_lines() -> list[str]:
    """What `%batt` prints: this kernel's leases now, the last grant, the daemon's view."""
    lines = []
    if KERNEL.loaded is None:
        lines.append(f"{PREFIX} not loaded (or opted out): joblib does not lease")
    held = batt_joblib.current()
    idle = batt_joblib.kept()
    for grant in held:
        line = f"lease {grant.lease_id}: {batt_joblib.describe(grant)}"
        if grant is idle:
            line += "; its pool kept idle for the next call"
        lines.append(line)
    if not held:
        lines.append(
            "no lease held now (a Parallel call leases while it runs, and keeps a "
            "process pool a few seconds after)"
        )
    if batt_joblib.STATE.last:
        lines.append(f"last grant: {batt_joblib.STATE.last}")
    lines.append(_daemon_line())
    return lines


def _daemon_line() -> str:
    try:
        with Connection() as conn:
            status = read_status(conn, ("leases",))
    except (OSError, DaemonError, ValueError) as exc:
        return f"daemon: not reachable ({exc})"
    mine = [x for x in status.get("leases", []) if x["pid"] == os.getpid()]
    held = ", ".join(f"{x['lease']} {x['kind']}:{x['workers']}" for x in mine) or "none"
    # `capacity` is what a new lease could get now, not a total: leased of all there is
    # is the leased workers of those plus what is still free
    leased, free = status["leased"], status["capacity"]
    return (
        f"daemon: level {status['level']}, {leased}/{leased + free} workers leased; "
        f"this kernel's leases: {held}"
    )


def batt_magic(line: str = "") -> None:
    """%batt: the kernel's current lease, the last grant and the daemon's view."""
    for text in status_lines():
        print(text)  # noqa: T201


def load_ipython_extension(ipython: Any) -> None:
    ipython.register_magic_function(batt_magic, magic_kind="line", magic_name="batt")
    load()


def unload_ipython_extension(ipython: Any) -> None:
    unload()
