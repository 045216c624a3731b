"""What a job imports: a lease in one line, and an executor sized from it.

    from supervisord_batt.client import lease

    with lease(want=4, job="run_batt") as grant:
        with grant.executor(task_timeout=600) as pool:
            results = pool.map(score, tasks)

The client loads nothing of the daemon (it speaks the protocol over the socket), and the
executor (loky, psutil) is imported only when a grant makes one. `acquire()` is lease()
without the block, for code whose lease starts and ends in different places (the joblib
backend, supervisord_batt.joblib). Each worker's inner threads (BLAS, OpenMP) are sized
from the grant by `client.inner`.
"""

from __future__ import annotations

from supervisord_batt.client.leases import Connection, DaemonError, Grant, acquire, lease

__all__ = ["Connection", "DaemonError", "Grant", "acquire", "lease"]
