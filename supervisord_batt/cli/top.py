"""`supervisord-batt top`: a live full-screen view of the daemon's `status` reply.

The screen is built by pure functions from one status dict (and the terminal's size) to
rich renderables, so it is tested without a terminal; `run_top` is the thin loop around
them. It sends one `status` request per refresh and waits for the next one in select() on
stdin (cbreak mode), so `q` quits at once and no thread is started (rich's Live refreshes
only when told: auto_refresh=False).

When the daemon goes away while the view runs, the last screen stays up under a red line
saying since when the daemon is down and why, and the view keeps asking every interval;
it carries on by itself once the daemon answers again (a restart, a reload of the unit),
the way an operator watching a restart expects. Only at the start, when the daemon does
not answer at all, does `top` say so on stderr and exit 2.

Each refresh asks for the summary, the latest events and one page of the instances and
leases, as many rows as the terminal has lines (`status`'s `limit`): the reply stays the
size of the screen whatever the daemon holds, and the rows that do not fit are counted
from the page's totals ("+2990 more").

rich is an optional extra (`pip install 'supervisord-batt[top]'`); it is imported here
only, inside the functions, so the daemon and the other commands never load it.

# Why one module
Every panel is a pure function of the same status dict, drawn with the same styles and
column widths; `run_top` is the one loop around them. Split by panel, the shared widths
and styles would be imported back and forth.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import select
import signal
import sys
import termios
import time
import tty
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

from supervisord_batt import protocol
from supervisord_batt.cli import exits
from supervisord_batt.supervise.states import State

if TYPE_CHECKING:
    from rich.console import RenderableType
    from rich.table import Table
    from rich.text import Text

    from supervisord_batt.client.leases import Connection

INSTALL_HINT = "pip install 'supervisord-batt[top]'"
REQUEST_TIMEOUT = 5.0  # seconds for one status reply
# a style for each name of protocol.LEVELS, states.State and protocol.LOG_LEVELS
LEVEL_STYLE = dict(
    zip(protocol.LEVELS, ("bold green", "bold yellow", "bold white on red"), strict=True)
)
STATE_STYLE = {
    State.RUNNING.value: "green",
    State.STARTING.value: "yellow",
    State.STOPPING.value: "yellow",
    State.BACKOFF.value: "yellow",
    State.FATAL.value: "bold red",
    State.EXITED.value: "dim",
    State.STOPPED.value: "dim",
}
EVENT_LEVEL_STYLE: dict[str, str] = dict(
    zip(protocol.LOG_LEVELS, ("dim", "", "yellow", "bold red"), strict=True)
)
# event fields shown first in the DETAIL column; the rest follow as key=value
EVENT_KEYS = ("instance", "program", "pid", "reason", "kind", "workers", "lease", "job")
EVENT_SKIP = {"timestamp", "level", "event", "component"}
HEADER_STYLE = "bold reverse"
# the limits table's columns other than the bar, with the space after each: 18+1, 6+1,
# 11+1, 6+1, 6, and the bar's own space
LIMIT_FIXED = 52


# -- formatting -------------------------------------------------------------------------


def fmt_duration(seconds: float | None) -> str:
    """A short age: 42s, 5m02s, 2h05m, 3d04h; '-' when unknown."""
    if seconds is None:
        return "-"
    s = max(0, int(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def fmt_count(n: int | None) -> str:
    """A task count in at most 6 characters: 32656, 192k, 4.2M."""
    if n is None:
        return "-"
    if n < 100_000:
        return str(n)
    if n < 10_000_000:
        return f"{n // 1000}k"
    return f"{n / 1_000_000:.1f}M"


def clip_left(text: str, width: int) -> str:
    """Keep the end of a long name (a cgroup path differs at its end): '…ce/batt.service'."""
    if len(text) <= width:
        return text
    return "…" + text[len(text) - width + 1 :]


def event_time(timestamp: str | None) -> str:
    """The event's ISO timestamp (UTC, 'Z') as local HH:MM:SS."""
    if not timestamp:
        return "--:--:--"
    try:
        when = dt.datetime.fromisoformat(timestamp.replace("Z", "+00:00"))
    except ValueError:
        return timestamp[:8]
    return when.astimezone().strftime("%H:%M:%S")


