"""Cost of the host monitor: raw reads, each HostMonitor source, sample() and scan().

    python benchmarks/bench_host.py [--procs 1000] [--seconds 1.0] [--json]

Starts `--procs` extra idle processes (`sleep`, killed by pid at the end, whatever
happens), creates a temporary pids cgroup and the same cgroup in the memory hierarchy
limited to 1 GiB (both removed at the end) that the monitor watches, then times each call
individually (median and p99 over many iterations). Reports the fast path against the sum
of the bare preads it is made of (target: within 3x) and the daemon's monitor CPU share at
a 1 s tick plus a 10 s scan (target: below 0.2% of one core).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from supervisord_batt.host import memcg, procfs
from supervisord_batt.host.monitor import HostMonitor, read_pid_status

TICK_S, SCAN_S = 1.0, 10.0


def timeit(fn: Callable[[], object], seconds: float, min_iter: int = 20) -> dict[str, float]:
    """Per-call wall time in microseconds: median, p99, mean, over `seconds` of calls."""
    times: list[int] = []
    clock = time.perf_counter_ns
    deadline = time.monotonic() + seconds
    while len(times) < min_iter or time.monotonic() < deadline:
        t0 = clock()
        fn()
        times.append(clock() - t0)
    times.sort()
    us = [t / 1000 for t in times]
    return {
        "median_us": statistics.median(us),
        "p99_us": us[min(len(us) - 1, int(len(us) * 0.99))],
        "mean_us": statistics.fmean(us),
        "n": len(us),
    }


@contextlib.contextmanager
def idle_processes(n: int) -> Iterator[list[int]]:
    """`n` idle `sleep` processes; every one is killed by pid and reaped at the end."""
    sleep = shutil.which("sleep")
    assert sleep is not None
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for _ in range(n):
            procs.append(subprocess.Popen([sleep, "600"], stdin=subprocess.DEVNULL))
        yield [p.pid for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(p.pid, 9)
        for p in procs:
            p.wait()


@contextlib.contextmanager
def temp_pids_cgroup() -> Iterator[str | None]:
    """A fresh, empty child of the pids hierarchy, removed at the end; None if not possible."""
    with open("/proc/self/mountinfo") as f:
        mounts = procfs.parse_mountinfo(f.read())
    mount = procfs.find_v1_mount(mounts, "pids")
    if mount is None:
        v2 = procfs.find_v2_mount(mounts)
        ctrl = (
            procfs.read_text(os.path.join(v2.mount_point, "cgroup.subtree_control")) if v2 else None
        )
        mount = v2 if ctrl and "pids" in ctrl.split() else None
    if mount is None:
        yield None
        return
    path = os.path.join(mount.mount_point, f"sbbench-{uuid.uuid4().hex[:8]}")
    try:
        os.mkdir(path)
    except OSError:
        yield None
        return
    try:
        Path(path, "pids.max").write_text("1000\n")
        yield path
    finally:
        os.rmdir(path)


@contextlib.contextmanager
def memory_limit_on(cgroup_dir: str | None) -> Iterator[str | None]:
    """The same cgroup in the memory hierarchy, limited to 1 GiB (the monitor then reads
    memory.stat too), removed at the end if made here; None if not possible."""
    if cgroup_dir is None:
        yield None
        return
    with open("/proc/self/mountinfo") as f:
        mounts = procfs.parse_mountinfo(f.read())
    v1 = procfs.find_v1_mount(mounts, "memory")
    made: str | None = None
    path: str | None
    if v1 is not None:
        path = os.path.join(v1.mount_point, os.path.basename(cgroup_dir))
        limit_file = "memory.limit_in_bytes"
        with contextlib.suppress(OSError):
            os.mkdir(path)
            made = path
    else:  # v2: the same directory, where the memory controller is enabled
        path, limit_file = cgroup_dir, "memory.max"
    try:
        Path(path or "", limit_file).write_text(f"{1 << 30}\n")
    except OSError:
        path = None
    try:
        yield path
    finally:
        if made is not None:
            os.rmdir(made)


def bare_scan(proc: str = "/proc") -> int:
    """The floor of a /proc pass: scandir plus open/read/close of every status file."""
    n = 0
    for entry in os.scandir(proc):
        if entry.name.isdigit():
            try:
                with open(f"{proc}/{entry.name}/status", "rb") as f:
                    n += len(f.read())
            except OSError:
                pass
    return n


def dirfd_scan() -> int:
    """What scan() does per process: open relative to a /proc fd, read, parse."""
    fd = os.open("/proc", os.O_RDONLY | os.O_DIRECTORY)
    n = 0
    try:
        for entry in os.scandir("/proc"):
            if entry.name.isdigit() and read_pid_status(fd, entry.name) is not None:
                n += 1
    finally:
        os.close(fd)
    return n


def stat_prefilter_scan() -> int:
    """Not exact (st_uid of /proc/<pid> is the euid, root when not dumpable): for scale only."""
    n = 0
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                n += entry.stat().st_uid == 0
    return n


def psutil_scan() -> int:
    return sum(
        p.info["num_threads"] or 0
        for p in psutil.process_iter(["uids", "num_threads"])
        if p.info["uids"] is not None
    )


def _memory_files(path: str | None) -> tuple[str, ...]:
    """The files the monitor reads each tick of a limited memory cgroup."""
    if path is None:
        return ()
    if os.path.exists(os.path.join(path, "memory.limit_in_bytes")):
        return (
            "memory.limit_in_bytes",
            "memory.usage_in_bytes",
            "memory.stat",
            "memory.oom_control",
        )
    return ("memory.max", "memory.high", "memory.current", "memory.stat", "memory.events")


PARSERS: dict[str, Callable[[bytes | None], object]] = {
    "loadavg": procfs.parse_loadavg_threads,
    "threads-max": procfs.parse_int,
    "pid_max": procfs.parse_int,
    "meminfo": procfs.parse_meminfo,
    "psi cpu": procfs.parse_psi_some_avg10,
    "psi memory": procfs.parse_psi_some_avg10,
    "pids.current": procfs.parse_int,
    "pids.max": procfs.parse_pids_max,
    "pids.events": procfs.parse_pids_events_max,
}


@contextlib.contextmanager
def kept_sources(
    paths: dict[str, str], mem_cg: str | None
) -> Iterator[dict[str, Callable[[], object]]]:
    """What each of the monitor's reads costs: a kept-open procfs.PreadFile and the parser
    sample() uses, per file, and a memory cgroup's files as memcg.MemNode reads them."""
    kept: list[procfs.PreadFile | memcg.MemNode] = []
    out: dict[str, Callable[[], object]] = {}
    try:
        for key, path in paths.items():
            if key in PARSERS and os.path.exists(path):
                pread = procfs.PreadFile(path, 512)
                kept.append(pread)
                out[f"src {key}"] = functools.partial(_parse, pread, PARSERS[key])
        if mem_cg is not None:
            v1 = os.path.exists(os.path.join(mem_cg, "memory.limit_in_bytes"))
            kept.append(memcg.MemNode(mem_cg, mem_cg, 1 if v1 else 2))
            out[f"src memory {os.path.basename(mem_cg)[-20:]}"] = kept[-1].read
        yield out
    finally:
        for source in kept:
            source.close()


