"""Issue 10: the socket and the files the root daemon writes, against a real other user.

Each test makes a real user (useradd) and makes the attacker's move for real: a socket
directory they own or can write, an impostor socket bound by them, a symlink planted in
a log directory, a file left at the socket path.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from supervisord_batt.safepath import UntrustedPath, make_dir
from tests import helpers
from tests.helpers import interpreter_for_others, killing, wait_until

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture
def workdir() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="sbt-sec-", dir="/tmp"))
    os.chmod(d, 0o755)  # others may enter, as in any shared directory
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def run_daemon_expecting_exit(
    workdir: Path, config: dict[str, Any]
) -> tuple[int, list[dict[str, Any]]]:
    """Run the real daemon; it must exit by itself (a refusal). Its exit code and events."""
    path = workdir / "config.yaml"
    config.setdefault("daemon", {}).update(log_format="json")
    path.write_text(yaml.safe_dump(config))
    env = dict(os.environ, PYTHONPATH=str(REPO))
    env.pop("SUPERVISORD_BATT_SOCKET", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "supervisord_batt", "run", "-c", str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env,
    )
    with killing(proc):
        out, _ = proc.communicate(timeout=30)
    events = []
    for line in out.decode(errors="replace").splitlines():
        if line.startswith("{"):
            events.append(json.loads(line))
    return proc.returncode, events


def refused_by_run_and_check_config(workdir: Path, config: dict[str, Any]) -> str:
    """Issue 22: `check-config` refuses what `run` refuses, with the key and line, and
    `run` refuses it before binding anything. What `run` said."""
    rc, events = run_daemon_expecting_exit(workdir, config)
    assert rc == 1
    (failed,) = [e for e in events if e["event"] == "config_invalid"]
    assert "daemon.socket (line " in failed["reason"], failed
    checked = subprocess.run(
        [sys.executable, "-m", "supervisord_batt", "check-config", str(workdir / "config.yaml")],
        capture_output=True,
        text=True,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
        timeout=60,
    )
    assert checked.returncode == 1, checked
    assert "daemon.socket (line " in checked.stderr
    return str(failed["reason"])


def owned_by(user: helpers.TestUser, path: Path, mode: int = 0o755) -> Path:
    path.mkdir()
    os.chown(path, user.uid, user.gid)
    os.chmod(path, mode)
    return path


@pytest.mark.parametrize("below", ["", "sub/"], ids=["in_it", "in_a_directory_to_make_in_it"])
def test_the_daemon_refuses_a_socket_directory_another_user_owns(
    workdir: Path, test_user: Callable[[], helpers.TestUser], below: str
) -> None:
    attacker = test_user()
    run = owned_by(attacker, workdir / "run")
    socket = run / f"{below}s.sock"
    reason = refused_by_run_and_check_config(workdir, {"daemon": {"socket": str(socket)}})
    assert f"owned by uid {attacker.uid}" in reason
    assert not socket.exists() and not (run / "sub").exists()


def test_the_daemon_refuses_a_socket_directory_others_can_write(workdir: Path) -> None:
    run = workdir / "run"
    run.mkdir()
    os.chmod(run, 0o777)
    reason = refused_by_run_and_check_config(workdir, {"daemon": {"socket": str(run / "s.sock")}})
    assert "writable by group or others" in reason


@pytest.mark.usefixtures("needs_root")
def test_a_fallback_directory_another_user_made_first_is_refused(
    workdir: Path, test_user: Callable[[], helpers.TestUser]
) -> None:
    """/tmp/supervisord-batt-<uid>/ pre-created by someone else: never used."""
    victim, attacker = test_user(), test_user()
    fallback = owned_by(attacker, workdir / f"supervisord-batt-{victim.uid}", 0o700)
    with pytest.raises(UntrustedPath, match=f"owned by uid {attacker.uid}"):
        make_dir(fallback, 0o700, uid=victim.uid)
    os.chown(fallback, victim.uid, victim.gid)
    os.chmod(fallback, 0o777)  # the right owner, but open to everyone
    with pytest.raises(UntrustedPath, match="writable by group or others"):
        make_dir(fallback, 0o700, uid=victim.uid)
    os.chmod(fallback, 0o700)
    make_dir(fallback, 0o700, uid=victim.uid)  # the victim's own private directory


IMPOSTOR = r"""
import os, socket, sys
path, report = sys.argv[1], sys.argv[2]
srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
srv.bind(path)
os.chmod(path, 0o777)
srv.listen(8)
open(report, "w").write("listening\n")
srv.settimeout(30)
got = b""
for _ in range(2):  # the CLI's connection, then the job's
    conn, _ = srv.accept()
    conn.settimeout(3)
    try:
        while chunk := conn.recv(4096):
            got += chunk
    except OSError:
        pass
    conn.close()
