"""`top` in a real terminal: tmux runs it at 80x24 against a real daemon, `send-keys`
types, `capture-pane` reads the screen, and the pane's own flags say whether it left the
alternate screen and how it exited."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import CALM, REPO, wait_until
from tests.support.daemons import DaemonHandle

pytestmark = pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux not installed")

INTERVAL = "0.2"


class Terminal:
    """One tmux server of our own (its own socket name), one 80x24 pane.

    The pane runs `top` under a small shell that, once `top` exits, prints its exit status
    and whether the terminal's modes (stty -g) are the ones it had before, then stays: tmux
    reports a pane's cursor and screen flags only while something runs in it."""

    def __init__(self, workdir: Path) -> None:
        self.name = f"sbt-top-{uuid.uuid4().hex[:10]}"
        self.conf = workdir / "tmux.conf"
        self.conf.write_text("set -g status off\n")

    def tmux(self, *args: str) -> str:
        out = subprocess.run(
            ["tmux", "-L", self.name, "-f", str(self.conf), *args],
            capture_output=True,
            text=True,
            timeout=20,
            check=True,
        )
        return out.stdout

    def run(self, *argv: str) -> None:
        command = " ".join(shlex.quote(a) for a in argv)
        script = (
            f"cd {shlex.quote(str(REPO))}; before=$(stty -g); {command}; rc=$?; "
            'if [ "$(stty -g)" = "$before" ]; then t=same; else t=changed; fi; '
            'echo "top-exit=$rc tty=$t"; exec sleep 600'
        )
        self.tmux("new-session", "-d", "-x", "80", "-y", "24", script)

    def screen(self) -> str:
        # -J joins a wrapped line: a line too long for the terminal shows as one
        return self.tmux("capture-pane", "-p", "-J")

    def flag(self, name: str) -> str:
        return self.tmux("display-message", "-p", f"#{{{name}}}").strip()

    def wait_for(self, *texts: str, timeout: float = 20) -> str:
        def shows() -> str:
            screen = self.screen()
            return screen if all(t in screen for t in texts) else ""

        return wait_until(shows, timeout=timeout, interval=0.05, what=f"screen with {texts}")

    def wait_exit(self, timeout: float = 10) -> int:
        """top's exit status, once it has exited and left the terminal as it found it."""
        screen = self.wait_for("top-exit=", timeout=timeout)
        found = re.search(r"top-exit=(\d+) tty=(\w+)", screen)
        assert found, screen
        assert found.group(2) == "same", f"terminal modes not restored:\n{screen}"
        assert self.flag("alternate_on") == "0", "still on the alternate screen"
        assert self.flag("cursor_flag") == "1", "cursor still hidden"
        return int(found.group(1))

    def kill(self) -> None:
        """Stop our server and remove its socket (tmux 3.3a leaves the file behind)."""
        found = subprocess.run(
            ["tmux", "-L", self.name, "display-message", "-p", "#{socket_path}"],
            capture_output=True,
            text=True,
            timeout=20,
            check=False,
        )
        subprocess.run(
            ["tmux", "-L", self.name, "kill-server"], capture_output=True, timeout=20, check=False
        )
        if found.returncode == 0 and found.stdout.strip():
            Path(found.stdout.strip()).unlink(missing_ok=True)


@pytest.fixture
def terminal(tmp_path: Path) -> Iterator[Terminal]:
    term = Terminal(tmp_path)
    try:
        yield term
    finally:
        term.kill()


@pytest.fixture
def supervised(
    daemon: Callable[..., DaemonHandle], program: Callable[..., dict[str, Any]]
) -> DaemonHandle:
    """A daemon running two instances of a sleeper under a 10 minute wall clock."""
    sleeper = program(
        [sys.executable, "-c", "import time; time.sleep(600)"],
        numprocs=2,
        wall_clock_limit="600s",
    )
    # the level is asserted NORMAL: the host's CPU pressure must not decide it
    handle = daemon({"budget": {"pressure": CALM}, "programs": {"sleeper": sleeper}})
    wait_until(
        lambda: all(i["state"] == "RUNNING" for i in handle.status()["instances"]),
        timeout=20,
        what="both sleepers running",
    )
    return handle


def top(handle_socket: Path) -> tuple[str, ...]:
    return (sys.executable, "-m", "supervisord_batt", "top", "--socket", str(handle_socket))


def test_top_shows_limits_level_instances_and_leases_and_q_quits(
    supervised: DaemonHandle, terminal: Terminal
) -> None:
    with supervised.client() as holder:
        granted = holder.request("acquire", want=1, kinds=["thread"], job="topjob")
        assert granted["ok"], granted
        terminal.run(*top(supervised.socket), "--interval", INTERVAL)
        screen = terminal.wait_for("sleeper:1", "topjob", "NORMAL", "LIMIT")
        assert terminal.flag("alternate_on") == "1"  # full screen

        lines = screen.splitlines()
        assert len(lines) <= 24
        assert max(len(line) for line in lines) <= 80, screen
        status = supervised.status()
        assert lines[0].startswith(f"supervisord-batt {status['version']}  pid {status['pid']}")
        assert "2/2 running" in lines[0]
        assert lines[1].split()[:2] == ["level", "NORMAL"]
        # the reason names a signal and its figure ("pid_max free 99.6%"), which may move
        # between the screen and this status while other processes start and end
        named, _, _figure = status["level_reason"].rpartition(" ")
        assert named and named in lines[1], (status["level_reason"], lines[1])
        # every limit as a bar, the tightest first and marked
        limits = status["host"]["limits"]
        bars = [line for line in lines if "[" in line and "%" in line]
        assert len(bars) == len(limits), screen
        assert bars[0].startswith("*") and sum(b.startswith("*") for b in bars) == 1
        # each instance: state, pid, uptime, restarts, tasks, lease, wall clock left
        for inst in status["instances"]:
            row = next(line for line in lines if line.startswith(inst["name"] + " ")).split()
            assert row[1:3] == ["RUNNING", str(inst["pid"])], row
            assert row[4:7] == ["0", "1", "-"], row
            assert row[7].startswith("9m"), row  # about 600 s left
        lease_row = next(line for line in lines if "topjob" in line).split()
        assert lease_row[0] == granted["lease"] and lease_row[3] == granted["kind"]
        assert "spawn" in screen  # the latest events

        # the view refreshes: the uptime moves on
        terminal.wait_for("sleeper:1", "up ")
        before = lines[0].split("  ")[2]
        wait_until(
            lambda: terminal.screen().splitlines()[0].split("  ")[2] != before,
            timeout=10,
            what="the uptime to change",
        )

        terminal.tmux("send-keys", "q")
        assert terminal.wait_exit() == 0  # and the terminal got its screen back


