"""Shared test helpers: wait on a condition to a deadline, real pids and memory cgroups,
real users."""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal, NoReturn, TypeVar

T = TypeVar("T")
ProcT = TypeVar("ProcT", bound="subprocess.Popen[Any]")

REPO = Path(__file__).resolve().parents[1]  # the checkout the tests run from
PIDS_V1 = Path("/sys/fs/cgroup/pids")

# PSI out of the pressure level: for tests whose outcome must not change when the machine
# running them is busy (CPU pressure would make grants sequential). Thresholds of 99/100
# were not enough: PSI reaches 100 on a saturated host.
CALM = {"cpu_high": "off", "cpu_extreme": "off", "memory_high": "off", "memory_extreme": "off"}


class WaitTimeout(AssertionError):
    pass


def wait_until(
    predicate: Callable[[], T | Literal[False] | None],
    timeout: float = 10.0,
    interval: float = 0.01,
    what: str = "",
) -> T:
    """Poll `predicate` until it returns something truthy; fail with the last value seen.
    (Its type is the predicate's without None and False: `lambda: ok and reply` gives the
    reply's.)"""
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        try:
            value = predicate()
        except Exception as exc:  # the last error is the most useful report
            last = exc
        else:
            last = value
            if value:
                return value
        if time.monotonic() >= deadline:
            raise WaitTimeout(
                f"timed out after {timeout}s waiting for {what or predicate}: last saw {last!r}"
            )
        time.sleep(interval)


def alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie, which only its parent may reap, has ended)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


def is_root() -> bool:
    return os.geteuid() == 0


def pids_v1_writable() -> bool:
    return is_root() and (PIDS_V1 / "cgroup.procs").exists() and os.access(PIDS_V1, os.W_OK)


def move_into(cgroup_dir: Path) -> Callable[[], None]:
    """A preexec_fn that moves the child into this cgroup directory before exec."""
    procs = str(cgroup_dir / "cgroup.procs")

    def move() -> None:
        with open(procs, "w") as f:
            f.write(str(os.getpid()))

    return move


class PidsCgroup:
    """A real cgroup v1 pids child; removed on close after its members are gone."""

    def __init__(self, parent: Path = PIDS_V1, name: str | None = None) -> None:
        self.name = name or f"sbtest-{uuid.uuid4().hex[:10]}"
        self.path = parent / self.name
        self.path.mkdir()

    @property
    def cgroup_path(self) -> str:
        """The path as /proc/<pid>/cgroup names it."""
        return "/" + str(self.path.relative_to(PIDS_V1))

    def set_max(self, value: int | str) -> None:
        (self.path / "pids.max").write_text(f"{value}\n")

    def current(self) -> int:
        return int((self.path / "pids.current").read_text())

    def events_max(self) -> int:
        for line in (self.path / "pids.events").read_text().splitlines():
            key, _, val = line.partition(" ")
            if key == "max":
                return int(val)
        return 0

    def add(self, pid: int) -> None:
        (self.path / "cgroup.procs").write_text(f"{pid}\n")

    def procs(self) -> list[int]:
        return [int(p) for p in (self.path / "cgroup.procs").read_text().split()]

    def preexec(self) -> Callable[[], None]:
        """A preexec_fn that moves the child into this cgroup before exec."""
        return move_into(self.path)

    def close(self) -> None:
        """Kill what is still inside (only members of our own cgroup), then remove it."""
        if not self.path.exists():
            return
        for child in sorted(self.path.iterdir()):
            if child.is_dir():
                PidsCgroup.remove_dir(child)
        PidsCgroup.remove_dir(self.path)

    @staticmethod
    def remove_dir(path: Path) -> None:
        """Kill what is in a cgroup directory and its children (by pid), then remove them."""
        with contextlib.suppress(FileNotFoundError):
            for child in sorted(path.iterdir()):
                if child.is_dir():
                    PidsCgroup.remove_dir(child)
        deadline = time.monotonic() + 10
        while True:
            try:
                members = [int(p) for p in (path / "cgroup.procs").read_text().split()]
            except FileNotFoundError:  # removed meanwhile by whoever made it
                return
            if not members:
                break
            for pid in members:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            if time.monotonic() > deadline:
                raise RuntimeError(f"cgroup {path} still has members {members}")
            time.sleep(0.01)
        # rmdir can race with the last exit being accounted; retry to the deadline
        while True:
            try:
                path.rmdir()
                return
            except FileNotFoundError:
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.01)


MEMORY_V1 = Path("/sys/fs/cgroup/memory")


def _v2_memory_root() -> Path | None:
    """The cgroup2 mount whose root hands the memory controller to its children, if any."""
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields, _, tail = line.partition(" - ")
        if tail.split()[:1] == ["cgroup2"]:
            root = Path(fields.split()[4])
            with contextlib.suppress(OSError):
                if "memory" in (root / "cgroup.subtree_control").read_text().split():
                    return root
    return None


def memory_cgroup_root() -> tuple[Path, int] | None:
    """Where a test may make a memory cgroup: the v1 memory hierarchy, else a v2 mount
    with the memory controller enabled for its children (root only)."""
    if not is_root():
        return None
    if (MEMORY_V1 / "cgroup.procs").exists() and os.access(MEMORY_V1, os.W_OK):
        return MEMORY_V1, 1
    v2 = _v2_memory_root()
    return (v2, 2) if v2 is not None else None


