"""Per-worker pids cgroups: where they can be made (v1, v2, neither), and each one's files.

`WorkerCgroups.detect()` looks at the daemon's own cgroups and finds a place for worker
cgroups, or says why there is none. `WorkerCgroup` is one worker's cgroup: its members,
its task count, its limit, and the cgroup.procs path a child writes itself into.
"""

# Why cgroups: a worker's tree is not the worker's descendants. loky's workers and resource
# trackers outlive a killed job, re-parented (hang B in docs/FACTS.md); a process that called
# setsid() leaves the worker's session and process group. Membership of a cgroup is
# inherited by every fork and cannot be left without write access to cgroupfs, so a
# cgroup's cgroup.procs is the whole tree, however it forked, and its pids.current is the
# whole tree's task count in one read. Without a cgroup, the tree is what a /proc pass finds.
#
# Layouts. cgroup v1 (this kind of machine): the pids hierarchy has its own mount; worker
# cgroups go in "<daemon's own pids cgroup>/<base>.workers/<instance>". cgroup v2: the pids
# controller must be enabled in the daemon's cgroup (systemd: Delegate=yes), and v2 allows
# no processes in a cgroup that enables controllers for its children (except the root), so
# the daemon first moves itself to a leaf "<own>/supervisor", then writes +pids to
# <own>/cgroup.subtree_control and creates "<own>/<base>.workers/<instance>". Hybrid hosts
# mount both; a controller lives in one hierarchy only, so at most one of the two works.
# Each instance has a cpu counterpart (supervise.cpushare): on v1 "<daemon's own cpu
# cgroup>/<base>.workers/<instance>" in the cpu hierarchy, on v2 the same directory, with
# +cpu enabled beside +pids where the cpu controller is there to enable.

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import signal
import time
from dataclasses import dataclass
from pathlib import Path

from supervisord_batt.host import procfs

LEAF_NAME = "supervisor"
_SAFE = re.compile(r"[^A-Za-z0-9_.-]")
_RESERVED_PREFIXES = ("cgroup.", "pids.", "tasks", "notify_on_release", "release_agent")


def instance_dir_name(instance: str) -> str:
    """A cgroup directory name for a worker instance: "batt:0" -> "batt.0".

    Unsafe characters become ".", names never start with "." and never look like a cgroup
    interface file; a long name is cut and keeps a hash of the whole so it stays unique.
    """
    name = _SAFE.sub(".", instance).lstrip(".") or "_"
    if name.startswith(_RESERVED_PREFIXES):
        name = "w." + name
    if len(name) > 200:
        digest = hashlib.sha256(instance.encode()).hexdigest()[:12]
        name = f"{name[:187]}.{digest}"
    return name


def _read(path: Path) -> str | None:
    return procfs.read_text(str(path))


def write_value(path: Path, value: str) -> None:
    """Write one value to a cgroup interface file (cgroupfs parses each write alone;
    O_TRUNC, as a shell's `>`, is a no-op there and keeps a test's plain file whole)."""
    fd = os.open(path, os.O_WRONLY | os.O_TRUNC | os.O_CLOEXEC)
    try:
        os.write(fd, value.encode())
    finally:
        os.close(fd)


def _parse_pids(text: str | None) -> list[int]:
    return [int(p) for p in text.split()] if text else []


# ----------------------------------------------------------------------------- one worker


