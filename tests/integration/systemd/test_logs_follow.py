"""`logs -f` on the unit's journal (issue 25): the last events, then each new one, as
`journalctl -f` does; it printed the whole history before following."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
from typing import Any

from tests.helpers import killing, wait_until
from tests.integration.systemd.sandbox import Sandbox
from tests.support.systemd import UNIT, Service, base_config, journal_events

WHAT = ("--event", "started", "--event", "reloaded")


def follow(service: Service, *args: str) -> subprocess.Popen[bytes]:
    """`logs -f ARGS --json` inside the sandbox, reading the unit's journal."""
    argv = [*service.command.split(), "logs", "-f", *args, "--json", "-c", str(service.config)]
    proc = subprocess.Popen(
        ["nsenter", "-t", str(service.box.pid1), "-m", "-p", *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stderr is not None
    os.set_blocking(proc.stdout.fileno(), False)
    os.set_blocking(proc.stderr.fileno(), False)
    return proc


def printed(proc: subprocess.Popen[bytes], seen: dict[str, bytearray]) -> dict[str, Any]:
    for name in ("stdout", "stderr"):
        seen[name].extend(getattr(proc, name).read() or b"")
    events = [json.loads(x)["event"] for x in seen["stdout"].decode().splitlines()]
    return {"events": events, "following": b"following new events" in seen["stderr"]}


def test_issue25_logs_follow_on_the_journal_starts_from_the_last_events(
    journaled: Sandbox,
) -> None:
    service = Service(journaled)
    service.install(base_config())
    journaled.systemctl("start", UNIT)
    for _ in range(2):  # a history of three: started, reloaded, reloaded
        journaled.systemctl("reload", UNIT)
    cases = {("-n", "1"): ["reloaded"], ("-n", "0"): [], ("-n", "2"): ["reloaded"] * 2}
    seen = {args: {"stdout": bytearray(), "stderr": bytearray()} for args in cases}
    with contextlib.ExitStack() as stack:  # each killed by its pid; the sandbox, the rest
        procs = {
            args: stack.enter_context(killing(follow(service, *WHAT, *args))) for args in cases
        }
        for args, want in cases.items():
            wait_until(
                lambda: printed(procs[args], seen[args]) == {"events": want, "following": True},  # noqa: B023
                timeout=30,
                what=f"the history of logs -f {args}",
            )
        journaled.systemctl("restart", UNIT)  # a new `started`, after the history
        for args, want in cases.items():
            wait_until(
                lambda: printed(procs[args], seen[args])["events"] == [*want, "started"],  # noqa: B023
                timeout=30,
                what=f"the new event from logs -f {args}",
            )


def test_the_shipped_unit_lets_the_daemon_read_the_kernels_oom_kill_reports(
    journaled: Sandbox,
) -> None:
    """The daemon learns a killed worker's size from /dev/kmsg (issue 24): the unit's
    hardening must leave it readable (ProtectKernelLogs= would hide it)."""
    service = Service(journaled)
    service.install(base_config())
    journaled.systemctl("start", UNIT)
    events = journal_events(journaled, until="started")  # it says so before `started`
    unreadable = [e for e in events if e["event"] == "kernel_log_unreadable"]
    assert unreadable == [], unreadable