open(report, "w").write(f"got {len(got)} bytes\n")
"""


def test_the_cli_and_the_client_refuse_an_impostor_socket(
    workdir: Path, test_user: Callable[[], helpers.TestUser]
) -> None:
    attacker = test_user()
    theirs = owned_by(attacker, workdir / "theirs")
    sock, report = theirs / "s.sock", theirs / "report"
    impostor = subprocess.Popen(
        [interpreter_for_others(), "-c", IMPOSTOR, str(sock), str(report)],
        user=attacker.uid,
        group=attacker.gid,
        extra_groups=[],
    )
    with killing(impostor):
        wait_until(report.exists, timeout=10, what="the impostor listening")
        env = dict(os.environ, PYTHONPATH=str(REPO), SUPERVISORD_BATT_SOCKET=str(sock))
        done = subprocess.run(
            [sys.executable, "-m", "supervisord_batt", "stop", "all"],
            capture_output=True,
            text=True,
            env=env,
            timeout=30,
        )
        assert done.returncode == 2, done
        assert f"runs as uid {attacker.uid}" in done.stderr and "refusing" in done.stderr
        job = (
            "from supervisord_batt.client import lease\n"
            "with lease(want=2, job='j') as g: print(g.kind, g.degraded)\n"
        )
        leased = subprocess.run(
            [sys.executable, "-c", job], capture_output=True, text=True, env=env, timeout=30
        )
        assert leased.stdout.strip() == "sequential True"
        assert "not the daemon" in leased.stderr
        impostor.wait(timeout=20)
    assert report.read_text() == "got 0 bytes\n"  # not one byte of a request reached it


def test_worker_output_never_goes_through_a_symlink_planted_in_the_log_directory(
    workdir: Path, test_user: Callable[[], helpers.TestUser]
) -> None:
    attacker = test_user()
    victim = workdir / "victim"
    victim.write_text("root's file\n")
    os.chmod(victim, 0o600)
    logs = owned_by(attacker, workdir / "logs")
    (logs / "p-0.out.log").symlink_to(victim)
    os.lchown(logs / "p-0.out.log", attacker.uid, attacker.gid)
    config = {
        "daemon": {"socket": str(workdir / "s.sock")},
        "programs": {
            "p": {
                "command": [sys.executable, "-c", "print('SECRET' * 10, flush=True)"],
                "output": {"mode": "file", "directory": str(logs)},
            }
        },
    }
    rc, events = run_daemon_expecting_exit(workdir, config)
    assert rc == 1
    # the one loader refuses it, naming the key: check-config says the same
    (failed,) = [e for e in events if e["event"] == "config_invalid"]
    assert "programs.p.output.directory" in failed["reason"]
    assert f"owned by uid {attacker.uid}" in failed["reason"]
    assert victim.read_text() == "root's file\n"
    assert not (workdir / "s.sock").exists()


def test_shutdown_removes_its_own_socket_and_nothing_else(
    daemon: Callable[..., Any],
) -> None:
    d = daemon()
    moved = d.socket.with_name("moved.sock")
    d.socket.rename(moved)  # someone moved our socket aside and left a file in its place
    d.socket.write_text("not yours\n")
    assert d.stop() == 0
    assert d.socket.read_text() == "not yours\n"
    (note,) = d.events("socket_not_removed")
    assert note["socket"] == str(d.socket)
    moved.unlink()
