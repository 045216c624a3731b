"""Soak test: the real daemon under chaos for a while, invariants checked every second.

    python benchmarks/soak.py --duration 10m [--json]      (or --duration 60, seconds)

Starts `python -m supervisord_batt run -c <tmp config>` (json log to a file) supervising
3 demo workers (wall_clock_limit 20s, restart always) and one rogue worker (leases 2
threads, tries to start 30), then for the duration injects: SIGKILL of supervised workers
and of leasing clients, lease churn (client processes and threads of this process), a
reload every minute alternating two configs (numprocs 3 / 2) with a SIGHUP sent during
each, a malformed-message flooder, a connection flooder (as a throwaway non-root user when
`useradd` works, else root) and, once at mid-run, a SIGKILL of the daemon itself followed
by a restart on the same config and socket (which must log `leftover_stopped`).

Invariants, checked every second (violations counted by kind; the exit code is 0 only
with none and no daemon exit but the injected one):
  over_capacity   status `leased` > `capacity`
  lease_leaked    a client that exited (or was killed, or released) still holds its lease
                  in status 2 s later
  stray_process   a process with SUPERVISORD_BATT_INSTANCE in its environment outside the
                  daemon's worker cgroup root, or of an instance status does not list
                  (seen twice, 3 s apart, so spawns and stops in flight are not counted)
  rss_growth / fd_growth   daemon VmRSS / open fds (minus client connections) after the
                  warm-up (first 20% of the run, per daemon incarnation): max - min over a
                  rolling 120-sample window above 8 MiB / 64 fds
  daemon_exited   the daemon exited when not killed by us
Everything started is removed at the end (daemon, workers, clients, user, temp dir,
cgroups), also on Ctrl-C or an exception; only pids this script started are killed.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import pwd
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
WORKER = Path(__file__).resolve().parent / "soak_worker.py"
NOTABLE = (
    "leftover_stopped",
    "reloaded",
    "reload_rejected",
    "bad_input_suppressed",
    "lease_lines_suppressed",
    "output_lost",
    "loop_error",
    "handler_failed",
    "spawn_failed",
    "tasks_max",
)
INSTANCE_ENV = b"SUPERVISORD_BATT_INSTANCE="
RSS_BOUND_KIB = 8 * 1024
FD_BOUND = 64
WINDOW = 120


def parse_duration(text: str) -> float:
    m = re.fullmatch(r"\s*(?:(\d+)h)?\s*(?:(\d+)m)?\s*(?:(\d+(?:\.\d+)?)s?)?\s*", text)
    if not m or not any(m.groups()):
        raise argparse.ArgumentTypeError(f"bad duration {text!r} (e.g. 10m, 60, 90s)")
    h, mi, s = m.groups()
    return int(h or 0) * 3600 + int(mi or 0) * 60 + float(s or 0)


class Soak:
    def __init__(self, duration: float, verbose: bool) -> None:
        self.duration = duration
        self.verbose = verbose
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.served = collections.Counter[str]()
        self.faults = collections.Counter[str]()
        self.violations = collections.Counter[str]()
        self.violation_samples: list[str] = []
        self.events = collections.Counter[str]()
        self.children: list[subprocess.Popen[bytes]] = []
        self.daemon: subprocess.Popen[bytes] | None = None
        self.incarnation = 0
        self.daemon_expected_exit = False
        self.unexpected_daemon_exits = 0
        self.cgroup_roots: list[str] = []
        self.log_offset = 0
        self.workdir = Path(tempfile.mkdtemp(prefix="sb-soak-", dir="/tmp"))
        os.chmod(self.workdir, 0o755)
        self.sock = self.workdir / "d.sock"
        self.log = self.workdir / "d.log"
        self.cfg = self.workdir / "c.yaml"
        self.user: str | None = None
        self.flood_uid: int | None = None
        self.flood_as = "root"
        # lease bookkeeping: (incarnation, lease) -> time it must be gone by
        self.ended_leases: dict[tuple[int, str], float] = {}
        self.ended_pids: dict[int, tuple[int, float]] = {}
        self.lease_clients: dict[int, subprocess.Popen[bytes]] = {}
        self.stray_suspects: dict[int, float] = {}
        self.mem: list[tuple[float, int, int, int, int]] = []  # t, inc, rss, fds, fds-conns
        self.mem_marks: dict[int, dict[str, Any]] = {}
        self.config_b = False
        self.reload_busy = threading.Event()
        self.t0 = time.monotonic()
        self.last_status: dict[str, Any] | None = None
        self.leftover_seen_after_restart = False
        self.cpu_cap = 8
        self.keep_log: str | None = None
        self.max_seen = {"leased": 0, "pool_workers": 0, "leased_tasks": 0}

    # -- setup -----------------------------------------------------------------------

    def note(self, msg: str) -> None:
        if self.verbose:
            print(f"[{time.monotonic() - self.t0:7.1f}s] {msg}", file=sys.stderr, flush=True)

    def violation(self, kind: str, detail: str) -> None:
        with self.lock:
            self.violations[kind] += 1
            if len(self.violation_samples) < 50:
                self.violation_samples.append(f"{time.monotonic() - self.t0:.1f}s {kind}: {detail}")
        self.note(f"VIOLATION {kind}: {detail}")

    def make_user(self) -> None:
        name = f"sbsoak{os.getpid() % 100000}"
        try:
            subprocess.run(
                ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
                check=True,
                capture_output=True,
            )
        except (OSError, subprocess.CalledProcessError) as exc:
            self.note(f"useradd failed ({exc}); connection flooder runs as root")
            return
        self.user = name
        self.flood_uid = pwd.getpwnam(name).pw_uid
        shutil.copy(WORKER, self.workdir / "soak_worker.py")
        os.chmod(self.workdir / "soak_worker.py", 0o644)
        probe = subprocess.run(
            ["/usr/bin/python3", "-c", "import json,socket,threading"],
            check=False,
            user=self.flood_uid,
            capture_output=True,
        )
        if probe.returncode == 0:
            self.flood_as = f"{name} (uid {self.flood_uid})"

    def write_config(self, numprocs: int) -> None:
        uids = f"[{self.flood_uid}]" if self.flood_uid is not None else "[]"
        py = sys.executable
        self.cfg.write_text(
            f"""daemon:
  socket: {self.sock}
  socket_mode: "0666"
  allowed_uids: {uids}
  log_format: json
  log_file: {self.log}
  max_connections: 256
  max_connections_per_uid: 32
