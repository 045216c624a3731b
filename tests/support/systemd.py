"""The shipped unit in a systemd sandbox (`Service`) and the config its tests start from;
the sandbox itself is tests/integration/systemd/sandbox.py, its fixtures are in that
directory's conftest.py."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from supervisord_batt.cli.unit import installed_command
from supervisord_batt.paths import SOURCE_UNIT
from tests.helpers import CALM, REPO, wait_until
from tests.integration.systemd.sandbox import Sandbox

UNIT = "supervisord-batt.service"
SLEEPER = ["python3", "-c", "import time; time.sleep(600)"]


def base_config() -> dict[str, Any]:
    """A daemon with two sleeping workers, a fast tick, and no PSI in the way; each grant
    at once (no burst hold: a test that crashes the daemon right after a job's acquire
    would otherwise catch the job still held sequential)."""
    return {
        "daemon": {"sample_interval": "200ms", "scan_interval": "1s", "log_format": "json"},
        "budget": {
            "reserve_tasks": 2,
            "reserve_percent": 0,
            "max_per_lease": 8,
            "cpu_cap": 16,
            "memory_per_slot": "1MiB",
            "pressure": CALM,
            "burst_window": 0,
        },
        "programs": {
            "sleeper": {"command": SLEEPER, "numprocs": 2, "stop_grace": "2s", "restart": "always"}
        },
    }


def journal_events(box: Sandbox, *args: str, until: str) -> list[dict[str, Any]]:
    """The unit's JSON events in the sandbox's journal (`args`: journalctl's filters),
    once one named `until` is among them: journald reads a unit's stdout on its own time,
    so a line the daemon wrote before `systemctl` returned may not be there yet."""

    def events() -> list[dict[str, Any]] | None:
        out = box.run("journalctl", "-u", UNIT, "--no-pager", "-o", "cat", *args).stdout
        found = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
        return found if until in {e["event"] for e in found} else None

    return wait_until(events, timeout=30, interval=0.1, what=f"{until!r} in the journal")


class Service:
    """The shipped unit installed in a sandbox, with a drop-in pointing at this code."""

    def __init__(self, box: Sandbox) -> None:
        self.box = box
        self.config = box.workdir / "etc" / "supervisord-batt.yaml"
        self.config.parent.mkdir()
        self.command = " ".join(installed_command())
        # the checkout the service imports first; None: only what `command` installed
        self.pythonpath: Path | None = REPO

    def install(self, config: dict[str, Any], **service: str) -> None:
        """The unit exactly as shipped, plus a drop-in: ExecStart/ExecReload at the code
        under test and `config`, and any extra [Service] settings."""
        (self.box.units / UNIT).write_bytes(SOURCE_UNIT.read_bytes())
        dropin = self.box.units / f"{UNIT}.d"
        dropin.mkdir(exist_ok=True)
        lines = [
            "[Unit]",
            "AssertPathExists=",
            f"AssertPathExists={self.config}",
            "[Service]",
            "ExecStart=",
            f"ExecStart={self.command} run -c {self.config}",
            "ExecReload=",
            f"ExecReload={self.command} reload -c {self.config}",
            "ExecStopPost=",
            f"ExecStopPost={self.command} cleanup -c {self.config}",
            "Environment=PYTHONUNBUFFERED=1",
            # the checkout under test, whichever installation the command belongs to
            *([f"Environment=PYTHONPATH={self.pythonpath}"] if self.pythonpath else []),
            *(f"{key}={value}" for key, value in service.items()),
        ]
        (dropin / "test.conf").write_text("\n".join(lines) + "\n")
        self.write_config(config)
        self.box.systemctl("daemon-reload")

    def write_config(self, config: dict[str, Any] | str) -> None:
        text = config if isinstance(config, str) else yaml.safe_dump(config)
        self.config.write_text(text)

    def cli(self, *args: str, check: bool = True) -> Any:
        """The CLI inside the namespace, as an operator on that host would run it."""
        argv = self.command.split()
        return self.box.run(*argv, *args, "-c", str(self.config), check=check)

    def status(self) -> dict[str, Any]:
        result: dict[str, Any] = json.loads(self.cli("status", "--json", check=False).stdout)
        return result

    def show(self, *props: str) -> dict[str, str]:
        return self.box.show(UNIT, *props)

    def instances(self) -> dict[str, dict[str, Any]]:
        return {inst["name"]: inst for inst in self.status()["instances"]}
