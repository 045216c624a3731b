"""Worker processes as trees: start one, see it exit, find all of it, kill all of it.

`spawn` starts a worker in its own session (and cgroup, when there is one) as its user;
`ExitWatcher` calls back when a child exits; `collect_tree` finds every process of a worker;
`kill_tree` stops a tree (stop signal, grace, SIGKILL to what is left, verified gone);
`become_subreaper` and `reap_adopted` keep orphans from turning into immortal zombies.

# Why one module
Spawn, exit watch, tree collection and tree kill share the pidfd discipline described
below (a pid is only signalled through a pidfd held since it was collected), and the
kill needs the collection's view of sessions, groups and cgroups: one module keeps that
rule in one place. The worker cgroups are apart (`supervise.cgroups`).
"""

# Why pidfds. The daemon must keep working when the host is out of threads and pids, so it
# has no threads: asyncio's child watchers either start a thread per child (3.11's
# ThreadedChildWatcher, behind create_subprocess_*) or reap with waitpid(-1), which steals
# other code's children. A pidfd (pidfd_open, Linux 5.3) is a file descriptor that becomes
# readable when its process exits: loop.add_reader on it wakes the loop at the exit, and the
# exit status is then read with waitpid on that one pid (Popen.poll). In kill_tree every
# collected process is held by a pidfd as well: signals go through pidfd_send_signal, so a
# pid that exits and is reused by an unrelated process during the grace is never signalled,
# and one poll() over the pidfds tells which are still running.
#
# Why sessions, groups and cgroups together: each worker is a session leader, so
# killpg(worker) reaches its ordinary children in one call; a child that called setsid()
# escapes that, and an orphan re-parents away from the worker's descendants. A cgroup (see
# cgroups.py) holds all of them; without one the tree is collected (session, group,
# descendants) before any signal, while the parents that link it together still live.

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import grp
import os
import pwd
import resource
import select
import signal
import subprocess
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Protocol

from supervisord_batt.host.procfs import ProcStat, read_stat
from supervisord_batt.supervise.cgroups import WorkerCgroup

__all__ = [
    "Adopted",
    "Child",
    "CpuJoinFailed",
    "ExitWatcher",
    "KillReport",
    "UnknownUser",
    "become_subreaper",
    "collect_tree",
    "identity",
    "kill_tree",
    "lookup_user",
    "reap_adopted",
    "spawn",
    "tree_task_count",
]

_POLL_NO_FD_S = 0.05  # how often a child is polled while no pidfd can be opened
_POLL_S = 0.005  # kill_tree re-reads the cgroup this often (exits wake it at once)
_HARD_EXTRA_S = 5.0  # how long after the grace SIGKILL rounds may go on

# ----------------------------------------------------------------------------- /proc


def _scan() -> dict[int, ProcStat]:
    """One pass over /proc: every process's stat."""
    out = {}
    for name in os.listdir("/proc"):
        if name.isdigit() and (st := read_stat(int(name))) is not None:
            out[st.pid] = st
    return out


def _running(pid: int) -> bool:
    """Exists and is not a zombie (a zombie holds no memory and runs nothing: it is gone)."""
    st = read_stat(pid)
    return st is not None and st.state not in ("Z", "X")


# ----------------------------------------------------------------------------- credentials


class UnknownUser(ValueError):
    """The configured user or group does not exist on this host."""


@dataclass(frozen=True)
class _Credentials:
    uid: int | None
    gid: int | None
    groups: tuple[int, ...] | None


def lookup_user(user: str) -> pwd.struct_passwd:
    """The account a program's `user:` names (a name or a uid); UnknownUser if none."""
    try:
        return pwd.getpwuid(int(user)) if user.isdigit() else pwd.getpwnam(user)
    except KeyError:
        raise UnknownUser(f"user {user!r} does not exist on this host") from None


def _lookup_group(group: str) -> int:
    try:
        return grp.getgrgid(int(group)).gr_gid if group.isdigit() else grp.getgrnam(group).gr_gid
    except KeyError:
        raise UnknownUser(f"group {group!r} does not exist on this host") from None


