"""Issue 22: a worker run as another user gets a login's environment, not root's.

The root daemon, started by an operator whose shell exported a token, handed its whole
environment to a program run as a notebook user: the token, HOME=/root, root's PATH, and
the open-files limit the daemon raised for itself. Here the daemon really has a secret in
its environment and a raised limit, a real user's worker reports what it got, and a root
worker beside it shows what root's programs keep.
"""

from __future__ import annotations

import json
import pwd
import resource
import textwrap
from collections.abc import Callable
from typing import Any

import pytest

from tests import helpers
from tests.helpers import interpreter_for_others, wait_until

SECRET = "operator-token-0c5e7d"
# one line: the environment (a root worker's would be long: only what is asked) and limits
REPORT = textwrap.dedent(
    """
    import json, os, resource, sys
    env = dict(os.environ) if sys.argv[1] == "all" else {
        k: os.environ.get(k) for k in ("SBT_OPERATOR_TOKEN", "HOME", "PATH")}
    print(json.dumps({"env": env, "nofile": resource.getrlimit(resource.RLIMIT_NOFILE)}))
    """
)
STARTED_WITH = 1024  # the daemon's soft RLIMIT_NOFILE when it starts (systemd's default)


def lower_nofile() -> None:
    """preexec_fn of the daemon: start it as systemd would, soft 1024 under the hard."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (STARTED_WITH, hard))


def reports(d: Any) -> dict[str, dict[str, Any]]:
    return {
        e["instance"]: json.loads(e["line"])
        for e in d.events("output")
        if e.get("line", "").startswith("{")
    }


def test_a_worker_run_as_another_user_gets_a_login_environment_and_the_first_limit(
    daemon: Callable[..., Any],
    test_user: Callable[[], helpers.TestUser],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    user = test_user()
    monkeypatch.setenv("SBT_OPERATOR_TOKEN", SECRET)  # the daemon inherits it, as by hand
    monkeypatch.setenv("SBT_PASSED", "named-by-the-program")
    python = interpreter_for_others()
    once = {"output": {"mode": "daemon"}, "restart": "never"}
    d = daemon(
        {
            "programs": {
                "theirs": {
                    "command": [python, "-c", REPORT, "all"],
                    "user": user.name,
                    "environment": {"MINE": "from-the-config"},
                    "pass_environment": ["SBT_PASSED", "SBT_NOT_SET"],
                    "worker_memory": "1536MiB",  # declared to its client, in bytes
                    **once,
                },
                "root": {"command": [python, "-c", REPORT, "some"], **once},
            }
        },
        preexec_fn=lower_nofile,
    )
    got = wait_until(
        lambda: (r := reports(d)) and len(r) == 2 and r, timeout=20, what="both reports"
    )
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    (raised,) = d.events("nofile_raised")
    assert (raised["old"], raised["new"]) == (STARTED_WITH, hard)

    theirs = got["theirs:0"]
    account = pwd.getpwnam(user.name)
    assert SECRET not in json.dumps(theirs)
    env = theirs["env"]
    env.pop("LC_CTYPE", None)  # Python's own locale coercion in the worker (PEP 538)
    assert env == {
        "HOME": account.pw_dir,
        "USER": user.name,
        "LOGNAME": user.name,
        "SHELL": account.pw_shell,
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "MINE": "from-the-config",
        "SBT_PASSED": "named-by-the-program",
        "SUPERVISORD_BATT_SOCKET": str(d.socket),
        "SUPERVISORD_BATT_INSTANCE": "theirs:0",
        "SUPERVISORD_BATT_WANT": "1",
        "SUPERVISORD_BATT_WORKER_MEMORY": "1610612736",
    }
    assert theirs["nofile"] == [STARTED_WITH, hard]

    # a root worker keeps the daemon's environment (it could read it in /proc anyway)
    # but not the daemon's raised limit either
    root = got["root:0"]
    assert root["env"]["SBT_OPERATOR_TOKEN"] == SECRET
    assert root["nofile"] == [STARTED_WITH, hard]
