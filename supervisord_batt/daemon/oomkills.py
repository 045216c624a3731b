"""The OOM kills the kernel reports, each attributed to the lease whose process tree its
victim was in, and taught to that lease's job (issue 24).

A memory cgroup's oom_kill count says that a process in it was killed, not which one
nor how big it was, so a job of 1.5 GiB workers charged `memory_per_slot` and killed
before a scan saw their data learned nothing, and was killed again run after run. The
kernel's log names the victim and its resident size (`host.kmsg`): the daemon reads it
in its event loop (the fd registered with the loop: no thread), finds the lease holder
above the victim (`holder_of`), and the victim's size becomes the least its job's
workers are charged (`WorkerSizes.killed`). Only that run is judged cut short; the
cgroups' counts judge every live run only where the log cannot be read (a container,
no permission: one warning at start) or lost records since the last scan.
"""

# Attribution, in order: the victim is a lease holder; or a pid seen in a holder's tree
# at the last scan; or its parent (/proc/PID/stat, read as the record arrives: a victim
# is then usually still dying or a zombie, its ppid kept) is one, walking up. A worker
# started since the last scan is found by the walk, one reaped and reparented by the
# scan. Anything else (a process of no lease, a victim gone without a trace) is counted
# and logged without a lease, never guessed.

from __future__ import annotations

import asyncio
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field

from supervisord_batt.budget.ledger import BudgetLedger
from supervisord_batt.budget.records import Lease
from supervisord_batt.daemon.throttle import Throttle
from supervisord_batt.daemon.workersizes import WorkerSizes
from supervisord_batt.host import procfs
from supervisord_batt.host.kmsg import KMSG, KernelLog, KillReports, OomKill, parse_record
from supervisord_batt.host.sample import TreeUsage
from supervisord_batt.logs import get_logger

log = get_logger(component="daemon")
MAX_DEPTH = 64  # parents walked up from a victim (a tree deeper is not a job's pool)
PER_TURN = 256  # records read per turn of the loop: a flood waits for the next turns
LOG_RATE = 10  # oom_kill_seen lines a second; past it they are counted and summarised


def _throttle() -> Throttle:
    return Throttle(LOG_RATE, summary="oom_kills_suppressed", about="OOM kills")


def parent_reader(proc_root: str = "/proc") -> Callable[[int], int | None]:
    """A function giving a pid's parent from `proc_root`/PID/stat (None: gone)."""

    def parent(pid: int) -> int | None:
        try:
            with open(f"{proc_root}/{pid}/stat", "rb") as f:
                stat = procfs.parse_stat(f.read(4096))
        except OSError:
            return None
        return stat[0] if stat is not None else None

    return parent


def holder_of(
    pid: int,
    holders: Collection[int],
    seen: Mapping[int, int],
    parent: Callable[[int], int | None],
) -> int | None:
    """The lease holder whose tree `pid` is in: `pid` or a live ancestor of it is a
    holder; or, where /proc has lost the trail, the process was seen in a holder's tree
    (`seen`: pid -> holder, at the last scan). The live parents come first: a pid seen
    at the last scan may have been reused since, by another user's process."""
    at = pid
    for _ in range(MAX_DEPTH):
        if at in holders:
            return at
        up = parent(at)
        if up is None:  # gone (reaped): what the last scan saw of it
            return seen.get(at)
        if up <= 1 or up == at:
            return None
        at = up
    return None


