"""HostMonitor and the procfs parsers over fake /proc and /sys trees built in tmp_path."""

from __future__ import annotations

import errno
import os
import pwd
import resource
import shutil
import threading
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from supervisord_batt.host import procfs
from supervisord_batt.host.monitor import HostMonitor
from supervisord_batt.host.probe import render_table, sample_to_json
from supervisord_batt.host.sample import CgroupUsage, HostSample, Limit, Psi
from tests.unit.host.fakehost import LAYOUTS, LIMITS, MEMINFO, PSI, STATUS, FakeHost, write


@pytest.fixture
def host(tmp_path: Path) -> FakeHost:
    return FakeHost(tmp_path).build()


# ---------------------------------------------------------------- pure parsers


@pytest.mark.parametrize(
    ("data", "expected"),
    [(b"40\n", 40), (b"max\n", None), (None, None), (b"garbage\n", None), (b"0\n", 0)],
)
def test_parse_pids_max(data: bytes | None, expected: int | None) -> None:
    assert procfs.parse_pids_max(data) == expected


@pytest.mark.parametrize(
    ("data", "expected"),
    [(b"max 7\n", 7), (b"max 0\n", 0), (b"max 2\nmax.imposed 5\n", 2), (b"", None), (None, None)],
)
def test_parse_pids_events(data: bytes | None, expected: int | None) -> None:
    assert procfs.parse_pids_events_max(data) == expected


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"0.00 0.01 0.05 2/345 6789\n", 345),
        (b"1 2 3 10/12345 1\n", 12345),
        (b"1 2\n", None),
        (None, None),
    ],
)
def test_parse_loadavg(data: bytes | None, expected: int | None) -> None:
    assert procfs.parse_loadavg_threads(data) == expected


def test_parse_meminfo() -> None:
    assert procfs.parse_meminfo(MEMINFO.encode()) == (16000000 * 1024, 8000000 * 1024)
    assert procfs.parse_meminfo(b"MemTotal: 10 kB\n") == (10240, None)
    assert procfs.parse_meminfo(None) == (None, None)


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (PSI.encode(), 1.25),
        (b"some avg10=0.00 avg60=0.00\n", 0.0),
        (b"full avg10=3.00\n", None),
        (None, None),
    ],
)
def test_parse_psi(data: bytes | None, expected: float | None) -> None:
    assert procfs.parse_psi_some_avg10(data) == expected


@pytest.mark.parametrize(("ruid", "euid", "threads"), [(1000, 1000, 1), (1000, 0, 7), (0, 1000, 3)])
def test_parse_status_takes_real_uid(ruid: int, euid: int, threads: int) -> None:
    text = STATUS.format(name="x", pid=5, ruid=ruid, euid=euid, threads=threads, cpus="0")
    assert procfs.parse_status_ppid(text.encode()) == (ruid, threads, 1)
    assert procfs.parse_status_ppid(b"Name:\tx\n") is None


@pytest.mark.parametrize(
    ("comm", "expected"), [("python", (7, 3)), ("a b) c (d)", (7, 3)), ("", (7, 3))]
)
def test_parse_stat(comm: str, expected: tuple[int, int]) -> None:
    rest = " ".join(["S", "7"] + ["0"] * 15 + ["3", "0", "123"])
    assert procfs.parse_stat(f"42 ({comm}) {rest}\n".encode()) == expected
    assert procfs.parse_stat(b"42 (x) S\n") is None


@pytest.mark.parametrize(("soft", "expected"), [("unlimited", None), ("63", 63), ("0", 0)])
def test_parse_limits_nproc(soft: str, expected: int | None) -> None:
    assert procfs.parse_limits_nproc(LIMITS.format(soft=soft, hard="unlimited")) == expected


def test_parse_limits_without_nproc_line() -> None:
    with pytest.raises(ValueError, match="Max processes"):
        procfs.parse_limits_nproc("Limit Soft Hard Units\n")


@pytest.mark.parametrize(("text", "n"), [("0", 1), ("0-3", 4), ("0-1,4,6-7\n", 5), ("", 0)])
def test_parse_cpu_list(text: str, n: int) -> None:
    assert procfs.parse_cpu_list(text) == n


