"""Issue 22: a config `run` cannot honour is refused by the loader, with its key and line.

A NUL in a program's `environment` or `command` passed `check-config`, then `run` died
with a traceback, and the same program added by `reload` was answered `internal` after
applying half of the new config (its daemon section: a real user the refused config
allowed was let in), an instance left in STARTING. A program whose output
file names are longer than the file system takes passed `check-config` and stopped `run`
at startup. Now `check-config`, `run` and `reload` refuse each one the same way.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests import helpers
from tests.support.daemons import cli
from tests.support.peers import ask, shared

SLEEP = ["sleep", "600"]


# each: the program's YAML (line 4 on: `programs:` is line 3), the key and line refused
UNEXECUTABLE = {
    "nul_in_environment": (
        '  p:\n    command: [sleep, "600"]\n    environment:\n      TOKEN: "a\\0b"\n',
        "programs.p.environment.TOKEN (line 7): contains a NUL character",
    ),
    "nul_in_command": (
        '  p:\n    command: [sleep, "6\\x0000"]\n',
        "programs.p.command[1] (line 5): contains a NUL character",
    ),
    "nul_in_command_string": (
        '  p:\n    command: "sleep 6\\x0000"\n',
        "programs.p.command (line 5): word 1 contains a NUL character",
    ),
    "argument_over_exec_limit": (
        f"  p:\n    command: [echo, {'x' * 131072}]\n",
        "programs.p.command[1] (line 5): is 131072 bytes, more than exec takes",
    ),
    "environment_entry_over_exec_limit": (  # NAME=value is one string for exec: 2 + 131070
        f"  p:\n    command: [true]\n    environment:\n      A: {'x' * 131070}\n",
        "programs.p.environment.A (line 7): is 131072 bytes",
    ),
    "nul_in_cwd": (
        '  p:\n    command: [true]\n    cwd: "/tmp\\0x"\n',
        "programs.p.cwd (line 6): contains a NUL character",
    ),
}


def write_config(tmp_path: Path, programs: str) -> Path:
    path = tmp_path / "c.yaml"
    header = f"daemon:\n  socket: {tmp_path / 's.sock'}\nprograms:\n"
    path.write_text(header + programs)
    return path


@pytest.mark.parametrize("case", sorted(UNEXECUTABLE))
def test_check_config_and_run_refuse_what_exec_cannot_take(tmp_path: Path, case: str) -> None:
    programs, said = UNEXECUTABLE[case]
    path = write_config(tmp_path, programs)
    checked = cli("check-config", str(path))
    assert checked.returncode == 1, checked
    assert said in checked.stderr, checked.stderr
    ran = cli("run", "-c", str(path))  # refused at load: nothing bound, nothing started
    assert ran.returncode == 1
    assert "Traceback" not in ran.stdout + ran.stderr, ran.stdout + ran.stderr
    assert "config_invalid" in ran.stdout + ran.stderr
    assert not (tmp_path / "s.sock").exists()


def test_a_reload_adding_a_nul_changes_nothing(
    daemon: Callable[..., Any], test_user: Callable[[], helpers.TestUser]
) -> None:
    user = test_user()
    d = shared(
        daemon(
            {
                "daemon": {"socket_mode": "0666"},
                "programs": {"a": {"command": SLEEP, "output": {"mode": "daemon"}}},
            }
        )
    )
    config = yaml.safe_load(d.config_path.read_text())
    # each would apply before the programs in a half reload: the new user let in, the cap
    config["daemon"]["allowed_uids"] = [user.uid]
    config["daemon"]["max_connections_per_uid"] = 3
    config["programs"]["b"] = {
        "command": SLEEP,
        "user": user.name,
        "environment": {"TOKEN": "a\0b"},
    }
    d.config_path.write_text(yaml.safe_dump(config))
    with d.client() as c:
        reply = c.request("reload")
        assert reply["error"]["code"] == "bad_request", reply
        assert "programs.b.environment.TOKEN (line " in reply["error"]["message"]
        status = c.request("status", instances=True)
    assert [(i["program"], i["state"]) for i in status["instances"]] == [("a", "RUNNING")]
    # the user the refused config named is still a stranger to the daemon
    (answer,) = ask(d.socket, user, {"op": "status"})
    assert answer["error"]["code"] == "forbidden", answer
    # the old per-uid cap (32) still holds: four more connections of ours are served
    clients = [d.client() for _ in range(4)]
    try:
        assert all(c.request("hello", version=1)["ok"] for c in clients)
    finally:
        for c in clients:
            c.close()
    assert d.events("reload_rejected") and not d.events("reloaded")
    assert not d.events("handler_failed")


def test_output_file_names_longer_than_the_file_system_takes_are_refused(
    tmp_path: Path,
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    name = "b" * 250  # `<name>-0.err.log.3`: 263 bytes, NAME_MAX is 255 here
    programs = f"  {name}:\n    command: [true]\n    output: {{mode: file, directory: {out}}}\n"
    path = write_config(tmp_path, programs)
    for args in (("check-config", str(path)), ("run", "-c", str(path))):
        done = cli(*args)
        assert done.returncode == 1, done
        said = done.stdout + done.stderr
        assert f"programs.{name}.output.directory (line 6): the program's output file" in said
        assert "longer than the 255 bytes a name may have" in said
        assert "Traceback" not in said
