"""Operating the daemon without losing work, under a real systemd (issue 23).

A crash of the daemon (SIGKILL, as the OOM killer sends) restarts it and the new daemon
adopts the running workers: the same pids, their original deadlines, their output still
read from the pipes systemd kept. A stop still stops every worker, also when the daemon
does not finish its own stop in time.
"""

from __future__ import annotations

import json
import sys
from contextlib import ExitStack
from typing import Any

from tests.helpers import wait_until
from tests.integration.systemd.jobs import (
    alive_inside,
    assert_rode_through,
    eight_leases,
    end_job,
    four_counters,
    lease_job,
    leases,
    resumed,
    running_counters,
    ticks,
)
from tests.support.systemd import UNIT, Service, base_config


def test_a_killed_daemon_is_restarted_and_adopts_its_running_workers(service: Service) -> None:
    service.install(four_counters())
    service.box.systemctl("start", UNIT)
    before = wait_until(
        lambda: (now := service.instances()) and all(i["pid"] for i in now.values()) and now,
        timeout=20,
    )
    assert len(before) == 4
    wait_until(lambda: all(len(t) > 5 for t in ticks(service).values()), timeout=20)
    main = service.show("MainPID")["MainPID"]
    with lease_job(service) as job:
        lease = wait_until(lambda: leases(service), timeout=20, what="the job's lease")
        # the record takes leases once a tick: a crash before it would lose this one
        record = service.box.host_path("/run/supervisord-batt/supervisord-batt.sock.state")
        wait_until(lambda: f'"lease": "{lease[0]}"' in record.read_text(), timeout=10)
        _crash_and_adopt(service, before, main)
        # the job kept its pool and got its lease back from the new daemon
        # (the new daemon lists the lease at once: it holds it for the job meanwhile)
        wait_until(lambda: resumed(service) == 1, timeout=20, what="the lease resumed")
        assert leases(service) == lease
        end_job(job)
        out, err = job.communicate(timeout=10)
    grants = {tuple(json.loads(line)) for line in out.splitlines()}
    assert len(grants) == 1 and not next(iter(grants))[2], (grants, err)
    assert "resumed as" in err and "gone" not in err, err

    # and a stop afterwards still stops every one of them, and leaves nothing
    service.box.systemctl("stop", UNIT)
    assert service.show("ActiveState")["ActiveState"] == "inactive"
    assert not any(alive_inside(service.box, i["pid"]) for i in before.values())
    assert not service.box.host_path("/run/supervisord-batt").exists()


def _crash_and_adopt(service: Service, before: dict[str, dict[str, Any]], main: str) -> None:

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
    seen = {n: max(t) for n, t in ticks(service).items()}
    wait_until(
        lambda: all(max(ticks(service)[n]) > seen[n] + 5 for n in seen),
        timeout=20,
        what="output after the restart",
    )
    for name, seq in ticks(service).items():
        assert seq == sorted(set(seq)), name  # one process counting on: never again from 0
    assert all(alive_inside(service.box, inst["pid"]) for inst in before.values())
    assert "supervisord-batt cleanup: the daemon crashed (signal)" in service.box.console(tail=None)


def test_reexec_keeps_the_main_pid_its_workers_and_the_jobs_leases(service: Service) -> None:
    before = running_counters(service)
    main = service.show("MainPID")["MainPID"]
    with ExitStack() as stack:
        jobs, held = eight_leases(service, stack)
        out = service.cli("reexec")
        assert f"re-executed in place: pid {main}" in out.stdout, out.stdout + out.stderr
        state = service.show("MainPID", "NRestarts", "ActiveState", "SubState")
        assert state == {
            "MainPID": main,
            "NRestarts": "0",
            "ActiveState": "active",
            "SubState": "running",
        }, state
        after = service.instances()
        assert {n: i["pid"] for n, i in after.items()} == {n: i["pid"] for n, i in before.items()}
        assert all(i["restarts"] == 0 for i in after.values()), after
        wait_until(lambda: resumed(service) == 8, timeout=20, what="the 8 leases resumed")
        assert sorted(leases(service)) == held
        seen = {n: max(t) for n, t in ticks(service).items()}
        wait_until(
            lambda: all(max(ticks(service)[n]) > seen[n] + 5 for n in seen),
            timeout=20,
            what="output after the re-execution",
        )
        assert_rode_through(jobs)
    # a reload still reaches the new program (ExecReload, same MainPID)
    service.box.systemctl("reload", UNIT)
    assert service.show("MainPID", "NRestarts") == {"MainPID": main, "NRestarts": "0"}


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
    assert not any(alive_inside(service.box, pid) for pid in pids)
    console = service.box.console(tail=None)
    assert "supervisord-batt cleanup: w:0: SIGKILL to" in console, console[-3000:]