def _credentials(user: str | None, group: str | None) -> _Credentials | None:
    """Resolved in the parent: NSS lookups (initgroups) are not safe after fork."""
    if user is None and group is None:
        return None
    entry = lookup_user(user) if user is not None else None
    gid = _lookup_group(group) if group is not None else (entry.pw_gid if entry else None)
    if entry is not None and entry.pw_uid == os.geteuid() and gid == os.getegid():
        return None  # already that user: nothing to drop
    if os.geteuid() != 0:
        raise PermissionError(errno.EPERM, f"only root can run workers as {user or group!r}")
    assert gid is not None
    groups = tuple(os.getgrouplist(entry.pw_name, gid)) if entry is not None else (gid,)
    return _Credentials(entry.pw_uid if entry is not None else None, gid, groups)


# ----------------------------------------------------------------------------- spawn

_STEP_CGROUP, _STEP_LIMITS, _STEP_CREDS, _STEP_CPU = 1, 2, 3, 4
_STEPS = {
    _STEP_CGROUP: "joining {cgroup}",
    _STEP_LIMITS: "setting the descriptor limit",
    _STEP_CREDS: "dropping privileges",
    _STEP_CPU: "joining the cpu cgroup {cpu}",
}


class CpuJoinFailed(OSError):
    """The child could not join its cpu cgroup (the spawn failed; the caller may go on
    without cpu cgroups)."""


def _join(path: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, b"%d" % os.getpid())
    finally:
        os.close(fd)


def _child_setup(
    procs_path: str | None,
    cpu_procs: str | None,
    creds: _Credentials | None,
    nofile: int | None,
    err_fd: int,
) -> Callable[[], None]:
    """The preexec_fn: join the cgroup and the cpu cgroup (v1: another hierarchy), set
    the soft descriptor limit (a lower soft limit needs no privilege), then drop groups,
    gid, uid, in that order.

    It runs between fork and exec. That is safe because the daemon has no threads. Popen's
    own user=/group= would drop privileges before preexec_fn, and an unprivileged child
    cannot write cgroup.procs, hence both steps here. A failure's errno goes through
    `err_fd`: Popen reports a preexec_fn exception without it.
    """

    def setup() -> None:
        step = _STEP_CGROUP
        try:
            if procs_path is not None:
                _join(procs_path)
            step = _STEP_CPU
            if cpu_procs is not None:
                _join(cpu_procs)
            step = _STEP_LIMITS
            if nofile is not None:
                hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
                resource.setrlimit(resource.RLIMIT_NOFILE, (min(nofile, hard), hard))
            step = _STEP_CREDS
            if creds is not None:
                if creds.groups is not None:
                    os.setgroups(list(creds.groups))
                if creds.gid is not None:
                    os.setgid(creds.gid)
                if creds.uid is not None:
                    os.setuid(creds.uid)
        except (OSError, ValueError) as exc:
            code = exc.errno if isinstance(exc, OSError) and exc.errno else errno.EINVAL
            os.write(err_fd, bytes([step]) + code.to_bytes(4, "little"))
            raise

    return setup


def _child_error(
    err_fd: int, cgroup: WorkerCgroup | None, cpu_procs: str | None, argv: Sequence[str]
) -> OSError:
    data = os.read(err_fd, 16)
    if len(data) < 5:
        return OSError(errno.EIO, f"starting {argv[0]!r} failed before exec")
    step, code = data[0], int.from_bytes(data[1:5], "little")
    cpu = os.path.dirname(cpu_procs) if cpu_procs else None
    what = _STEPS.get(step, "setting up").format(cgroup=cgroup, cpu=cpu)
    kind = CpuJoinFailed if step == _STEP_CPU else OSError
    return kind(code, f"{what} for {argv[0]!r}: {os.strerror(code)}")