@given(st.lists(st.integers(0, 4096), min_size=1, max_size=20, unique=True))
def test_parse_cpu_list_roundtrip(cpus: list[int]) -> None:
    assert procfs.parse_cpu_list(",".join(map(str, sorted(cpus)))) == len(cpus)


@pytest.mark.parametrize(
    ("quota", "period", "expected"),
    [("150000\n", "100000\n", 1.5), ("-1\n", "100000\n", None), (None, None, None)],
)
def test_parse_cpu_quota_v1(quota: str | None, period: str | None, expected: float | None) -> None:
    assert procfs.parse_cpu_quota_v1(quota, period) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [("max 100000\n", None), ("50000 100000\n", 0.5), (None, None), ("bad", None)],
)
def test_parse_cpu_max_v2(text: str | None, expected: float | None) -> None:
    assert procfs.parse_cpu_max_v2(text) == expected


def test_parse_mountinfo_keeps_cgroup_mounts_and_unescapes() -> None:
    text = "\n".join(
        [
            "22 1 0:20 / /sys rw - sysfs sysfs rw",
            "39 31 0:36 /docker/abc /sys/fs/cgroup/pids rw shared:5 - cgroup cgroup rw,pids",
            r"41 31 0:38 / /mnt/my\040cg rw - cgroup2 cgroup2 rw",
            "garbage line",
        ]
    )
    mounts = procfs.parse_mountinfo(text)
    assert [(m.root, m.mount_point, m.fstype) for m in mounts] == [
        ("/docker/abc", "/sys/fs/cgroup/pids", "cgroup"),
        ("/", "/mnt/my cg", "cgroup2"),
    ]
    assert procfs.find_v1_mount(mounts, "pids") == mounts[0]
    assert procfs.find_v1_mount(mounts, "cpu") is None
    assert procfs.find_v2_mount(mounts) == mounts[1]


def test_parse_proc_cgroup() -> None:
    lines = procfs.parse_proc_cgroup(
        "8:pids:/a/b\n1:cpu,cpuacct:/\n1:name=systemd:/x\n0::/user.slice\n"
    )
    assert [(c.hierarchy_id, c.controllers, c.path) for c in lines] == [
        (8, ("pids",), "/a/b"),
        (1, ("cpu", "cpuacct"), "/"),
        (1, ("name=systemd",), "/x"),
        (0, (), "/user.slice"),
    ]


@pytest.mark.parametrize(
    ("mount_root", "cgroup", "expected"),
    [
        ("/", "/", "M"),
        ("/", "/a/b", "M/a/b"),
        ("/docker/abc", "/docker/abc/x", "M/x"),
        ("/docker/abc", "/y", "M/y"),
    ],
)
def test_cgroup_fs_path(mount_root: str, cgroup: str, expected: str) -> None:
    assert procfs.cgroup_fs_path("M", mount_root, cgroup) == expected


def test_cgroup_chain_walks_to_the_mount() -> None:
    assert procfs.cgroup_chain("/m", "/", "/m/a/b") == [
        ("/a/b", "/m/a/b"),
        ("/a", "/m/a"),
        ("/", "/m"),
    ]
    assert procfs.cgroup_chain("/m", "/ns", "/m/a") == [("/ns/a", "/m/a"), ("/ns", "/m")]


def test_pread_file_reopens_after_the_file_goes(tmp_path: Path) -> None:
    p = tmp_path / "pids.current"
    p.write_text("5\n")
    f = procfs.PreadFile(str(p))
    try:
        assert f.read() == b"5\n"
        p.unlink()
        p.mkdir()  # a directory where a file is expected: pread fails with EISDIR
        f.close()
        assert f.read() is None
        p.rmdir()
        p.write_text("6\n")
        assert f.read() == b"6\n"
    finally:
        f.close()


