"""Issue 22: whatever fails while spawning is a failed spawn with backoff, never a crash.

The loader now refuses what exec cannot take (tests/integration/cli/test_what_exec_takes.py),
so a value that makes `subprocess` raise something other than OSError can no longer come
from a config file. This hands the real supervisor, in process and through its reload
path, the program the loader used to let through (a NUL in its environment): the same
`ValueError` that killed `run` and half-applied a reload. It must become a `spawn_failed`
line (with its traceback once), a count, backoff and finally FATAL, never an instance
stuck in STARTING or an exception out of the supervisor.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace
from pathlib import Path

import structlog.testing

from supervisord_batt.config.loader import load_config_text
from supervisord_batt.supervise.states import State
from supervisord_batt.supervise.supervisor import Supervisor

CONFIG = """
daemon:
  log_format: json
programs:
  p:
    command: [sleep, "600"]
    output: {mode: daemon}
    backoff: {initial: 10ms, max: 20ms, factor: 2}
    start_limit: {burst: 3, interval: 60s}
"""


def test_an_exception_at_spawn_is_a_failed_spawn_with_backoff(tmp_path: Path) -> None:
    loaded = load_config_text(CONFIG, "test.yaml")
    unexecutable = replace(loaded.programs[0], environment=(("TOKEN", "a\0b"),))
    config = replace(loaded, programs=())
    supervisor = Supervisor(config, tmp_path / "s.sock", lambda *_: None, dict)

    async def main() -> None:
        # added by a reload, as in the issue: it returns, the new program is in place
        diff = await supervisor.reload(replace(config, programs=(unexecutable,)))
        assert diff["added"] == ["p"]
        deadline = time.monotonic() + 10
        while supervisor.instances["p:0"].state is not State.FATAL:
            assert time.monotonic() < deadline, supervisor.instances["p:0"].state
            await asyncio.sleep(0.01)
        await supervisor.shutdown(1.0)

    with structlog.testing.capture_logs() as logged:
        asyncio.run(main())
    failed = [e for e in logged if e["event"] == "spawn_failed"]
    assert len(failed) == 4  # more starts than the start limit's burst (3): FATAL
    assert [e["failures"] for e in failed] == [1, 2, 3, 4]
    assert {(e["kind"], e["errno"], e["instance"]) for e in failed} == {("ValueError", 0, "p:0")}
    assert "null byte" in failed[0]["reason"]
    assert "exc_info" in failed[0], "the unexpected failure's traceback, once"
    assert not any("exc_info" in e for e in failed[1:])
    assert supervisor.tally.spawn_failures == {("p", "ValueError"): 4}
    states = [e["to"] for e in logged if e["event"] == "transition"]
    assert states == ["STARTING", "BACKOFF"] * 3 + ["STARTING", "FATAL"], states
    root = supervisor.cgroups.root
    assert root is None or not root.exists(), f"worker cgroup root left behind: {root}"
