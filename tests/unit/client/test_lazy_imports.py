"""What a job's `import supervisord_batt.client` and a sequential map load: nothing of
the heavy libraries it does not use (structlog and asyncio behind it, psutil, loky).

Each of them was part of the client's fixed cost at every job's start (see
docs/BENCHMARKS.md, the memory section); they are loaded where they are needed (a
program's own structlog configuration, a loky pool)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.helpers import REPO

HEAVY = ("structlog", "asyncio", "psutil", "loky", "yaml")


def _loaded_after(code: str) -> list[str]:
    listed = f"print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))"
    probe = f"{code}\nimport json, sys\n{listed}"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    out = subprocess.run(
        [sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    loaded: list[str] = json.loads(out.stdout.splitlines()[-1])
    return loaded


def test_importing_the_client_loads_none_of_the_heavy_libraries() -> None:
    assert _loaded_after("import supervisord_batt.client") == []


def test_a_sequential_map_and_its_warning_load_none_of_them() -> None:
    code = (
        "from supervisord_batt.client import Grant\n"
        "from supervisord_batt.client.notice import warn\n"
        "with Grant.local().executor() as ex:\n"
        "    assert ex.map(abs, [-1, -2]) == [1, 2]\n"
        "warn('a line on stderr')\n"
    )
    assert _loaded_after(code) == []


def test_a_program_that_configured_structlog_gets_the_warning_there() -> None:
    code = (
        "import structlog\n"
        "seen = []\n"
        "def keep(_logger, _name, event):\n"
        "    seen.append(event)\n"
        "    raise structlog.DropEvent\n"
        "structlog.configure(processors=[keep])\n"
        "from supervisord_batt.client.notice import warn\n"
        "warn('to the log', lease='L1')\n"
        "assert seen == [{'event': 'to the log', 'lease': 'L1'}], seen\n"
    )
    assert "structlog" in _loaded_after(code)
