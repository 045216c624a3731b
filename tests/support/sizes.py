"""Builders of the learned-size tests: a process lease of uid 1000, and a holder's tree
of workers with their resident memory, as WorkerSizes.observe is given them."""

from __future__ import annotations

from supervisord_batt.budget.records import Lease
from supervisord_batt.host.sample import TreeUsage
from supervisord_batt.protocol import Kind

MIB = 1 << 20


def lease(
    lease_id: str,
    pid: int,
    workers: int,
    job: str = "batt",
    kind: Kind = "process",
    *,
    base_tasks: int = 1,
) -> Lease:
    return Lease(
        lease_id,
        "h",
        pid,
        1000,
        job,
        kind,
        workers,
        workers,
        workers,
        workers,
        0,
        0,
        base_tasks,
        0.0,
        0.0,
        0.0,
    )


def tree(root: int, *rss: int, threads: tuple[int, ...] = ()) -> tuple[TreeUsage, dict[int, int]]:
    """A holder `root` with one child per figure in `rss` (MiB), and their RSS; `threads`:
    the tasks of the holder and each child (none given: one each, not told per pid)."""
    kids = tuple(range(root + 1, root + 1 + len(rss)))
    tasks = sum(threads) if threads else 1 + len(kids)
    return TreeUsage(root, (root, *kids), tasks, threads), {
        root: 900 * MIB,
        **{k: r * MIB for k, r in zip(kids, rss, strict=True)},
    }
