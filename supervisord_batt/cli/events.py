"""`supervisord-batt logs`: the daemon's own events, from its log file or its journal.

Where the events are: `--file` (a path, or - for standard input); else the config's
`daemon.log_file`; else the journal of the unit (`journalctl -u UNIT -o json`, whose
MESSAGE field is the daemon's JSON line). The command says on stderr which it read. A
line that is not JSON is shown as it is: a traceback or a worker's output line in the
same stream is never a crash of the viewer.

`-f` follows like `tail -F`: it shows the last `-n` events (10 by default, or every one
since `--since`), then each new one; when the file is rotated (a new inode at the path)
or truncated, it reads the new file from its start. Without `-f`, every event is shown
(the last `-n`, if given).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable, Generator, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from supervisord_batt import protocol
from supervisord_batt.cli import exits

if TYPE_CHECKING:
    from supervisord_batt.config.records import Config

FOLLOW_LINES = 10  # events shown before following, as `tail -f` and `journalctl -f` show
NOW = None  # what `read_lines` yields between the history and what follows it
LEVEL_RANK: dict[str, int] = {name: rank for rank, name in enumerate(protocol.LOG_LEVELS)}
# fields shown first (after time, level, event and who) when present
_KEY_FIELDS = ("reason", "returncode", "outcome", "lease", "kind", "workers", "want", "job")
_WHO = ("program", "instance", "pid")
_SKIP = {"timestamp", "level", "event", "component", *_WHO}


@dataclass(frozen=True)
class Source:
    """Where the events come from, and how to say so."""

    kind: str  # "file", "stdin" or "journal"
    path: Path | None = None
    unit: str = ""

    def describe(self) -> str:
        if self.kind == "journal":
            return f"the journal of {self.unit} (journalctl -u {self.unit} -o json)"
        return "standard input" if self.kind == "stdin" else str(self.path)


class NoEvents(Exception):
    """No source can be read; the message says what to do."""


def find_source(args: argparse.Namespace, config: Config | None) -> Source:
    if args.file is not None:
        return Source("stdin") if str(args.file) == "-" else Source("file", Path(args.file))
    if config is not None and config.daemon.log_file is not None:
        return Source("file", config.daemon.log_file)
    if shutil.which("journalctl") and _unit_known(args.unit):
        return Source("journal", unit=args.unit)
    raise NoEvents(
        "no daemon.log_file in the config and no systemd unit "
        f"{args.unit!r} with a journal: the daemon logs to its standard output. Set "
        "daemon.log_file, or pipe the daemon's output in: ... | supervisord-batt logs --file -"
    )


def _unit_known(unit: str) -> bool:
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(
            ["journalctl", "-u", unit, "-n", "1", "-o", "json", "--no-pager", "-q"],
            capture_output=True,
            timeout=10,
            check=False,
        )
        return out.returncode == 0 and bool(out.stdout.strip())
    return False


# ----------------------------------------------------------------------------- reading


def read_lines(source: Source, since: float | None, follow: bool) -> Iterator[str | None]:
    """The raw event lines (JSON text, or anything else the stream holds): those written
    so far, then `NOW`, then (`follow`) each new one as it comes."""
    if source.kind == "journal":
        yield from _journal(source.unit, since, follow)
    elif source.kind == "stdin":  # read as it comes, to its end: all of it is history
        for line in sys.stdin:
            yield line.rstrip("\n")
        yield NOW
    else:
        assert source.path is not None
        yield from _file(source.path, follow)


def _journal(unit: str, since: float | None, follow: bool) -> Iterator[str | None]:
    """The history, then (`follow`) the entries after its last one (`--after-cursor`:
    none lost or shown twice between the two reads)."""
    cmd = ["journalctl", "-u", unit, "-o", "json", "--no-pager", "-q"]
    started = time.time()
    history = [f"--since=@{int(since)}"] if since is not None else []
    cursor = yield from _journal_entries([*cmd, *history])
    yield NOW
    if follow:  # no history: from when it was read (anything since would be in it)
        after = f"--after-cursor={cursor}" if cursor else f"--since=@{int(started)}"
        yield from _journal_entries([*cmd, after, "-f"])


def _journal_entries(cmd: list[str]) -> Generator[str, None, str | None]:
    """The MESSAGE of each entry `cmd` prints; returns the last entry's cursor."""
    cursor: str | None = None
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, errors="replace") as proc:
        assert proc.stdout is not None
        try:
            for entry in proc.stdout:
                message, at = _journal_entry(entry)
                cursor = at or cursor
                if message is not None:
                    yield message
        finally:
            proc.terminate()
    return cursor


