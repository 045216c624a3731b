"""`supervisord-batt unit`: the shipped systemd unit, pointing at this installation.

The unit in `systemd/` names `/usr/local/bin/supervisord-batt`, where pip puts the
command for the system Python as root. Another install (a venv, pyenv, `--user`) puts it
elsewhere; this prints the same unit with its `Exec*=` lines rewritten to
the command of the interpreter running now, and the config path when one is given.
When that interpreter's directory is not on systemd's default PATH, it also puts it
first on the service's PATH, so a worker command such as `python3 -m ...` runs with the
Python the package is installed in, as it would in the operator's shell. Every other
line is the shipped file as it is.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

from supervisord_batt import paths

SHIPPED_COMMAND = "/usr/local/bin/supervisord-batt"
# systemd's PATH for services (systemd.exec(5), "Environment variables in spawned processes")
SYSTEMD_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def installed_command() -> list[str]:
    """The console script beside this interpreter, else this interpreter with -m."""
    script = Path(sys.executable).parent / "supervisord-batt"
    if script.is_file():
        return [str(script)]
    return [sys.executable, "-m", "supervisord_batt"]


def shipped_unit_text() -> str:
    for candidate in (paths.PACKAGE_UNIT, paths.SOURCE_UNIT):
        if candidate.is_file():
            return candidate.read_text(encoding="utf-8")
    raise FileNotFoundError(f"the unit file is not installed ({paths.SOURCE_UNIT} is missing)")


def render_unit(config: Path | None = None, command: list[str] | None = None) -> str:
    """The shipped unit with its Exec lines for `command` and `config`."""
    argv = command if command is not None else installed_command()
    if config is not None and not config.is_absolute():
        raise ValueError(f"the config path must be absolute for systemd, got {config}")
    bin_dir = str(Path(argv[0]).parent)
    out = []
    for line in shipped_unit_text().splitlines(keepends=True):
        key, sep, value = line.partition("=")
        if sep and key in ("ExecStart", "ExecReload", "ExecStopPost", "AssertPathExists"):
            value = value.replace(SHIPPED_COMMAND, shlex.join(argv))
            if config is not None:
                value = value.replace(str(paths.ETC_CONFIG), str(config))
            out.append(f"{key}={value}")
        else:
            out.append(line)
        if key == "ExecStart" and bin_dir not in SYSTEMD_PATH.split(":"):
            out.append(f"# {bin_dir} holds this install's Python: workers find it first\n")
            out.append(f"Environment=PATH={bin_dir}:{SYSTEMD_PATH}\n")
    return "".join(out)
