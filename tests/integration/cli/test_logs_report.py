"""`logs` and `report` against a real daemon's log file: runs that complete, fail and hang
past their wall clock, a lease, a reported fallback; then the incident's table."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import CALM, REPO, killing, wait_until
from tests.support.daemons import DaemonHandle


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "supervisord_batt", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        check=False,
    )


def lines_of(path: Path, event: str) -> list[dict[str, Any]]:
    out = []
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith("{") and json.loads(line).get("event") == event:
            out.append(json.loads(line))
    return out


@pytest.fixture(scope="module")
def incident(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A daemon that saw one completed, one failed and one hung (killed) run; its log."""
    import shutil
    import tempfile

    from tests.support.daemons import program_entry, python_command

    workdir = Path(tempfile.mkdtemp(prefix="sbt-", dir="/tmp"))
    log = workdir / "events.log"
    once = {"restart": "never", "min_runtime": "0s"}
    config = {
        "daemon": {"log_file": str(log), "stats_interval": "200ms", "log_level": "info"},
        # one CPU: the notebook's pool request gets sequential, for want of CPUs
        "budget": {"cpu_cap": 1, "pressure": CALM},  # a busy host changes nothing
        "programs": {
            "ok": program_entry(python_command("import time; time.sleep(0.3)"), **once),
            "bad": program_entry(
                python_command("import sys, time; time.sleep(0.3); sys.exit(3)"), **once
            ),
            "hang": program_entry(
                python_command("import time; time.sleep(600)"),
                wall_clock_limit="1s",
                stop_grace="1s",
                **once,
            ),
        },
    }
    handle = DaemonHandle(workdir, config)
    try:
        handle.wait_ready()
        with handle.client() as c:
            assert c.request("acquire", want=2, job="notebook")["ok"]
            c.request("fallback", **{"from": "process", "to": "thread"}, workers=2, reason="t")
        wait_until(lambda: len(lines_of(log, "exit")) == 3, timeout=30, what="three exits")
        ended = len(lines_of(log, "stats"))
        wait_until(lambda: len(lines_of(log, "stats")) > ended + 1, what="stats after the exits")
        yield handle, log
    finally:
        handle.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def test_report_gives_the_incidents_table(incident: Any) -> None:
    _, log = incident
    out = cli("report", "--file", str(log), "--json")
    assert out.returncode == 0, out.stderr
    assert f"reading {log}" in out.stderr
    fig = json.loads(out.stdout)
    assert fig["runs"] == {"completed": 1, "failed": 1, "killed": 1, "stopped": 0}
    assert fig["completion_rate"] == pytest.approx(1 / 3)
    assert fig["hang_rate"] == pytest.approx(1 / 3)
    assert fig["limit_kills"] == [{"program": "hang", "reason": "wall_clock_limit", "count": 1}]
    assert fig["executor_fallbacks"] == {"process>thread": 1}
    assert fig["grants"]["sequential"] == 1 and fig["denied"] == 1
    assert set(fig["denied_by"]) <= {"cpu", "fair_share"} and sum(fig["denied_by"].values()) == 1
    assert fig["stats_lines"] >= 2 and fig["daemons"] == 1
    assert fig["host_tasks"]["p50"] > 0 and fig["tightest_percent"]["max"] > 0
    assert fig["pressure_share"]["normal"] == pytest.approx(1.0)
    met = {t["target"]: t["met"] for t in fig["targets"]}
    assert met["script hangs 0%"] is False
    assert met["successful task completion > 95%"] is False
    keys = [a["key"] for a in fig["advice"]]
    assert "programs.hang.wall_clock_limit" in keys
    assert any("reserve_tasks" in k for k in keys)  # the reported fallback
    # sequential for want of CPUs: the advice is not to lower the reserve
    assert "programs.<name>.numprocs / budget.cpu_cap" in keys
    assert not any(k.startswith("budget.reserve_percent") for k in keys)
    text = cli("report", "--file", str(log))
    assert text.returncode == 0
    assert "script hangs 0%" in text.stdout and "NO" in text.stdout
    assert "hang wall_clock_limit 1" in text.stdout