class MemoryCgroup:
    """A real memory cgroup (v1 or v2) with no swap to escape to; removed on close after
    its members are killed."""

    def __init__(self, root: Path, version: int, name: str | None = None) -> None:
        self.root, self.version = root, version
        self.name = name or f"sbtest-mem-{uuid.uuid4().hex[:10]}"
        self.path = root / self.name
        self.path.mkdir()

    @property
    def cgroup_path(self) -> str:
        """The path as /proc/<pid>/cgroup names it."""
        return "/" + str(self.path.relative_to(self.root))

    def set_limit(self, limit: int) -> None:
        """The limit, and swap held to it: past it the OOM killer acts, as with no swap."""
        if self.version == 1:
            memory = self.path / "memory.limit_in_bytes"
            swap = self.path / "memory.memsw.limit_in_bytes"  # only where swap accounting is on
            # memsw may never be below the memory limit: raised first, lowered last
            order = [swap, memory] if limit > int(memory.read_text()) else [memory, swap]
            for file in order:
                if file.exists():
                    file.write_text(f"{limit}\n")
        else:
            (self.path / "memory.max").write_text(f"{limit}\n")
            if (self.path / "memory.swap.max").exists():
                (self.path / "memory.swap.max").write_text("0\n")

    def enable_children(self) -> None:
        """Let child cgroups have the memory controller (v2; v1 children always have it)."""
        if self.version == 2:
            (self.path / "cgroup.subtree_control").write_text("+memory\n")

    def usage(self) -> int:
        name = "memory.usage_in_bytes" if self.version == 1 else "memory.current"
        return int((self.path / name).read_text())

    def oom_kills(self) -> int:
        name = "memory.oom_control" if self.version == 1 else "memory.events"
        for line in (self.path / name).read_text().splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill":
                return int(value)
        raise AssertionError(f"no oom_kill line in {self.path / name}")

    def preexec(self) -> Callable[[], None]:
        """A preexec_fn that moves the child into this cgroup before exec."""
        return move_into(self.path)

    def allocate(self, mib: int) -> subprocess.Popen[bytes]:
        """A process in this cgroup that writes `mib` MiB (every page, so all of it is
        charged), prints "up", then holds it until its stdin closes."""
        return subprocess.Popen(
            [sys.executable, "-c", _ALLOCATOR, str(mib)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            preexec_fn=self.preexec(),
        )

    def close(self) -> None:
        """Kill what is still inside (only members of our own cgroup), then remove it."""
        if self.path.exists():
            PidsCgroup.remove_dir(self.path)


# a zero-filled buffer would not be charged until touched: each MiB is written
_ALLOCATOR = r"""
import sys
held = [b"\x01" * (1 << 20) for _ in range(int(sys.argv[1]))]
print("up", flush=True)
sys.stdin.read()
"""


class TestUser:
    """A real system user made with useradd, removed with userdel."""

    def __init__(self, prefix: str = "sbt") -> None:
        self.name = f"{prefix}{uuid.uuid4().hex[:8]}"
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", self.name],
            check=True,
            capture_output=True,
        )
        self.uid = pwd.getpwnam(self.name).pw_uid
        self.gid = pwd.getpwnam(self.name).pw_gid

    def close(self) -> None:
        # -f: even while a process of the user still runs (a daemon fixture torn down after
        # this one stops it); without it userdel refused and the user was left behind
        subprocess.run(["userdel", "-f", self.name], check=False, capture_output=True)


@contextlib.contextmanager
def killing(proc: ProcT) -> Iterator[ProcT]:
    """Kill (by pid) and reap a child we started, whatever happens in the block."""
    try:
        yield proc
    finally:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
        proc.wait(timeout=10)


def others_can_run(path: str) -> bool:
    """Whether an unprivileged user can exec `path` (every parent directory searchable)."""
    real = os.path.realpath(path)
    parents = [os.path.dirname(real)]
    while parents[-1] != os.path.dirname(parents[-1]):
        parents.append(os.path.dirname(parents[-1]))
    return all(os.stat(d).st_mode & 0o001 for d in parents) and bool(os.stat(real).st_mode & 0o001)


def interpreter_for_others() -> str:
    """Our interpreter if a test user can run it, else the system's python3."""
    if others_can_run(sys.executable):
        return sys.executable
    system = shutil.which("python3", path=os.defpath)
    if system is None or not others_can_run(system):
        _skip("no python interpreter that an unprivileged test user can execute")
    return system


def _skip(reason: str) -> NoReturn:
    import pytest

    pytest.skip(reason)
    raise AssertionError("unreachable")


def drop_to(user: TestUser) -> Callable[[], None]:
    """A preexec_fn that makes the child run as `user` (real and effective ids)."""

    def drop() -> None:
        os.setgid(user.gid)
        os.setgroups([])
        os.setuid(user.uid)

    return drop


class WireClient:
    """A raw newline-JSON client for tests that need to send exact bytes."""

    def __init__(self, path: str | Path, timeout: float = 10.0) -> None:
        import socket as _socket

        self.sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(str(path))
        self.buf = b""

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def read_reply(self) -> dict[str, Any]:
        """The next reply, any of the protocol's (or an error): raw, as the daemon sent it."""
        import json

        while b"\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError(f"daemon closed the connection; partial {self.buf!r:.200}")
            self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\n")
        reply: dict[str, Any] = json.loads(line)
        return reply

    def request(self, op: str, **fields: object) -> dict[str, Any]:
        import json

        self.send_raw(json.dumps({"op": op, **fields}).encode() + b"\n")
        return self.read_reply()

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> WireClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
