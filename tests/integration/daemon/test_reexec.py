"""`supervisord-batt reexec` (issue 23): the daemon replaces its program in place.

The same pid serves the same socket afterwards; its workers are the same processes,
still its children, with their deadlines and output; the jobs' leases come back under
the same ids, and no job falls back to sequential. A re-execution the new code cannot
make (its check of the config fails) is refused, and the daemon runs on.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import CALM, REPO, killing, wait_until

# a job: leases one worker, renews between "tasks" every 50 ms, prints its grant on
# every change; ends when its stdin closes
JOB = textwrap.dedent(
    """
    import json, sys, threading, time
    from supervisord_batt.client.leases import acquire
    grant = acquire(1, job=sys.argv[2], socket_path=sys.argv[1])
    done = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.read(), done.set()), daemon=True).start()
    seen = None
    while not done.is_set():
        now = (grant.lease_id, grant.describe(), grant.away, grant.degraded)
        if now != seen:
            print(json.dumps(now), flush=True)
            seen = now
        grant.renew(workers_in_use=0 if grant.kind == "sequential" else grant.size)
        time.sleep(0.05)
    grant.release()
    """
)

COUNTER = [
    sys.executable,
    "-c",
    "import itertools, time\n"
    "for n in itertools.count():\n"
    "    print(f'tick {n}', flush=True)\n"
    "    time.sleep(0.05)\n",
]


def _instances(d: Any) -> dict[str, dict[str, Any]]:
    return {i["name"]: i for i in d.status()["instances"]}


def _leases(d: Any) -> dict[str, int]:
    return {lease["lease"]: lease["pid"] for lease in d.status()["leases"]}


def _ticks(d: Any) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for event in d.events("output"):
        if m := re.fullmatch(r"tick (\d+)", event.get("line", "")):
            out.setdefault(event["instance"], []).append(int(m.group(1)))
    return out


@pytest.fixture
def jobs(tmp_path: Path) -> Iterator[Callable[[Any, int], list[subprocess.Popen[bytes]]]]:
    with ExitStack() as stack:

        def start(d: Any, count: int) -> list[subprocess.Popen[bytes]]:
            procs = []
            for i in range(count):
                err = stack.enter_context(open(tmp_path / f"job{i}.err", "wb"))
                proc = subprocess.Popen(
                    [sys.executable, "-c", JOB, str(d.socket), f"job{i}"],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=err,
                    env=dict(os.environ, PYTHONPATH=str(REPO)),
                )
                stack.enter_context(killing(proc))
                procs.append(proc)
            return procs

        yield start


def test_reexec_keeps_the_pid_the_workers_and_every_lease(
    daemon: Callable[..., Any],
    jobs: Callable[[Any, int], list[subprocess.Popen[bytes]]],
    tmp_path: Path,
) -> None:
    d = daemon(
        {
            "budget": {"pressure": CALM, "lease_ttl": "20s"},
            "programs": {
                "batt": {
                    "command": COUNTER,
                    "numprocs": 2,
                    "wall_clock_limit": "300s",
                    "stop_grace": "1s",
                    "output": {"mode": "daemon"},
                }
            },
        }
    )
    before = wait_until(
        lambda: (
            (now := _instances(d)) and all(i["state"] == "RUNNING" for i in now.values()) and now
        ),
        timeout=15,
        what="both workers running",
    )
    procs = jobs(d, 3)
    leases = wait_until(lambda: len(now := _leases(d)) == 3 and now, timeout=20, what="3 leases")
    wait_until(lambda: all(len(t) > 3 for t in _ticks(d).values()), timeout=10, what="output")

    out = d.cli("reexec")
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"re-executed in place: pid {d.proc.pid}" in out.stdout, out.stdout
    assert d.proc.poll() is None  # the same process, never exited
    started = d.events("started")
    assert len(started) == 2 and started[-1]["reexecuted"] is True
    assert started[-1]["pid"] == d.proc.pid

    # the same workers, adopted as children, on their first deadline
    after = _instances(d)
    assert {n: i["pid"] for n, i in after.items()} == {n: i["pid"] for n, i in before.items()}
    for inst in after.values():
        assert inst["state"] == "RUNNING", inst
        assert abs(inst["wall_clock_left_s"] + inst["uptime_s"] - 300) < 2.0, inst
    adopted = {e["instance"]: e for e in d.events("adopted")}
    assert set(adopted) == set(before) and all(e["child"] for e in adopted.values())
    # their output goes on through the pipes the exec passed, never from 0 again
    seen = {n: max(t) for n, t in _ticks(d).items()}
    wait_until(
        lambda: all(max(_ticks(d)[n]) > seen[n] + 3 for n in seen), timeout=10, what="output"
    )
    for name, ticks in _ticks(d).items():
        assert ticks == sorted(set(ticks)), name

    # every job resumed its lease under the same id, none fell back to sequential (the
    # new daemon holds the recorded leases for their jobs: status shows them at once,
    # and a job on a busy host takes its time to resume)
    assert _leases(d) == leases
    resumed = wait_until(
        lambda: len(now := d.events("lease_resumed")) == 3 and now,
        timeout=20,
        what="the 3 leases resumed",
    )
    assert sorted(e["lease"] for e in resumed) == sorted(leases)
    assert _leases(d) == leases
    for proc in procs:
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.close()
        assert proc.wait(timeout=20) == 0
        grants = [json.loads(line) for line in proc.stdout.read().decode().splitlines()]
        # one lease and one grant throughout: away for a moment, never degraded
        assert len({(lease, kind) for lease, kind, _, _ in grants}) == 1, grants
        assert not any(degraded for *_, degraded in grants), grants
    for i in range(3):
        said = (tmp_path / f"job{i}.err").read_text()
        assert "gone, running sequential" not in said, said
        assert "resumed as" in said, said
    wait_until(lambda: not _leases(d), timeout=10, what="the leases released")

    # and a stop afterwards stops the adopted workers like any other
    assert d.stop() == 0
    for inst in before.values():
        assert not Path(f"/proc/{inst['pid']}").exists()


def test_a_reexec_the_new_code_refuses_leaves_the_daemon_running(
    daemon: Callable[..., Any],
) -> None:
    d = daemon({"budget": {"pressure": CALM}, "programs": {"w": {"command": ["sleep", "300"]}}})
    pid = wait_until(lambda: _instances(d)["w:0"]["pid"], timeout=15, what="w running")
    good = d.config_path.read_text()
    d.config_path.write_text(good + "budget_typo: 1\n")
    out = d.cli("reexec")
    assert out.returncode == 1, out.stdout + out.stderr
    assert "budget_typo" in out.stderr, out.stderr
    assert d.proc.poll() is None
    assert _instances(d)["w:0"]["pid"] == pid
    assert not d.events("reexec") and len(d.events("started")) == 1
    assert d.events("reexec_refused")


def test_exec_under_a_sequential_grant_keeps_its_lease_through_renewals_and_a_reexec(
    daemon: Callable[..., Any], tmp_path: Path
) -> None:
    # a 3 s TTL: renewals every second; before, the first renew of a sequential grant
    # said "1 workers in use, 0 granted" and the lease was gone
    d = daemon({"budget": {"pressure": CALM, "lease_ttl": "3s"}})
    marker = tmp_path / "ran"
    command = [sys.executable, "-c", f"import time; time.sleep(7); open({str(marker)!r}, 'w')"]
    with open(tmp_path / "exec.err", "wb") as err:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "supervisord_batt",
                "exec",
                "--want",
                "0",
                "--socket",
                str(d.socket),
                "--",
                *command,
            ],
            stderr=err,
            env=dict(os.environ, PYTHONPATH=str(REPO)),
        )
        with killing(proc):
            lease = wait_until(lambda: list(_leases(d)), timeout=15, what="the exec's lease")
            out = d.cli("reexec")
            assert out.returncode == 0, out.stdout + out.stderr
            wait_until(lambda: d.events("lease_resumed"), timeout=10, what="the lease resumed")
            assert list(_leases(d)) == lease
            assert proc.wait(timeout=30) == 0
    assert marker.exists()
    said = (tmp_path / "exec.err").read_text()
    assert "gone" not in said, said
    assert not d.events("lease_expired"), said
