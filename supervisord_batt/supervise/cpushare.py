"""CPU time of the supervised workers shared per user: each instance's cpu cgroup and weight.

`instance_weights` is the arithmetic (pure: instances per user and the users' weights in,
each instance's weight out). `CpuShares` finds where the cpu controller can be used, keeps
the live instances by user (uid) and writes each one's weight whenever that set changes:
a start, an exit, a reload, an adoption after a re-execution.
"""

# Why. The kernel's scheduler (CFS) shares CPU time per thread among the threads of one
# cgroup: a user running 60 supervised sequential instances takes 60 threads' worth of CPU
# and another user's 4 get 4/64 of it, whatever the budget grants (docs/SIMULATION.md,
# "CPU time shared per thread"). Among sibling cgroups it shares by weight instead. So each
# instance gets a cgroup whose weight is its user's share split among the user's live
# instances: the users' instances together weigh the same (times `budget.user_weights` or
# `group_weights`, so the CPU split agrees with the budget's).
#
# Layouts. cgroup v1: the cpu controller has its own hierarchy; the instance's counterpart
# of its pids cgroup is "<daemon's own cpu cgroup>/<base>.workers/<instance>", weighted by
# cpu.shares, and the child writes itself into it before exec, beside its pids cgroup
# (proctree.spawn). cgroup v2: +cpu is enabled beside +pids (cgroups.enable_cpu_v2) and
# the instance's own cgroup is weighted by cpu.weight. Where neither works, CPU time stays
# shared per thread and `describe` says why.
#
# Why the workers' root weighs a thread per live instance: it is a sibling of whatever
# else is in the daemon's own cpu cgroup (under the unit's Delegate=yes the daemon
# alone; run by hand in the root cgroup, v1 or v2: every process of every user). At its
# default weight (a nice-0 thread's) all the workers together would get one thread's
# worth against those, where as threads they got one each (3 busy workers against 1
# process beside the daemon: 0.53 of the CPU instead of 0.75). So it weighs THREAD times
# the live instances, up to the kernel's maximum (256 instances on v1, 100 on v2): the
# split per user is inside it, and the workers' total against their neighbours stays
# what it was per thread.
#
# Why a lone instance of the heaviest user weighs TOP: weights count only among the
# siblings under "<base>.workers", so any scale gives the same split; a large one keeps
# the instances' weights apart (60 instances of weight 1 against one: 167 each, not 2).
# The scale follows the users' weights, not their counts: anchored on the heaviest
# instance, one exit moved every other user's weights too, and each write costs ~44 us
# on v1 (1,000 instances: a 44 ms stall per start or exit); so only its user's change.

from __future__ import annotations

import contextlib
import os
from collections import Counter
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from supervisord_batt.host import procfs
from supervisord_batt.supervise.cgroups import (
    WorkerCgroup,
    WorkerCgroups,
    instance_dir_name,
    read_own_cgroups,
    write_value,
)

K = TypeVar("K", bound=Hashable)
Account = int | str  # a uid; a user name nobody could resolve to one stands for itself

TOP = 10_000  # the heaviest instance's weight
V1_RANGE = (2, 262_144)  # cpu.shares
V2_RANGE = (1, 10_000)  # cpu.weight
_FILES = {1: "cpu.shares", 2: "cpu.weight"}
_RANGES = {1: V1_RANGE, 2: V2_RANGE}
THREAD = {1: 1024, 2: 100}  # a nice-0 thread's weight: cpu.shares, cpu.weight


def instance_weights(
    counts: Mapping[K, int], user_weights: Mapping[K, float], low: int, high: int
) -> dict[K, int]:
    """user -> the weight of each of its live instances: the user's weight (1 when not
    given) split evenly among its `counts` instances, scaled so that a lone instance of
    the heaviest user would weigh TOP (or `high`, if less), each clamped to the kernel's
    range [low, high]. A user with no live instance is left out. The scale depends on
    the live users' weights, not on their counts: a start or an exit changes only its own
    user's weight (all of them only when the heaviest user comes or goes)."""
    live = {k: (user_weights.get(k, 1.0), n) for k, n in counts.items() if n > 0}
    if not live:
        return {}
    scale = min(TOP, high) / max(w for w, _ in live.values())
    return {k: min(high, max(low, round(w / n * scale))) for k, (w, n) in live.items()}


def _equal(uid: int) -> float:
    return 1.0


@dataclass
class _Live:
    """A live instance whose weight is kept: its user, the file its weight goes to, and
    (v1) the cgroup of its own in the cpu hierarchy, removed when its run ends."""

    account: Account
    weight_file: Path
    cgroup: WorkerCgroup | None
    written: int | None = None
    failed: bool = False  # a write was refused: said once, not retried for this run