@pytest.mark.skipif(not Path("/proc/pressure/cpu").exists(), reason="no PSI on this kernel")
def test_issue25_report_says_sequential_is_right_when_the_cpus_are_busy(
    daemon: Any, tmp_path: Path
) -> None:
    """Pools refused for CPU pressure: the advice was to lower the reserve and the
    headroom thresholds. cpu_extreme 0 makes any CPU pressure reading extreme, as a host
    whose CPUs are all busy reads."""
    log = tmp_path / "events.log"
    busy = {"cpu_high": "off", "cpu_extreme": 0, "memory_high": "off", "memory_extreme": "off"}
    d = daemon(
        {
            "daemon": {"log_file": str(log), "stats_interval": "200ms", "log_level": "info"},
            "budget": {"pressure": busy},
        }
    )
    with d.client() as c:
        grant = c.request("acquire", want=2, job="notebook")
        assert grant["ok"] and grant["kind"] == "sequential", grant
        wait_until(
            lambda: any(s["denied_by"] == {"cpu_pressure": 1} for s in lines_of(log, "stats")),
            what="a stats line counting the refusal",
        )
    out = cli("report", "--file", str(log), "--json")
    assert out.returncode == 0, out.stderr
    fig = json.loads(out.stdout)
    assert fig["denied_by"] == {"cpu_pressure": 1}
    (tip,) = fig["advice"]
    assert tip["key"] == "programs.<name>.numprocs / the host's CPUs"
    assert "sequential is right" in tip["why"] and "add CPUs or run fewer jobs" in tip["why"]


def test_issue25_the_stats_line_keeps_its_log_level(incident: Any) -> None:
    """The stats line named its pressure level `level`, over the log level: `top` showed
    `extr stats` and `logs --level warning` kept it."""
    handle, log = incident
    lines = lines_of(log, "stats")
    assert lines and all(line["level"] == "info" for line in lines), lines[-1]
    assert all(line["pressure"] in ("normal", "high", "extreme") for line in lines)
    assert all(isinstance(line["pressure_reason"], str) for line in lines)
    shown = [e for e in handle.status()["events"] if e.get("event") == "stats"]
    assert shown and all(e["level"] == "info" for e in shown)  # what `top` lists
    out = cli("logs", "--file", str(log), "--level", "warning", "--json")
    assert '"stats"' not in out.stdout


def test_logs_filters_by_program_event_and_level(incident: Any) -> None:
    _, log = incident
    out = cli("logs", "--file", str(log), "--program", "hang", "--json")
    assert out.returncode == 0, out.stderr
    events = [json.loads(line) for line in out.stdout.splitlines()]
    assert events and all(
        e.get("program") == "hang" or str(e.get("instance", "")).startswith("hang:") for e in events
    )
    assert {"spawn", "timeout_kill", "exit"} <= {e["event"] for e in events}
    out = cli("logs", "--file", str(log), "--event", "exit", "--json")
    assert sorted(json.loads(x)["program"] for x in out.stdout.splitlines()) == [
        "bad",
        "hang",
        "ok",
    ]
    out = cli("logs", "--file", str(log), "--level", "warning", "--json")
    levels = {json.loads(x)["level"] for x in out.stdout.splitlines()}
    assert levels and levels <= {"warning", "error", "critical"}
    readable = cli("logs", "--file", str(log), "--instance", "bad:0", "--event", "exit")
    (line,) = readable.stdout.splitlines()
    assert " exit " in line and "bad:0[" in line and "returncode=3" in line


def test_logs_since_drops_older_events(tmp_path: Path) -> None:
    log = tmp_path / "e.log"
    log.write_text(
        '{"timestamp": "2000-01-01T00:00:00.000000Z", "level": "info", "event": "old"}\n'
        '{"timestamp": "2999-01-01T00:00:00.000000Z", "level": "info", "event": "new"}\n'
    )
    out = cli("logs", "--file", str(log), "--since", "1h", "--json")
    assert [json.loads(x)["event"] for x in out.stdout.splitlines()] == ["new"]


def test_logs_shows_a_non_json_line_as_it_is(tmp_path: Path) -> None:
    log = tmp_path / "e.log"
    log.write_text('Traceback (most recent call last):\n{"event": "x", "level": "info"}\n{broken\n')
    out = cli("logs", "--file", str(log))
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[0] == "Traceback (most recent call last):"
    assert out.stdout.splitlines()[2] == "{broken"