class WorkerCgroup:
    """One worker's pids cgroup. `limit_chain` are the directories whose pids.max a
    process moved in here would escape (the kernel checks limits on fork, not on a move)."""

    def __init__(self, path: Path, limit_chain: tuple[Path, ...] = ()) -> None:
        self.path = path
        self.limit_chain = (path, *limit_chain)
        self.preexec_path = str(path / "cgroup.procs")
        self._pids_current = str(path / "pids.current")  # read for every status

    def __repr__(self) -> str:
        return f"WorkerCgroup({str(self.path)!r})"

    def procs(self) -> list[int]:
        """Member processes (cgroup.procs); [] when the cgroup is gone. Zombies are not listed."""
        return _parse_pids(_read(self.path / "cgroup.procs"))

    def tasks_current(self) -> int | None:
        """Tasks (threads and processes) charged to the cgroup: pids.current."""
        return procfs.parse_int(_bytes(self._pids_current))

    def set_max(self, value: int | None) -> None:
        """Write pids.max (None: unlimited)."""
        write_value(self.path / "pids.max", "max" if value is None else str(value))

    def full(self) -> str | None:
        """Why a new member would exceed a pids.max of this cgroup or an ancestor; None if not.

        A move into a cgroup is never refused for pids.max, so `spawn` asks this first and
        fails with EAGAIN, as a fork inside the cgroup would.
        """
        for directory in self.limit_chain:
            limit = procfs.parse_pids_max(_bytes(directory / "pids.max"))
            current = procfs.parse_int(_bytes(directory / "pids.current"))
            if limit is not None and current is not None and current >= limit:
                return f"cgroup {directory} is at its pids.max ({current}/{limit})"
        return None

    def kill_members(self) -> list[int]:
        """SIGKILL every member (used on a cgroup left over by an earlier daemon); the
        pids it signalled, for the caller's log line."""
        members = self.procs()
        for pid in members:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        return members

    def remove(self) -> str | None:
        """rmdir the cgroup; None on success (or already gone), else why it is left.

        An rmdir right after the last member exited can see EBUSY for a moment; retry a few
        times at once (no sleeping: this runs on the daemon's loop), then leave it.
        """
        err: OSError | None = None
        for _ in range(50):
            try:
                os.rmdir(self.path)
                return None
            except FileNotFoundError:
                return None
            except OSError as exc:
                err = exc
                if exc.errno != errno.EBUSY or self.procs():
                    break
                os.sched_yield()
        return f"cannot remove {self.path}: {err}; members {self.procs()}"


def _bytes(path: Path | str) -> bytes | None:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:
        return None


# ----------------------------------------------------------------------------- v2 plan


@dataclass(frozen=True)
class V2Plan:
    """What to do on cgroup v2 so worker leaves can have pids files.

    `base` is the delegated cgroup the daemon owns; `leaf` is where its processes must move
    first (None: none needed, for the root or when already in the leaf); `enable` are the
    cgroups whose subtree_control needs +pids; `workers_root` holds the worker leaves.
    """

    base: Path
    leaf: Path | None
    enable: tuple[Path, ...]
    workers_root: Path


def plan_v2(own: Path, base_name: str) -> V2Plan | str:
    """The plan for a daemon in v2 cgroup directory `own`, or why v2 cannot be used (pure:
    reads files only, so tests hand it a fake tree)."""
    base = own.parent if own.name == LEAF_NAME else own
    controllers = (_read(base / "cgroup.controllers") or "").split()
    if "pids" not in controllers:
        return (
            f"cgroup2 at {base}: the pids controller is not available there "
            f"(cgroup.controllers: {' '.join(controllers) or 'none'}); on systemd set "
            "Delegate=yes on the unit, on a hybrid host pids may be on cgroup v1"
        )
    if not (os.access(base, os.W_OK) and os.access(base / "cgroup.subtree_control", os.W_OK)):
        return f"cgroup2 at {base}: not writable by the daemon (delegate the cgroup)"
    kind = (_read(base / "cgroup.type") or "domain").strip()
    if kind not in ("domain", "domain threaded"):
        return f"cgroup2 at {base}: cgroup.type is {kind!r}, not a domain cgroup"
    # the root cgroup has no cgroup.type and may hold processes beside enabled controllers
    is_root = not (base / "cgroup.type").exists()
    leaf = None if is_root or base != own else base / LEAF_NAME
    workers_root = base / f"{base_name}.workers"
    return V2Plan(base=base, leaf=leaf, enable=(base, workers_root), workers_root=workers_root)


def apply_v2(plan: V2Plan) -> None:
    """Carry out a plan: move the base's processes to the leaf, enable +pids, make the root.

    Every process of the base moves (not just the daemon): with any left there, enabling a
    controller for children fails with EBUSY. Under Delegate=yes they are all ours.
    """
    if plan.leaf is not None:
        plan.leaf.mkdir(exist_ok=True)
        for pid in _parse_pids(_read(plan.base / "cgroup.procs")):
            with contextlib.suppress(ProcessLookupError):
                write_value(plan.leaf / "cgroup.procs", str(pid))
    for i, directory in enumerate(plan.enable):
        if i > 0:
            directory.mkdir(exist_ok=True)
        if "pids" not in (_read(directory / "cgroup.subtree_control") or "").split():
            write_value(directory / "cgroup.subtree_control", "+pids")


