"""The kernel's OOM-kill reports, read from /dev/kmsg: which process the OOM killer
ended, in which memory cgroup, and how big it was then (issue 24).

A memory cgroup's `oom_kill` count says that some process in it was killed, not which;
the kernel's log says both. Each kill writes, after a dump of the cgroup's tasks, two
records (as on a 6.18 kernel, in a v1 memory cgroup; docs/FACTS.md):

    oom-kill:constraint=CONSTRAINT_MEMCG,nodemask=(null),cpuset=/,mems_allowed=0,
      oom_memcg=/sbtest-mem-x,task_memcg=/sbtest-mem-x,task=python3,pid=19856,uid=0
    Memory cgroup out of memory: Killed process 19856 (python3) total-vm:626920kB,
      anon-rss:249344kB, file-rss:5708kB, shmem-rss:0kB, UID:0 pgtables:560kB ...

(each one line; the host's own OOM killer writes "Out of memory: Killed process"). The
first names the victim's memory cgroup, the second its resident size at the kill (anon
+ file + shmem). The kernel rate-limits the first (10 kills in a few seconds, then not
for a while) but never the second: a kill is reported by its "Killed process" record,
its cgroup added where the first came. `parse_record` reads one record (pure: tests
hand it bytes), `KillReports` pairs the two by pid, and `KernelLog` reads the device
without blocking.
"""

# Why /dev/kmsg and not syslog or journald: it is the kernel's own ring, readable by
# root without any logging daemon, each read(2) returns exactly one record, and an fd
# opened O_NONBLOCK can sit in the daemon's event loop (no thread). Opened and moved to
# its end at start: only kills from then on are reported. A reader that falls behind the
# ring gets EPIPE once (records were overwritten) and reads on from the oldest kept: the
# loss is counted, and the daemon falls back on the cgroups' oom_kill counts for it.

from __future__ import annotations

import errno
import os
import re
from collections import OrderedDict
from dataclasses import dataclass, field

KMSG = "/dev/kmsg"
RECORD_BYTES = 8192  # a read's buffer: records are at most ~1 KiB (smaller: EINVAL)
MAX_PENDING = 64  # "oom-kill:" records kept waiting for their "Killed process" record

_CONTEXT = re.compile(rb"^oom-kill:.*,task_memcg=(.*),task=(.*),pid=(\d+),uid=(\d+)$")
# anchored at the OOM killer's own words: a record that only contains them (a file name
# the kernel quotes, a line a program wrote to /dev/kmsg) is no kill. A task name is at
# most 15 bytes, each escaped as \xNN at worst.
_KILLED = re.compile(
    rb"^(?:Memory cgroup out of memory|Out of memory(?: \(oom_kill_allocating_task\))?): "
    rb"Killed process (\d+) \((.{0,64})\) total-vm:\d+kB, anon-rss:(\d+)kB, "
    rb"file-rss:(\d+)kB, shmem-rss:(\d+)kB, UID:(\d+)"
)


@dataclass(frozen=True)
class OomRecord:
    """What one record says of a kill: the victim's pid and name, and either its memory
    cgroup (the "oom-kill:" record) or its resident bytes (the "Killed process" one)."""

    pid: int
    task: str
    memcg: str | None = None
    rss: int | None = None
    uid: int | None = None


@dataclass(frozen=True)
class OomKill:
    """One kill: the victim's pid, name, memory cgroup (None: its record was lost) and
    resident bytes at the kill (anon + file + shmem), and its uid."""

    pid: int
    task: str
    memcg: str | None
    rss: int
    uid: int | None = None


def parse_record(record: bytes) -> OomRecord | None:
    """One /dev/kmsg record ("prio,seq,usec,flags;text" and maybe " KEY=value" lines):
    the kill it reports, or None for any other record: the kernel's own only (facility
    0; a program's write to /dev/kmsg has another)."""
    head, sep, rest = record.partition(b";")
    prio = head.split(b",", 1)[0]
    if not sep or not prio.isdigit() or int(prio) >> 3 != 0:
        return None
    text = rest.split(b"\n", 1)[0]
    if text.startswith(b"oom-kill:"):
        m = _CONTEXT.match(text)
        if m is None:
            return None
        return OomRecord(int(m[3]), _text(m[2]), memcg=_text(m[1]), uid=int(m[4]))
    if b"Killed process " not in text:  # most records: no regex run over them
        return None
    m = _KILLED.match(text)
    if m is None:
        return None
    rss = sum(int(m[i]) for i in (3, 4, 5)) * 1024
    return OomRecord(int(m[1]), _text(m[2]), rss=rss, uid=int(m[6]))


def _text(raw: bytes) -> str:
    # the kernel escapes unprintable bytes as \xNN; a name is shown, never trusted
    return raw.decode("utf-8", "replace")


@dataclass
class KillReports:
    """Pairs each "Killed process" record with the "oom-kill:" record of its pid before it."""

    _pending: OrderedDict[int, str] = field(default_factory=OrderedDict)  # pid -> memcg

    def feed(self, record: OomRecord) -> OomKill | None:
        """The kill `record` completes, if it does."""
        if record.rss is None:
            self._pending[record.pid] = record.memcg or ""
            self._pending.move_to_end(record.pid)
            while len(self._pending) > MAX_PENDING:
                self._pending.popitem(last=False)
            return None
        memcg = self._pending.pop(record.pid, None)
        return OomKill(record.pid, record.task, memcg or None, record.rss, record.uid)


class KernelLog:
    """/dev/kmsg opened without blocking, at its end. OSError if it cannot be (a
    container, no permission): the caller goes on without it."""

    def __init__(self, path: str = KMSG) -> None:
        self.fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            os.lseek(self.fd, 0, os.SEEK_END)
        except OSError:
            os.close(self.fd)
            raise
        self.lost = 0  # times records were overwritten before they were read

    def read(self, limit: int) -> tuple[list[bytes], bool]:
        """At most `limit` records, and whether more may be waiting (the limit reached).
        OSError for anything but "nothing more" and "records lost" (counted)."""
        records: list[bytes] = []
        for _ in range(limit):  # a read each, a lost one included: bounded either way
            try:
                record = os.read(self.fd, RECORD_BYTES)
            except BlockingIOError:
                return records, False
            except OSError as exc:
                if exc.errno != errno.EPIPE:
                    raise
                self.lost += 1
                continue
            if not record:  # no device ends, but a file would: nothing more, not a spin
                return records, False
            records.append(record)
        return records, True

    def close(self) -> None:
        if self.fd >= 0:
            fd, self.fd = self.fd, -1
            os.close(fd)