def journal_message(entry: str) -> str | None:
    """The MESSAGE of one `journalctl -o json` entry (a list of bytes when not UTF-8)."""
    return _journal_entry(entry)[0]


def _journal_entry(entry: str) -> tuple[str | None, str | None]:
    """The MESSAGE and the cursor of one `journalctl -o json` entry."""
    try:
        record = json.loads(entry)
    except ValueError:
        return None, None
    if not isinstance(record, dict):
        return None, None
    cursor = record.get("__CURSOR")
    return _message(record), cursor if isinstance(cursor, str) else None


def _message(record: dict[str, Any]) -> str | None:
    message = record.get("MESSAGE")
    if isinstance(message, list):
        return bytes(b for b in message if isinstance(b, int) and 0 <= b < 256).decode(
            errors="replace"
        )
    return message if isinstance(message, str) else None


# complexity kept: one loop that follows a file across rotation, truncation and partial lines;
# split, the pieces would pass the open file and its identity back and forth
def _file(path: Path, follow: bool) -> Iterator[str | None]:  # noqa: C901, PLR0912
    f: IO[str] | None = None
    ident: tuple[int, int] | None = None
    pending = ""
    now = False  # whether NOW was said (at the first end of the file)
    try:
        while True:
            if f is None:
                try:
                    f = open(path, encoding="utf-8", errors="replace")  # noqa: SIM115
                except FileNotFoundError:
                    if not follow:
                        raise
                else:
                    st = os.fstat(f.fileno())
                    ident = (st.st_dev, st.st_ino)
            if f is not None:
                chunk = f.read()
                if chunk:
                    lines = (pending + chunk).split("\n")
                    pending = lines.pop()
                    yield from lines
                    continue
            if not follow:
                if pending:
                    yield pending
                yield NOW
                return
            if not now:
                now = True
                yield NOW
            time.sleep(0.5)  # a person is watching: poll twice a second, as tail -F
            if f is not None and _rotated(path, f, ident):
                if pending:
                    yield pending
                    pending = ""
                f.close()
                f = None
    finally:
        if f is not None:
            f.close()


def _rotated(path: Path, f: IO[str], ident: tuple[int, int] | None) -> bool:
    """A new file at the path, or this one truncated below where we read."""
    try:
        st = os.stat(path)
    except OSError:
        return False  # moved away and not yet replaced: keep reading the old one
    return (st.st_dev, st.st_ino) != ident or st.st_size < f.tell()


# -------------------------------------------------------------------------- filtering


def parse(line: str) -> dict[str, Any] | None:
    """The event of one line; None for a line that is not a JSON object."""
    text = line.strip()
    if text.startswith("<") and text[1:2].isdigit() and text[2:3] == ">":
        text = text[3:]  # a syslog priority prefix (stdout to journald, read raw)
    if not text.startswith("{"):
        return None
    try:
        event = json.loads(text)
    except ValueError:
        return None
    return event if isinstance(event, dict) else None


def event_time(event: dict[str, Any]) -> float | None:
    stamp = event.get("timestamp")
    if not isinstance(stamp, str):
        return None
    try:
        return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


@dataclass(frozen=True)
class Filter:
    program: str | None = None
    instance: str | None = None
    events: tuple[str, ...] = ()
    level: str | None = None
    since: float | None = None  # epoch seconds

    def keeps(self, event: dict[str, Any] | None) -> bool:
        """Whether to show an event; a non-JSON line only when nothing narrows the view."""
        if event is None:
            return self == Filter(since=self.since)
        if self.since is not None:
            at = event_time(event)
            if at is not None and at < self.since:
                return False
        if self.events and event.get("event") not in self.events:
            return False
        if self.level is not None:
            rank = LEVEL_RANK.get(str(event.get("level")), 1)
            if rank < LEVEL_RANK[self.level]:
                return False
        instance = event.get("instance")
        if self.instance is not None and instance != self.instance:
            return False
        if self.program is not None:
            program = event.get("program")
            if program is None and isinstance(instance, str):
                program = instance.rpartition(":")[0]
            if program != self.program:
                return False
        return True


