"""A /proc and /sys tree in a temp dir, shaped like a v1, hybrid or v2 host: what the
HostMonitor tests read instead of the kernel's files."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from supervisord_batt.host.monitor import HostMonitor

MEMINFO = "MemTotal:       16000000 kB\nMemFree:         1000000 kB\nMemAvailable:    8000000 kB\n"
PSI = (
    "some avg10=1.25 avg60=0.50 avg300=0.10 total=123\n"
    "full avg10=0.00 avg60=0.00 avg300=0.00 total=0\n"
)
LIMITS = (
    "Limit                     Soft Limit           Hard Limit           Units     \n"
    "Max cpu time              unlimited            unlimited            seconds   \n"
    "Max processes             {soft:<20} {hard:<20} processes \n"
    "Max open files            1024                 1048576              files     \n"
)
STATUS = (
    "Name:\t{name}\nUmask:\t0022\nState:\tS (sleeping)\nTgid:\t{pid}\nPid:\t{pid}\nPPid:\t1\n"
    "Uid:\t{ruid}\t{euid}\t{euid}\t{euid}\nGid:\t0\t0\t0\t0\nVmRSS:\t  1000 kB\n"
    "Threads:\t{threads}\nCpus_allowed_list:\t{cpus}\n"
)

V1_MOUNTS = {
    "pids": "39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids",
    "cpu": "32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct",
    "memory": "35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory",
}
UNLIMITED_V1 = 9223372036854771712  # what v1 shows for "no limit" with 4 KiB pages
LAYOUTS = {
    # layout: (mountinfo lines, /proc/self/cgroup, pids dir under sys, cpu dir, version)
    "v1": (
        [
            "22 1 0:20 / /sys rw - sysfs sysfs rw",
            "31 22 0:28 / /sys/fs/cgroup rw - tmpfs tmpfs rw,mode=755",
            V1_MOUNTS["cpu"],
            V1_MOUNTS["pids"],
        ],
        "8:pids:/batt/job\n2:cpu,cpuacct:/batt\n1:name=systemd:/batt\n",
        "fs/cgroup/pids",
        "fs/cgroup/cpu,cpuacct",
        1,
    ),
    "hybrid": (
        [
            "31 22 0:28 / /sys/fs/cgroup rw - tmpfs tmpfs rw,mode=755",
            V1_MOUNTS["cpu"],
            V1_MOUNTS["pids"],
            "41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw",
        ],
        "8:pids:/batt/job\n2:cpu,cpuacct:/batt\n0::/\n",
        "fs/cgroup/pids",
        "fs/cgroup/cpu,cpuacct",
        1,
    ),
    "v2": (
        ["30 22 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate"],
        "0::/batt/job\n",
        "fs/cgroup",
        "fs/cgroup",
        2,
    ),
}


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


@dataclass
class FakeHost:
    """A /proc and /sys tree in a temp dir, shaped like one of LAYOUTS."""

    root: Path
    layout: str = "v1"
    psi: bool = True
    pids: dict[int, tuple[int, int, str]] = field(default_factory=dict)
    memory: bool = False  # the memory controller too: a v1 mount, or enabled in v2

    @property
    def proc(self) -> Path:
        return self.root / "proc"

    @property
    def sys(self) -> Path:
        return self.root / "sys"

    @property
    def pids_dir(self) -> Path:
        return self.sys / LAYOUTS[self.layout][2]

    @property
    def cpu_dir(self) -> Path:
        return self.sys / LAYOUTS[self.layout][3]

    @property
    def memory_dir(self) -> Path:
        return self.pids_dir if self.layout == "v2" else self.sys / "fs/cgroup/memory"

    def build(self) -> FakeHost:
        mountinfo, self_cgroup, _, _, version = LAYOUTS[self.layout]
        write(self.proc / "loadavg", "0.50 0.40 0.30 3/345 6789\n")
        write(self.proc / "sys/kernel/threads-max", "1000\n")
        write(self.proc / "sys/kernel/pid_max", "4194304\n")
        write(self.proc / "meminfo", MEMINFO)
        if self.psi:
            write(self.proc / "pressure/cpu", PSI)
            write(self.proc / "pressure/memory", PSI.replace("1.25", "2.50"))
        if self.memory and version == 1:
            mountinfo = [*mountinfo, V1_MOUNTS["memory"]]
            self_cgroup = f"4:memory:/batt/job\n{self_cgroup}"
        write(self.proc / "self/mountinfo", "\n".join(mountinfo) + "\n")
        write(self.proc / "self/cgroup", self_cgroup)
        write(
            self.proc / "self/status",
            STATUS.format(name="d", pid=1, ruid=0, euid=0, threads=1, cpus="0-3"),
        )
        write(self.proc / "self/limits", LIMITS.format(soft=4096, hard=4096))
        if version == 2:
            write(self.pids_dir / "cgroup.controllers", "cpuset cpu io memory pids\n")
            write(self.pids_dir / "batt/cgroup.controllers", "cpu memory pids\n")
            own = "memory pids" if self.memory else "pids"
            write(self.pids_dir / "batt/job/cgroup.controllers", f"{own}\n")
        else:
            (self.pids_dir / "batt/job").mkdir(parents=True)
            (self.cpu_dir / "batt").mkdir(parents=True)
        self.set_cgroup("batt", current=8, max_=10, events=3)
        self.set_cgroup("batt/job", current=3, max_=50, events=0)
        return self

    def set_cgroup(self, rel: str, current: int, max_: int | str, events: int) -> None:
        d = self.pids_dir / rel
        write(d / "pids.current", f"{current}\n")
        write(d / "pids.max", f"{max_}\n")
        write(d / "pids.events", f"max {events}\n")

    def set_memory(
        self,
        rel: str,
        current: int,
        max_: int | None,
        *,
        high: int | None = None,
        inactive_file: int = 0,
        oom_kills: int = 0,
    ) -> None:
        """A memory cgroup's files as the layout's version writes them (None: no limit)."""
        d = self.memory_dir / rel
        if self.layout == "v2":
            write(d / "memory.current", f"{current}\n")
            write(d / "memory.max", f"{'max' if max_ is None else max_}\n")
            write(d / "memory.high", f"{'max' if high is None else high}\n")
            write(d / "memory.stat", f"anon 1\nfile 2\ninactive_file {inactive_file}\n")
            write(
                d / "memory.events",
                f"low 0\nhigh 0\nmax 0\noom {oom_kills}\noom_kill {oom_kills}\noom_group_kill 0\n",
            )
            return
        write(d / "memory.usage_in_bytes", f"{current}\n")
        write(d / "memory.limit_in_bytes", f"{UNLIMITED_V1 if max_ is None else max_}\n")
        write(
            d / "memory.stat",
            f"cache 5\ninactive_file 7\ntotal_cache 5\ntotal_inactive_file {inactive_file}\n",
        )
        write(d / "memory.oom_control", f"oom_kill_disable 0\nunder_oom 0\noom_kill {oom_kills}\n")

    def add_process(
        self, pid: int, ruid: int, threads: int, nproc: int | str, euid: int | None = None
    ) -> None:
        d = self.proc / str(pid)
        write(
            d / "status",
            STATUS.format(
                name="w",
                pid=pid,
                ruid=ruid,
                euid=ruid if euid is None else euid,
                threads=threads,
                cpus="0",
            ),
        )
        write(d / "limits", LIMITS.format(soft=nproc, hard=nproc))

    def monitor(self, **kwargs: object) -> HostMonitor:
        return HostMonitor(proc_root=str(self.proc), sys_root=str(self.sys), **kwargs)  # type: ignore[arg-type]