# ---------------------------------------------------------------- HostMonitor on fake trees


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_self_cgroup_limited_by_tighter_parent(tmp_path: Path, layout: str) -> None:
    fake = FakeHost(tmp_path, layout=layout).build()
    with fake.monitor() as mon:
        s = mon.sample()
    assert s.threads_total == 345
    assert (s.threads_max, s.pid_max) == (1000, 4194304)
    assert (s.mem_total_bytes, s.mem_available_bytes) == (16000000 * 1024, 8000000 * 1024)
    assert s.psi == Psi(1.25, 2.5)
    (cg,) = s.cgroups
    assert cg == CgroupUsage(
        path="/batt/job",
        fs_path=str(fake.pids_dir / "batt/job"),
        version=LAYOUTS[layout][4],
        pids_current=3,
        pids_max=50,
        pids_events_max=0,
        effective_max=10,
        headroom=2,
        limited_by="/batt",
    )
    limit = Limit("cgroup:/batt/job", "cgroup", str(fake.pids_dir / "batt"), 10, 8)
    assert limit in s.limits
    assert s.tightest() == limit


def test_own_limit_tighter_than_parent(host: FakeHost) -> None:
    host.set_cgroup("batt/job", current=3, max_=4, events=9)
    with host.monitor() as mon:
        (cg,) = mon.sample().cgroups
    assert (cg.effective_max, cg.headroom, cg.limited_by, cg.pids_events_max) == (
        4,
        1,
        "/batt/job",
        9,
    )


def test_unlimited_chain_gives_no_cgroup_limit(host: FakeHost) -> None:
    host.set_cgroup("batt", current=8, max_="max", events=0)
    host.set_cgroup("batt/job", current=3, max_="max", events=0)
    with host.monitor() as mon:
        s = mon.sample()
    (cg,) = s.cgroups
    assert (cg.pids_max, cg.effective_max, cg.headroom, cg.limited_by) == (None, None, None, None)
    assert [lim.kind for lim in s.limits] == ["threads-max", "pid_max"]
    assert s.tightest().name == "threads-max"


def test_root_cgroup_has_no_limit(host: FakeHost) -> None:
    (host.proc / "self/cgroup").write_text("8:pids:/\n0::/\n")
    with host.monitor() as mon:
        (cg,) = mon.sample().cgroups
    assert (cg.path, cg.pids_current, cg.pids_max, cg.headroom) == ("/", None, None, None)


@pytest.mark.parametrize("form", ["cgroup", "fs", "real-fs"])
def test_configured_cgroup_forms(host: FakeHost, form: str) -> None:
    host.set_cgroup("other", current=1, max_=20, events=0)
    spec = {
        "cgroup": "/other",
        "fs": str(host.pids_dir / "other"),
        "real-fs": "/sys/fs/cgroup/pids/other",  # as mountinfo names it; rebased under sys_root
    }[form]
    with host.monitor(cgroups=[spec], include_self_cgroup=False) as mon:
        (cg,) = mon.sample().cgroups
    assert (cg.path, cg.pids_current, cg.pids_max, cg.headroom) == ("/other", 1, 20, 19)


def test_same_cgroup_watched_once(host: FakeHost) -> None:
    with host.monitor(cgroups=["/batt/job", "/batt"]) as mon:
        assert [c.path for c in mon.sample().cgroups] == ["/batt/job", "/batt"]


@pytest.fixture
def removed_files_fail(monkeypatch: pytest.MonkeyPatch) -> None:
    """A read of a removed file fails, as cgroupfs fails a removed cgroup's (ENODEV):
    tmpfs would still read the old inode through a kept fd."""
    real_pread = os.pread

    def cgroupfs_pread(fd: int, n: int, offset: int) -> bytes:
        if os.fstat(fd).st_nlink == 0:
            raise OSError(errno.ENODEV, "No such device")
        return real_pread(fd, n, offset)

    monkeypatch.setattr(os, "pread", cgroupfs_pread)


@pytest.mark.usefixtures("removed_files_fail")
def test_removed_cgroup_becomes_none_and_comes_back(host: FakeHost) -> None:
    with host.monitor() as mon:
        assert mon.sample().cgroups[0].pids_current == 3
        shutil.rmtree(host.pids_dir / "batt/job")
        (cg,) = mon.sample().cgroups
        assert (cg.pids_current, cg.pids_max, cg.pids_events_max) == (None, None, None)
        assert (cg.limited_by, cg.headroom) == ("/batt", 2)  # the parent still limits
        host.set_cgroup("batt/job", current=1, max_=5, events=0)
        (cg,) = mon.sample().cgroups
        assert (cg.pids_current, cg.pids_max) == (1, 5)