class CpuShares:
    """Where the instances' cpu cgroups are (`version` 1 or 2), or why there are none."""

    def __init__(
        self,
        version: int | None,
        reason: str,
        root: Path | None = None,
        weigh: Callable[[int], float] = _equal,
    ) -> None:
        self.version = version
        self.reason = reason
        self.root = root  # the workers' root: weighs a thread per live instance
        self.weigh = weigh  # uid -> its weight (daemon.weights), swapped on reload
        self.dirs = WorkerCgroups(root, reason, 1) if version == 1 else None
        self.weights: dict[Account, int] = {}  # as last computed, per user
        self.last_error: str | None = None
        self._live: dict[str, _Live] = {}
        self._counts: Counter[Account] = Counter()  # live instances per user
        self._root_written: int | None = None

    def __repr__(self) -> str:
        return f"CpuShares(version={self.version}, reason={self.reason!r})"

    def __contains__(self, instance: str) -> bool:
        """Whether the instance's run is live (weighed) here."""
        return instance in self._live

    @property
    def enabled(self) -> bool:
        return self.version is not None

    def describe(self) -> str:
        """`per_user`, or `per_thread (why)`: what `status` and the start line say."""
        return "per_user" if self.enabled else f"per_thread ({self.reason})"

    @classmethod
    def detect(cls, base_name: str, pids: WorkerCgroups) -> CpuShares:
        """v1's cpu hierarchy where it is mounted, else v2 where the worker cgroups are
        (and +cpu was enabled there), else none, with why."""
        found = read_own_cgroups()
        if isinstance(found, str):
            return cls(None, found)
        mounts, entries = found
        mount = procfs.find_v1_mount(mounts, "cpu")
        if mount is not None:
            own = next((e for e in entries if "cpu" in e.controllers), None)
            if own is None:
                return cls(None, "cgroup v1 cpu: the daemon's cpu cgroup is not listed")
            directory = Path(procfs.cgroup_fs_path(mount.mount_point, mount.root, own.path))
            return cls._try_v1(directory / f"{base_name}.workers")
        if pids.version == 2 and pids.root is not None:
            if pids.cpu_problem is None:
                return cls(2, f"cgroup v2 cpu at {pids.root}", pids.root)
            return cls(None, pids.cpu_problem)
        return cls(None, "no cgroup v1 cpu hierarchy, and the worker cgroups are not on v2")

    @classmethod
    def _try_v1(cls, root: Path) -> CpuShares:
        try:
            root.mkdir(exist_ok=True)
            shares = root / "cpu.shares"
            write_value(shares, (procfs.read_text(str(shares)) or "1024").strip())
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.rmdir(root)
            return cls(None, f"cgroup v1 cpu: cannot use {root}: {exc.strerror or exc}")
        return cls(1, f"cgroup v1 cpu at {root}", root)

    def disable(self, reason: str) -> None:
        """Start no more runs in cpu cgroups (the live ones keep theirs to their end)."""
        self.version, self.reason = None, reason

    # -- one instance -----------------------------------------------------------------

    def join(self, instance: str, account: Account, pids: WorkerCgroup | None) -> str | None:
        """Make the instance's new run live: v1, its cgroup in the cpu hierarchy, whose
        cgroup.procs path the child writes itself into (returned); v2, its pids cgroup
        `pids` gets the weight (None returned). None, with `last_error`, when there is
        none: the run shares CPU per thread. `reweigh(instance)` next, before the child
        starts, and `reweigh()` of all of them soon."""
        self.last_error = None
        if self.version == 1 and self.dirs is not None:
            cg = self.dirs.create(instance)
            if cg is None:
                self.last_error = self.dirs.last_error
                return None
            self._add(instance, _Live(account, cg.path / _FILES[1], cg))
            return cg.preexec_path
        if self.version == 2 and pids is not None:
            self._add(instance, _Live(account, pids.path / _FILES[2], None))
        return None

    def _add(self, instance: str, live: _Live) -> None:
        self._uncount(self._live.get(instance))  # counted once, whatever came before
        self._live[instance] = live
        self._counts[live.account] += 1

    def _uncount(self, live: _Live | None) -> None:
        if live is not None:
            self._counts[live.account] -= 1
            if not self._counts[live.account]:
                del self._counts[live.account]

    def killed(self) -> list[int]:
        """What the last `join` killed of an earlier daemon's worker in its cgroup."""
        return list(self.dirs.killed) if self.dirs is not None else []

    def adopt(
        self, instance: str, account: Account, path: Path | None, pids: WorkerCgroup | None
    ) -> bool:
        """A run the previous daemon started (a re-execution, a restart): its recorded cpu
        cgroup `path` is ours from now on. v1 without one (a daemon from before cpu
        cgroups): the instance's cpu cgroup (the one there, else a new one) with the
        members of its pids cgroup moved in. Whether it is live (weighed) now."""
        if self.version == 2 and pids is not None:
            self._add(instance, _Live(account, pids.path / _FILES[2], None))
        elif self.version == 1 and self.dirs is not None:
            cg = self.dirs.adopt(path) if path is not None else None
            if cg is None and pids is not None:
                cg = self._move_in(instance, pids)
            if cg is not None:
                self._add(instance, _Live(account, cg.path / _FILES[1], cg))
        return instance in self._live

    def _move_in(self, instance: str, pids: WorkerCgroup) -> WorkerCgroup | None:
        """The instance's cpu cgroup holding what `pids` holds now (a process forked
        during the move stays where it was: with its parent's weight, per thread). One
        already there is adopted, never emptied: a release without cpu cgroups that
        adopted the run in between recorded none, and its worker is still in it."""
        assert self.dirs is not None and self.dirs.root is not None
        cg = self.dirs.adopt(self.dirs.root / instance_dir_name(instance))
        cg = cg or self.dirs.create(instance)
        if cg is None:
            return None
        for pid in pids.procs():
            with contextlib.suppress(OSError):  # gone since, or a kernel thread
                write_value(Path(cg.preexec_path), str(pid))
        return cg

    def path_of(self, instance: str) -> Path | None:
        """The instance's own cpu cgroup (v1) for the state record; None on v2."""
        live = self._live.get(instance)
        return live.cgroup.path if live is not None and live.cgroup is not None else None

    def leave(self, instance: str) -> str | None:
        """The instance's run ended (its tree is gone): its cgroup (v1) removed; why it is
        left, if it is. `reweigh` next."""
        live = self._live.pop(instance, None)
        self._uncount(live)
        if live is None or live.cgroup is None or self.dirs is None:
            return None
        return self.dirs.forget(live.cgroup)

    # -- all of them ------------------------------------------------------------------

    def reweigh(self, instance: str | None = None) -> list[tuple[str, str]]:
        """Write each live instance's weight where it changed (only `instance`'s, when
        named: a new run's before its child starts, in O(users)); (instance, why) for
        each write refused (that run keeps the weight it had)."""
        user = {a: self.weigh(a) if isinstance(a, int) else 1.0 for a in self._counts}
        version = 1 if self.dirs is not None else 2
        self.weights = instance_weights(self._counts, user, *_RANGES[version])
        todo = self._live
        if instance is not None:
            todo = {instance: self._live[instance]} if instance in self._live else {}
        problems = self._weigh_root(version)
        for name, live in todo.items():
            weight = self.weights[live.account]
            if live.failed or live.written == weight:
                continue
            try:
                write_value(live.weight_file, str(weight))
            except OSError as exc:
                live.failed = True
                problems.append((name, f"cannot write {live.weight_file}: {exc}"))
                continue
            live.written = weight
        return problems

    def _weigh_root(self, version: int) -> list[tuple[str, str]]:
        """The workers' root weighs a thread per live instance (one at least); the
        write, where it changed; (root, why) when refused (said once per weight)."""
        low, high = _RANGES[version]
        weight = min(high, max(low, THREAD[version] * max(1, len(self._live))))
        if self.root is None or weight == self._root_written:
            return []
        self._root_written = weight
        path = self.root / _FILES[version]
        try:
            write_value(path, str(weight))
        except OSError as exc:
            return [(str(self.root), f"cannot write {path}: {exc}")]
        return []

    def counts(self) -> dict[Account, int]:
        """Live instances per user."""
        return dict(self._counts)

    def leftovers(self) -> list[tuple[WorkerCgroup, list[int], str | None]]:
        """Remove the cpu cgroups an earlier daemon left (v1): (cgroup, the members it
        still had, killed, and why it is left, if it is). Called after the pids cgroups'
        leftovers were stopped, so they are normally empty."""
        if self.dirs is None:
            return []
        out = []
        for cg in self.dirs.leftovers():
            killed = cg.kill_members()
            out.append((cg, killed, cg.remove()))
        return out

    def cleanup(self, retry_s: float = 1.0) -> list[str]:
        """Remove every cpu cgroup made here and the root (v1; shutdown); what is left.
        The root is not weighed after (it is gone, on v2 with the pids cgroups)."""
        self._live.clear()
        self._counts.clear()
        self.root = None
        return self.dirs.cleanup(retry_s) if self.dirs is not None else []
