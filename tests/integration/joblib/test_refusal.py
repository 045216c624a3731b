"""Where plain joblib fails or hangs on a refused thread or process, the backend falls
back (process -> thread -> sequential), finishes, and tells the daemon."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.helpers import CALM, REPO, PidsCgroup, killing, wait_until
from tests.support.daemons import DaemonHandle

DEADLINE = 60.0

JOB = textwrap.dedent(
    """
    import json, sys
    import joblib
    import supervisord_batt.joblib

    def pids_current():
        for line in open("/proc/self/cgroup"):
            _, controllers, path = line.rstrip("\\n").split(":", 2)
            if "pids" in controllers.split(","):
                return int(open(f"/sys/fs/cgroup/pids{path}/pids.current").read())

    def square(x):
        return x * x + 1

    joblib.parallel_config(backend="supervisord-batt")
    joblib.Parallel(n_jobs=1)(joblib.delayed(square)(x) for x in range(2))  # warm imports
    print(pids_current(), flush=True)
    sys.stdin.readline()  # the test sets pids.max
    out = joblib.Parallel(n_jobs=2)(joblib.delayed(square)(x) for x in range(6))
    print(json.dumps(out), flush=True)
    """
)


# a pool of 2 creates, in order: loky's tracker, multiprocessing's tracker, worker 1,
# worker 2, the manager thread, the feeder thread (docs/FACTS.md); headroom k refuses the
# (k+1)-th. joblib ships loky 3.6.0, where a refused feeder thread is hang A.
STEPS = ["loky-tracker", "mp-tracker", "worker-1", "worker-2", "manager-thread", "feeder-thread"]


@pytest.mark.parametrize("headroom", range(len(STEPS)), ids=STEPS)
def test_a_refused_pool_falls_back_and_the_daemon_hears_of_it(
    pids_cgroup: Callable[..., PidsCgroup],
    daemon: Callable[..., DaemonHandle],
    tmp_path: Path,
    headroom: int,
) -> None:
    d = daemon({"budget": {"cpu_cap": 4, "memory_per_slot": "1MiB", "pressure": CALM}})
    script = tmp_path / "job.py"
    script.write_text(JOB)
    cg = pids_cgroup()
    env = {"PYTHONPATH": str(REPO), "SUPERVISORD_BATT_SOCKET": str(d.socket)}
    proc = subprocess.Popen(
        [sys.executable, str(script)],
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=cg.preexec(),
    )
    with killing(proc):
        assert proc.stdin is not None and proc.stdout is not None
        baseline = int(proc.stdout.readline())
        cg.set_max(baseline + headroom)
        proc.stdin.write("go\n")
        proc.stdin.flush()
        try:
            out, err = proc.communicate(timeout=DEADLINE)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the job hung: still running after {DEADLINE}s")
    assert proc.returncode == 0, err
    assert json.loads(out.splitlines()[-1]) == [x * x + 1 for x in range(6)]
    assert cg.events_max() >= 1, "the limit never refused anything"
    assert "joblib process pool of 2 failed" in err, err
    events = wait_until(
        lambda: d.events("executor_fallback"), timeout=10, what="the fallback report"
    )
    assert (events[0]["from"], events[0]["job"]) == ("process", "supervisord-batt"), events
    wait_until(lambda: cg.procs() == [], timeout=10, what="an empty cgroup")
    wait_until(lambda: d.status()["leases"] == [], timeout=10, what="the lease given back")
