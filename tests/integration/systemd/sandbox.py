"""A real systemd as PID 1 of private namespaces, for testing the shipped unit.

On these machines systemd is installed but is not PID 1, so `systemctl` has nothing to
talk to. systemd runs fine as PID 1 of new pid, mount, cgroup, uts and ipc namespaces
(as root, nothing to install; it boots in well under a second):

- a nested cgroup below our own in every hierarchy, which the new cgroup namespace is
  rooted at, so systemd cannot touch any cgroup but its own;
- a private /run and a read-only /proc/sys and /sys, so it changes nothing on the host;
- a unit directory holding only stub targets and the units under test, so none of the
  host's units can start; no generators;
- a pty as /dev/console (systemd logs only to a tty), copied into `console.log`;
- on request, a private writable /etc (`etc_overlay`: an overlay whose writes land in
  WORKDIR/etc-upper), or a private writable system (`system`: /etc, /usr, /opt and /var
  as overlays whose writes land in the namespace's /run/sdns, in memory, so that
  installing a package there, dpkg's database and apt's cache included, writes nothing
  to the host's disk and leaves nothing behind when the namespace dies; the host's units
  in /lib/systemd/system are hidden by an empty tmpfs, where a package's unit then lands,
  and a network namespace of its own has no network at all).

`Sandbox.boot(workdir)` runs `python sandbox.py WORKDIR` (this file's `main`), which
makes the cgroups, starts the pty copier and execs `unshare`; `close()` kills what it
started, by pid, and removes the cgroups. Pids inside differ from the host's: read
`/proc/<pid1>/root/proc/<pid>` for a pid `systemctl show` reports.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

STUBS = {
    "sysinit.target": "[Unit]\nDescription=sysinit stub\nDefaultDependencies=no\n",
    "basic.target": "[Unit]\nDescription=basic stub\nRequires=sysinit.target\n"
    "After=sysinit.target\n",
    "sdtest.target": "[Unit]\nDescription=test boot target\nRequires=basic.target\n"
    "After=basic.target\nAllowIsolate=yes\n",
    # what an installed unit's WantedBy= names; never started here
    "multi-user.target": "[Unit]\nDescription=multi-user stub\n",
}
# what `systemctl exit` needs to shut the namespace down cleanly
SHUTDOWN_UNITS = ("shutdown.target", "umount.target", "final.target", "exit.target")
SYSTEM_CONF = """[Manager]
LogTarget=console
LogColor=no
ShowStatus=no
RuntimeWatchdogSec=off
RebootWatchdogSec=off
KExecWatchdogSec=off
DefaultTasksAccounting=yes
DefaultStandardOutput=tty
DefaultStandardError=inherit
"""
# journald when a test reads the journal: in memory (the private /run), and never the
# host's kernel log
JOURNALD_CONF = "[Journal]\nStorage=volatile\nReadKMsg=no\nForwardToConsole=no\n"
JOURNALD_UNITS = (
    "systemd-journald.service",
    "systemd-journald.socket",
    "systemd-journald-dev-log.socket",
)
SYSTEMD = next(
    (p for p in ("/lib/systemd/systemd", "/usr/lib/systemd/systemd") if os.access(p, os.X_OK)),
    None,
)
# The namespace's PID 1 is this shell: it mounts what systemd must not take from the host,
# then execs systemd. $V1 lists the v1 controllers to mount again, rooted at our cgroups.
INNER = r"""
if [ -n "$ETC_OVERLAY" ]; then  # a private, writable /etc: writes land in $W/etc-upper
  mkdir -p "$W/etc-upper" "$W/etc-work"
  mount -t overlay overlay -o "lowerdir=/etc,upperdir=$W/etc-upper,workdir=$W/etc-work" /etc