@dataclass
class OomWatch:
    """The kernel's log in the daemon's loop, and the lease holders of the last scan."""

    sizes: WorkerSizes
    ledger: BudgetLedger
    teach: Callable[[], None]  # gives the ledger the figures again
    # the memory cgroups whose oom_kill counts the daemon reads (host.monitor)
    watched: Callable[[], Iterable[str]] = tuple
    path: str = KMSG
    parent: Callable[[int], int | None] = field(default_factory=parent_reader)
    unattributed: int = 0  # kills of no lease's tree
    _log: KernelLog | None = None
    _loop: asyncio.AbstractEventLoop | None = None
    _reports: KillReports = field(default_factory=KillReports)
    _seen: dict[int, int] = field(default_factory=dict)  # pid -> holder, last scan
    _leases: dict[int, list[Lease]] = field(default_factory=dict)  # holder -> its leases
    _lost_judged: int = 0  # records lost as of the last scan
    _lost_said: int = 0  # records lost as of the last summary
    _lines: Throttle = field(default_factory=_throttle)

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Open the log at its end and read it in `loop`; unreadable: said once."""
        try:
            self._log = KernelLog(self.path)
            loop.add_reader(self._log.fd, self._readable)  # epoll refuses a plain file
        except OSError as exc:
            self.close()
            log.warning(
                "kernel_log_unreadable",
                path=self.path,
                reason=str(exc),
                fallback="every run live when a memory cgroup's oom_kill count rises is judged",
            )
            return
        self._loop = loop

    def close(self) -> None:
        if self._log is not None:
            if self._loop is not None:
                self._loop.remove_reader(self._log.fd)
            self._log.close()
            self._log = None

    @property
    def reading(self) -> bool:
        return self._log is not None

    def scanned(self, leases: Iterable[Lease], trees: Mapping[int, TreeUsage]) -> None:
        """The holders of this scan's leases and who was in their trees."""
        self._leases = {}
        for lease in leases:
            self._leases.setdefault(lease.pid, []).append(lease)
        self._seen = {p: h for h in self._leases if h in trees for p in trees[h].pids[1:]}

    def by_count(self) -> bool:
        """Whether this scan's runs are judged by the cgroups' oom_kill counts: the log is
        not read, or records were lost since the last scan (a kill may be among them)."""
        if self._log is None:
            return True
        lost, self._lost_judged = self._log.lost - self._lost_judged, self._log.lost
        return lost > 0

    def summarize(self) -> None:
        """The lines held back, and records lost since the last summary (one line each)."""
        self._lines.summarize()
        lost = self._log.lost if self._log is not None else self._lost_said
        if lost > self._lost_said:
            log.warning("kernel_log_lost", times=lost - self._lost_said, total=lost)
            self._lost_said = lost

    def _readable(self) -> None:
        assert self._log is not None
        try:
            records, _ = self._log.read(PER_TURN)
        except OSError as exc:  # not EAGAIN nor EPIPE: the log is given up, said once
            log.warning("kernel_log_unreadable", path=self.path, reason=str(exc))
            self.close()
            return
        taught = False
        for record in records:
            parsed = parse_record(record)
            kill = self._reports.feed(parsed) if parsed is not None else None
            if kill is not None:
                taught |= self.seen(kill)
        if taught:
            self.teach()

    def _watched(self, memcg: str | None) -> bool:
        """Whether a kill in `memcg` (None: its record was lost) is one the counts of the
        watched memory cgroups would have counted: in one of them, or below one."""
        if memcg is None:
            return True
        return any(memcg == p or memcg.startswith(p.rstrip("/") + "/") for p in self.watched())

    def seen(self, kill: OomKill) -> bool:
        """Attribute one kill, judge its run, log it once; whether it taught a size."""
        holders = {*self.ledger.lease_pids().values(), *self._leases}
        holder = holder_of(kill.pid, holders, self._seen, self.parent)
        leases = []
        if holder is not None:  # its leases now, else as the last scan saw them
            leases = self.ledger.held_by([holder]) or self._leases.get(holder, [])
        # a process of another uid in a holder's tree (a setuid helper, a pid reused
        # since the scan) teaches that lease's job nothing
        leases = [lease for lease in leases if kill.uid in (None, lease.uid)]
        taught: Lease | None = None
        for lease in leases:
            charged = self.ledger.worker_bytes(lease.job, lease.uid, lease.declared_bytes)
            if self.sizes.killed(lease, kill.rss, kill.pid == holder, charged) and not taught:
                taught = lease
        first = taught or (leases[0] if leases else None)
        if first is None:
            self.unattributed += 1
            if self._watched(kill.memcg):  # it may have cut any of them short
                self.sizes.judge(self.ledger.lease_pids())
        self._lines.emit(  # a kill of no lease's tree is no job's concern: info
            "warning" if first else "info",
            "oom_kill_seen",
            uid=first.uid if first else None,
            job=first.job if first else None,
            lease=first.lease_id if first else None,
            pid=kill.pid,
            task=kill.task,
            rss=kill.rss,
            cgroup=kill.memcg,
            holder=holder,
            learned=taught is not None,
        )
        return taught is not None
