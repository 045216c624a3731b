"""A reload applies in place (issue 23): tuning a limit never kills a running job.

Before, a reload that changed only `wall_clock_limit` restarted every running instance
of the program. Now limits and thresholds apply to the running instances (the limit
counted from each one's start), what a worker is (its command) at its next start or at
once with `--restart-changed`, and numprocs down stops only the extra instances. Start,
stop and restart wait for a reload in progress instead of racing it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import yaml

from tests.helpers import CALM, REPO, wait_until

JOB = ["sleep", "300"]  # a 5-minute job


def _instances(d: Any) -> dict[str, dict[str, Any]]:
    return {i["name"]: i for i in d.status()["instances"]}


def _running(d: Any, names: list[str]) -> dict[str, dict[str, Any]]:
    now = _instances(d)
    return now if all(now[n]["state"] == "RUNNING" for n in names) else {}


def _rewrite(d: Any, change: Callable[[dict[str, Any]], None]) -> None:
    config = yaml.safe_load(d.config_path.read_text())
    change(config)
    d.config_path.write_text(yaml.safe_dump(config))


def test_a_new_wall_clock_limit_and_thresholds_apply_to_the_running_jobs(
    daemon: Callable[..., Any],
) -> None:
    names = [f"batt:{i}" for i in range(4)]
    d = daemon(
        {
            "budget": {"pressure": CALM},
            "programs": {
                "batt": {
                    "command": JOB,
                    "numprocs": 4,
                    "wall_clock_limit": "300s",
                    "stop_grace": "200ms",
                    "output": {"mode": "daemon"},
                }
            },
        }
    )
    before = wait_until(lambda: _running(d, names), timeout=15, what="four jobs running")
    started = time.monotonic() - max(before[n]["uptime_s"] for n in names)

    def tune(config: dict[str, Any]) -> None:
        config["programs"]["batt"]["wall_clock_limit"] = "6s"
        config["budget"]["pressure"] = dict(CALM, headroom_high_percent=30.0)

    _rewrite(d, tune)
    out = d.cli("reload")
    assert out.returncode == 0, out.stderr
    assert "batt: applied now: wall_clock_limit" in out.stdout, out.stdout
    after = _instances(d)
    assert {n: after[n]["pid"] for n in names} == {n: before[n]["pid"] for n in names}
    assert all(after[n]["state"] == "RUNNING" for n in names)
    reloaded = d.events("reloaded")[-1]
    assert reloaded["programs"]["batt"]["in_place"] == ["wall_clock_limit"]
    assert "restarted" not in reloaded["programs"]["batt"]
    # the new limit counts from each job's start, not from the reload
    kills = wait_until(
        lambda: len(d.events("timeout_kill")) >= 4 and d.events("timeout_kill"),
        timeout=30,
        what="the four kills at the new limit",
    )
    assert {k["pid"] for k in kills[:4]} == {before[n]["pid"] for n in names}
    for k in kills[:4]:
        assert k["reason"] == "wall_clock_limit"
        assert 6.0 <= k["runtime_s"] < 6.0 + 3.0, k
    assert time.monotonic() - started < 60


def test_what_a_worker_is_changes_at_its_next_start_or_now_on_request(
    daemon: Callable[..., Any], py: Callable[[str], list[str]]
) -> None:
    d = daemon(
        {
            "programs": {
                "batt": {
                    "command": JOB,
                    "numprocs": 3,
                    "stop_grace": "200ms",
                    "output": {"mode": "daemon"},
                }
            }
        }
    )
    names = ["batt:0", "batt:1", "batt:2"]
    before = wait_until(lambda: _running(d, names), timeout=15, what="three running")
    new_job = py("import time; print('new job', flush=True); time.sleep(300)")

    def new_command(config: dict[str, Any]) -> None:
        config["programs"]["batt"]["command"] = new_job
        config["programs"]["batt"]["numprocs"] = 2

    _rewrite(d, new_command)
    out = d.cli("reload")
    assert out.returncode == 0, out.stderr
    assert "at each instance's next start: command" in out.stdout, out.stdout
    assert "stopped batt:2" in out.stdout
    now = _instances(d)
    # numprocs down stopped only batt:2; the other two still run the old command
    assert set(now) == {"batt:0", "batt:1"}
    assert [now[n]["pid"] for n in ("batt:0", "batt:1")] == [
        before["batt:0"]["pid"],
        before["batt:1"]["pid"],
    ]
    assert [e for e in d.events("tree_killed") if e["pid"] == before["batt:2"]["pid"]]
    # the operator asks for it now: both restart with the new command
    out = d.cli("reload", "--restart-changed")
    assert out.returncode == 0, out.stderr
    assert "restarted batt:0, batt:1" in out.stdout, out.stdout
    wait_until(lambda: len([e for e in d.events("output") if e["line"] == "new job"]) == 2)
    now = wait_until(lambda: _running(d, ["batt:0", "batt:1"]), timeout=15)
    assert now["batt:0"]["pid"] != before["batt:0"]["pid"]


def test_a_start_during_a_reload_waits_for_it_and_every_kill_is_logged(
    daemon: Callable[..., Any], py: Callable[[str], list[str]]
) -> None:
    stubborn = py(
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"
    )
    d = daemon(
        {
            "programs": {
                "a": {"command": stubborn, "stop_grace": "1500ms", "output": {"mode": "daemon"}},
                "b": {"command": JOB, "output": {"mode": "daemon"}},
            }
        }
    )
    before = wait_until(lambda: _running(d, ["a:0", "b:0"]), timeout=15)
    # the reload restarts a:0 now (its command changed): its stop takes the 1.5 s grace
    _rewrite(d, lambda c: c["programs"]["a"].update(command=[*stubborn, "changed"]))
    env = dict(os.environ, PYTHONPATH=str(REPO))
    argv = ["reload", "--restart-changed", "--socket", str(d.socket)]
    reload = subprocess.Popen(
        [sys.executable, "-m", "supervisord_batt", *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        wait_until(
            lambda: any(e.get("to") == "STOPPING" for e in d.events("transition")),
            timeout=10,
            what="the reload stopping a:0",
        )
        start = d.cli("start", "a:0")  # during the reload: it waits for it
        _, err = reload.communicate(timeout=60)
    finally:
        if reload.poll() is None:
            reload.kill()
            reload.wait()
    assert reload.returncode == 0, err
    assert start.returncode == 0, start.stderr
    assert "a:0: RUNNING" in start.stdout
    lines = [e.get("event") for e in d.events()]
    assert lines.index("reloaded") < max(
        i for i, e in enumerate(d.events()) if e.get("event") == "control" and e["op"] == "start"
    )
    # every tree that went was killed with a line that says why
    now = wait_until(lambda: _running(d, ["a:0", "b:0"]), timeout=15)
    killed = {e["pid"]: e["reason"] for e in d.events("tree_killed")}
    assert killed == {before["a:0"]["pid"]: "stopped"}
    assert now["b:0"]["pid"] == before["b:0"]["pid"]
    assert now["a:0"]["pid"] != before["a:0"]["pid"]