budget:
  cpu_cap: {self.cpu_cap}
programs:
  batt:
    command: ["{py}", "-m", "supervisord_batt.demo", "--tasks", "30", "--samples", "6"]
    numprocs: {numprocs}
    cwd: {REPO}
    environment: {{PYTHONPATH: "{REPO}", SUPERVISORD_BATT_SOCKET: "{self.sock}"}}
    wall_clock_limit: 20s
    stop_grace: 2s
    restart: always
    backoff: {{initial: 1s, max: 4s, factor: 2}}
    start_limit: {{burst: 1000, interval: 60s}}
    min_runtime: 5s
    progress_timeout: 60s
    slots: 2
  rogue:
    command: ["/usr/bin/python3", "{WORKER}", "rogue", "{self.sock}"]
    numprocs: 1
    wall_clock_limit: 20s
    stop_grace: 2s
    restart: always
    backoff: {{initial: 1s, max: 2s, factor: 2}}
    start_limit: {{burst: 1000, interval: 60s}}
    min_runtime: 1s
    slots: 2
"""
        )

    def start_daemon(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("SUPERVISORD_BATT")}
        env["PYTHONPATH"] = str(REPO)
        self.daemon = subprocess.Popen(
            [sys.executable, "-m", "supervisord_batt", "run", "-c", str(self.cfg)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=open(self.workdir / f"d.stderr.{self.incarnation}", "wb"),  # noqa: SIM115
            start_new_session=True,
        )
        self.incarnation += 1
        self.daemon_expected_exit = False
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.daemon.poll() is not None:
                raise RuntimeError(f"daemon exited at start: {self.daemon.returncode}")
            try:
                st = self.request({"op": "status"})
                if st.get("ok") and st.get("pid") == self.daemon.pid:
                    self.note(f"daemon {self.daemon.pid} up (incarnation {self.incarnation})")
                    return
            except (OSError, ValueError):
                pass
            time.sleep(0.1)
        raise RuntimeError("daemon did not start")

    # -- a small client --------------------------------------------------------------

    def request(self, msg: dict[str, Any], timeout: float = 10.0) -> dict[str, Any]:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            s.connect(str(self.sock))
            s.sendall(json.dumps(msg).encode() + b"\n")
            buf = b""
            while b"\n" not in buf:
                chunk = s.recv(1 << 20)
                if not chunk:
                    raise ConnectionError("closed")
                buf += chunk
        with self.lock:
            self.served["status/control"] += 1
        reply: dict[str, Any] = json.loads(buf.partition(b"\n")[0])
        return reply

    def full_status(self) -> dict[str, Any]:
        """The summary with every lease and instance, page after page."""
        ask = {"op": "status", "leases": True, "instances": True}
        st = self.request(ask)
        rows = {"leases": st.get("leases", []), "instances": st.get("instances", [])}
        while st.get("ok") and st["page"]["next_offset"] is not None:
            st = self.request({**ask, "offset": st["page"]["next_offset"]})
            for name in rows:
                rows[name] += st.get(name, [])
        return {**st, **rows}

    # -- the log ---------------------------------------------------------------------

    def read_log(self) -> None:
        try:
            size = self.log.stat().st_size
        except OSError:
            return
        if size < self.log_offset:
            self.log_offset = 0
        with open(self.log, "rb") as f:
            f.seek(self.log_offset)
            data = f.read()
        end = data.rfind(b"\n") + 1
        self.log_offset += end
        for line in data[:end].splitlines():
            try:
                ev = json.loads(line)
            except ValueError:
                self.events["<not json>"] += 1
                continue
            name = ev.get("event", "?")
            self.events[name] += 1
            if name == "supervisor_started" and ev.get("cgroup_root"):
                self.cgroup_roots.append(ev["cgroup_root"])
            if name == "leftover_stopped" and self.incarnation >= 2:
                self.leftover_seen_after_restart = True
                self.note(f"leftover_stopped: {ev.get('instance')} pids {ev.get('pids')}")
            if name in ("loop_error", "handler_failed", "reload_rejected") or ev.get("level") in (
                "error",
                "critical",
            ):
                self.note(f"log: {line[:400].decode(errors='replace')}")

    # -- chaos -----------------------------------------------------------------------

    def spawn_lease_client(self) -> None:
        want = random.randint(0, 6)
        hold = random.choice((0.05, 0.2, 0.5, 1.0, 3.0))
        end = random.choice(("release", "disconnect"))
        p = subprocess.Popen(
            ["/usr/bin/python3", str(WORKER), "lease", str(self.sock), str(want), str(hold), end],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env={"PATH": "/usr/bin:/bin"},
        )
        with self.lock:
            self.lease_clients[p.pid] = p
            self.children.append(p)

    def reap_lease_clients(self) -> None:
        now = time.monotonic()
        with self.lock:
            items = list(self.lease_clients.items())
        for pid, p in items:
            if p.poll() is None:
                continue
            out = p.stdout.read() if p.stdout else b""
            served = 0
            for line in out.splitlines():
                with contextlib.suppress(ValueError):
                    served = max(served, json.loads(line).get("served", 0))
            with self.lock:
                self.served["lease clients (processes)"] += served
                del self.lease_clients[pid]
                self.ended_pids[pid] = (self.incarnation, now + 2.0)
                with contextlib.suppress(ValueError):
                    self.children.remove(p)

    def lease_thread(self) -> None:
        while not self.stop.is_set():
            inc = self.incarnation
            try:
                with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                    s.settimeout(5)
                    s.connect(str(self.sock))
                    f = s.makefile("rb")
                    for _ in range(random.randint(1, 20)):
                        s.sendall(
                            json.dumps(
                                {"op": "acquire", "want": random.randint(0, 8), "job": "soak-t"}
                            ).encode()
                            + b"\n"
                        )
                        r = json.loads(f.readline())
                        with self.lock:
                            self.served["lease clients (threads)"] += 1
                        lease = r.get("lease")
                        time.sleep(random.uniform(0, 0.1))
                        if lease and random.random() < 0.8:
                            release = {"op": "release", "lease": lease}
                            s.sendall(json.dumps(release).encode() + b"\n")
                            f.readline()
                            with self.lock:
                                self.served["lease clients (threads)"] += 1
                                self.ended_leases[(inc, lease)] = time.monotonic() + 2.0
                        elif lease:
                            break  # just disconnect, holding it
                    leases_held = lease
                f.close()
                if leases_held:
                    with self.lock:
                        self.ended_leases[(inc, leases_held)] = time.monotonic() + 2.0
            except (OSError, ValueError):
                time.sleep(0.2)
            time.sleep(random.uniform(0, 0.05))

    def malformed_thread(self) -> None:
        payloads: list[Callable[[], bytes]] = [
            lambda: os.urandom(random.randint(1, 200)).replace(b"\n", b"x") + b"\n",
            lambda: b'{"op": "acquire", "want": \n',
            lambda: b"[1,2,3]\n",
            lambda: b'{"op": "nope"}\n',
            lambda: b'{"op": "acquire", "want": true}\n',
            lambda: b'{"op": "release", "lease": "L999999"}\n',
            lambda: b"x" * (70 * 1024) + b"\n",
            lambda: b"\xff\xfe\n",
        ]
        while not self.stop.is_set():
            try:
                with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                    s.settimeout(5)
                    s.connect(str(self.sock))
                    f = s.makefile("rb")
                    for _ in range(random.randint(5, 40)):
                        if self.stop.is_set():
                            break
                        s.sendall(random.choice(payloads)())
                        line = f.readline()
                        if not line:
                            break
                        with self.lock:
                            self.served["malformed (error replies)"] += 1
                            self.faults["malformed message"] += 1
                        time.sleep(0.02)  # at most ~50 a second
                    f.close()
            except (OSError, ValueError):
                time.sleep(0.2)

    def start_connflood(self) -> subprocess.Popen[bytes]:
        script = self.workdir / "soak_worker.py" if self.flood_uid is not None else WORKER
        p = subprocess.Popen(
            ["/usr/bin/python3", str(script), "connflood", str(self.sock), "40", "1.0"],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            user=self.flood_uid if "uid" in self.flood_as else None,
            env={"PATH": "/usr/bin:/bin"},
        )
        self.children.append(p)

        self.connflood_last: dict[str, int] = {}

        def pump() -> None:
            last: dict[str, int] = {}
            assert p.stdout is not None
            for line in p.stdout:
                with contextlib.suppress(ValueError):
                    last = json.loads(line)
            self.connflood_last = last

        threading.Thread(target=pump, daemon=True).start()
        return p

    def kill_random_worker(self) -> None:
        st = self.last_status
        if not st:
            return
        pids = [
            i["pid"]
            for i in st.get("instances", [])
            if i.get("pid") and i.get("state") == "RUNNING"
        ]
        if not pids:
            return
        pid = random.choice(pids)
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
            with self.lock:
                self.faults["SIGKILL supervised worker"] += 1

    def kill_random_client(self) -> None:
        with self.lock:
            live = [p for p in self.lease_clients.values() if p.poll() is None]
        if live:
            p = random.choice(live)
            with contextlib.suppress(OSError):
                p.send_signal(signal.SIGKILL)
                with self.lock:
                    self.faults["SIGKILL leasing client"] += 1

    def do_reload(self) -> None:
        self.config_b = not self.config_b
        self.write_config(2 if self.config_b else 3)
        assert self.daemon is not None
        pid = self.daemon.pid
        result: dict[str, Any] = {}

        def call() -> None:
            try:
                result.update(self.request({"op": "reload"}, timeout=60))
            except (OSError, ValueError) as exc:
                result["exc"] = repr(exc)

        t = threading.Thread(target=call)
        t.start()
        self.faults["reload"] += 1
        for _ in range(2):
            time.sleep(0.02)
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGHUP)
                self.faults["SIGHUP during reload"] += 1
        t.join(65)
        self.note(f"reload -> {json.dumps(result)[:300]}")

    def kill_daemon_and_restart(self) -> None:
        assert self.daemon is not None
        self.daemon_expected_exit = True
        self.note(f"SIGKILL daemon {self.daemon.pid}")
        self.daemon.send_signal(signal.SIGKILL)
        self.daemon.wait()
        self.faults["SIGKILL daemon (restarted)"] += 1
        with self.lock:
            self.ended_leases.clear()
            self.ended_pids.clear()
        self.stray_suspects.clear()
        time.sleep(1.0)
        self.start_daemon()

    # -- invariants ------------------------------------------------------------------

    def cgroup_pids(self) -> set[int]:
        pids: set[int] = set()
        for root in set(self.cgroup_roots):
            for dirpath, _dirs, files in os.walk(root):
                for name in ("cgroup.procs",):
                    if name in files:
                        with contextlib.suppress(OSError, ValueError):
                            pids.update(int(x) for x in Path(dirpath, name).read_text().split())
        return pids

    @staticmethod
    def instance_procs() -> dict[int, str]:
        out: dict[int, str] = {}
        for d in os.listdir("/proc"):
            if not d.isdigit():
                continue
            try:
                env = Path(f"/proc/{d}/environ").read_bytes()
            except OSError:
                continue
            for var in env.split(b"\0"):
                if var.startswith(INSTANCE_ENV):
                    out[int(d)] = var[len(INSTANCE_ENV) :].decode(errors="replace")
                    break
        return out

    def check(self) -> None:
        assert self.daemon is not None
        if self.daemon.poll() is not None:
            if not self.daemon_expected_exit:
                self.violation("daemon_exited", f"returncode {self.daemon.returncode}")
                self.unexpected_daemon_exits += 1
                raise RuntimeError("daemon exited")
            return
        t_req = time.monotonic()
        inc = self.incarnation
        try:
            st = self.full_status()
        except (OSError, ValueError, KeyError) as exc:
            self.note(f"status failed: {exc!r}")
            return
        self.last_status = st
        # 1. capacity. status `capacity` is what a *newcomer* could get now (0 when the
        # budget is full or the level is not normal), so `leased` above it is normal; the
        # totals the ledger must never exceed are the CPUs it hands out (every pool lease
        # counts its workers; sequential ones take no new task) and, in tasks, every
        # limit less its reserve.
        leases = st.get("leases", [])
        pool_workers = sum(x["workers"] for x in leases if x["kind"] != "sequential")
        # budget.cpu_cap, when set, is the CPUs the budget hands out (it replaces the
        # usable CPUs, see config/supervisord-batt.yaml)
        cpus = self.cpu_cap
        self.max_seen["leased"] = max(self.max_seen["leased"], st.get("leased", 0))
        self.max_seen["pool_workers"] = max(self.max_seen["pool_workers"], pool_workers)
        self.max_seen["leased_tasks"] = max(
            self.max_seen["leased_tasks"], st.get("leased_tasks", 0)
        )
        if cpus and pool_workers > cpus:
            self.violation(
                "over_capacity",
                f"pool workers leased {pool_workers} > {cpus} CPUs (leased {st.get('leased')},"
                f" leased_tasks {st.get('leased_tasks')}, capacity {st.get('capacity')},"
                f" level {st.get('level')}, leases {leases})",
            )
        for lim in (st.get("host") or {}).get("limits", []):
            reserve = min(max(64, lim["limit"] * 5 // 100), lim["limit"] // 2)
            if st.get("leased_tasks", 0) > lim["limit"] - reserve:
                self.violation(
                    "over_capacity",
                    f"leased_tasks {st.get('leased_tasks')} > {lim['name']} {lim['limit']}"
                    f" less reserve {reserve}",
                )
        # 2. finished leases released
        held_ids = {x["lease"] for x in st.get("leases", [])}
        held_pids = {x["pid"] for x in st.get("leases", [])}
        with self.lock:
            for key, due in list(self.ended_leases.items()):
                if due > t_req:
                    continue
                del self.ended_leases[key]
                if key[0] == inc and key[1] in held_ids:
                    self.violations["lease_leaked"] += 1
                    self.violation_samples.append(f"lease_leaked: thread lease {key[1]}")
            for pid, (pinc, due) in list(self.ended_pids.items()):
                if due > t_req:
                    continue
                del self.ended_pids[pid]
                if pinc == inc and pid in held_pids:
                    self.violations["lease_leaked"] += 1
                    self.violation_samples.append(f"lease_leaked: client pid {pid}")
        # 3. no stray worker process
        listed = {i["name"] for i in st.get("instances", [])}
        inside = self.cgroup_pids()
        now = time.monotonic()
        procs = self.instance_procs()
        bad = {}
        for pid, inst in procs.items():
            why = None
            if pid not in inside:
                why = "outside the worker cgroups"
            elif inst not in listed:
                why = f"instance {inst} not in status"
            if why:
                bad[pid] = why
        for pid, why in bad.items():
            first = self.stray_suspects.setdefault(pid, now)
            if now - first >= 3.0:
                self.violation("stray_process", f"pid {pid} ({procs[pid]}): {why}")
                self.stray_suspects[pid] = float("inf")
        for pid in list(self.stray_suspects):
            if pid not in bad:
                del self.stray_suspects[pid]
        # 4. daemon RSS and fds
        try:
            rss = int(
                re.search(
                    r"VmRSS:\s+(\d+)", Path(f"/proc/{self.daemon.pid}/status").read_text()
                ).group(1)  # type: ignore[union-attr]
            )
            fds = len(os.listdir(f"/proc/{self.daemon.pid}/fd"))
        except (OSError, AttributeError):
            return
        conns = int(st.get("connections", 0))
        self.mem.append((now - self.t0, inc, rss, fds, fds - conns))
        inc_start = min(t for t, i, *_ in self.mem if i == inc)
        if now - self.t0 - inc_start >= 0.2 * self.duration:
            marks = self.mem_marks.setdefault(
                inc, {"start_rss_kib": rss, "start_fds": fds, "start_fds_net": fds - conns}
            )
            marks.update(end_rss_kib=rss, end_fds=fds, end_fds_net=fds - conns)
            view = [m for m in self.mem if m[1] == inc and m[0] - inc_start >= 0.2 * self.duration][
                -WINDOW:
            ]
            rss_span = max(m[2] for m in view) - min(m[2] for m in view)
            fd_span = max(m[4] for m in view) - min(m[4] for m in view)
            if rss_span > RSS_BOUND_KIB and not marks.get("rss_flag"):
                marks["rss_flag"] = True
                self.violation("rss_growth", f"RSS span {rss_span} KiB in the window")
            if fd_span > FD_BOUND and not marks.get("fd_flag"):
                marks["fd_flag"] = True
                self.violation("fd_growth", f"fd span {fd_span} in the window")

    # -- run -------------------------------------------------------------------------

    def run(self) -> None:
        self.make_user()
        self.write_config(3)
        self.start_daemon()
        time.sleep(0.5)
        self.read_log()
        threads = [threading.Thread(target=self.lease_thread, daemon=True) for _ in range(4)]
        threads.append(threading.Thread(target=self.malformed_thread, daemon=True))
        for t in threads:
            t.start()
        self.start_connflood()
        end = self.t0 + self.duration
        next_reload = self.t0 + 60.0 if self.duration >= 90 else self.t0 + self.duration / 3
        next_reload2 = None if self.duration >= 90 else self.t0 + 2 * self.duration / 3
        kill_daemon_at = self.t0 + self.duration / 2
        killed_daemon = False
        next_tick = time.monotonic()
        while time.monotonic() < end:
            now = time.monotonic()
            self.reap_lease_clients()
            if len(self.lease_clients) < 12 and random.random() < 0.5:
                self.spawn_lease_client()
            if random.random() < 0.03:
                self.kill_random_worker()
            if random.random() < 0.05:
                self.kill_random_client()
            if now >= next_reload:
                self.do_reload()
                if next_reload2 is not None:
                    next_reload, next_reload2 = next_reload2, None
                else:
                    next_reload += 60.0
            if not killed_daemon and now >= kill_daemon_at:
                killed_daemon = True
                self.kill_daemon_and_restart()
            if now >= next_tick:
                next_tick += 1.0
                self.read_log()
                self.check()
            time.sleep(0.05)
        self.stop.set()
        for t in threads:
            t.join(10)
        # let the last exits be checked
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            self.reap_lease_clients()
            time.sleep(0.5)
        self.check()
        self.read_log()

    def cleanup(self) -> None:
        self.stop.set()
        for p in list(self.children):
            if p.poll() is None:
                with contextlib.suppress(OSError):
                    p.kill()
            with contextlib.suppress(Exception):
                p.wait(5)
        if self.daemon is not None and self.daemon.poll() is None:
            self.daemon_expected_exit = True
            self.daemon.send_signal(signal.SIGTERM)
            try:
                self.daemon.wait(60)
            except subprocess.TimeoutExpired:
                self.daemon.kill()
                self.daemon.wait()
        self.read_log()
        if self.keep_log:
            with contextlib.suppress(OSError):
                shutil.copy(self.log, self.keep_log)
        # what the daemon(s) started and left: processes of its worker cgroups only
        for _ in range(3):
            left = self.cgroup_pids()
            if not left:
                break
            for pid in left:
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.5)
        for root in set(self.cgroup_roots):
            for dirpath, _dirs, _files in sorted(os.walk(root), key=lambda x: -len(x[0])):
                with contextlib.suppress(OSError):
                    os.rmdir(dirpath)
        if self.user:
            subprocess.run(["userdel", self.user], capture_output=True, check=False)
        shutil.rmtree(self.workdir, ignore_errors=True)

    def report(self) -> dict[str, Any]:
        marks = {
            str(k): {kk: vv for kk, vv in v.items() if not kk.endswith("flag")}
            for k, v in self.mem_marks.items()
        }
        if self.connflood_last if hasattr(self, "connflood_last") else False:
            self.served["connection flooder"] += self.connflood_last.get("served", 0)
        served_total = sum(self.served.values())
        return {
            "duration_s": self.duration,
            "operations_served": {"total": served_total, **dict(self.served)},
            "faults_injected": dict(self.faults),
            "connection_flooder": {"as": self.flood_as, **getattr(self, "connflood_last", {})},
            "violations": {
                k: self.violations.get(k, 0)
                for k in (
                    "over_capacity",
                    "lease_leaked",
                    "stray_process",
                    "rss_growth",
                    "fd_growth",
                    "daemon_exited",
                )
            },
            "violation_samples": self.violation_samples,
            "daemon_memory": {
                "by_incarnation": marks,
                "bounds": {"rss_kib": RSS_BOUND_KIB, "fds_minus_connections": FD_BOUND},
            },
            "leftover_stopped_after_restart": self.leftover_seen_after_restart,
            "max_seen_in_status": self.max_seen,
            "log_events": {k: self.events.get(k, 0) for k in NOTABLE},
            "log_lines_total": sum(self.events.values()),
            "unexpected_daemon_exits": self.unexpected_daemon_exits,
        }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--duration", type=parse_duration, default=600.0)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("-v", "--verbose", action="store_true", help="progress on stderr")
    ap.add_argument("--keep-log", metavar="FILE", help="copy the daemon's log here at the end")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("soak.py runs as root (the daemon supervises with cgroups)", file=sys.stderr)
        return 2
    random.seed(args.seed)
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    soak = Soak(args.duration, args.verbose)
    soak.keep_log = args.keep_log
    error = None
    try:
        soak.run()
    except KeyboardInterrupt:
        error = "interrupted"
    except Exception as exc:
        error = f"{type(exc).__name__}: {exc}"
    finally:
        soak.cleanup()
    rep = soak.report()
    if error:
        rep["error"] = error
    if not rep["leftover_stopped_after_restart"] and "SIGKILL daemon (restarted)" in soak.faults:
        rep["violations"]["no_leftover_stopped"] = 1
    bad = sum(rep["violations"].values()) + rep["unexpected_daemon_exits"] + (1 if error else 0)
    if args.json:
        print(json.dumps(rep, indent=2))
    else:
        ops = rep["operations_served"]
        print(f"soak: {args.duration:.0f} s" + (f"  ERROR: {error}" if error else ""))
        print(f"operations served: {ops['total']}")
        for k, v in ops.items():
            if k != "total":
                print(f"  {k}: {v}")
        print("faults injected:")
        for k, v in sorted(rep["faults_injected"].items()):
            print(f"  {k}: {v}")
        print(
            f"connection flooder as {rep['connection_flooder']['as']}: "
            + json.dumps({k: v for k, v in rep["connection_flooder"].items() if k != "as"})
        )
        print("invariant violations:")
        for k, v in rep["violations"].items():
            print(f"  {k}: {v}")
        for s in rep["violation_samples"]:
            print(f"    {s}")
        print("daemon RSS / fds (after warm-up, per daemon incarnation):")
        for inc, m in rep["daemon_memory"]["by_incarnation"].items():
            print(
                f"  daemon #{inc}: RSS {m['start_rss_kib']} -> {m['end_rss_kib']} KiB, "
                f"fds {m['start_fds']} -> {m['end_fds']} "
                f"(minus connections {m['start_fds_net']} -> {m['end_fds_net']})"
            )
        print(f"leftover_stopped after the daemon restart: {rep['leftover_stopped_after_restart']}")
        print("max seen in status: " + json.dumps(rep["max_seen_in_status"]))
        print("log lines per event:")
        for k, v in rep["log_events"].items():
            print(f"  {k}: {v}")
        print(f"  (all lines: {rep['log_lines_total']})")
    return 0 if bad == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