def spawn(
    argv: Sequence[str],
    *,
    cwd: Path | None,
    env: Mapping[str, str],
    user: str | None,
    group: str | None,
    cgroup: WorkerCgroup | None,
    stdout: int | IO[bytes] | None,
    stderr: int | IO[bytes] | None,
    nofile: int | None = None,
    cpu_procs: str | None = None,
) -> subprocess.Popen[bytes]:
    """Start a worker: own session and process group, stdin from /dev/null, inherited fds
    closed, moved into `cgroup` (and the cpu cgroup whose cgroup.procs is `cpu_procs`),
    its soft RLIMIT_NOFILE set to `nofile` (None: the daemon's) and switched to
    `user`/`group` before exec.

    Raises OSError with the errno of the failure (EAGAIN when the host or a cgroup is out of
    pids, ENOENT for a missing program or cwd; CpuJoinFailed for the cpu cgroup) and
    UnknownUser (a ValueError) for a user or group that does not exist. A failed start
    leaves no process behind.
    """
    creds = _credentials(user, group)
    if cgroup is not None and (why := cgroup.full()) is not None:
        raise BlockingIOError(errno.EAGAIN, why)
    setup = None
    if nofile is not None and nofile == resource.getrlimit(resource.RLIMIT_NOFILE)[0]:
        nofile = None  # the daemon's own: nothing to change
    err_r, err_w = os.pipe2(os.O_CLOEXEC)
    try:
        if cgroup is not None or cpu_procs is not None or creds is not None or nofile is not None:
            pids_procs = cgroup.preexec_path if cgroup else None
            setup = _child_setup(pids_procs, cpu_procs, creds, nofile, err_w)
        return subprocess.Popen(
            list(argv),
            cwd=cwd,
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=stderr,
            close_fds=True,
            start_new_session=True,
            preexec_fn=setup,  # noqa: PLW1509 (the daemon has no threads)
        )
    except subprocess.SubprocessError as exc:  # only a preexec_fn failure raises this
        os.close(err_w)
        err_w = -1
        raise _child_error(err_r, cgroup, cpu_procs, argv) from exc
    finally:
        os.close(err_r)
        if err_w >= 0:
            os.close(err_w)


# ----------------------------------------------------------------------------- children


class Child(Protocol):
    """A worker's main process as the supervisor holds it: the `subprocess.Popen` it
    spawned, or an `Adopted` one it found (after a re-execution or a crash). A
    returncode of None after the exit means the status is not known."""

    @property
    def pid(self) -> int: ...

    @property
    def returncode(self) -> int | None: ...

    def poll(self) -> int | None: ...

    def wait(self, timeout: float | None = None) -> int | None: ...


class Adopted:
    """A worker this process did not start with Popen, held by pid.

    After a re-execution the daemon is still its parent (`child`): its exit status is
    read with waitpid as Popen would. After a crash it is somebody else's child (systemd
    reaped it): the exit is seen (pidfd, /proc) but its status is not known (None).
    """

    def __init__(self, pid: int, *, child: bool) -> None:
        self.pid, self.child = pid, child
        self.returncode: int | None = None
        self.gone = False

    def poll(self) -> int | None:
        if self.gone:
            return self.returncode
        if self.child:
            try:
                got, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:  # reaped elsewhere: gone, status unknown
                self.gone = True
                return None
            if got == self.pid:
                self.gone, self.returncode = True, os.waitstatus_to_exitcode(status)
            return self.returncode
        self.gone = not _running(self.pid)
        return None

    def wait(self, timeout: float | None = None) -> int | None:
        """Until it exits (a short poll: it is called once the exit was seen)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None and not self.gone:
            if deadline is not None and time.monotonic() >= deadline:
                raise subprocess.TimeoutExpired(str(self.pid), timeout or 0.0)
            time.sleep(0.005)
        return self.returncode


# ----------------------------------------------------------------------------- exits


class ExitWatcher:
    """Calls back on the event loop when a watched child exits, through its pidfd."""

    def __init__(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self._loop = loop
        self._watched: dict[int, tuple[Child, Callable[[int | None], None]]] = {}

    def _get_loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        return self._loop

    def watch(self, proc: Child, callback: Callable[[int | None], None]) -> None:
        """`callback(returncode)` once `proc` exits (negative: killed by that signal;
        None: an adopted process whose status nobody told us)."""
        loop = self._get_loop()
        if proc.returncode is not None:  # reaped: its pid may belong to someone else now
            loop.call_soon(callback, proc.returncode)
            return
        try:
            fd = os.pidfd_open(proc.pid)
        except ProcessLookupError:  # already reaped, so Popen has the status
            loop.call_soon(callback, proc.wait())
            return
        except OSError:  # out of descriptors (EMFILE, ENFILE): poll until they come back
            loop.call_later(_POLL_NO_FD_S, self._poll, proc, callback)
            return
        self._watched[fd] = (proc, callback)
        loop.add_reader(fd, self._exited, fd)

    def _poll(self, proc: Child, callback: Callable[[int | None], None]) -> None:
        """Without a pidfd: a non-blocking waitpid of our own child, then a pidfd again."""
        code = proc.poll()
        if code is not None or getattr(proc, "gone", False):
            callback(code)
        else:
            self.watch(proc, callback)

    def _exited(self, fd: int) -> None:
        proc, callback = self._watched.pop(fd)
        self._get_loop().remove_reader(fd)
        os.close(fd)
        code = proc.poll()
        # a readable pidfd means the child is a zombie: wait() returns at once
        callback(code if code is not None else proc.wait())

    def __len__(self) -> int:
        return len(self._watched)

    def close(self) -> None:
        """Stop watching everything (no callbacks after this)."""
        for fd in list(self._watched):
            self._get_loop().remove_reader(fd)
            os.close(fd)
        self._watched.clear()


# ----------------------------------------------------------------------------- trees


def _collect(
    root_pid: int,
    cgroup: WorkerCgroup | None,
    session: int | None,
    marker: bytes | None = None,
    others: frozenset[int] = frozenset(),
) -> dict[int, int]:
    """pid -> threads of every process of the tree (one /proc pass, plus the cgroup).

    `marker` (b"NAME=value" of the worker's environment): the daemon's own children that
    carry it, bar the main pids in `others`, are this tree's orphans (re-parented to the
    daemon, the subreaper, when their parent died), and count with their descendants.
    """
    stats = _scan()
    found = set(cgroup.procs()) if cgroup is not None else set()
    children: dict[int, list[int]] = {}
    for st in stats.values():
        children.setdefault(st.ppid, []).append(st.pid)
    me = os.getpid()
    todo = [root_pid] if root_pid in stats else []
    if marker is not None:
        todo += [
            pid
            for pid in children.get(me, ())
            if pid != root_pid and pid not in others and _carries(pid, marker)
        ]
    while todo:  # descendants, as psutil's children(recursive=True) finds them
        pid = todo.pop()
        found.add(pid)
        todo.extend(children.get(pid, ()))
    sid = root_pid if session is None else session
    # never match the daemon's own session or group: that would be killing the daemon's kin
    if sid not in (os.getsid(0), 0) and root_pid != os.getpgrp():
        found.update(st.pid for st in stats.values() if st.session == sid or st.pgrp == root_pid)
    found.discard(me)
    found.discard(1)
    return {pid: (stats[pid].threads if pid in stats else _threads(pid)) for pid in found}


def _carries(pid: int, marker: bytes) -> bool:
    """Whether the process's environment holds `marker` (b"NAME=value") as one entry."""
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            return marker in f.read().split(b"\0")
    except OSError:
        return False


