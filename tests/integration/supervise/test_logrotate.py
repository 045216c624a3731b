"""Output files rotated from outside (issue 23): logrotate's rename, with and without its
postrotate HUP, and a file removed. The output goes on in the file at the path, and no
line is lost or written twice between the old file and the new.

Each test runs a real daemon whose worker prints numbered lines every few milliseconds,
moves its file the way the tool does (the real logrotate, with the shipped
contrib/logrotate/supervisord-batt), and reads every file back.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import REPO, wait_until

SHIPPED = REPO / "contrib" / "logrotate" / "supervisord-batt"
COUNTER = """
import itertools, sys, time
for n in itertools.count():
    print(f"line {n}", flush=True)
    time.sleep(0.003)
"""


@pytest.fixture
def outdir(needs_root: None) -> Iterator[Path]:
    where = Path(tempfile.mkdtemp(prefix="sbt-rot-", dir="/tmp"))
    where.chmod(0o755)
    try:
        yield where
    finally:
        shutil.rmtree(where, ignore_errors=True)


def _start(daemon: Callable[..., Any], py: Callable[[str], list[str]], outdir: Path) -> Any:
    return daemon(
        {
            "programs": {
                "counter": {
                    "command": py(COUNTER),
                    "output": {"mode": "file", "directory": str(outdir), "max_bytes": "64MiB"},
                }
            }
        }
    )


def _numbers(paths: list[Path]) -> list[int]:
    out = []
    for path in paths:
        out += [int(m) for m in re.findall(rb"^line (\d+)$", path.read_bytes(), re.M)]
    return out


def _lines_in(path: Path) -> int:
    return len(path.read_bytes().splitlines()) if path.exists() else 0


def _stop_and_check(d: Any, old: list[Path], current: Path) -> None:
    with d.client() as c:
        assert c.request("stop", target="counter")["ok"]
    numbers = _numbers([*old, current])
    assert numbers, "no output at all"
    # every line once, in order, across the rotated files and the new one
    assert numbers == list(range(len(numbers))), (numbers[:5], len(numbers))
    assert _lines_in(current) > 0 and all(_lines_in(p) > 0 for p in old)
    assert not d.events("output_lost"), d.events("output_lost")


def test_logrotate_with_the_shipped_config_and_its_postrotate_hup(
    daemon: Callable[..., Any], py: Callable[[str], list[str]], outdir: Path, tmp_path: Path
) -> None:
    if shutil.which("logrotate") is None:
        pytest.fail("logrotate is not installed (.ci/run installs Debian's logrotate)")
    d = _start(daemon, py, outdir)
    current = outdir / "counter-0.out.log"
    wait_until(lambda: _lines_in(current) > 50, timeout=15, what="output in the file")
    # the shipped file, pointed at this directory, its HUP at this daemon
    text = SHIPPED.read_text()
    text = text.replace(
        "/var/log/supervisord-batt/*.log /var/log/supervisord-batt/*/*.log", f"{outdir}/*.log"
    )
    text = text.replace(
        "systemctl reload supervisord-batt.service >/dev/null 2>&1 || true",
        f"kill -HUP {d.proc.pid}",
    )
    assert f"kill -HUP {d.proc.pid}" in text and str(outdir) in text
    conf = tmp_path / "logrotate.conf"
    conf.write_text(text)
    run = subprocess.run(
        ["logrotate", "-f", "-s", str(tmp_path / "state"), str(conf)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stderr
    rotated = sorted(outdir.glob("counter-0.out.log-*"))
    assert len(rotated) == 1, sorted(p.name for p in outdir.iterdir())
    wait_until(lambda: _lines_in(current) > 50, timeout=15, what="output in the new file")
    wait_until(lambda: d.events("reloaded"), timeout=10, what="the HUP's reload")
    _stop_and_check(d, rotated, current)


@pytest.mark.parametrize("move", ["rename", "remove"])
def test_a_file_moved_away_without_a_signal_is_followed(
    daemon: Callable[..., Any], py: Callable[[str], list[str]], outdir: Path, move: str
) -> None:
    d = _start(daemon, py, outdir)
    current = outdir / "counter-0.out.log"
    wait_until(lambda: _lines_in(current) > 50, timeout=15, what="output in the file")
    moved = outdir / "moved.log"
    if move == "rename":
        current.rename(moved)
    else:  # an operator's rm: what was in it is gone, the rest must not be
        current.unlink()
    reopened = wait_until(lambda: d.events("output_reopened"), timeout=10, what="reopened")
    assert reopened[0]["instance"] == "counter:0" and reopened[0]["stream"] == "stdout"
    wait_until(lambda: _lines_in(current) > 50, timeout=15, what="output in the new file")
    if move == "rename":
        _stop_and_check(d, [moved], current)
    else:
        with d.client() as c:
            assert c.request("stop", target="counter")["ok"]
        numbers = _numbers([current])
        assert numbers == list(range(numbers[0], numbers[0] + len(numbers)))
        assert not d.events("output_lost")