@pytest.mark.parametrize("name", ["pids.current", "pids.max", "pids.events"])
def test_unreadable_file_is_none(host: FakeHost, name: str) -> None:
    target = host.pids_dir / "batt/job" / name
    target.unlink()
    target.mkdir()  # root ignores chmod 000; a directory fails to read for anyone
    with host.monitor() as mon:
        (cg,) = mon.sample().cgroups
    got = {
        "pids.current": cg.pids_current,
        "pids.max": cg.pids_max,
        "pids.events": cg.pids_events_max,
    }
    assert got.pop(name) is None
    assert None not in got.values()


def test_no_psi(tmp_path: Path) -> None:
    fake = FakeHost(tmp_path, psi=False).build()
    with fake.monitor() as mon:
        s = mon.sample()
    assert s.psi is None
    assert sample_to_json(s)["psi"] is None
    assert "psi      not available" in render_table(s)


def test_missing_host_file_fails_at_construction(host: FakeHost) -> None:
    (host.proc / "loadavg").unlink()
    with pytest.raises(OSError, match="loadavg"):
        host.monitor()


@pytest.mark.usefixtures("removed_files_fail")
def test_host_file_read_failure_keeps_last_value(host: FakeHost) -> None:
    with host.monitor() as mon:
        (host.proc / "loadavg").unlink()
        (host.proc / "loadavg").mkdir()
        assert mon.sample().threads_total == 345  # the kept fd's read failed
        assert mon.sample().threads_total == 345  # and the directory's, opened again


def test_configured_cgroup_without_pids_hierarchy(host: FakeHost) -> None:
    (host.proc / "self/mountinfo").write_text("22 1 0:20 / /sys rw - sysfs sysfs rw\n")
    with host.monitor() as mon:
        assert mon.sample().cgroups == ()
    with pytest.raises(ValueError, match="no pids cgroup hierarchy"):
        host.monitor(cgroups=["/batt"])


def test_v2_without_pids_controller_is_not_watched(tmp_path: Path) -> None:
    fake = FakeHost(tmp_path, layout="v2").build()
    (fake.pids_dir / "cgroup.controllers").write_text("cpu memory\n")
    (fake.pids_dir / "batt/job/cgroup.controllers").write_text("\n")
    with fake.monitor() as mon:
        assert mon.sample().cgroups == ()


@pytest.mark.parametrize(
    ("layout", "files", "expected"),
    [
        ("v1", {"batt/cpu.cfs_quota_us": "150000", "batt/cpu.cfs_period_us": "100000"}, 1.5),
        ("v1", {"batt/cpu.cfs_quota_us": "-1", "batt/cpu.cfs_period_us": "100000"}, 4.0),
        ("v1", {"cpu.cfs_quota_us": "800000", "cpu.cfs_period_us": "100000"}, 4.0),
        ("v2", {"batt/job/cpu.max": "50000 100000", "batt/cpu.max": "max 100000"}, 0.5),
        ("v2", {"batt/cpu.max": "250000 100000"}, 2.5),
        ("v2", {}, 4.0),
    ],
)
def test_cpus_affinity_capped_by_quota(
    tmp_path: Path, layout: str, files: dict[str, str], expected: float
) -> None:
    fake = FakeHost(tmp_path, layout=layout).build()
    for rel, text in files.items():
        write(fake.cpu_dir / rel, text + "\n")
    with fake.monitor() as mon:
        assert mon.sample().cpus == expected


# ---------------------------------------------------------------- users (scan)