def _parse(kept: procfs.PreadFile, parse: Callable[[bytes | None], object]) -> object:
    return parse(kept.read())


def run(procs: int, seconds: float) -> dict[str, Any]:
    rows: dict[str, dict[str, float]] = {}
    with (
        idle_processes(procs) as pids,
        temp_pids_cgroup() as cg,
        memory_limit_on(cg) as mem_cg,
    ):
        users: list[int | str] = [0, "nobody"]
        cgroups = [cg] if cg else []
        with HostMonitor(cgroups=cgroups, users=users) as mon:
            # the raw floor: bare preads on fds of our own
            raw_fds = {
                "loadavg": "/proc/loadavg",
                "threads-max": "/proc/sys/kernel/threads-max",
                "pid_max": "/proc/sys/kernel/pid_max",
                "meminfo": "/proc/meminfo",
                "psi cpu": "/proc/pressure/cpu",
                "psi memory": "/proc/pressure/memory",
            }
            if cg:
                for name in ("pids.current", "pids.max", "pids.events"):
                    raw_fds[name] = os.path.join(cg, name)
            for name in _memory_files(mem_cg):
                raw_fds[name] = os.path.join(mem_cg or "", name)
            raw_sizes = {"meminfo": 512, "memory.stat": 8192, "memory.events": 512}
            fds = {k: os.open(p, os.O_RDONLY) for k, p in raw_fds.items() if os.path.exists(p)}
            try:
                for key, fd in fds.items():
                    size = raw_sizes.get(key, 256)
                    rows[f"raw pread {key}"] = timeit(
                        functools.partial(os.pread, fd, size, 0), seconds / 4
                    )
            finally:
                for fd in fds.values():
                    os.close(fd)
            rows["raw /proc scan (scandir+open/read status)"] = timeit(bare_scan, seconds)

            # each source as sample() reads it: a kept-open file and its parser, on the
            # files the raw preads read (of the watched cgroups, the one made here)
            with kept_sources(raw_fds, mem_cg) as sources:
                for key, fn in sources.items():
                    rows[key] = timeit(fn, seconds / 4)
            rows["sample() (whole tick)"] = timeit(mon.sample, seconds)
            rows["scan() (users root, nobody)"] = timeit(mon.scan, seconds)
            rows["alt scan: dir_fd open + parse"] = timeit(dirfd_scan, seconds / 2)
            rows["alt scan: stat st_uid only (inexact)"] = timeit(stat_prefilter_scan, seconds / 2)
            rows["alt scan: psutil process_iter"] = timeit(psutil_scan, seconds / 2)
            roots = [os.getpid(), *pids[:7]]
            rows["tree_tasks(1 root)"] = timeit(lambda: mon.tree_tasks(roots[:1]), seconds / 2)
            rows["tree_tasks(8 roots)"] = timeit(lambda: mon.tree_tasks(roots), seconds / 2)
            me = psutil.Process()
            rows["alt tree: psutil children(recursive), 1 root"] = timeit(
                lambda: me.children(recursive=True), seconds / 2
            )
            n_processes = sum(1 for e in os.scandir("/proc") if e.name.isdigit())
            sample = mon.sample()

    raw_sum = sum(v["median_us"] for k, v in rows.items() if k.startswith("raw pread"))
    tick = rows["sample() (whole tick)"]["median_us"]
    scan = rows["scan() (users root, nobody)"]["median_us"]
    share = (tick * (1 / TICK_S) + scan * (1 / SCAN_S)) / 1e6 * 100
    return {
        "extra_processes": len(pids),
        "processes_on_host": n_processes,
        "threads_total": sample.threads_total,
        "watched_cgroup": cg,
        "watched_memory_cgroup": mem_cg,
        "rows": rows,
        "summary": {
            "fast_path_us": tick,
            "raw_reads_sum_us": raw_sum,
            "fast_path_over_raw": tick / raw_sum if raw_sum else None,
            "scan_us": scan,
            "scan_per_process_us": scan / n_processes,
            "cpu_share_percent": share,
            "targets": {"fast_path_over_raw": 3.0, "cpu_share_percent": 0.2},
        },
    }