def event_detail(event: protocol.Event) -> str:
    """The fields of an event that say what it was about, most telling first."""
    parts = []
    for key in EVENT_KEYS:
        if event.get(key) is not None:
            parts.append(f"{event[key]}" if key == "instance" else f"{key}={event[key]}")
    if event.get("instance") is not None and event.get("program") is not None:
        parts = [p for p in parts if not p.startswith("program=")]
    skip = set(EVENT_SKIP)
    if "from" in event and "to" in event:  # a transition: STARTING->RUNNING
        parts.insert(1 if event.get("instance") else 0, f"{event['from']}->{event['to']}")
        skip |= {"from", "to"}
    for key, value in event.items():
        if key in skip or key in EVENT_KEYS or value is None:
            continue
        parts.append(f"{key}={value}")
    return " ".join(parts)


def allocate(budget: int, wants: Sequence[int]) -> list[int]:
    """Share `budget` rows among sections wanting `wants` rows: one row at a time to each
    section in turn (first sections first), so every section shows some of its rows."""
    got = [0] * len(wants)
    left = max(0, budget)
    while left > 0:
        gave = False
        for i, want in enumerate(wants):
            if left > 0 and got[i] < want:
                got[i] += 1
                left -= 1
                gave = True
        if not gave:
            break
    return got


def limit_bar(in_use: int, leased: int, limit: int, width: int) -> Text:
    """[|||||+++.......]: in use, then the leased tasks (drawn only within the headroom),
    then the headroom; the in-use part coloured by how full the limit is."""
    from rich.text import Text

    inner = max(1, width - 2)
    used = min(inner, round(inner * in_use / limit)) if limit > 0 else inner
    if in_use > 0 and used == 0:
        used = 1  # something is in use: show it
    lease = min(inner - used, round(inner * leased / limit)) if limit > 0 else 0
    if leased > 0 and lease == 0 and used < inner:
        lease = 1
    percent = 100 * in_use / limit if limit > 0 else 100
    style = "red" if percent >= 90 else "yellow" if percent >= 70 else "green"
    bar = Text("[")
    bar.append("|" * used, style=style)
    bar.append("+" * lease, style="cyan")
    bar.append("." * (inner - used - lease), style="dim")
    bar.append("]")
    return bar


# -- sections ---------------------------------------------------------------------------


def _table(width: int) -> Table:
    from rich.table import Table

    return Table(
        box=None,
        padding=(0, 1, 0, 0),
        pad_edge=False,
        show_edge=False,
        header_style=HEADER_STYLE,
        width=width,
        expand=True,
    )


def _more(row: list[Any], hidden: int) -> list[Any]:
    """The row that stands for the rows left out."""
    from rich.text import Text

    return [Text(f"+{hidden} more", style="dim")] + ["" for _ in row[1:]]


def _fill(table: Table, rows: list[list[Any]], shown: int, total: int | None = None) -> Table:
    """Add at most `shown` of the first rows of a list of `total` (default: all of them
    are in `rows`); when some do not fit the last one says how many."""
    total = len(rows) if total is None else max(total, len(rows))
    if total > shown:
        if shown <= 0:
            return table
        kept = rows[: shown - 1]
        for row in kept:
            table.add_row(*row)
        table.add_row(*_more(rows[0] if rows else [""] * len(table.columns), total - len(kept)))
        return table
    for row in rows:
        table.add_row(*row)
    return table


def _total(status: protocol.StatusListsReply, name: str) -> int:
    """Rows of a list this reply holds the first page of (its `page`'s count)."""
    page = status.get("page")
    if name == "leases":
        return page["leases"] if page else len(status.get("leases", []))
    return page["instances"] if page else len(status.get("instances", []))


def limit_rows(status: protocol.StatusListsReply, width: int) -> list[list[Any]]:
    from rich.text import Text

    host = status["host"]
    if host is None:
        return []
    tightest = host["tightest"]["name"]
    leased = status["leased_tasks"]
    bar_width = max(8, width - LIMIT_FIXED)
    # the tightest first, then the fullest: the ones that matter stay when rows run out
    limits = sorted(
        host["limits"], key=lambda lim: (lim["name"] != tightest, -float(lim["percent_used"]))
    )
    rows = []
    for lim in limits:
        mark = lim["name"] == tightest
        name = Text(("*" if mark else " ") + clip_left(lim["name"], 17))
        if mark:
            name.stylize("bold")
        in_use, limit = lim["in_use"], lim["limit"]
        rows.append(
            [
                name,
                limit_bar(in_use, leased, limit, bar_width),
                f"{lim['percent_used']:.1f}%",
                f"{fmt_count(in_use)}/{fmt_count(limit)}",
                fmt_count(leased),
                fmt_count(lim["headroom"]),
            ]
        )
    return rows