def test_scan_counts_threads_by_real_uid(host: FakeHost) -> None:
    host.add_process(100, ruid=1000, threads=5, nproc=300)
    host.add_process(101, ruid=1000, threads=2, nproc=120)
    host.add_process(
        102, ruid=1000, threads=1, nproc="unlimited", euid=0
    )  # setuid: real uid counts
    host.add_process(103, ruid=0, threads=4, nproc=50, euid=1000)  # euid 1000 but real uid root
    host.add_process(104, ruid=2000, threads=9, nproc=7)
    (host.proc / "105").mkdir()  # vanished mid-scan: no status
    with host.monitor(users=[1000, 0, 3000]) as mon:
        s = mon.sample()
    by_uid = {u.uid: u for u in s.users}
    assert (by_uid[1000].tasks, by_uid[1000].nproc_limit, by_uid[1000].limit_pid) == (8, 120, 101)
    assert (by_uid[1000].exempt, by_uid[0].exempt) == (False, True)
    assert (by_uid[0].tasks, by_uid[0].nproc_limit) == (4, None)
    # no process: the daemon's own soft limit (what spawned workers inherit)
    assert (by_uid[3000].tasks, by_uid[3000].nproc_limit, by_uid[3000].limit_pid) == (0, 4096, None)
    names = {uid: _user_name(uid) for uid in (1000, 3000)}
    assert {lim.name for lim in s.limits if lim.kind == "nproc"} == {
        f"nproc:{names[1000]}",
        f"nproc:{names[3000]}",
    }
    assert not any(lim.scope == 0 for lim in s.limits)
    assert next(lim for lim in s.limits if lim.scope == 1000).headroom == 112


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def test_scan_all_unlimited(host: FakeHost) -> None:
    host.add_process(100, ruid=1000, threads=3, nproc="unlimited")
    with host.monitor(users=[1000]) as mon:
        (u,) = mon.sample().users
        assert (u.tasks, u.nproc_limit, u.limit_pid) == (3, None, 100)
        assert not [lim for lim in mon.sample().limits if lim.kind == "nproc"]


def test_users_come_from_the_last_scan(host: FakeHost) -> None:
    host.add_process(100, ruid=1000, threads=3, nproc=10)
    with host.monitor(users=[1000]) as mon:
        first = mon.sample().users[0]
        host.add_process(101, ruid=1000, threads=4, nproc=10)
        assert mon.sample().users[0] == first  # the fast path does not rescan
        mon.scan()
        again = mon.sample().users[0]
    assert (again.tasks, again.scanned_at > first.scanned_at) == (7, True)


def test_user_names_resolve() -> None:
    with HostMonitor(users=["root", "0"]) as mon:
        assert [(u.uid, u.name, u.exempt, u.nproc_limit) for u in mon.sample().users] == [
            (0, "root", True, None),
            (0, "root", True, None),
        ]
    with pytest.raises(ValueError, match="unknown user"):
        HostMonitor(users=["no-such-user-sbt"])


def test_tree_tasks_on_fake_tree(host: FakeHost) -> None:
    def proc(pid: int, ppid: int, threads: int) -> None:
        fields = ["S", str(ppid)] + ["0"] * 15 + [str(threads), "0", "1"]
        write(host.proc / str(pid) / "stat", f"{pid} (w {pid}) {' '.join(fields)}\n")

    proc(10, 1, 2)  # root 10 -> 11 -> 12, and 13
    proc(11, 10, 3)
    proc(12, 11, 1)
    proc(13, 10, 4)
    proc(20, 1, 5)  # another tree
    (host.proc / "14").mkdir()  # exited mid-scan
    with host.monitor() as mon:
        trees = mon.tree_tasks([10, 11, 20, 99])
    assert set(trees) == {10, 11, 20}
    assert (trees[10].pids[0], sorted(trees[10].pids), trees[10].tasks) == (
        10,
        [10, 11, 12, 13],
        10,
    )
    assert (sorted(trees[11].pids), trees[11].tasks) == ([11, 12], 4)
    assert (trees[20].pids, trees[20].tasks) == ((20,), 5)
    assert mon.tree_tasks([]) == {}


def test_resident_bytes_on_fake_tree(host: FakeHost) -> None:
    """Issue 24: each pid's RSS from statm's second field, in pages; gone or garbled
    pids are left out."""
    page = os.sysconf("SC_PAGE_SIZE")
    write(host.proc / "10" / "statm", "5000 300 20 1 0 400 0\n")
    write(host.proc / "11" / "statm", "garbled\n")
    with host.monitor() as mon:
        assert mon.resident_bytes([10, 11, 99]) == {10: 300 * page}
        assert mon.resident_bytes([]) == {}