def identity(pids: Iterable[int]) -> dict[int, int]:
    """pid -> start time of each of `pids` that still runs: what `kill_tree`'s `known`
    takes, so a pid reused by an unrelated process later is never taken for it."""
    out = {}
    for pid in pids:
        st = read_stat(pid)
        if st is not None and st.state not in ("Z", "X"):
            out[pid] = st.starttime
    return out


def _same(known: Mapping[int, int]) -> list[int]:
    """The pids of `known` that are still the processes recorded (same start time)."""
    return [pid for pid, start in known.items() if identity((pid,)).get(pid) == start]


def _threads(pid: int) -> int:
    st = read_stat(pid)
    return st.threads if st is not None else 0


def collect_tree(
    root_pid: int, cgroup: WorkerCgroup | None, session: int | None = None
) -> set[int]:
    """Every process of a worker: the cgroup's members, the descendants of `root_pid`, and
    every process in its session (`session`, default `root_pid`) or process group.

    A process that called setsid() and was re-parented is found only through the cgroup;
    without one, collect while its parent lives, i.e. before signalling. Never the daemon.
    """
    return set(_collect(root_pid, cgroup, session))


def tree_task_count(root_pid: int, cgroup: WorkerCgroup | None) -> int:
    """Tasks (threads) of the tree: pids.current of the cgroup, else summed over /proc."""
    if cgroup is not None and (current := cgroup.tasks_current()) is not None:
        return current
    return sum(_collect(root_pid, cgroup, None).values())


@dataclass(frozen=True)
class KillReport:
    """What a kill_tree did: tasks when it started, the processes, how many needed SIGKILL,
    seconds from the first signal to verified gone, and any survivors (none on success)."""

    tasks_at_kill: int
    pids: tuple[int, ...]
    needed_sigkill: int
    duration_s: float
    survivors: tuple[int, ...]