fi
mount -t tmpfs -o nosuid,nodev,mode=755 tmpfs /run
if [ -n "$SYSTEM_OVERLAYS" ]; then  # private, writable trees: writes land in /run/sdns
  mkdir -p /run/sdns/w
  mount --bind "$W" /run/sdns/w  # $W may lie under /var, which the overlay would hide
  for d in $SYSTEM_OVERLAYS; do
    [ -d "/$d" ] || { echo "no /$d on this host to overlay" >&2; exit 1; }
    mkdir -p "/run/sdns/$d/upper" "/run/sdns/$d/work"
    mount -t overlay overlay \
      -o "lowerdir=/$d,upperdir=/run/sdns/$d/upper,workdir=/run/sdns/$d/work" "/$d"
  done
  mount --move /run/sdns/w "$W"
  mount -t tmpfs -o nosuid,nodev,mode=755 tmpfs "$(realpath /lib/systemd/system)"
fi
mount -t tmpfs -o nosuid,nodev,noexec,mode=755 tmpfs /sys/fs/cgroup
for c in $V1; do
  mkdir /sys/fs/cgroup/$c
  mount -t cgroup -o nosuid,nodev,noexec,$c cgroup /sys/fs/cgroup/$c
done
mkdir /sys/fs/cgroup/systemd /sys/fs/cgroup/unified
mount -t cgroup -o nosuid,nodev,noexec,none,name=systemd cgroup /sys/fs/cgroup/systemd
mount -t cgroup2 -o nosuid,nodev,noexec cgroup2 /sys/fs/cgroup/unified
mount -o remount,bind,ro /sys/fs/cgroup
mount --bind /proc/sys /proc/sys && mount -o remount,bind,ro /proc/sys
if [ -e /proc/sysrq-trigger ]; then
  mount --bind /proc/sysrq-trigger /proc/sysrq-trigger
  mount -o remount,bind,ro /proc/sysrq-trigger
fi
mount -o remount,bind,ro /sys
mount --bind "$W/system.conf" /etc/systemd/system.conf
[ ! -e "$W/journald.conf" ] || mount --bind "$W/journald.conf" /etc/systemd/journald.conf
mount --bind "$PTS" /dev/console
mkdir -p "$W/empty"
mount --bind "$W/empty" /usr/lib/systemd/system-generators
exec env -u W -u PTS -u V1 -u LIBMOUNT_UTAB -u ETC_OVERLAY -u SYSTEM_OVERLAYS \
  "$SYSTEMD" --system --unit=sdtest.target