def limits_table(status: protocol.StatusListsReply, width: int, shown: int) -> Table:
    table = _table(width)
    table.add_column("LIMIT (*tightest)", no_wrap=True, overflow="ellipsis", width=18)
    table.add_column("", no_wrap=True, overflow="crop", ratio=1)
    table.add_column("USED", no_wrap=True, justify="right", width=6)
    table.add_column("TASKS/LIMIT", no_wrap=True, justify="right", width=11)
    table.add_column("LEASED", no_wrap=True, justify="right", width=6)
    table.add_column("FREE", no_wrap=True, justify="right", width=6)
    return _fill(table, limit_rows(status, width), shown)


def instance_rows(status: protocol.StatusListsReply) -> list[list[Any]]:
    from rich.text import Text

    rows = []
    for inst in status.get("instances", []):
        state = inst["state"]
        left = inst["wall_clock_left_s"]
        left_text = Text(fmt_duration(left))
        if left is not None and left < 60:
            left_text.stylize("bold red")
        tasks = inst["tasks"]
        rows.append(
            [
                inst["name"],
                Text(state, style=STATE_STYLE.get(state, "")),
                str(inst["pid"] or "-"),
                fmt_duration(inst["uptime_s"]),
                str(inst["restarts"]),
                str(tasks) if tasks is not None else "-",
                inst["lease"] or "-",
                left_text,
            ]
        )
    return rows


def instances_table(status: protocol.StatusListsReply, width: int, shown: int) -> Table:
    table = _table(width)
    table.add_column("INSTANCE", no_wrap=True, overflow="ellipsis", ratio=1)
    table.add_column("STATE", no_wrap=True)
    for head in ("PID", "UP", "RESTARTS", "TASKS", "LEASE", "WALL LEFT"):
        table.add_column(head, no_wrap=True, justify="right")
    return _fill(table, instance_rows(status), shown, _total(status, "instances"))


def lease_rows(status: protocol.StatusListsReply) -> list[list[Any]]:
    return [
        [
            lease["lease"],
            str(lease["pid"]),
            lease["job"] or "-",
            lease["kind"],
            f"{lease['workers']}/{lease['wanted']}",
            fmt_duration(lease["age_s"]),
        ]
        for lease in status.get("leases", [])
    ]


def leases_table(status: protocol.StatusListsReply, width: int, shown: int) -> RenderableType:
    from rich.text import Text

    rows = lease_rows(status)
    if not _total(status, "leases"):
        return Text("LEASES: none".ljust(width), style=HEADER_STYLE, no_wrap=True)
    table = _table(width)
    table.add_column("LEASE", no_wrap=True, overflow="ellipsis")
    table.add_column("PID", no_wrap=True, justify="right")
    table.add_column("JOB", no_wrap=True, overflow="ellipsis", ratio=1)
    table.add_column("KIND", no_wrap=True)
    table.add_column("WORKERS/WANTED", no_wrap=True, justify="right")
    table.add_column("AGE", no_wrap=True, justify="right")
    return _fill(table, rows, shown, _total(status, "leases"))


def event_rows(status: protocol.StatusListsReply) -> list[list[Any]]:
    from rich.text import Text

    rows = []
    for event in status.get("events", []):
        level = str(event.get("level", ""))
        style = EVENT_LEVEL_STYLE.get(level, "")
        rows.append(
            [
                event_time(event.get("timestamp")),
                Text(level[:4], style=style),
                Text(str(event.get("event", "?")), style=style),
                event_detail(event),
            ]
        )
    return rows


def events_table(status: protocol.StatusListsReply, width: int, shown: int) -> Table:
    table = _table(width)
    table.add_column("EVENTS", no_wrap=True, min_width=8)
    table.add_column("LVL", no_wrap=True, min_width=4)
    table.add_column("EVENT", no_wrap=True, overflow="ellipsis", max_width=20)
    table.add_column("DETAIL", no_wrap=True, overflow="ellipsis", ratio=1)
    rows = event_rows(status)
    # the latest are the ones that matter: drop the oldest, keep the order of the log
    if len(rows) > shown > 0:
        hidden = len(rows) - (shown - 1)
        table.add_row(*_more(rows[0], hidden))
        for row in rows[hidden:]:
            table.add_row(*row)
        return table
    for row in rows[:shown] if shown > 0 else []:
        table.add_row(*row)
    return table


# -- the screen -------------------------------------------------------------------------