class _Tree:
    """The processes of one kill, each held by a pidfd: a reused pid is never signalled."""

    def __init__(self) -> None:
        self.fds: dict[int, int] = {}  # pid -> pidfd, or -1 when none could be opened
        self.pids: set[int] = set()
        self._loop = asyncio.get_running_loop()
        self._changed = asyncio.Event()

    def add(self, pids: Iterable[int]) -> list[int]:
        """Track new pids; returns those that were new and still exist."""
        new = []
        for pid in pids:
            if pid in self.pids or pid == os.getpid():
                continue
            self.pids.add(pid)
            try:
                self.fds[pid] = os.pidfd_open(pid)
            except ProcessLookupError:
                continue
            except OSError:  # EMFILE and the like: fall back to the pid
                self.fds[pid] = -1
            else:  # wake the waiter the moment it exits, not at its next poll
                self._loop.add_reader(self.fds[pid], self._exited, self.fds[pid])
            new.append(pid)
        return new

    def _exited(self, fd: int) -> None:
        self._loop.remove_reader(fd)  # a pidfd stays readable: one wake-up is enough
        self._changed.set()

    async def settle(self, timeout: float) -> None:
        """Wait until a tracked process exits, or `timeout` seconds."""
        timer = self._loop.call_later(timeout, self._changed.set)
        await self._changed.wait()
        timer.cancel()
        self._changed.clear()

    def signal(self, pids: Iterable[int], sig: signal.Signals) -> None:
        for pid in pids:
            fd = self.fds.get(pid)
            with contextlib.suppress(ProcessLookupError):
                if fd is None:
                    continue
                if fd >= 0:
                    signal.pidfd_send_signal(fd, sig)
                else:
                    os.kill(pid, sig)

    def running(self) -> list[int]:
        """Tracked processes that have not exited; exited ones are dropped."""
        poller = select.poll()
        for fd in self.fds.values():
            if fd >= 0:
                poller.register(fd, select.POLLIN)
        exited = {fd for fd, _ in poller.poll(0)}
        for pid, fd in list(self.fds.items()):
            if fd in exited or (fd < 0 and not _running(pid)):
                self._drop(pid)
        return sorted(self.fds)

    def _drop(self, pid: int) -> None:
        fd = self.fds.pop(pid)
        if fd >= 0:
            self._loop.remove_reader(fd)
            os.close(fd)

    def close(self) -> None:
        for pid in list(self.fds):
            self._drop(pid)


