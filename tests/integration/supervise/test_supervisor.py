"""Supervision for real: wall-clock kills of whole trees, restarts, backoff, FATAL, control."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import pytest
import yaml

from tests.helpers import CALM, PidsCgroup, WireClient, wait_until
from tests.support.daemons import DaemonHandle

TREE_WORKER = textwrap.dedent(
    """
    import os, signal, subprocess, sys, time
    ready_r, ready_w = os.pipe()
    tell = "os.write(int(sys.argv[1]), b'.'); time.sleep(600)"  # ready: signals set up
    codes = [
        "import os, sys, time; " + tell,
        "import os, sys, time; os.setsid(); " + tell,
        "import os, signal, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); " + tell,
    ]
    kids = [subprocess.Popen([sys.executable, "-c", c, str(ready_w)], pass_fds=(ready_w,)).pid
            for c in codes]
    got = b""
    while len(got) < 3:
        got += os.read(ready_r, 3)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # after the children: they must not inherit it
    print("pids", os.getpid(), *kids, flush=True)
    time.sleep(600)
    """
)


def instance(d: DaemonHandle, name: str) -> dict[str, Any]:
    rows: list[dict[str, Any]] = d.status()["instances"]
    for inst in rows:
        if inst["name"] == name:
            return inst
    raise AssertionError(f"no instance {name}")


def _worker_cgroup_root(d: DaemonHandle) -> Path:
    (event,) = d.events("supervisor_started")
    assert event["cgroups"], event
    return Path(event["cgroup_root"])


@pytest.fixture
def worker_cgroup_root(needs_root: None) -> Callable[..., Path]:
    """worker_cgroup_root(d): where daemon `d` makes its workers' cgroups (named after its
    socket path). Only a daemon run as root makes them."""
    return _worker_cgroup_root


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def cli(d: DaemonHandle, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, SUPERVISORD_BATT_SOCKET=str(d.socket))
    return subprocess.run(
        [sys.executable, "-m", "supervisord_batt", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_wall_clock_limit_kills_the_whole_tree_then_restarts(
    daemon: Callable[..., DaemonHandle],
    program: Callable[..., dict[str, Any]],
    py: Callable[[str], list[str]],
) -> None:
    d = daemon(
        {
            "programs": {
                "tree": program(
                    py(TREE_WORKER),
                    wall_clock_limit="1500ms",
                    stop_grace="500ms",
                    restart="on-failure",
                )
            }
        }
    )
    line = wait_until(
        lambda: [e["line"] for e in d.events("output") if e["line"].startswith("pids")],
        timeout=15,
        what="the worker's pids",
    )[0]
    pids = [int(p) for p in line.split()[1:]]
    assert len(pids) == 4
    kill = wait_until(lambda: d.events("timeout_kill"), timeout=15, what="the wall-clock kill")[0]
    assert kill["reason"] == "wall_clock_limit" and kill["instance"] == "tree:0"
    assert kill["pid"] == pids[0]
    assert kill["processes"] == 4 and kill["tasks"] == 4
    assert kill["needed_sigkill"] == 2  # the worker and the grandchild that ignore SIGTERM
    assert kill["kill_s"] <= 0.5 + 0.3  # gone within stop_grace plus a small margin
    assert kill["runtime_s"] == pytest.approx(1.5, abs=0.3)
    assert all(gone(pid) for pid in pids), [p for p in pids if not gone(p)]
    restarted = wait_until(
        lambda: (i := instance(d, "tree:0"))["restarts"] >= 1 and i["state"] == "RUNNING" and i,
        timeout=15,
        what="a restart",
    )
    assert restarted["pid"] not in pids
    assert restarted["last_exit"]["reason"] == "wall_clock_limit"
    assert restarted["last_exit"]["by_limit"] is True


def test_backoff_grows_and_caps_then_fatal_then_start_recovers(
    daemon: Callable[..., DaemonHandle],
    program: Callable[..., dict[str, Any]],
    py: Callable[[str], list[str]],
) -> None:
    d = daemon(
        {
            "programs": {
                "flap": program(
                    py("import sys; sys.exit(2)"),
                    restart="always",
                    min_runtime="10s",
                    start_limit={"burst": 4, "interval": "60s"},
                )
            }
        }
    )
    wait_until(
        lambda: instance(d, "flap:0")["state"] == "FATAL",
        timeout=20,
        what="FATAL after the start limit",
    )
    moves = [
        e for e in d.events("transition") if e["instance"] == "flap:0" and e["to"] == "BACKOFF"
    ]
    times = [e["timestamp"] for e in moves]
    assert len(moves) == 4
    delays = [e for e in d.events("transition") if e["to"] == "FATAL"]
    assert "start limit" in delays[0]["reason"]
    waits = _backoff_waits(d, "flap:0")
    assert waits == pytest.approx([0.1, 0.2, 0.4, 0.4], abs=0.08), (waits, times)
    st = cli(d, "status")
    assert st.returncode == 1, st.stdout  # an instance that should run is not RUNNING
    started = cli(d, "start", "flap:0")
    assert started.returncode == 0, started.stderr
    wait_until(
        lambda: instance(d, "flap:0")["state"] in ("BACKOFF", "STARTING", "RUNNING"),
        timeout=5,
        what="out of FATAL",
    )


def _backoff_waits(d: DaemonHandle, name: str) -> list[float]:
    """Seconds each BACKOFF lasted (BACKOFF -> STARTING), from the transition events."""
    from datetime import datetime

    def ts(e: dict[str, Any]) -> float:
        return datetime.fromisoformat(e["timestamp"].replace("Z", "+00:00")).timestamp()

    events = [e for e in d.events("transition") if e["instance"] == name]
    waits, entered = [], None
    for e in events:
        if e["to"] == "BACKOFF":
            entered = ts(e)
        elif e["from"] == "BACKOFF" and entered is not None:
            waits.append(round(ts(e) - entered, 3))
    return waits


def test_on_failure_does_not_restart_a_clean_exit(
    daemon: Callable[..., DaemonHandle],
    program: Callable[..., dict[str, Any]],
    py: Callable[[str], list[str]],
) -> None:
    d = daemon(
        {
            "programs": {
                "once": program(py("print('done')"), restart="on-failure"),
                "fails": program(py("import sys; sys.exit(3)"), restart="never"),
            }
        }
    )
    wait_until(lambda: instance(d, "once:0")["state"] == "EXITED", timeout=10)
    wait_until(lambda: instance(d, "fails:0")["state"] == "EXITED", timeout=10)
    once, fails = instance(d, "once:0"), instance(d, "fails:0")
    assert once["restarts"] == 0 and once["last_exit"]["code"] == 0
    assert fails["restarts"] == 0 and fails["last_exit"]["code"] == 3
    assert cli(d, "status").returncode == 1  # fails:0 should run and does not


def test_progress_timeout_kills_a_silent_worker_before_its_wall_clock(
    daemon: Callable[..., DaemonHandle],
    program: Callable[..., dict[str, Any]],
    py: Callable[[str], list[str]],
) -> None:
    d = daemon(
        {
            "programs": {
                "quiet": program(
                    py("import time; time.sleep(600)"),
                    wall_clock_limit="60s",
                    progress_timeout="1s",
                    stop_grace="200ms",
                    restart="never",
                )
            }
        }
    )
    kill = wait_until(lambda: d.events("timeout_kill"), timeout=10, what="no-progress kill")[0]
    assert kill["reason"] == "progress_timeout" and kill["runtime_s"] < 5
    assert d.events("no_progress")[0]["instance"] == "quiet:0"
    wait_until(lambda: instance(d, "quiet:0")["state"] == "EXITED", timeout=5)


def test_heartbeats_keep_a_worker_alive(
    daemon: Callable[..., DaemonHandle],
    program: Callable[..., dict[str, Any]],
    py: Callable[[str], list[str]],
) -> None:
    beat = """
        import json, os, socket, time
        assert os.environ["SUPERVISORD_BATT_WANT"] == "3"  # the program's slots
        s = socket.socket(socket.AF_UNIX); s.connect(os.environ["SUPERVISORD_BATT_SOCKET"])
        f = s.makefile("rwb")
        for i in range(40):
            f.write(json.dumps({"op": "heartbeat", "progress": i}).encode() + b"\\n"); f.flush()
            assert json.loads(f.readline())["instance"] == os.environ["SUPERVISORD_BATT_INSTANCE"]
            time.sleep(0.1)
    """
    d = daemon(
        {"programs": {"beat": program(py(beat), progress_timeout="1s", restart="never", slots=3)}}
    )
    wait_until(lambda: instance(d, "beat:0")["state"] == "EXITED", timeout=20)
    assert instance(d, "beat:0")["last_exit"]["code"] == 0, d.events("output")
    assert not d.events("no_progress")


def test_spawn_refused_by_pids_limit_retries_and_recovers(
    pids_cgroup: Callable[..., PidsCgroup],
    daemon: Callable[..., DaemonHandle],
    program: Callable[..., dict[str, Any]],
    py: Callable[[str], list[str]],
) -> None:
    # the cgroup fixture first, so it is torn down after the daemon that lives in it
    cg = pids_cgroup()
    cg.set_max(1)  # room for the daemon's single task only: no worker can start

    d = daemon(
        {
            "programs": {
                "w": program(
                    py("import time; time.sleep(600)"),
                    start_limit={"burst": 100, "interval": "60s"},
                )
            }
        },
        preexec_fn=cg.preexec(),  # the daemon in `cg`: its workers' cgroups are below it
    )
    wait_until(lambda: len(d.events("spawn_failed")) >= 3, timeout=15, what="retries")
    event = d.events("spawn_failed")[0]
    assert event["errno"] == 11 and event["instance"] == "w:0"
    assert "tightest" in event and "headroom" in event
    assert d.status()["ok"]  # the daemon keeps serving
    cg.set_max(50)
    wait_until(
        lambda: instance(d, "w:0")["state"] == "RUNNING",
        timeout=10,
        what="recovery once pids free up",
    )
    pid = instance(d, "w:0")["pid"]
    assert pid in _pids_below(cg), "the recovered worker counts against the same limit"
    # the host is out of pids again: the daemon still answers, logs and kills, since it
    # never needs a new thread or process to do so
    cg.set_max(cg.current())
    stopped = cli(d, "stop", "w:0")
    assert stopped.returncode == 0 and "w:0: STOPPED" in stopped.stdout
    assert gone(pid)
    assert [e for e in d.events("tree_killed") if e["pid"] == pid]


def _pids_below(cg: PidsCgroup) -> set[int]:
    """Every process in `cg` or a cgroup below it."""
    return {int(p) for f in cg.path.rglob("cgroup.procs") for p in f.read_text().split()}


def test_reload_adds_removes_changes_and_keeps(
    daemon: Callable[..., DaemonHandle],
    program: Callable[..., dict[str, Any]],
    py: Callable[[str], list[str]],
) -> None:
    sleeper = py("import time; time.sleep(600)")
    d = daemon(
        {
            "programs": {
                "keep": program(sleeper),
                "drop": program(sleeper),
                "change": program(sleeper),
            }
        }
    )
    wait_until(
        lambda: all(i["state"] == "RUNNING" for i in d.status()["instances"]),
        timeout=10,
    )
    before = {n: instance(d, n)["pid"] for n in ("keep:0", "drop:0", "change:0")}
    config = yaml.safe_load(d.config_path.read_text())
    del config["programs"]["drop"]
    config["programs"]["change"]["numprocs"] = 2
    config["programs"]["new"] = program(sleeper)
    d.config_path.write_text(yaml.safe_dump(config))
    out = cli(d, "reload")
    assert out.returncode == 0, out.stderr
    assert "added: new" in out.stdout and "removed: drop" in out.stdout
    assert "changed: change" in out.stdout and "unchanged: keep" in out.stdout
    names = {i["name"]: i for i in d.status()["instances"]}
    assert set(names) == {"keep:0", "change:0", "change:1", "new:0"}
    assert names["keep:0"]["pid"] == before["keep:0"]  # untouched
    # numprocs up starts the one more instance and leaves the running one be
    assert names["change:0"]["pid"] == before["change:0"]
    assert "change: started change:1" in out.stdout
    assert gone(before["drop:0"])
    wait_until(
        lambda: all(
            instance(d, n)["state"] == "RUNNING" for n in ("change:0", "change:1", "new:0")
        ),
        timeout=10,
    )
    # a config that does not validate is rejected and the old one keeps running
    d.config_path.write_text("programs:\n  keep:\n    command: [x]\n    numprocs: -1\n")
    bad = cli(d, "reload")
    assert bad.returncode == 1 and "numprocs" in bad.stderr and "line 4" in bad.stderr
    assert instance(d, "keep:0")["pid"] == before["keep:0"]
    assert d.events("reload_rejected")
    # SIGHUP runs the same reload: the same bad file is rejected again
    d.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: len(d.events("reload_rejected")) == 2, timeout=5)


def test_sigterm_stops_every_tree_and_exits_zero(
    daemon: Callable[..., DaemonHandle],
    program: Callable[..., dict[str, Any]],
    py: Callable[[str], list[str]],
    worker_cgroup_root: Callable[..., Path],
) -> None:
    d = daemon({"programs": {"tree": program(py(TREE_WORKER), stop_grace="300ms")}})
    line = wait_until(
        lambda: [e["line"] for e in d.events("output") if e["line"].startswith("pids")], timeout=15
    )[0]
    pids = [int(p) for p in line.split()[1:]]
    root = worker_cgroup_root(d)
    assert root.exists()
    assert d.stop() == 0
    assert all(gone(pid) for pid in pids)
    assert d.events("stopped")
    assert not root.exists(), "the daemon removes the worker cgroups it made"


def test_tail_shows_output_from_files_and_follows_offsets(
    daemon: Callable[..., DaemonHandle],
    tmp_path: Path,
    program: Callable[..., dict[str, Any]],
    py: Callable[[str], list[str]],
) -> None:
    talk = (
        "import sys, time\nfor i in range(3): print('line', i, flush=True)\n"
        "print('oops', file=sys.stderr, flush=True)\ntime.sleep(600)"
    )
    d = daemon(
        {
            "programs": {
                "talk": program(py(talk), output={"mode": "file", "directory": str(tmp_path)})
            }
        }
    )
    wait_until(lambda: "line 2" in cli(d, "tail", "talk:0").stdout, timeout=10)
    assert "oops" in cli(d, "tail", "talk", "--stderr").stdout
    assert (tmp_path / "talk-0.out.log").read_text() == "line 0\nline 1\nline 2\n"
    with WireClient(d.socket) as c:
        reply = c.request("tail", target="talk:0", offset=7)
        assert reply["data"] == "line 1\nline 2\n" and reply["offset"] == 21
        assert c.request("tail", target="nope:0")["error"]["code"] == "not_found"


def test_status_json_lists_instances_with_their_programs(
    daemon: Callable[..., DaemonHandle],
    program: Callable[..., dict[str, Any]],
    py: Callable[[str], list[str]],
) -> None:
    d = daemon({"programs": {"s": program(py("import time; time.sleep(600)"), numprocs=2)}})
    wait_until(
        lambda: all(i["state"] == "RUNNING" for i in d.status()["instances"]),
        timeout=10,
    )
    out = cli(d, "status", "--json")
    assert out.returncode == 0
    insts = json.loads(out.stdout)["instances"]
    assert [(i["program"], i["name"]) for i in insts] == [("s", "s:0"), ("s", "s:1")]
    for inst in insts:
        assert {"name", "state", "pid", "restarts", "last_exit"} <= set(inst)
    stopped = cli(d, "stop", "s:1")
    assert stopped.returncode == 0 and "s:1: STOPPED" in stopped.stdout
    assert cli(d, "status").returncode == 0  # stopped on purpose is fine
    assert cli(d, "stop", "nope").returncode == 1


def test_demo_worker_over_its_wall_clock_is_killed_with_its_loky_pool(
    daemon: Callable[..., DaemonHandle], program: Callable[..., dict[str, Any]]
) -> None:
    demo = [
        sys.executable,
        "-m",
        "supervisord_batt.demo",
        "--tasks",
        "200",
        "--samples",
        "4",
        "--want",
        "2",
    ]
    d = daemon(
        {
            "budget": {"cpu_cap": 4, "pressure": CALM},
            "programs": {
                "demo": program(demo, wall_clock_limit="4s", stop_grace="1s", restart="never")
            },
        }
    )

    def pool_up() -> list[int] | None:
        inst = instance(d, "demo:0")
        if inst["state"] != "RUNNING" or not inst["lease"]:
            return None
        kids = psutil.Process(inst["pid"]).children(recursive=True)
        return [inst["pid"], *(k.pid for k in kids)] if len(kids) >= 4 else None

    tree = wait_until(pool_up, timeout=15, what="the demo's loky pool (2 workers, 2 trackers)")
    kill = wait_until(lambda: d.events("timeout_kill"), timeout=15)[0]
    assert kill["reason"] == "wall_clock_limit" and kill["processes"] >= 5
    assert all(gone(pid) for pid in tree), [p for p in tree if not gone(p)]
    wait_until(lambda: not d.status()["leases"], timeout=5, what="the lease released")
    released = [e for e in d.events("release") if e["pid"] == tree[0]]
    assert released
    wait_until(lambda: instance(d, "demo:0")["state"] == "EXITED", timeout=5)


def test_shutdown_refuses_leases_and_a_second_signal_forces_exit(
    daemon: Callable[..., DaemonHandle],
    program: Callable[..., dict[str, Any]],
    py: Callable[[str], list[str]],
    worker_cgroup_root: Callable[..., Path],
) -> None:
    stubborn = py(
        "import signal, time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "print('ready', flush=True)\n"
        "time.sleep(600)"
    )
    d = daemon({"programs": {"stubborn": program(stubborn, stop_grace="60s")}})
    wait_until(lambda: d.events("output"), timeout=10, what="the worker ignoring SIGTERM")
    pid = instance(d, "stubborn:0")["pid"]
    held = d.client()
    d.proc.send_signal(signal.SIGTERM)  # graceful: the worker ignores TERM, grace is 60 s
    wait_until(lambda: d.events("exit_requested"), timeout=5)
    reply = held.request("acquire", want=2)
    assert reply["ok"] is False and reply["error"]["code"] == "shutting_down"
    held.close()
    started = time.monotonic()
    d.proc.send_signal(signal.SIGINT)  # the second signal does not wait out the grace
    assert d.proc.wait(timeout=10) == 1
    assert time.monotonic() - started < 5
    wait_until(lambda: gone(pid), timeout=5, what="the stubborn worker killed")
    assert d.events("forced_exit")
    assert not worker_cgroup_root(d).exists(), "a forced exit still removes its cgroups"


def test_heartbeats_go_on_after_the_lease_expired(
    daemon: Callable[..., DaemonHandle],
    program: Callable[..., dict[str, Any]],
    py: Callable[[str], list[str]],
) -> None:
    """A long sequential task outlives its lease's TTL: the job keeps heartbeating without
    the lease, so the no-progress watch does not kill a healthy job."""
    job = """
        import time
        from supervisord_batt.client.leases import lease
        with lease(want=2, job="long") as grant:
            grant.heartbeat(progress="start")  # the no-progress clock starts after imports
            time.sleep(2.5)  # one long task: longer than the 1 s TTL, no renew meanwhile
            for i in range(12):
                grant.heartbeat(progress=i)
                time.sleep(0.25)  # the job's own work between heartbeats
            print("kind", grant.kind, "degraded", grant.degraded, flush=True)
    """
    d = daemon(
        {
            "budget": {"lease_ttl": "1s"},
            "programs": {"long": program(py(job), progress_timeout="4s", restart="never")},
        }
    )
    wait_until(lambda: instance(d, "long:0")["state"] == "EXITED", timeout=20)
    assert instance(d, "long:0")["last_exit"]["code"] == 0, d.events("output")
    assert d.events("lease_expired")
    assert not d.events("no_progress"), d.events("no_progress")
    assert any(e["line"] == "kind sequential degraded True" for e in d.events("output"))