def header_lines(
    status: protocol.StatusListsReply, width: int, clock: str, problem: str | None = None
) -> list[Text]:
    """Two lines: who and since when (or what is wrong), then the pressure level and why."""
    from rich.text import Text

    counts = status["counts"]
    running = counts["states"].get(State.RUNNING.value, 0)
    right = f"{clock}  q quit"
    if problem:
        first = Text(problem, style="bold white on red")
    else:
        first = Text(
            f"supervisord-batt {status['version']}  pid {status['pid']}  "
            f"up {fmt_duration(status['uptime_s'])}  {running}/{counts['instances']} running",
            style="bold",
        )
    room = width - len(right) - 1
    first.truncate(max(0, room), overflow="ellipsis")
    first.append(" " * max(1, width - len(first) - len(right)))
    first.append(right)
    first.truncate(width)

    level = status["level"]
    second = Text("level ")
    second.append(f" {level.upper()} ", style=LEVEL_STYLE.get(level, "bold"))
    reason = status["level_reason"]
    if reason:
        second.append(f" {reason}")
    second.append(
        f"  capacity {status['capacity']}  leased {status['leased']}"
        f" ({status['leased_tasks']} tasks)"
    )
    second.no_wrap = True
    second.truncate(width, overflow="ellipsis")
    first.no_wrap = True
    return [first, second]


def memory_text(memory: protocol.MemoryJson, width: int) -> Text:
    """One line: the memory the budget counts on, where it binds, and OOM kills if any."""
    from rich.text import Text

    gib = 2**30
    line = Text(f"memory {memory['headroom_bytes'] / gib:.2f} GiB free")
    where = memory["limited_by"]
    if where != "MemAvailable":
        limit = next((lim for lim in memory["limits"] if lim["name"] == where), None)
        line.append(f" before {where}")
        if limit is not None:
            line.append(f" ({limit['in_use'] / gib:.2f}/{limit['limit'] / gib:.2f} GiB)")
    kills = sum(row["oom_kills"] or 0 for row in memory["cgroups"])
    if kills:
        line.append(f"  {kills} OOM kills", style="bold red")
    line.no_wrap = True
    line.truncate(width, overflow="ellipsis")
    return line


def render_screen(
    status: protocol.StatusListsReply,
    width: int = 80,
    height: int = 24,
    *,
    clock: str | None = None,
    problem: str | None = None,
) -> RenderableType:
    """The whole screen for one status reply, fitted to width x height."""
    from rich.console import Group
    from rich.text import Text

    if clock is None:
        clock = time.strftime("%H:%M:%S")
    parts: list[RenderableType] = list(header_lines(status, width, clock, problem))
    host = status["host"]
    memory = host.get("memory") if host else None
    if memory is not None:
        parts.append(memory_text(memory, width))
    wants = [
        len(host["limits"]) if host else 0,
        _total(status, "instances"),
        _total(status, "leases"),
        len(status.get("events", [])),
    ]
    # each section takes its heading line, then a share of the rows left
    rows = allocate(height - len(parts) - len(wants) - (0 if host else 1), wants)
    if host:
        parts.append(limits_table(status, width, rows[0]))
    else:
        parts.append(Text("no host sample yet", style="dim"))
    parts.append(instances_table(status, width, rows[1]))
    parts.append(leases_table(status, width, rows[2]))
    parts.append(events_table(status, width, rows[3]))
    return Group(*parts)


# -- the loop ---------------------------------------------------------------------------


class _Quit(Exception):
    """SIGTERM or SIGHUP: leave the way `q` does."""


def _on_signal(signum: int, frame: FrameType | None) -> None:
    raise _Quit()


def _ignore(signum: int, frame: FrameType | None) -> None:
    """SIGWINCH: set_wakeup_fd has already written to the pipe select() watches."""


QUIT, RESIZED, TICK = "quit", "resized", "tick"


def wait_for_key(fd: int, wakeup: int, deadline: float) -> str:
    """Wait until the monotonic `deadline` for keys on `fd`: QUIT when `q` was typed (or
    stdin closed), RESIZED when a SIGWINCH came in through the `wakeup` pipe, else TICK.
    Other keys are ignored."""
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return TICK
        ready, _, _ = select.select([fd, wakeup], [], [], remaining)
        if wakeup in ready:
            while True:  # drain: one redraw for a burst of resizes
                try:
                    os.read(wakeup, 512)
                except BlockingIOError:
                    break
            return RESIZED
        if fd in ready:
            data = os.read(fd, 64)
            if not data or b"q" in data.lower():
                return QUIT