def _killpg(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


async def _wait_gone(
    tree: _Tree,
    cgroup: WorkerCgroup | None,
    sig: signal.Signals,
    until: float,
    reap: Callable[[], object] | None,
) -> list[int]:
    """Poll until every process exited or `until`; newcomers in the cgroup get `sig` too."""
    while True:
        if reap is not None:
            reap()
        if cgroup is not None:
            tree.signal(tree.add(cgroup.procs()), sig)
        running = tree.running()
        now = time.monotonic()
        if not running or now >= until:
            return running
        await tree.settle(min(_POLL_S, until - now))


async def _kill_rounds(
    tree: _Tree,
    root_pid: int,
    cgroup: WorkerCgroup | None,
    deadline: float,
    reap: Callable[[], object] | None,
) -> set[int]:
    """SIGKILL what is left, round after round (a dying tree can still fork), to `deadline`.
    Returns the processes that were sent SIGKILL."""
    killed: set[int] = set()
    while True:
        if cgroup is not None:
            tree.add(cgroup.procs())
        running = tree.running()
        if not running or time.monotonic() >= deadline:
            return killed
        _killpg(root_pid, signal.SIGKILL)
        tree.signal(running, signal.SIGKILL)
        killed.update(running)
        await tree.settle(_POLL_S)
        if reap is not None:
            reap()


def _signal_tree(  # noqa: PLR0917 (the kill's parts, each from a different source)
    tree: _Tree,
    root_pid: int,
    cgroup: WorkerCgroup | None,
    known: Mapping[int, int],
    sig: signal.Signals,
    marker: bytes | None,
    others: frozenset[int],
) -> tuple[int, float]:
    """Collect and signal the tree; returns (tasks at the kill, time of the first signal).

    With a cgroup, its members are the tree: they get the signal at once, and the /proc pass
    that finds anything outside the cgroup follows (on a busy host that pass takes
    milliseconds). Without one, the pass comes first: it is what finds the tree.
    """
    tasks, started = 0, 0.0
    if cgroup is not None:
        tasks = cgroup.tasks_current() or 0
        members = tree.add(cgroup.procs())
        started = time.monotonic()
        _killpg(root_pid, sig)
        tree.signal(members, sig)
    found = _collect(root_pid, cgroup, None, marker, others)
    extra = [p for p in found.keys() | set(_same(known)) if p not in tree.pids]
    tasks += sum(found[p] if p in found else _threads(p) for p in extra)
    new = tree.add(extra)
    if cgroup is None:
        started = time.monotonic()
        _killpg(root_pid, sig)
    tree.signal(new, sig)
    return tasks, started


async def kill_tree(
    root_pid: int,
    *,
    cgroup: WorkerCgroup | None,
    stop_signal: signal.Signals,
    grace: float,
    known: Mapping[int, int] | None = None,
    reap: Callable[[], object] | None = None,
    marker: bytes | None = None,
    others: frozenset[int] = frozenset(),
) -> KillReport:
    """Stop a worker's whole tree: `stop_signal` to its process group and every process,
    up to `grace` seconds for them to exit, then SIGKILL to whatever is left, verified gone.
    The tree is collected before the first signal (the cgroup's members, or without one a
    /proc pass: session, process group, descendants), and the cgroup again each round.

    `known`: pid -> start time of processes recorded as the tree's earlier (`identity`):
    they may have left the session and the cgroup; each one that is still the process
    recorded is part of the kill. `marker` and `others`: see `_collect` (the tree's
    orphans). A zombie counts as gone; `reap` (e.g. the worker's Popen.poll) is called
    while waiting so ours are reaped.
    """
    tree = _Tree()
    try:
        tasks, started = _signal_tree(
            tree, root_pid, cgroup, known or {}, stop_signal, marker, others
        )
        left = await _wait_gone(tree, cgroup, stop_signal, started + grace, reap)
        killed: set[int] = set()
        if left:
            deadline = started + grace + _HARD_EXTRA_S
            killed = await _kill_rounds(tree, root_pid, cgroup, deadline, reap)
        survivors = tuple(tree.running())
        duration = time.monotonic() - started
    finally:
        tree.close()
    return KillReport(
        tasks_at_kill=tasks,
        pids=tuple(sorted(tree.pids)),
        needed_sigkill=len(killed),
        duration_s=duration,
        survivors=survivors,
    )


# ----------------------------------------------------------------------------- orphans

PR_SET_CHILD_SUBREAPER = 36


def become_subreaper() -> bool:
    """Make orphans of our workers re-parent to us instead of PID 1.

    PID 1 on these machines never reaps, so an orphan that exits would stay a zombie for
    good, holding a pid. As a subreaper, the daemon reaps them (`reap_adopted`).
    """
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        prctl = libc.prctl
    except (OSError, AttributeError):
        return False
    prctl.restype = ctypes.c_int
    one, zero = ctypes.c_ulong(1), ctypes.c_ulong(0)
    return int(prctl(ctypes.c_int(PR_SET_CHILD_SUBREAPER), one, zero, zero, zero)) == 0


def _children_of_self() -> set[int]:
    """Our direct children: /proc/self/task/*/children, or a /proc scan without it; none
    when they cannot be read now (out of descriptors: the next scan reaps them)."""
    kids: set[int] = set()
    try:
        for tid in os.listdir("/proc/self/task"):
            with open(f"/proc/self/task/{tid}/children", "rb") as f:
                kids.update(int(p) for p in f.read().split())
    except FileNotFoundError:  # kernel without CONFIG_PROC_CHILDREN
        me = os.getpid()
        try:
            return {st.pid for st in _scan().values() if st.ppid == me}
        except OSError:
            return set()
    except OSError:
        return set()
    return kids


def reap_adopted(known: set[int]) -> list[tuple[int, int]]:
    """Reap our zombie children that are not in `known` (the pids whose Popen objects reap
    them): adopted orphans. Returns (pid, returncode as Popen reports it) for each.

    Only zombies are waited for, each by its pid; `known` must hold every child the daemon
    started itself, or its status is taken from its Popen.
    """
    reaped = []
    for pid in sorted(_children_of_self() - known):
        st = read_stat(pid)
        if st is None or st.state != "Z":
            continue
        try:
            got, status = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            continue
        if got == pid:
            reaped.append((pid, os.waitstatus_to_exitcode(status)))
    return reaped