def print_table(result: dict[str, Any]) -> None:
    print(
        f"{result['extra_processes']} extra idle processes; {result['processes_on_host']} "
        f"processes, {result['threads_total']} tasks on the host"
    )
    print(f"{'measure (per call)':<44} {'median us':>10} {'p99 us':>10} {'n':>8}")
    for key, row in result["rows"].items():
        print(f"{key:<44} {row['median_us']:>10.1f} {row['p99_us']:>10.1f} {row['n']:>8}")
    s = result["summary"]
    ok_ratio = "ok" if s["fast_path_over_raw"] and s["fast_path_over_raw"] <= 3 else "OVER TARGET"
    ok_share = "ok" if s["cpu_share_percent"] < 0.2 else "OVER TARGET"
    print()
    print(
        f"fast path: sample() {s['fast_path_us']:.1f} us vs its bare preads summed "
        f"{s['raw_reads_sum_us']:.1f} us = {s['fast_path_over_raw']:.2f}x "
        f"(target <= 3x: {ok_ratio})"
    )
    print(f"scan(): {s['scan_us'] / 1000:.2f} ms = {s['scan_per_process_us']:.1f} us per process")
    print(
        f"monitor CPU at a {TICK_S:g} s tick + {SCAN_S:g} s scan: {s['cpu_share_percent']:.3f}% "
        f"of one core (target < 0.2%: {ok_share})"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--procs", type=int, default=1000, help="extra idle processes")
    parser.add_argument("--seconds", type=float, default=1.0, help="time per measurement")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args()
    result = run(args.procs, args.seconds)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print_table(result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