class StatusFeed:
    """One connection kept across refreshes, made again after the daemon went away."""

    def __init__(self, socket: Path, timeout: float) -> None:
        self.socket = socket
        self.timeout = timeout
        self.conn: Connection | None = None
        self.rows = 24  # rows of each list to ask for: the terminal's height

    def status(self) -> protocol.StatusListsReply:
        if self.conn is not None:
            try:
                return self._ask(self.conn)
            except OSError:
                # the daemon may have closed a connection idle for longer than its
                # idle_timeout (a long --interval): one more try on a new connection
                self.close()
            except BaseException:
                self.close()
                raise
        return self._fresh()

    def _ask(self, conn: Connection) -> protocol.StatusListsReply:
        limit = max(1, min(self.rows, protocol.STATUS_PAGE_MAX))
        return conn.call(
            protocol.StatusListsReply,
            "status",
            instances=True,
            leases=True,
            events=True,
            limit=limit,
        )

    def _fresh(self) -> protocol.StatusListsReply:
        from supervisord_batt.client.leases import Connection

        self.conn = Connection(self.socket, timeout=self.timeout)
        try:
            return self._ask(self.conn)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


# length kept: the terminal set-up and its restore in one try/finally, so no path leaves the
# terminal raw
def run_top(socket: Path, interval: float) -> int:  # noqa: PLR0915
    """The live view until `q`, Ctrl-C, SIGTERM or SIGHUP; 2 when the daemon is not
    running at the start, rich is not installed, or there is no terminal."""
    try:
        from rich.console import Console
        from rich.live import Live
    except ImportError:
        print(
            f"supervisord-batt: top needs the rich library: {INSTALL_HINT}",
            file=sys.stderr,
        )
        return exits.UNAVAILABLE
    from supervisord_batt.client.leases import DaemonError

    interval = max(0.1, interval)
    # a daemon too stalled to answer status within this is shown as down
    feed = StatusFeed(socket, timeout=REQUEST_TIMEOUT)
    with contextlib.suppress(OSError):  # no terminal: said below, after the daemon's check
        feed.rows = os.get_terminal_size(sys.stdout.fileno()).lines
    try:
        status = feed.status()
    except (FileNotFoundError, ConnectionRefusedError) as exc:
        print(
            f"supervisord-batt: top: the daemon is not running "
            f"(nothing listens at {socket}: {exc.strerror})",
            file=sys.stderr,
        )
        return exits.UNAVAILABLE
    except (OSError, DaemonError) as exc:
        reason = getattr(exc, "strerror", None) or exc
        print(f"supervisord-batt: top: daemon not reachable at {socket}: {reason}", file=sys.stderr)
        return exits.UNAVAILABLE
    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        feed.close()
        print(
            "supervisord-batt: top needs a terminal (`supervisord-batt status` prints once)",
            file=sys.stderr,
        )
        return exits.UNAVAILABLE

    fd = sys.stdin.fileno()
    saved = termios.tcgetattr(fd)
    # a resize wakes select() through this pipe (the handler itself does nothing), so
    # the screen is redrawn at the new size at once, not at the next refresh
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)
    old_wakeup = signal.set_wakeup_fd(wake_w)
    old_winch = signal.signal(signal.SIGWINCH, _ignore)
    old_term = signal.signal(signal.SIGTERM, _on_signal)
    old_hup = signal.signal(signal.SIGHUP, _on_signal)
    console = Console()
    problem: str | None = None
    down_since: str | None = None
    try:
        tty.setcbreak(fd)
        with Live(
            console=console,
            screen=True,
            auto_refresh=False,
            redirect_stdout=False,
            redirect_stderr=False,
        ) as live:
            deadline = time.monotonic() + interval
            while True:
                # the terminal's own size: rich would keep to $COLUMNS and $LINES when
                # they are set, and those do not follow a resize
                width, height = os.get_terminal_size(sys.stdout.fileno())
                console.size = (width, height)
                feed.rows = height
                live.update(render_screen(status, width, height, problem=problem), refresh=True)
                woke = wait_for_key(fd, wake_r, deadline)
                if woke == QUIT:
                    return exits.OK
                if woke == RESIZED:
                    continue
                deadline = time.monotonic() + interval
                try:
                    status = feed.status()
                    problem = down_since = None
                except (OSError, DaemonError) as exc:
                    down_since = down_since or time.strftime("%H:%M:%S")
                    reason = getattr(exc, "strerror", None) or exc
                    problem = f"daemon down since {down_since}: {reason}; retrying"
    except (KeyboardInterrupt, _Quit):
        return exits.OK
    finally:
        feed.close()
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)
        signal.signal(signal.SIGTERM, old_term)
        signal.signal(signal.SIGHUP, old_hup)
        signal.signal(signal.SIGWINCH, old_winch)
        signal.set_wakeup_fd(old_wakeup)
        os.close(wake_r)
        os.close(wake_w)