def test_live_resident_bytes_sees_memory_touched() -> None:
    with HostMonitor(include_self_cgroup=False) as mon:
        before = mon.resident_bytes([os.getpid()])[os.getpid()]
        block = bytearray(64 << 20)  # touched: zero-filled
        after = mon.resident_bytes([os.getpid()])[os.getpid()]
        del block
    assert after - before >= 60 << 20, (before, after)


# ---------------------------------------------------------------- output


def _sample_with_everything(host: FakeHost) -> HostSample:
    host.add_process(100, ruid=1000, threads=5, nproc=300)
    with host.monitor(users=[0, 1000], cgroups=["/" + "very-long-name/" * 8]) as mon:
        return mon.sample()


def test_json_field_names_are_stable(host: FakeHost) -> None:
    data = sample_to_json(_sample_with_everything(host))
    assert {
        "threads_total",
        "threads_max",
        "pid_max",
        "cgroups",
        "users",
        "mem_available_bytes",
        "mem_total_bytes",
        "cpus",
        "psi",
        "limits",
        "tightest",
    } <= set(data)
    assert {
        "path",
        "pids_current",
        "pids_max",
        "pids_events_max",
        "effective_max",
        "headroom",
        "limited_by",
        "version",
    } <= set(data["cgroups"][0])
    assert {"uid", "name", "tasks", "nproc_limit", "exempt"} <= set(data["users"][0])
    assert data["psi"] is not None
    assert set(data["psi"]) == {"cpu_some_avg10", "memory_some_avg10"}
    assert {"name", "kind", "limit", "in_use", "headroom", "percent_used"} <= set(data["limits"][0])
    assert data["tightest"] == {
        "name": "cgroup:/batt/job",
        "kind": "cgroup",
        "limit": 10,
        "in_use": 8,
        "headroom": 2,
    }
    assert data["limits"][0]["percent_used"] == 34.5  # 345 of 1000 threads
    assert data["cgroups"][1]["pids_max"] is None  # the missing cgroup


def test_table_marks_the_tightest_and_fits(host: FakeHost) -> None:
    table = render_table(_sample_with_everything(host))
    lines = table.splitlines()
    assert max(map(len, lines)) <= 100
    marked = [line for line in lines if "<- tightest" in line]
    assert len(marked) == 1 and marked[0].startswith("cgroup:/batt/job")
    assert "the next thread is refused here first" in table
    assert "exempt (root)" in table
    assert "300 (pid 100)" in table


# ---------------------------------------------------------------- the live host


def _loadavg_total() -> int:
    with open("/proc/loadavg") as f:
        return int(f.read().split()[3].split("/")[1])


def test_live_host_sample() -> None:
    with HostMonitor(users=[os.getuid()]) as mon:
        for _ in range(50):  # a task may start or exit between the two reads: retry
            before = _loadavg_total()
            s = mon.sample()
            if before == _loadavg_total():
                assert s.threads_total == before
                break
        else:
            pytest.fail("threads_total never settled")
        assert s.threads_max > 0 and s.pid_max > 0 and s.mem_total_bytes > s.mem_available_bytes > 0
        assert s.cpus == min(float(len(os.sched_getaffinity(0))), s.cpus) > 0
        if os.path.isdir("/proc/pressure"):
            assert s.psi is not None and s.psi.cpu_some_avg10 is not None
        soft = resource.getrlimit(resource.RLIMIT_NPROC)[0]
        (u,) = s.users
        assert u.tasks >= threading.active_count()
        if os.getuid() == 0:
            assert u.exempt and u.nproc_limit is None
        else:
            assert u.nproc_limit == (None if soft == resource.RLIM_INFINITY else soft)
        assert s.tightest() in s.limits


def test_live_tree_tasks() -> None:
    with HostMonitor(include_self_cgroup=False) as mon:
        trees = mon.tree_tasks([os.getpid(), 2**22 + 12345])
    assert list(trees) == [os.getpid()]
    assert trees[os.getpid()].pids[0] == os.getpid()
    assert trees[os.getpid()].tasks >= threading.active_count()
