"""Issue 24: the kernel's OOM-kill records, parsed from /dev/kmsg's bytes. The records
are those a real kill in a v1 memory cgroup wrote on a 6.18 kernel (docs/FACTS.md)."""

from __future__ import annotations

import errno
import os

import pytest

from supervisord_batt.host import kmsg
from supervisord_batt.host.kmsg import KernelLog, KillReports, OomKill, OomRecord, parse_record

CONTEXT = (
    b"6,53086,69977816150,-;oom-kill:constraint=CONSTRAINT_MEMCG,nodemask=(null),cpuset=/,"
    b"mems_allowed=0,oom_memcg=/sbtest-mem-probe-oom,task_memcg=/sbtest-mem-probe-oom,"
    b"task=python3,pid=23493,uid=0\n"
)
KILLED = (
    b"3,53087,69977816166,-;Memory cgroup out of memory: Killed process 23493 (python3) "
    b"total-vm:221368kB, anon-rss:102016kB, file-rss:6644kB, shmem-rss:0kB, UID:0 "
    b"pgtables:264kB oom_score_adj:0\n"
)


def test_the_two_records_of_a_kill_give_its_cgroup_and_its_resident_size() -> None:
    memcg = "/sbtest-mem-probe-oom"
    assert parse_record(CONTEXT) == OomRecord(23493, "python3", memcg=memcg, uid=0)
    assert parse_record(KILLED) == OomRecord(23493, "python3", rss=(102016 + 6644) * 1024, uid=0)
    reports = KillReports()
    assert reports.feed(parse_record(CONTEXT)) is None  # type: ignore[arg-type]
    kill = reports.feed(parse_record(KILLED))  # type: ignore[arg-type]
    assert kill == OomKill(23493, "python3", "/sbtest-mem-probe-oom", 108660 * 1024, 0)


def test_the_hosts_own_oom_killer_and_names_with_spaces_and_commas() -> None:
    """The global OOM killer's wording, a task name with ") (" and commas, a shmem
    figure, a record with dictionary lines after it."""
    killed = (
        b"3,9,1,-;Out of memory: Killed process 7 ((a) (b, c)) total-vm:1kB, anon-rss:1kB, "
        b"file-rss:2kB, shmem-rss:4kB, UID:1000 pgtables:8kB oom_score_adj:0\n"
        b" SUBSYSTEM=x\n"
    )
    assert parse_record(killed) == OomRecord(7, "(a) (b, c)", rss=7 * 1024, uid=1000)
    context = (
        b"6,8,1,-;oom-kill:constraint=CONSTRAINT_NONE,nodemask=(null),cpuset=/,"
        b"mems_allowed=0,global_oom,task_memcg=/user.slice/a,b,task=x,y,pid=7,uid=1000\n"
    )
    assert parse_record(context) == OomRecord(7, "x,y", memcg="/user.slice/a,b", uid=1000)
    # the kill with its context lost: its cgroup unknown, the kill still reported
    kill = KillReports().feed(parse_record(killed))  # type: ignore[arg-type]
    assert kill == OomKill(7, "(a) (b, c)", None, 7168, 1000)


@pytest.mark.parametrize(
    "record",
    [
        b"",
        b"no separator",
        b"6,1,1,-;python3 invoked oom-killer: gfp_mask=0xcc0(GFP_KERNEL), order=0",
        b"6,1,1,-;[  23493]     0 23493    55342    27165    25504     1661 python3",
        b"6,1,1,-;oom-kill:constraint=CONSTRAINT_MEMCG,pid=notanumber",
        b"6,1,1,-;Killed process 1 (x) total-vm:1kB, anon-rss:-1kB",
        b"6,1,1,-;oom_reaper: reaped process 23493 (python3), now anon-rss:0kB",
        b"\xff\xfe;\xff Killed process",
        # the OOM killer's words inside another record: a file name the kernel quotes
        b"4,1,1,-;process '/home/u/Killed process 4242 (x) total-vm:1kB, anon-rss:99999999kB,"
        b" file-rss:0kB, shmem-rss:0kB, UID:1000' launched '/bin/x' with NULL argv",
        # the same words written to /dev/kmsg by a program: facility user (1), not 0
        b"12,1,1,-;Memory cgroup out of memory: Killed process 4242 (x) total-vm:1kB, "
        b"anon-rss:99999999kB, file-rss:0kB, shmem-rss:0kB, UID:1000 pgtables:1kB",
        b"12,1,1,-;oom-kill:constraint=CONSTRAINT_MEMCG,task_memcg=/a,task=x,pid=4242,uid=0",
        b"x,1,1,-;Memory cgroup out of memory: Killed process 1 (x) total-vm:1kB, "
        b"anon-rss:1kB, file-rss:0kB, shmem-rss:0kB, UID:0 pgtables:1kB",
    ],
)
def test_any_other_record_is_none(record: bytes) -> None:
    assert parse_record(record) is None


def test_contexts_waiting_for_their_kill_are_bounded() -> None:
    reports = KillReports()
    for pid in range(kmsg.MAX_PENDING * 3):
        reports.feed(OomRecord(pid, "x", memcg="/a"))
    assert len(reports._pending) == kmsg.MAX_PENDING
    assert reports.feed(OomRecord(0, "x", rss=1)) == OomKill(0, "x", None, 1)  # forgotten
    last = kmsg.MAX_PENDING * 3 - 1
    assert reports.feed(OomRecord(last, "x", rss=1)) == OomKill(last, "x", "/a", 1)


def test_the_reader_reads_a_record_a_read_bounded_and_counts_lost_ones(
    monkeypatch: pytest.MonkeyPatch, tmp_path: os.PathLike[str]
) -> None:
    """/dev/kmsg's read(2): one record each, EPIPE where records were overwritten (the
    next read goes on), EAGAIN when none is left. Faked at os.read: a file cannot."""
    path = os.path.join(tmp_path, "kmsg")
    with open(path, "wb") as f:
        f.write(b"old records")
    replies: list[bytes | int] = [CONTEXT, errno.EPIPE, KILLED, errno.EAGAIN]
    log = KernelLog(path)
    try:
        assert os.lseek(log.fd, 0, os.SEEK_CUR) == len(b"old records")  # at its end

        def read(fd: int, n: int) -> bytes:
            assert fd == log.fd and n == kmsg.RECORD_BYTES
            reply = replies.pop(0)
            if isinstance(reply, int):
                raise OSError(reply, os.strerror(reply))
            return reply

        monkeypatch.setattr(os, "read", read)
        assert log.read(2) == ([CONTEXT], True)  # the limit counts the lost read too
        assert log.lost == 1
        assert log.read(10) == ([KILLED], False)
        replies.append(b"")  # the end of a file (no device ends): nothing more, no spin
        assert log.read(10) == ([], False)
        replies.append(errno.EIO)
        with pytest.raises(OSError):
            log.read(10)
    finally:
        log.close()
    with pytest.raises(OSError):
        KernelLog(os.path.join(tmp_path, "absent"))
