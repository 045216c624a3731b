"""What only the host can tell, checked by the one loader (issue 11).

`user: nosuchuser` passed check-config, crashed `run` with a traceback, and a reload with
it answered `internal error` after applying half of the new config (the new peer policy
and budget took effect, the programs stayed old). A log file under a regular file did
the same.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from tests.helpers import CALM
from tests.support.daemons import cli

BAD = """\
daemon:
  log_file: {regular}/daemon.log
  admin_groups: [nosuchgroup-sbt]
programs:
  a:
    command: [sleep, "600"]
    user: nosuchuser-sbt
    cwd: /nonexistent-sbt
budget:
  user_weights:
    nosuchuser-sbt: 2
    "4242": 3
  group_weights:
    nosuchgroup-sbt: 0.5
"""


def test_check_config_and_run_name_every_host_problem_with_its_line(tmp_path: Path) -> None:
    regular = tmp_path / "file"
    regular.write_text("")
    path = tmp_path / "bad.yaml"
    path.write_text(BAD.format(regular=regular))
    for args in (("check-config", str(path)), ("run", "-c", str(path))):
        done = cli(*args)
        assert done.returncode == 1, done
        said = done.stdout + done.stderr  # run logs it as a config_invalid event
        assert "Traceback" not in said
        assert "4242" not in said  # a uid stands for a user: nothing to look up
        for key, line, what in (
            ("daemon.log_file", 2, f"{regular} is not one"),
            ("daemon.admin_groups.0", 3, "no group 'nosuchgroup-sbt'"),
            ("programs.a.user", 7, "no user 'nosuchuser-sbt'"),
            ("programs.a.cwd", 8, "not a directory"),
            ("budget.user_weights.nosuchuser-sbt", 11, "no user 'nosuchuser-sbt'"),
            ("budget.group_weights.nosuchgroup-sbt", 14, "no group 'nosuchgroup-sbt'"),
        ):
            assert f"{key} (line {line}): " in said and what in said, said


def test_a_reload_with_a_host_problem_changes_nothing(daemon: Callable[..., Any]) -> None:
    d = daemon(
        {
            "budget": {"pressure": CALM, "reserve_tasks": 0, "reserve_percent": 0},
            "programs": {"a": {"command": ["sleep", "600"]}},
        }
    )
    bad = yaml.safe_load(d.config_path.read_text())
    bad["daemon"]["allowed_uids"] = [4242]
    bad["budget"]["max_per_lease"] = 1
    bad["programs"] = {"b": {"command": ["sleep", "600"], "user": "nosuchuser-sbt"}}
    d.config_path.write_text(yaml.safe_dump(bad))
    with d.client() as c:
        reply = c.request("reload")
        assert reply["error"]["code"] == "bad_request"
        assert "programs.b.user" in reply["error"]["message"]
        # the old programs, and the old budget: a lease of 2 is not capped at 1
        assert [i["program"] for i in c.request("status", instances=True)["instances"]] == ["a"]
        grant = c.request("acquire", want=2, kinds=["thread"])
        assert (grant["kind"], grant["workers"]) == ("thread", 2), grant
    assert d.events("reload_rejected") and not d.events("reloaded")