def test_ctrl_c_quits_cleanly(supervised: DaemonHandle, terminal: Terminal) -> None:
    terminal.run(*top(supervised.socket), "--interval", INTERVAL)
    terminal.wait_for("sleeper:0", "LIMIT")
    terminal.tmux("send-keys", "C-c")
    assert terminal.wait_exit() == 0  # screen, cursor and tty modes restored


def test_other_keys_do_not_quit(supervised: DaemonHandle, terminal: Terminal) -> None:
    terminal.run(*top(supervised.socket), "--interval", INTERVAL)
    terminal.wait_for("sleeper:0")
    terminal.tmux("send-keys", "x", "Enter", " ")
    # still refreshing after the keys: a later clock than the one on screen now
    first = terminal.screen().splitlines()[0]
    wait_until(lambda: terminal.screen().splitlines()[0] != first, timeout=10, what="a refresh")
    assert "top-exit=" not in terminal.screen()
    terminal.tmux("send-keys", "Q")
    assert terminal.wait_exit() == 0


def test_a_resize_redraws_at_once_at_the_new_size(
    supervised: DaemonHandle, terminal: Terminal
) -> None:
    # refreshes 60 s apart: only the resize itself can redraw within the deadline
    terminal.run(*top(supervised.socket), "--interval", "60")
    terminal.wait_for("sleeper:1", "LIMIT")

    def first_line_width() -> int:
        return len(terminal.screen().splitlines()[0].rstrip())

    terminal.tmux("resize-window", "-x", "100", "-y", "30")
    wait_until(lambda: first_line_width() == 100, timeout=10, what="a redraw 100 wide")
    terminal.tmux("resize-window", "-x", "80", "-y", "24")
    wait_until(lambda: first_line_width() == 80, timeout=10, what="a redraw 80 wide")
    screen = terminal.screen()
    assert max(len(line.rstrip()) for line in screen.splitlines()) <= 80, screen
    terminal.tmux("send-keys", "q")
    assert terminal.wait_exit() == 0


def test_daemon_going_away_is_shown_and_the_view_comes_back_with_it(
    daemon: Callable[..., DaemonHandle], terminal: Terminal
) -> None:
    first = daemon()
    terminal.run(*top(first.socket), "--interval", INTERVAL)
    terminal.wait_for(f"pid {first.proc.pid}", "LIMIT")

    first.stop()
    screen = terminal.wait_for("daemon down since", "retrying")
    assert "top-exit=" not in screen
    assert "LIMIT" in screen  # the last status stays on screen under the banner
    assert max(len(line) for line in screen.splitlines()) <= 80

    second = daemon({"daemon": {"socket": str(first.socket)}})
    screen = terminal.wait_for(f"pid {second.proc.pid}")
    assert "daemon down" not in screen
    terminal.tmux("send-keys", "q")
    assert terminal.wait_exit() == 0


def test_a_connection_closed_for_idleness_is_not_taken_for_a_daemon_gone(
    daemon: Callable[..., DaemonHandle], terminal: Terminal
) -> None:
    """An interval longer than the daemon's idle_timeout: the daemon closes the view's
    connection between refreshes; the view connects again without a banner."""
    handle = daemon({"daemon": {"idle_timeout": "300ms"}})
    terminal.run(*top(handle.socket), "--interval", "0.8")
    terminal.wait_for("LIMIT")
    screens: list[str] = []

    def refreshed_three_times() -> bool:
        screens.append(terminal.screen())
        return len({screen.splitlines()[0] for screen in screens if screen.strip()}) >= 4

    wait_until(refreshed_three_times, timeout=20, what="three refreshes")
    assert not [screen for screen in screens if "daemon down" in screen]
    terminal.tmux("send-keys", "q")
    assert terminal.wait_exit() == 0


def test_no_daemon_exits_2_saying_so_before_going_full_screen(tmp_path: Path) -> None:
    missing = tmp_path / "absent.sock"
    done = subprocess.run(
        [*top(missing)], capture_output=True, text=True, timeout=60, cwd=REPO, check=False
    )
    assert done.returncode == 2
    assert "daemon is not running" in done.stderr and str(missing) in done.stderr
    assert done.stdout == ""  # nothing drawn, no escape codes


def test_no_daemon_in_a_terminal_exits_2_and_says_so(tmp_path: Path, terminal: Terminal) -> None:
    missing = tmp_path / "absent.sock"
    terminal.run(*top(missing))
    assert terminal.wait_exit() == 2
    assert "daemon is not running" in terminal.screen()