"""


def cannot_run() -> str | None:
    """Why this machine cannot boot the sandbox, or None."""
    if os.geteuid() != 0:
        return "needs root (new namespaces and cgroups)"
    if SYSTEMD is None:
        return "no systemd binary (apt-get install systemd)"
    for tool in ("unshare", "nsenter", "systemctl", "mount"):
        if shutil.which(tool) is None:
            return f"no {tool} on PATH (apt-get install util-linux systemd)"
    return None


def _cgroup_dir(controllers: str) -> str:
    if controllers == "":
        return "/sys/fs/cgroup/unified"
    if controllers == "name=systemd":
        return "/sys/fs/cgroup/systemd"
    return f"/sys/fs/cgroup/{controllers}"


# the trees `system` makes private; /run is the namespace's own already
SYSTEM_TREES = ("etc", "usr", "opt", "var")
# root's environment on a stock Debian host, for commands in a private system
STOCK_ENV = {
    "HOME": "/root",
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "LANG": "C.UTF-8",
}


def main(workdir: str, etc_overlay: bool = False, system: bool = False) -> None:
    """Become the namespace's launcher: cgroups, pty copier, then exec unshare."""
    w = Path(workdir).resolve()
    (w / "launcher.pid").write_text(f"{os.getpid()}\n")
    made, v1 = [], []
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        base = Path(_cgroup_dir(controllers) + path.rstrip("/"))
        if not base.is_dir():
            continue
        mine = base / f"sdns-{os.getpid()}"
        mine.mkdir()
        made.append(str(mine))
        (w / "cgdirs").write_text("\n".join(made) + "\n")
        if controllers == "cpuset":  # a v1 cpuset takes no task until cpus and mems are set
            for name in ("cpuset.cpus", "cpuset.mems"):
                (mine / name).write_text((base / name).read_text())
        (mine / "cgroup.procs").write_text(f"{os.getpid()}\n")
        if controllers and not controllers.startswith("name="):
            v1.append(controllers)
    master, slave = os.openpty()
    pts = os.ttyname(slave)
    copier = os.fork()
    if copier == 0:  # copies the console into console.log until the namespace dies
        ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        # the slave stays open here: with no slave open, reads fail (EIO), and once the
        # master closes too the /dev/pts node that systemd's console is bound to is gone
        with open(w / "console.log", "ab", buffering=0) as log:
            while True:
                try:
                    data = os.read(master, 65536)
                except OSError:
                    break
                if not data:
                    break
                log.write(data)
        os._exit(0)
    (w / "copier.pid").write_text(f"{copier}\n")
    env = {
        "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "container": "sdns",
        "SYSTEMD_UNIT_PATH": _unit_path(w, etc_overlay, system),
        "ETC_OVERLAY": "1" if etc_overlay and not system else "",
        "SYSTEM_OVERLAYS": " ".join(SYSTEM_TREES) if system else "",
        "W": str(w),
        "PTS": pts,
        "V1": " ".join(v1),
        "SYSTEMD": str(SYSTEMD),
        "LIBMOUNT_UTAB": str(w / "utab"),  # else mount writes /run/mount/utab on the host
    }
    argv = ["unshare", "--kill-child=SIGKILL", "--fork", "--pid", "--mount"]
    argv += ["--propagation", "private", "--mount-proc", "--cgroup", "--uts", "--ipc"]
    if system:  # no network either: what is installed there must come from the host
        argv.append("--net")
    argv += ["/bin/sh", "-ec", INNER]
    os.execvpe("unshare", argv, env)


def _unit_path(w: Path, etc_overlay: bool, system: bool) -> str:
    """Where systemd looks for units: the stubs and units under test; with a private
    /etc, units installed the usual way too; with a private system, also the packages'
    units (in /lib/systemd/system, which holds no unit of the host's there)."""
    path = [str(w / "units")]
    if etc_overlay or system:
        path.append("/etc/systemd/system")
    if system:
        path.append("/lib/systemd/system")
    return ":".join(path)