def enable_cpu_v2(plan: V2Plan) -> str | None:
    """Enable +cpu beside +pids down to the worker leaves (after `apply_v2`), so each
    leaf has a cpu.weight; None when done, else why not (the pids cgroups work anyway)."""
    controllers = (_read(plan.base / "cgroup.controllers") or "").split()
    if "cpu" not in controllers:
        return (
            f"cgroup2 at {plan.base}: the cpu controller is not available there "
            f"(cgroup.controllers: {' '.join(controllers) or 'none'}); on systemd set "
            "Delegate=yes on the unit"
        )
    for directory in plan.enable:
        if "cpu" in (_read(directory / "cgroup.subtree_control") or "").split():
            continue
        try:
            write_value(directory / "cgroup.subtree_control", "+cpu")
        except OSError as exc:
            return f"cgroup2 at {directory}: cannot enable +cpu: {exc}"
    return None


# ----------------------------------------------------------------------------- detection


def own_pids_dirs(mounts: list[procfs.Mount], entries: list[procfs.ProcCgroup]) -> dict[str, Path]:
    """The daemon's own pids cgroup directory on v1 ("v1") and its v2 directory ("v2")."""
    found = procfs.pids_cgroup_dirs(entries, *procfs.pids_mounts(mounts))
    return {f"v{version}": Path(directory) for version, directory in found.items()}


def read_own_cgroups() -> tuple[list[procfs.Mount], list[procfs.ProcCgroup]] | str:
    """This process's cgroup mounts and cgroup lines, or why they cannot be read."""
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as f:
            mounts = procfs.parse_mountinfo(f.read())
        with open("/proc/self/cgroup", encoding="utf-8", errors="replace") as f:
            entries = procfs.parse_proc_cgroup(f.read())
    except OSError as exc:
        return f"cannot read own cgroups: {exc}"
    return mounts, entries


def _chain_below(directory: Path, stop: Path) -> tuple[Path, ...]:
    """`directory` and its ancestors up to and including `stop`."""
    chain = [directory]
    while chain[-1] != stop and chain[-1] != chain[-1].parent:
        chain.append(chain[-1].parent)
    return tuple(chain)


