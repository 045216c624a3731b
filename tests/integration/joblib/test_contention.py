"""Several joblib users in one pids cgroup sized for half their unguarded demand: with the
backend they all finish, and the cgroup never refuses a task."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

from tests.helpers import CALM, REPO, PidsCgroup, killing
from tests.support.daemons import DaemonHandle

JOBS = 4
N_JOBS = 4
DEADLINE = 60.0

JOB = textwrap.dedent(
    """
    import json, sys, time
    import joblib

    def work(x):
        end = time.monotonic() + 0.2
        while time.monotonic() < end:
            pass
        return x * x

    if sys.argv[1] == "batt":
        import supervisord_batt.joblib
        joblib.parallel_config(backend="supervisord-batt")
    out = joblib.Parallel(n_jobs=int(sys.argv[2]))(joblib.delayed(work)(i) for i in range(8))
    print(json.dumps(out))
    """
)


def _start(script: Path, mode: str, cg: PidsCgroup, socket: Path | None) -> subprocess.Popen[str]:
    env = {"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}
    if socket is not None:
        env["SUPERVISORD_BATT_SOCKET"] = str(socket)
    return subprocess.Popen(
        [sys.executable, str(script), mode, str(N_JOBS)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=cg.preexec(),
    )


def _unguarded_peak(script: Path, cg: PidsCgroup) -> int:
    """Tasks one plain joblib job reaches (sampled: a lower bound of its real peak)."""
    peak = 0
    with killing(_start(script, "plain", cg, None)) as proc:
        deadline = time.monotonic() + DEADLINE
        while proc.poll() is None and time.monotonic() < deadline:
            peak = max(peak, cg.current())
            time.sleep(0.002)
        out, err = proc.communicate(timeout=DEADLINE)
    assert proc.returncode == 0, err
    assert json.loads(out) == [x * x for x in range(8)]
    return peak


def test_concurrent_joblib_users_fit_a_cgroup_of_half_their_demand(
    pids_cgroup: Callable[..., PidsCgroup], daemon: Callable[..., DaemonHandle], tmp_path: Path
) -> None:
    script = tmp_path / "job.py"
    script.write_text(JOB)
    peak = _unguarded_peak(script, pids_cgroup())
    assert peak > N_JOBS + 1, f"the plain job never started its pool ({peak} tasks)"
    cg = pids_cgroup()
    cg.set_max(JOBS * peak // 2)
    d = daemon(
        {
            "budget": {
                "cgroups": [cg.cgroup_path],
                "reserve_tasks": 0,
                "reserve_percent": 0,
                "cpu_cap": 16,
                "memory_per_slot": "1MiB",
                "pressure": CALM,
            }
        }
    )
    procs = [_start(script, "batt", cg, d.socket) for _ in range(JOBS)]
    try:
        results = [p.communicate(timeout=DEADLINE) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait(timeout=10)
    for p, (out, err) in zip(procs, results, strict=True):
        assert p.returncode == 0, err
        assert json.loads(out) == [x * x for x in range(8)], err
    said = [e for e in d.events() if e.get("event") in ("grant", "deny", "renew", "learned")]
    assert cg.events_max() == 0, (f"the cgroup of {JOBS * peak // 2} refused a task", said)
    assert any(e.get("kind") == "process" for e in d.events("grant")), d.log_text()[-2000:]
