"""Issue 24: an OOM kill the kernel reports teaches its victim's job the victim's size.

A job never seen leases a pool of 2 through the project's client (charged
memory_per_slot, 32 MiB each) and starts one worker, which moves itself into a real
memory cgroup of 256 MiB and writes more than that: the kernel's OOM killer ends it.
No scan sees it (scan_interval 60 s): before, the run taught nothing and the job's next
run was charged 32 MiB again; now the daemon reads the kill from /dev/kmsg, attributes
it to the job's lease through the worker's parent, and the job is charged twice what
the worker held at the kill (about the cgroup's limit; killed mid-write, it held part
of its data), in `status` ("learned from an OOM kill") and in its next grant."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pytest

from tests.helpers import CALM, REPO, killing, wait_until
from tests.support.allocating import allocating_job, limit_seen
from tests.support.daemons import DaemonHandle

if TYPE_CHECKING:
    from tests.helpers import MemoryCgroup

MIB = 1 << 20
GIB = 1 << 30
LIMIT = 256 * MIB
WANT = 8

# leases a pool of 2 and starts one worker, which joins the cgroup (argv[2]) and writes
# 1 GiB
# a worker that joins the memory cgroup whose cgroup.procs is its argv[1], then writes 1 GiB
WRITER = (
    "import os, sys\n"
    "with open(sys.argv[1], 'w') as f:\n"
    "    f.write(str(os.getpid()))\n"
    "held = b'\\x01' * (1 << 30)\n"
)

JOB = textwrap.dedent(
    """
    import json, subprocess, sys
    from supervisord_batt.client import lease
    WORKER = WRITER
    with lease(2, kinds=["process"], job="oomed", socket_path=sys.argv[1]) as grant:
        print(json.dumps({"kind": grant.kind, "workers": grant.workers}), flush=True)
        worker = subprocess.Popen([sys.executable, "-c", WORKER, sys.argv[2]])
        print(json.dumps({"killed": worker.wait()}), flush=True)
        sys.stdin.read()
    """
).replace("= WRITER", "= " + repr(WRITER))


def budget_of(cg: MemoryCgroup) -> dict[str, Any]:
    """A budget where memory binds (in `cg`): CPUs and tasks cannot, nor pressure."""
    return {
        "cgroups": [cg.cgroup_path],
        "reserve_tasks": 0,
        "reserve_percent": 0,
        "cpu_cap": 64,
        "max_per_lease": WANT,
        "memory_per_slot": "32MiB",
        "pressure": CALM,
    }


def charged(d: DaemonHandle, job: str = "oomed") -> tuple[int, int, bool] | None:
    """(worker_bytes, learned_runs, learned_from_kill) of the lease row of `job`."""
    rows = [r for r in d.status()["leases"] if r["job"] == job]
    if not rows:
        return None
    row = rows[0]
    return row["worker_bytes"], row["learned_runs"], bool(row.get("learned_from_kill"))


def test_issue24_an_oom_kill_teaches_its_jobs_worker_size(
    memory_cgroup: Callable[..., MemoryCgroup], daemon: Callable[..., DaemonHandle]
) -> None:
    if not os.access("/dev/kmsg", os.R_OK):
        pytest.skip("needs a readable /dev/kmsg")
    cg = memory_cgroup()
    cg.set_limit(LIMIT)
    d = daemon({"budget": budget_of(cg), "daemon": {"scan_interval": "60s"}})
    procs = str(cg.path / "cgroup.procs")
    proc = subprocess.Popen(
        [sys.executable, "-c", JOB, str(d.socket), procs],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
    )
    with killing(proc):
        assert proc.stdout is not None and proc.stdin is not None
        assert json.loads(proc.stdout.readline()) == {"kind": "process", "workers": 2}
        assert charged(d) == (32 * MIB, 0, False)  # never seen: memory_per_slot
        assert json.loads(proc.stdout.readline()) == {"killed": -9}
        assert cg.oom_kills() == 1
        # the worker held about the cgroup's limit when it was killed (the kernel's
        # figure: its anon, file and shmem pages, what statm shows; its interpreter's
        # file pages were charged to the cgroup it started in, so it may be above)
        size, runs, from_kill = wait_until(
            lambda: (c := charged(d)) is not None and c[0] > 32 * MIB and c,
            what="the daemon to learn the killed worker's size",
        )
        # charged twice that: killed mid-write, it held part of its data
        assert 2 * (LIMIT - 40 * MIB) <= size <= 2 * (LIMIT + 40 * MIB), size
        assert runs == 1 and from_kill, (runs, from_kill)
        shown = d.cli("status")
        assert shown.returncode == 0, shown.stderr
        assert "oomed: " in shown.stdout and "learned from an OOM kill" in shown.stdout, (
            shown.stdout
        )
        proc.stdin.close()
        assert proc.wait(timeout=30) == 0
    log = d.log_path.read_text()
    seen = [json.loads(x) for x in log.splitlines() if '"oom_kill_seen"' in x]
    seen = [e for e in seen if e["lease"] is not None]  # other kills on the host: no lease
    assert len(seen) == 1 and seen[0]["job"] == "oomed" and 2 * seen[0]["rss"] == size, seen
    # the kernel names the cgroup in a record it rate-limits (10 kills in a few seconds
    # on the host, docs/FACTS.md): another test's kills may have taken it
    assert seen[0]["cgroup"] in (cg.cgroup_path, None), seen
    # its next run is charged that: a pool of what 2 GiB holds of it, not of 32 MiB
    cg.set_limit(2 * GIB)
    wait_until(lambda: limit_seen(d, cg.cgroup_path) == 2 * GIB, what="the limit raised")
    with allocating_job(d, "oomed", 0, WANT, run=False, preexec_fn=cg.preexec()) as grant:
        assert charged(d) == (size, 1, True)
        assert grant["kind"] == "process" and 1 <= grant["workers"] <= 2 * GIB // size, grant


# leases a pool of 2 and starts a worker that stays bare; once a line comes on stdin, a
# second worker that joins the cgroup (argv[2]) and writes 1 GiB
REAPED_JOB = textwrap.dedent(
    """
    import json, subprocess, sys
    from supervisord_batt.client import lease
    BARE = "import sys; sys.stdin.read()"
    BIG = WRITER
    with lease(2, kinds=["process"], job="reaped", socket_path=sys.argv[1]) as grant:
        bare = subprocess.Popen([sys.executable, "-c", BARE], stdin=subprocess.PIPE)
        print(json.dumps({"kind": grant.kind}), flush=True)
        sys.stdin.readline()
        big = subprocess.Popen([sys.executable, "-c", BIG, sys.argv[2]])
        print(json.dumps({"killed": big.wait()}), flush=True)
        sys.stdin.read()
        bare.stdin.close()
        bare.wait()
    """
).replace("= WRITER", "= " + repr(WRITER))


def test_issue24_a_kill_read_after_its_victim_was_reaped_has_the_run_judged(
    memory_cgroup: Callable[..., MemoryCgroup],
    daemon: Callable[..., DaemonHandle],
) -> None:
    """The daemon's loop was busy (here: stopped) while a worker started since the last
    scan was killed and its job reaped it: the report names a pid that neither /proc nor
    the scan knows, so no lease. The run must still be judged cut short, as the cgroups'
    counts would judge it: before, those were not read while the log was, and the run
    taught the bare size a scan saw its other worker at."""
    if not os.access("/dev/kmsg", os.R_OK):
        pytest.skip("needs a readable /dev/kmsg")
    cg = memory_cgroup()
    cg.set_limit(LIMIT)
    d = daemon({"budget": budget_of(cg), "daemon": {"scan_interval": "1s"}})
    argv = [sys.executable, "-c", REAPED_JOB, str(d.socket), str(cg.path / "cgroup.procs")]
    proc = subprocess.Popen(
        argv,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
    )
    with killing(proc):
        assert proc.stdout is not None and proc.stdin is not None
        assert json.loads(proc.stdout.readline()) == {"kind": "process"}
        # a scan saw the bare worker (its live peak lowers the figure)
        wait_until(
            lambda: (c := charged(d, "reaped")) is not None and c[0] < 32 * MIB,
            what="a scan to see the bare worker",
        )
        d.proc.send_signal(signal.SIGSTOP)
        try:
            proc.stdin.write(b"go\n")
            proc.stdin.flush()
            assert json.loads(proc.stdout.readline()) == {"killed": -9}  # and reaped
        finally:
            d.proc.send_signal(signal.SIGCONT)
        assert cg.oom_kills() == 1
        wait_until(lambda: d.events("oom_kill_seen"), what="the kill read")
        assert all(e["lease"] is None for e in d.events("oom_kill_seen"))
        proc.stdin.close()
        assert proc.wait(timeout=30) == 0
    wait_until(lambda: charged(d, "reaped") is None, what="the lease released")
    # the run ended judged: its bare peak, under its 32 MiB charge, taught nothing (no
    # ended run; this lease's own live run is the test's tree, not the job's)
    with d.client() as c:
        assert c.request("acquire", want=2, job="reaped", kinds=["process"])["ok"]
        assert (row := charged(d, "reaped")) is not None and row[1:] == (0, False), row
