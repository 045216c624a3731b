"""`status` names what the budget charges each process worker of a job (issue 24)."""

from __future__ import annotations

from typing import Any

from supervisord_batt.cli.status import worker_size_lines

GIB, MIB = 1 << 30, 1 << 20


def row(job: str, uid: int, size: int | None, runs: int | None) -> Any:
    out: dict[str, Any] = {"lease": "L1", "pid": 1, "uid": uid, "job": job, "kind": "process"}
    out |= {"workers": 2, "target": 2, "wanted": 2, "age_s": 1.0}
    if size is not None and runs is not None:
        out |= {"worker_bytes": size, "learned_runs": runs}
    return out


def test_learned_sizes_are_named_per_job_and_a_job_not_seen_is_not() -> None:
    rows = [row("batt", 1000, int(1.8 * GIB), 14), row("new", 1000, 512 * MIB, 0)]
    assert worker_size_lines(rows) == ["", "batt: 1.8 GiB per worker, learned from 14 runs"]


def test_learned_tasks_are_named_beside_the_size() -> None:
    """Issue 24, learned tasks: a job whose pool's tasks were learned says so; one whose
    were not (a daemon before them, or not seen yet) shows its size alone."""
    blas = row("blas", 1000, int(1.8 * GIB), 14) | {"worker_tasks": 2, "pool_tasks": 5}
    assert worker_size_lines([blas, row("batt", 1000, 300 * MIB, 3)])[1:] == [
        "batt: 300 MiB per worker, learned from 3 runs",
        "blas: 1.8 GiB per worker, learned from 14 runs; 2 tasks per worker, pool +5 tasks",
    ]


def test_one_job_of_two_users_is_named_with_its_uid() -> None:
    rows = [row("batt", 1000, 300 * MIB, 2), row("batt", 1001, 20 * MIB, 1)]
    assert worker_size_lines(rows)[1:] == [
        "batt (uid 1000): 300 MiB per worker, learned from 2 runs",
        "batt (uid 1001): 20 MiB per worker, learned from 1 runs",
    ]


def test_an_older_daemon_or_memory_not_budgeted_shows_nothing() -> None:
    assert worker_size_lines([row("batt", 1000, None, None)]) == []
    assert worker_size_lines([row("batt", 1000, 0, 0)]) == []


def test_a_job_charged_its_declared_size_says_so() -> None:
    declared = row("fit", 1000, 2 * GIB, 0) | {"declared_bytes": 2 * GIB}
    once = row("fit2", 1000, 2 * GIB, 1) | {"declared_bytes": 2 * GIB}
    learned = row("fit3", 1000, 3 * GIB, 1) | {"declared_bytes": 2 * GIB}
    assert worker_size_lines([declared, once, learned])[1:] == [
        "fit: 2.0 GiB per worker, declared",
        "fit2: 2.0 GiB per worker, declared (1 runs learned)",
        "fit3: 3.0 GiB per worker, learned from 1 runs",
    ]


def test_a_size_learned_from_an_oom_kill_says_so() -> None:
    """Issue 24: a figure that is what an OOM-killed worker held says where it came from."""
    killed = row("batt", 1000, int(1.5 * GIB), 1) | {"learned_from_kill": True}
    assert worker_size_lines([killed])[1:] == ["batt: 1.5 GiB per worker, learned from an OOM kill"]
    # a job's own process killed while running its tasks: charged the kill's margin at
    # once, before its run ends and counts (0 runs): shown all the same
    margin = row("own", 1000, 3 * GIB, 0) | {"learned_from_kill": True}
    assert worker_size_lines([margin])[1:] == ["own: 3.0 GiB per worker, learned from an OOM kill"]