class WorkerCgroups:
    """Where this daemon makes its workers' cgroups, or why it makes none (`reason`)."""

    def __init__(self, root: Path | None, reason: str, version: int | None = None) -> None:
        self.root = root
        self.reason = reason
        self.version = version
        self.last_error: str | None = None
        self.killed: list[int] = []  # what the last `create` killed of a leftover
        # v2: why the leaves have no cpu.weight (None: +cpu is enabled down to them)
        self.cpu_problem: str | None = "not cgroup v2"
        self._made: dict[str, WorkerCgroup] = {}

    @property
    def enabled(self) -> bool:
        return self.root is not None

    def __repr__(self) -> str:
        return f"WorkerCgroups(root={self.root}, reason={self.reason!r})"

    @classmethod
    def detect(cls, base_name: str = "supervisord-batt") -> WorkerCgroups:
        """Find (and make) the root for worker cgroups: v1 pids first, then v2 pids."""
        found = read_own_cgroups()
        if isinstance(found, str):
            return cls(None, f"{found}; worker trees come from /proc")
        mounts, entries = found
        own = own_pids_dirs(mounts, entries)
        reasons = []
        for version, attempt in ((1, cls._try_v1), (2, cls._try_v2)):
            key = f"v{version}"
            if key not in own:
                reasons.append(f"no cgroup {key} {'pids ' if version == 1 else ''}hierarchy")
                continue
            root, why = attempt(own[key], base_name)
            if root is not None:
                made = cls(root, f"cgroup v{version} pids at {root}", version)
                if version == 2:
                    made.cpu_problem = why or None
                return made
            reasons.append(why)
        reasons.append("worker trees come from /proc (session, process group, descendants)")
        return cls(None, "; ".join(reasons))

    @staticmethod
    def _try_v1(own: Path, base_name: str) -> tuple[Path | None, str]:
        root = own / f"{base_name}.workers"
        try:
            root.mkdir(exist_ok=True)
        except OSError as exc:
            return None, f"cgroup v1 pids: cannot create {root}: {exc}"
        return root, ""

    @staticmethod
    def _try_v2(own: Path, base_name: str) -> tuple[Path | None, str]:
        """(root, "") when made; (root, why) when made without +cpu; (None, why) not."""
        plan = plan_v2(own, base_name)
        if isinstance(plan, str):
            return None, plan
        try:
            apply_v2(plan)
        except OSError as exc:
            return None, f"cgroup2 at {plan.base}: cannot set up worker cgroups: {exc}"
        return plan.workers_root, enable_cpu_v2(plan) or ""

    def create(self, instance: str) -> WorkerCgroup | None:
        """The cgroup of one worker instance; None when disabled or it cannot be made
        (`last_error` says why). One left by an earlier daemon is emptied and reused: the
        pids killed for it are in `killed` for the caller to log (no kill goes unsaid)."""
        self.killed = []
        if self.root is None:
            return None
        path = self.root / instance_dir_name(instance)
        cg = WorkerCgroup(path, _chain_below(self.root, self.root.parent))
        try:
            path.mkdir()
        except FileExistsError:
            if str(path) in self._made:  # a live run of ours: never kill it for a new one
                self.last_error = f"cgroup {path} is still in use by the instance's last run"
                return None
            self.killed = cg.kill_members()  # an earlier daemon's worker: nobody supervises it
            with contextlib.suppress(OSError):
                cg.set_max(None)
        except OSError as exc:
            self.last_error = f"cannot create cgroup {path}: {exc}"
            return None
        self._made[str(path)] = cg
        return cg

    def adopt(self, path: Path) -> WorkerCgroup | None:
        """An existing worker cgroup of this root, made by the previous daemon (a
        re-execution, a restart): ours from now on. None when it is not one of ours."""
        if self.root is None or path.parent != self.root or not path.is_dir():
            return None
        cg = WorkerCgroup(path, _chain_below(self.root, self.root.parent))
        self._made[str(path)] = cg
        return cg

    def leftovers(self) -> list[WorkerCgroup]:
        """Worker cgroups an earlier daemon with this root left behind (it was killed)."""
        if self.root is None:
            return []
        found = []
        with contextlib.suppress(OSError):
            for entry in sorted(os.scandir(self.root), key=lambda e: e.name):
                if entry.is_dir(follow_symlinks=False) and str(entry.path) not in self._made:
                    path = Path(entry.path)
                    found.append(WorkerCgroup(path, _chain_below(self.root, self.root.parent)))
        return found

    def forget(self, cg: WorkerCgroup) -> str | None:
        """Remove one worker's cgroup now (its members must be gone)."""
        problem = cg.remove()
        if problem is None:
            self._made.pop(str(cg.path), None)
        return problem

    def cleanup(self, retry_s: float = 1.0) -> list[str]:
        """Remove every worker cgroup made here, then the root; returns what was left, why.

        Runs at shutdown, when blocking briefly is fine: an rmdir can see EBUSY for a moment
        after the last member exited, so it retries for up to `retry_s`. The root is left,
        silently, while another daemon with the same base name has worker cgroups in it.
        """
        deadline = time.monotonic() + retry_s
        while True:
            problems = [p for cg in list(self._made.values()) if (p := self.forget(cg))]
            if self.root is not None and not problems:
                problems = self._remove_root()
            if not problems or time.monotonic() >= deadline:
                return problems
            time.sleep(0.01)

    def _remove_root(self) -> list[str]:
        assert self.root is not None
        try:
            os.rmdir(self.root)
        except FileNotFoundError:
            pass
        except OSError as exc:
            others = exc.errno == errno.EBUSY and any(p.is_dir() for p in self.root.iterdir())
            if not others:
                return [f"cannot remove {self.root}: {exc}"]
        return []
