"""What pools cost: the kernel tasks a pool adds to a job, and the tasks kept in reserve
under a limit; and the pressure levels (the pool kinds are the protocol's). Pure
arithmetic, shared by the ledger and its allocation."""

# Why a pool of n < 2 becomes sequential. A pool's main thread only waits on its
# workers, so one worker computes no faster than the main thread alone, and it still
# costs kernel tasks (a process pool of 1 costs 5: docs/FACTS.md) that can be refused half
# way, which is what leaves orphaned workers and hung jobs. Grants and targets are
# therefore 0 (sequential) or at least MIN_POOL workers.

from __future__ import annotations

import math

from supervisord_batt.config.records import BudgetConfig
from supervisord_batt.host.sample import Limit
from supervisord_batt.protocol import Kind

# Kernel tasks (threads + processes) a pool adds to a job beyond its main thread, measured
# in docs/FACTS.md "What a loky pool costs" (Python 3.11, loky 3.6.0 and 3.7.0, pids cgroup):
# ProcessPoolExecutor(3) after the first submit() is 8 tasks = the main thread, 3 workers
# (one thread each), ExecutorManagerThread, QueueFeederThread and two resource trackers
# (loky's and multiprocessing's) which stay until the job exits. So a process pool of n
# costs n + 4; a thread pool of n costs its n threads; sequential costs nothing.
PROCESS_WORKER_TASKS = 1
PROCESS_POOL_THREADS = 2  # ExecutorManagerThread + QueueFeederThread, in the job
LOKY_RESOURCE_TRACKERS = 2  # loky's and multiprocessing's resource trackers
PROCESS_POOL_OVERHEAD = PROCESS_POOL_THREADS + LOKY_RESOURCE_TRACKERS
THREAD_WORKER_TASKS = 1
MIN_POOL = 2  # a pool of 1 never beats sequential (see the comment at the top)
UNBOUNDED = 1 << 30  # no bound: memory bytes when memory_per_slot is 0, or no fit yet
# runs a learned figure smaller than the job's declared size must come from to replace it
DECLARED_RUNS = 3


def pool_cost(kind: Kind, workers: int) -> int:
    """Kernel tasks a pool of `workers` adds to a job (see the constants above)."""
    if workers <= 0 or kind == "sequential":
        return 0
    if kind == "process":
        return workers * PROCESS_WORKER_TASKS + PROCESS_POOL_OVERHEAD
    return workers * THREAD_WORKER_TASKS


def workers_for(kind: Kind, tasks: int) -> int:
    """The largest pool of `kind` costing at most `tasks` (0 when none does)."""
    if kind == "process":
        return max(0, (tasks - PROCESS_POOL_OVERHEAD) // PROCESS_WORKER_TASKS)
    if kind == "thread":
        return max(0, tasks // THREAD_WORKER_TASKS)
    return 0


def reserve_for(limit: Limit, config: BudgetConfig) -> int:
    """Tasks kept free under `limit`: the larger of the floor and the percent, but never
    more than half the limit. The floor suits host-wide limits (tens of thousands); a small
    cgroup (a TasksMax of 40, say) would otherwise be all reserve and never get a pool."""
    wanted = max(config.reserve_tasks, math.ceil(limit.limit * config.reserve_percent / 100))
    return min(wanted, limit.limit // 2)


def memory_reserve(limit_bytes: int, config: BudgetConfig) -> int:
    """Bytes kept free under the memory limit that binds (`HostSample.memory_room`):
    `memory_reserve_percent` of it. Memory is the one limit whose use grows without a grant (a
    worker's data), so the reserve is where the budget asks a pool to shrink before the
    OOM killer acts: below it the measured pools give workers back (`claims.Footprint.memory`)."""
    return math.ceil(max(0, limit_bytes) * config.memory_reserve_percent / 100)


# Why a declared size gives way to a learned one. The scan is the truth: a learned figure
# larger than the declared one wins at once (the job's workers were seen holding that
# much). A smaller one is the percentile of the runs seen, which one short run (one that
# ended before its workers loaded their data) can pull down: it wins once learned from
# DECLARED_RUNS runs, the declared size until then. A job that declares nothing is
# charged `memory_per_slot` until its first run is learned, as before.


def per_worker(per_slot: int, declared: int, learned: int | None, runs: int) -> int:
    """Bytes one process worker of a job is charged: `learned` (its figure, None: never
    seen, learned from `runs` runs) against `declared` (0: none), else `per_slot`; 0
    where memory is not budgeted (`per_slot` <= 0)."""
    if per_slot <= 0:
        return 0
    if learned is None:
        return declared or per_slot
    if learned >= declared or runs >= DECLARED_RUNS:
        return learned
    return declared
