"""Jobs and workers of the systemd tests that operate the daemon (test_operate,
test_upgrade): counters whose output shows continuity, lease holders inside the
sandbox's namespaces, and what the daemon's log and status say about them."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from tests.helpers import REPO, killing, wait_until
from tests.integration.systemd.sandbox import Sandbox
from tests.support.systemd import UNIT, Service, base_config

# prints a numbered line every 100 ms, for five minutes
COUNTER = [
    sys.executable,
    "-c",
    "import itertools, time\n"
    "for n in itertools.count():\n"
    "    print(f'tick {n}', flush=True)\n"
    "    time.sleep(0.1)\n",
]


# a job inside the namespace: leases 2 workers, renews every 50 ms, prints each grant
JOB = textwrap.dedent(
    """
    import json, sys, time
    from supervisord_batt.client.leases import acquire
    grant = acquire(2, job="job", socket_path="/run/supervisord-batt/supervisord-batt.sock")
    seen = None
    while True:
        now = (grant.lease_id, grant.describe(), grant.degraded)
        if now != seen:
            print(json.dumps(now), flush=True)
            seen = now
        grant.renew(workers_in_use=0 if grant.kind == "sequential" else grant.size)
        time.sleep(0.05)
    """
)


@contextmanager
def lease_job(service: Service) -> Iterator[subprocess.Popen[str]]:
    """A lease holder in the sandbox's namespaces, killed (by pid) when the test ends."""
    proc = subprocess.Popen(
        ["nsenter", "-t", str(service.box.pid1), "-m", "-p", sys.executable, "-c", JOB],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
    )
    try:
        with killing(proc):
            yield proc
    finally:
        end_job(proc)


def end_job(proc: subprocess.Popen[str]) -> None:
    """nsenter forks into the pid namespace: the job is its child. Killed by pid first,
    then nsenter, so its pipes close."""
    with contextlib.suppress(OSError, ValueError):
        children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
        for pid in map(int, children):
            os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError):
        proc.kill()


def leases(service: Service) -> list[str]:
    return [lease["lease"] for lease in service.status().get("leases", [])]


def resumed(service: Service) -> int:
    """How many leases the daemon's log says were resumed by their jobs."""
    return service.box.console(tail=None).count('"event": "lease_resumed"')


def alive_inside(box: Sandbox, pid: int) -> bool:
    try:
        return box.host_path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except (OSError, IndexError):
        return False


def ticks(service: Service) -> dict[str, list[int]]:
    """instance -> the numbers its output lines carried, in the order the log has them."""
    out: dict[str, list[int]] = {}
    for line in service.box.console(tail=None).splitlines():
        if '"output"' not in line:
            continue
        try:
            event = json.loads(line[line.index("{") :])
        except (ValueError, json.JSONDecodeError):
            continue
        if event.get("event") == "output" and (m := re.fullmatch(r"tick (\d+)", event["line"])):
            out.setdefault(event["instance"], []).append(int(m.group(1)))
    return out


def four_counters() -> dict[str, Any]:
    config = base_config()
    config["programs"] = {
        "batt": {
            "command": COUNTER,
            "numprocs": 4,
            "wall_clock_limit": "300s",
            "stop_grace": "2s",
            "output": {"mode": "daemon"},
        }
    }
    return config


def running_counters(
    service: Service, config: dict[str, Any] | None = None
) -> dict[str, dict[str, Any]]:
    """Four counters (or `config`) started under the unit; their instances once each has
    a pid."""
    service.install(config or four_counters())
    service.box.systemctl("start", UNIT)
    return wait_until(
        lambda: (now := service.instances()) and all(i["pid"] for i in now.values()) and now,
        timeout=20,
    )


def eight_leases(
    service: Service, stack: ExitStack
) -> tuple[list[subprocess.Popen[str]], list[str]]:
    """Eight lease holders (ended with `stack`) and their lease ids once all are held."""
    jobs = [stack.enter_context(lease_job(service)) for _ in range(8)]
    held = wait_until(
        lambda: len(now := sorted(leases(service))) == 8 and now, timeout=30, what="8 leases"
    )
    return jobs, held


def assert_rode_through(jobs: list[subprocess.Popen[str]]) -> None:
    """Each job saw one grant throughout (no error, nothing else run) and resumed its
    lease once the daemon was back."""
    for job in jobs:
        end_job(job)
        stdout, err = job.communicate(timeout=10)
        assert len({tuple(json.loads(line)) for line in stdout.splitlines()}) == 1, stdout
        assert "resumed as" in err and "gone" not in err, err
