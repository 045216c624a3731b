"""The real CLI: check-config and probe, as an operator runs them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

from supervisord_batt.paths import CONFIG_ENV, KIND_ENV, LEASE_ENV, SOCKET_ENV
from tests.helpers import REPO, PidsCgroup, killing, wait_until
from tests.support.daemons import DaemonHandle


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "supervisord_batt", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        env=env,
    )


def test_check_config_accepts_the_shipped_default() -> None:
    out = cli("check-config", str(REPO / "config" / "supervisord-batt.yaml"))
    assert out.returncode == 0, out.stderr
    assert "ok (1 programs: batt)" in out.stdout


def test_check_config_lists_every_error_with_key_and_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        textwrap.dedent(
            """\
        daemon:
          sample_interval: soon
        programs:
          batt:
            command: [python3, job.py]
            wall_clock_limit: ten
            numprocs: -2
            stop_signal: SIGWHAT
            restat: always
        """
        )
    )
    out = cli("check-config", str(bad))
    assert out.returncode == 1
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 5, lines
    assert "daemon.sample_interval (line 2)" in out.stderr
    assert (
        "programs.batt.wall_clock_limit (line 6): expected a duration such as 600s, got 'ten'"
        in out.stderr
    )
    assert "programs.batt.numprocs (line 7)" in out.stderr
    assert "programs.batt.stop_signal (line 8)" in out.stderr
    assert (
        "programs.batt.restat (line 9): unknown key 'restat'; did you mean 'restart'?" in out.stderr
    )


def test_check_config_on_a_missing_file_fails_cleanly(tmp_path: Path) -> None:
    out = cli("check-config", str(tmp_path / "nope.yaml"))
    assert out.returncode == 1 and "Traceback" not in out.stderr


def test_issue25_check_config_takes_the_file_as_c_too(tmp_path: Path) -> None:
    """The shipped config's comment says `check-config -c FILE`: it was rejected."""
    shipped = REPO / "config" / "supervisord-batt.yaml"
    assert "check-config -c FILE" in shipped.read_text()
    for args in (["-c", str(shipped)], ["--config", str(shipped)], [str(shipped)]):
        out = cli("check-config", *args)
        assert out.returncode == 0, (args, out.stderr)
        assert f"{shipped}: ok (1 programs: batt)" in out.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text("daemon:\n  sample_interval: soon\n")
    out = cli("check-config", "-c", str(bad))
    assert out.returncode == 1
    assert "daemon.sample_interval (line 2)" in out.stderr
    both = cli("check-config", str(shipped), "-c", str(bad))
    assert both.returncode == 2 and "give one" in both.stderr


def _no_socket_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in (SOCKET_ENV, CONFIG_ENV)}


def test_issue25_exec_leases_from_the_daemon_its_config_names(
    daemon: Callable[..., DaemonHandle],
) -> None:
    """`exec` read no config: pointed at a daemon on another socket than the default, it
    ran sequential and exited 0."""
    d = daemon()
    show = [sys.executable, "-c", f"import os; print(os.environ[{LEASE_ENV!r}])"]
    config = str(d.config_path)
    for how, env in (
        (["-c", config], _no_socket_env()),
        ([], {**_no_socket_env(), CONFIG_ENV: config}),
    ):
        out = cli("exec", *how, "--job", "by-config", "--", *show, env=env)
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip(), out  # a lease id: the daemon answered
        assert "not reachable" not in out.stderr
    jobs = [e["job"] for e in d.events() if e.get("event") in ("grant", "deny")]
    assert jobs == ["by-config", "by-config"], jobs


def test_issue25_exec_without_its_daemon_says_so_and_runs_sequential(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(f"daemon:\n  socket: {tmp_path / 'nobody.sock'}\nprograms: {{}}\n")
    show = [sys.executable, "-c", f"import os; print(os.environ[{KIND_ENV!r}])"]
    out = cli("exec", "-c", str(config), "--", *show, env=_no_socket_env())
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "sequential"
    assert f"daemon not reachable at {tmp_path / 'nobody.sock'}" in out.stderr
    assert "running sequential" in out.stderr


def test_probe_json_reports_a_live_cgroup_exactly(pids_cgroup: Callable[..., PidsCgroup]) -> None:
    cg = pids_cgroup()
    cg.set_max(30)
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, threading\n"
            "for _ in range(4): threading.Thread(target=sys.stdin.read, daemon=True).start()\n"
            "print('up', flush=True); sys.stdin.read()",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        preexec_fn=cg.preexec(),
    )
    with killing(child):
        assert child.stdout is not None and child.stdout.readline() == b"up\n"
        wait_until(lambda: cg.current() == 5, timeout=5, what="5 tasks in the cgroup")
        out = cli("probe", "--json", "--cgroup", cg.cgroup_path)
        assert out.returncode == 0, out.stderr
        data = json.loads(out.stdout)
        for key in (
            "threads_total",
            "threads_max",
            "pid_max",
            "cgroups",
            "users",
            "mem_available_bytes",
            "cpus",
            "psi",
            "tightest",
        ):
            assert key in data
        (row,) = [c for c in data["cgroups"] if c["path"] == cg.cgroup_path]
        assert (row["pids_current"], row["pids_max"]) == (5, 30)
        assert data["tightest"]["name"] == f"cgroup:{cg.cgroup_path}"
        assert data["tightest"]["headroom"] == 25
        assert any(
            u["uid"] == 0 and u["exempt"] and u["nproc_limit"] is None for u in data["users"]
        )
        table = cli("probe", "--cgroup", cg.cgroup_path)
        assert table.returncode == 0
        assert f"cgroup:{cg.cgroup_path}" in table.stdout
        assert "<- tightest" in table.stdout and "exempt (root)" in table.stdout


def test_pid_file_is_written_and_removed(
    daemon: Callable[..., DaemonHandle], tmp_path: Path
) -> None:
    pid_file = tmp_path / "run" / "d.pid"
    d = daemon({"daemon": {"pid_file": str(pid_file)}})
    assert pid_file.read_text() == f"{d.proc.pid}\n"
    assert d.stop() == 0
    assert not pid_file.exists()


def test_run_refuses_a_bad_config_with_its_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("budget:\n  reserve_percent: 120\n")
    env = dict(os.environ, SUPERVISORD_BATT_SOCKET=str(tmp_path / "s.sock"))
    out = cli("run", "-c", str(bad), env=env)
    assert out.returncode == 1
    assert "budget.reserve_percent (line 2)" in out.stdout + out.stderr