class Sandbox:
    """One booted namespace; `systemctl(...)` talks to its systemd."""

    def __init__(self, workdir: Path, etc_overlay: bool = False, system: bool = False) -> None:
        self.workdir = workdir
        self.etc_overlay = etc_overlay  # a private writable /etc, for install steps
        self.system = system  # private writable /etc, /usr, /opt, /var: for packages
        self.units = workdir / "units"
        self.launcher: subprocess.Popen[bytes] | None = None
        self.pid1 = 0

    @classmethod
    def prepare(
        cls, workdir: Path, etc_overlay: bool = False, journald: bool = False, system: bool = False
    ) -> Sandbox:
        """The unit directory and config; `journald`: a journal, and services log to it."""
        box = cls(workdir, etc_overlay, system)
        box.units.mkdir(parents=True)
        conf = SYSTEM_CONF
        stubs = dict(STUBS)
        extra: tuple[str, ...] = ()
        if journald:
            conf = conf.replace("DefaultStandardOutput=tty", "DefaultStandardOutput=journal")
            (workdir / "journald.conf").write_text(JOURNALD_CONF)
            stubs["sockets.target"] = "[Unit]\nDescription=sockets stub\n"
            stubs["sdtest.target"] += "Wants=systemd-journald.socket systemd-journald.service\n"
            extra = JOURNALD_UNITS
        (workdir / "system.conf").write_text(conf)
        for name, text in stubs.items():
            (box.units / name).write_text(text)
        for name in (*SHUTDOWN_UNITS, "systemd-exit.service", *extra):
            for where in ("/lib/systemd/system", "/usr/lib/systemd/system"):
                if (Path(where) / name).is_file():
                    shutil.copy(Path(where) / name, box.units / name)
                    break
        return box

    def boot(self, timeout: float = 30.0) -> None:
        log = open(self.workdir / "launcher.log", "wb")  # noqa: SIM115
        with log:
            self.launcher = subprocess.Popen(
                [
                    sys.executable,
                    __file__,
                    str(self.workdir),
                    *(["etc"] if self.etc_overlay else []),
                    *(["system"] if self.system else []),
                ],
                stdout=log,
                stderr=log,
            )
        deadline = time.monotonic() + timeout
        while not self.pid1:
            self.pid1 = self._find_pid1()
            if self.launcher.poll() is not None:
                raise RuntimeError(f"sandbox launcher exited: {self.console()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"no systemd PID 1 after {timeout}s: {self.console()}")
            time.sleep(0.02)
        while True:
            state = self.systemctl("is-system-running", check=False).stdout.strip()
            if state in ("running", "degraded"):
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"system is {state!r} after {timeout}s: {self.console()}")
            time.sleep(0.05)

    def _find_pid1(self) -> int:
        """The child of `unshare` whose executable is systemd (it execs after the mounts)."""
        assert self.launcher is not None
        with contextlib.suppress(OSError):
            children = Path(f"/proc/{self.launcher.pid}/task/{self.launcher.pid}/children")
            for pid in children.read_text().split():
                with contextlib.suppress(OSError):
                    if os.readlink(f"/proc/{pid}/exe") == os.path.realpath(str(SYSTEMD)):
                        return int(pid)
        return 0

    def run(
        self, *argv: str, check: bool = True, timeout: float = 120.0, cwd: Path | None = None
    ) -> subprocess.CompletedProcess[str]:
        """A command inside the namespace (its mounts and pids). In a private system, in
        its network namespace too (no network), with root's environment on a stock host
        (not the test's PATH and PYTHONPATH, which would run the checkout instead of what
        was installed there)."""
        wd = [f"--wd={cwd}"] if cwd is not None else []
        net = ["-n"] if self.system else []
        return subprocess.run(
            ["nsenter", "-t", str(self.pid1), "-m", "-p", *net, *wd, *argv],
            capture_output=True,
            text=True,
            check=check,
            timeout=timeout,
            env=STOCK_ENV if self.system else None,
        )

    def systemctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.run("systemctl", "--no-pager", *args, check=check)

    def show(self, unit: str, *props: str) -> dict[str, str]:
        out = self.systemctl("show", "-p", ",".join(props), unit).stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def host_path(self, inside: str) -> Path:
        """A path of the namespace's mount tree, seen from the host."""
        return Path(f"/proc/{self.pid1}/root") / inside.lstrip("/")

    def console(self, tail: int | None = 4000) -> str:
        """The console's last `tail` characters (all of it with None)."""
        with contextlib.suppress(OSError):
            text = (self.workdir / "console.log").read_text(errors="replace")
            return text if tail is None else text[-tail:]
        return ""

    def close(self) -> list[str]:
        """Kill the namespace (by the launcher's pid) and remove its cgroups; what was left."""
        left: list[str] = []
        if self.launcher is not None and self.launcher.poll() is None:
            self.launcher.kill()  # unshare --kill-child: PID 1 and all inside die with it
            self.launcher.wait(timeout=30)
        with contextlib.suppress(OSError, ValueError):
            os.kill(int((self.workdir / "copier.pid").read_text()), signal.SIGTERM)
        cgdirs = self.workdir / "cgdirs"
        for line in cgdirs.read_text().split() if cgdirs.exists() else []:
            top = Path(line)
            deadline = time.monotonic() + 5
            while top.exists():
                dirs = sorted(
                    (p for p in top.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)
                )
                with contextlib.suppress(OSError):
                    for d in [*dirs, top]:
                        d.rmdir()
                if time.monotonic() > deadline:
                    left.append(str(top))
                    break
                time.sleep(0.05)
        return left


if __name__ == "__main__":
    main(sys.argv[1], etc_overlay="etc" in sys.argv[2:], system="system" in sys.argv[2:])