def since_epoch(text: str | None, now: float | None = None) -> float | None:
    if text is None:
        return None
    from supervisord_batt.quantities import parse_duration

    return (time.time() if now is None else now) - parse_duration(text)


def events_in(
    source: Source,
    keep: Filter,
    follow: bool = False,
    last: int | None = None,
    now: Callable[[], None] | None = None,
) -> Iterator[tuple[str, dict[str, Any] | None]]:
    """The events `keep` keeps: of those written so far the `last` ones (None: all),
    then (`follow`) each new one; `now()` is called in between."""
    held: deque[tuple[str, dict[str, Any] | None]] | None = (
        None if last is None else deque(maxlen=last)
    )
    for line in read_lines(source, keep.since, follow):
        if line is NOW:
            if held is not None:
                yield from held
                held = None
            if now is not None:
                now()
            continue
        if not line.strip():
            continue
        event = parse(line)
        if not keep.keeps(event):
            continue
        if held is None:
            yield line, event
        elif held.maxlen:
            held.append((line, event))


# -------------------------------------------------------------------------- rendering


def render(line: str, event: dict[str, Any] | None) -> str:
    """One readable line: local time, level, event, program/instance, the key fields."""
    if event is None:
        return line
    at = event_time(event)
    when = (
        datetime.fromtimestamp(at, tz=timezone.utc).astimezone().strftime("%Y-%m-%d %H:%M:%S")
        if at is not None
        else "-"
    )
    who = event.get("instance") or event.get("program") or ""
    pid = event.get("pid")
    if pid is not None:
        who = f"{who}[{pid}]" if who else f"pid {pid}"
    keys = [k for k in _KEY_FIELDS if k in event]
    keys += sorted(k for k in event if k not in _SKIP and k not in _KEY_FIELDS)
    fields = " ".join(f"{k}={_short(event[k])}" for k in keys)
    level = str(event.get("level", "?"))
    return f"{when} {level:<7} {event.get('event', '?'):<22} {who:<16} {fields}".rstrip()


def _short(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))
    if isinstance(value, str) and (" " in text or not text):
        text = json.dumps(text)
    return text if len(text) <= 200 else text[:197] + "..."


def run_logs(args: argparse.Namespace, config: Config | None) -> int:
    try:
        source = find_source(args, config)
        keep = Filter(
            program=args.program,
            instance=args.instance,
            events=tuple(args.event),
            level=args.level,
            since=since_epoch(args.since),
        )
    except (NoEvents, ValueError) as exc:
        print(f"supervisord-batt logs: {exc}", file=sys.stderr)
        return exits.UNAVAILABLE
    last = args.lines
    if last is None and args.follow and args.since is None:
        last = FOLLOW_LINES
    print(f"supervisord-batt logs: reading {source.describe()}", file=sys.stderr)

    def now() -> None:  # where the history ends and the new events begin
        if args.follow:
            print("supervisord-batt logs: following new events", file=sys.stderr, flush=True)

    try:
        _print(events_in(source, keep, args.follow, last, now), args.json)
    except FileNotFoundError as exc:
        print(f"supervisord-batt logs: {exc.filename}: no such file", file=sys.stderr)
        return exits.UNAVAILABLE
    except KeyboardInterrupt:
        return exits.OK
    except BrokenPipeError:  # | head
        with contextlib.suppress(OSError):
            sys.stdout.close()
    return exits.OK


def _print(events: Iterable[tuple[str, dict[str, Any] | None]], raw: bool) -> None:
    for line, event in events:
        sys.stdout.write((line.strip() if raw else render(line, event)) + "\n")
        sys.stdout.flush()