def test_logs_follow_survives_rotation(tmp_path: Path) -> None:
    log = tmp_path / "e.log"
    log.write_text('{"event": "first", "level": "info"}\n')
    proc = subprocess.Popen(
        [sys.executable, "-m", "supervisord_batt", "logs", "-f", "--file", str(log), "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        cwd=REPO,
    )
    assert proc.stdout is not None
    os.set_blocking(proc.stdout.fileno(), False)
    seen = bytearray()

    def saw(text: str) -> bool:
        chunk = proc.stdout.read()  # type: ignore[union-attr]
        if chunk:
            seen.extend(chunk)
        return text.encode() in seen

    with killing(proc):
        wait_until(lambda: saw('"first"'), what="the first line")
        with log.open("a") as f:
            f.write('{"event": "appended", "level": "info"}\n')
        wait_until(lambda: saw('"appended"'), what="an appended line")
        log.rename(tmp_path / "e.log.1")  # rotation: a new file at the path
        log.write_text('{"event": "after-rotation", "level": "info"}\n')
        wait_until(lambda: saw('"after-rotation"'), what="the rotated file's line")


class Follower:
    """`logs -f ARGS --json` running; `events()`: the events it printed so far."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "supervisord_batt", "logs", "-f", *args, "--json"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=REPO,
        )
        assert self.proc.stdout is not None and self.proc.stderr is not None
        os.set_blocking(self.proc.stdout.fileno(), False)
        os.set_blocking(self.proc.stderr.fileno(), False)
        self.out = bytearray()
        self.err = bytearray()

    def events(self) -> list[str]:
        self.out.extend(self.proc.stdout.read() or b"")  # type: ignore[union-attr]
        return [json.loads(x)["event"] for x in self.out.decode().splitlines()]

    def following(self) -> bool:
        """Whether it has read what was there (and says so)."""
        self.err.extend(self.proc.stderr.read() or b"")  # type: ignore[union-attr]
        return b"following new events" in self.err


def test_issue25_logs_follow_starts_from_the_last_events_as_tail_does(tmp_path: Path) -> None:
    """`logs -f` printed the whole history before following."""
    log = tmp_path / "e.log"
    kinds = ["a", "b"] * 10  # a0 b1 a2 ... b19
    log.write_text(
        "".join(f'{{"event": "{k}{i}", "level": "info"}}\n' for i, k in enumerate(kinds))
    )
    cases = {
        (): [f"{k}{i}" for i, k in enumerate(kinds)][-10:],  # tail's 10
        ("-n", "2"): ["a18", "b19"],
        ("-n", "0"): [],
        ("--event", "a0", "--event", "a2", "-n", "1"): ["a2"],  # the last of those kept
    }
    followers = {args: Follower("--file", str(log), *args) for args in cases}
    with contextlib.ExitStack() as stack:
        for follower in followers.values():
            stack.enter_context(killing(follower.proc))
        for args, want in cases.items():
            follower = followers[args]
            wait_until(follower.following, what=f"logs -f {args} reading")
            wait_until(lambda: follower.events() == want, what=f"{want} from logs -f {args}")  # noqa: B023
        with log.open("a") as f:
            f.write('{"event": "new", "level": "info"}\n{"event": "a2", "level": "info"}\n')
        for args, want in cases.items():
            follower = followers[args]
            more = ["a2"] if "--event" in args else ["new", "a2"]
            wait_until(
                lambda: follower.events() == want + more,  # noqa: B023
                what=f"the appended lines from logs -f {args}",
            )


def test_logs_n_without_follow_is_the_last_events(tmp_path: Path) -> None:
    log = tmp_path / "e.log"
    log.write_text("".join(f'{{"event": "e{i}", "level": "info"}}\n' for i in range(30)))
    out = cli("logs", "--file", str(log), "-n", "3", "--json")
    assert [json.loads(x)["event"] for x in out.stdout.splitlines()] == ["e27", "e28", "e29"]
    everything = cli("logs", "--file", str(log), "--json")
    assert len(everything.stdout.splitlines()) == 30
    assert cli("logs", "--file", str(log), "-n", "-1").returncode == 2


def test_logs_without_a_source_says_what_to_do(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("daemon:\n  socket: /tmp/none.sock\n")
    out = cli("logs", "-c", str(config), "--unit", "no-such-unit-for-test.service")
    assert out.returncode == 2
    assert "daemon.log_file" in out.stderr and "--file -" in out.stderr


def test_logs_reads_standard_input() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "supervisord_batt", "logs", "--file", "-", "--event", "b"],
        input='{"event": "a", "level": "info"}\n{"event": "b", "level": "info"}\n',
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        check=False,
    )
    assert out.returncode == 0 and len(out.stdout.splitlines()) == 1
    assert out.stdout.split()[:3] == ["-", "info", "b"]
