"""Operating the daemon without losing work, under a real systemd (issue 23).

A crash of the daemon (SIGKILL, as the OOM killer sends) restarts it and the new daemon
adopts the running workers: the same pids, their original deadlines, their output still
read from the pipes systemd kept. A stop still stops every worker, also when the daemon
does not finish its own stop in time.
"""

from __future__ import annotations

import json
import re
import sys
from typing import Any

from tests.helpers import wait_until
from tests.integration.systemd.conftest import UNIT, Service, base_config
from tests.integration.systemd.sandbox import Sandbox

# prints a numbered line every 100 ms, for five minutes
COUNTER = [
    sys.executable,
    "-c",
    "import itertools, time\n"
    "for n in itertools.count():\n"
    "    print(f'tick {n}', flush=True)\n"
    "    time.sleep(0.1)\n",
]


def _alive_inside(box: Sandbox, pid: int) -> bool:
    try:
        return box.host_path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except (OSError, IndexError):
        return False


def _ticks(service: Service) -> dict[str, list[int]]:
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


def _four_counters() -> dict[str, Any]:
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


def test_a_killed_daemon_is_restarted_and_adopts_its_running_workers(service: Service) -> None:
    service.install(_four_counters())
    service.box.systemctl("start", UNIT)
    before = wait_until(
        lambda: (now := service.instances()) and all(i["pid"] for i in now.values()) and now,
        timeout=20,
    )
    assert len(before) == 4
    wait_until(lambda: all(len(t) > 5 for t in _ticks(service).values()), timeout=20)
    main = service.show("MainPID")["MainPID"]

    service.box.systemctl("kill", "--kill-whom=main", "-s", "SIGKILL", UNIT)
    wait_until(
        lambda: (
            service.show("NRestarts", "ActiveState") == {"NRestarts": "1", "ActiveState": "active"}
        ),
        timeout=30,
        what="the restart",
    )
    assert service.show("MainPID")["MainPID"] != main
    after = service.instances()
    assert {n: i["pid"] for n, i in after.items()} == {n: i["pid"] for n, i in before.items()}
    for name, inst in after.items():
        assert inst["state"] == "RUNNING"
        # the same deadline: counted from the first start, not from the adoption
        assert inst["uptime_s"] > before[name]["uptime_s"]
        left = inst["wall_clock_left_s"]
        assert abs(left + inst["uptime_s"] - 300) < 2.0, inst
    # their output goes on, from where it was, through the pipes systemd kept
    seen = {n: max(t) for n, t in _ticks(service).items()}
    wait_until(
        lambda: all(max(_ticks(service)[n]) > seen[n] + 5 for n in seen),
        timeout=20,
        what="output after the restart",
    )
    for name, ticks in _ticks(service).items():
        assert ticks == sorted(set(ticks)), name  # one process counting on: never again from 0
    assert all(_alive_inside(service.box, inst["pid"]) for inst in before.values())
    assert "supervisord-batt cleanup: the daemon crashed (signal)" in service.box.console(tail=None)

    # and a stop afterwards still stops every one of them, and leaves nothing
    service.box.systemctl("stop", UNIT)
    assert service.show("ActiveState")["ActiveState"] == "inactive"
    assert not any(_alive_inside(service.box, i["pid"]) for i in before.values())
    assert not service.box.host_path("/run/supervisord-batt").exists()


def test_a_stop_the_daemon_does_not_finish_in_time_still_stops_every_worker(
    service: Service,
) -> None:
    stubborn = [
        sys.executable,
        "-c",
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)",
    ]
    config = base_config()
    config["programs"] = {"w": {"command": stubborn, "numprocs": 2, "stop_grace": "60s"}}
    # the daemon waits out the 60 s grace; systemd kills it after 2 s
    service.install(config, TimeoutStopSec="2s")
    service.box.systemctl("start", UNIT)
    pids = [i["pid"] for i in service.instances().values()]
    assert len(pids) == 2 and all(pids)
    service.box.systemctl("stop", UNIT, check=False)
    state = service.show("ActiveState", "Result")
    assert state["ActiveState"] in ("inactive", "failed") and state["Result"] == "timeout", state
    assert not any(_alive_inside(service.box, pid) for pid in pids)
    console = service.box.console(tail=None)
    assert "supervisord-batt cleanup: w:0: SIGKILL to" in console, console[-3000:]
