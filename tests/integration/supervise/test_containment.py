"""A job that ignores its grant hurts only itself (issue 11): its worker cgroup's
pids.max follows its lease, so the job runs out of tasks in its own cgroup."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.helpers import CALM, wait_until

GREEDY = r"""
import json, threading, time
from supervisord_batt.client import lease
stop = threading.Event()
with lease(want=2, kinds=("thread",), job="greedy") as g:
    started = 0
    try:
        for _ in range(40):  # granted 2 threads; it tries for 40
            threading.Thread(target=stop.wait, daemon=True).start()
            started += 1
    except RuntimeError as exc:
        refused = str(exc)
    else:
        refused = None
    print(json.dumps({"kind": g.kind, "workers": g.workers, "started": started,
                      "refused": refused}), flush=True)
    stop.set()
    time.sleep(0.5)
time.sleep(600)
"""


def test_a_job_that_ignores_its_grant_runs_out_in_its_own_cgroup(
    daemon: Callable[..., Any], needs_root: None
) -> None:
    d = daemon(
        {
            "budget": {"pressure": CALM, "reserve_tasks": 0, "reserve_percent": 0},
            "programs": {
                "greedy": {
                    "command": [sys.executable, "-c", GREEDY],
                    "output": {"mode": "daemon"},
                    "tasks_without_lease": 16,
                }
            },
        }
    )
    line = wait_until(
        lambda: [e for e in d.events("output") if e.get("line", "").startswith("{")],
        timeout=30,
        what="the greedy job's report",
    )
    report = json.loads(line[0]["line"])
    assert (report["kind"], report["workers"]) == ("thread", 2), report
    assert report["refused"] == "can't start new thread"
    values = [e["value"] for e in d.events("tasks_max")]
    # no lease yet: 16; leased 2 threads: its tasks then (at least 1) + 2 + 4
    assert values[0] == 16
    leased = values[1]
    assert 2 + 4 + 1 <= leased <= 2 + 4 + 3, values
    assert report["started"] <= leased - 1  # the main thread counts too
    # released: back to the ceiling without a lease
    wait_until(lambda: [e["value"] for e in d.events("tasks_max")][-1] == 16, timeout=10)
    (spawn,) = d.events("spawn")
    cgroup = Path(spawn["cgroup"])
    assert (cgroup / "pids.max").read_text().strip() == "16"
    assert int((cgroup / "pids.events").read_text().split()[1]) >= 1  # refusals were its own
