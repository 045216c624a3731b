"""Leases made binding: a supervised worker's pids cgroup follows what it leased.

A lease is advice: a job can start more processes than it was granted, taking tasks
from every other job under the same limit. Each supervised worker already runs in its
own pids cgroup, so its `pids.max` can say what the lease says: the tasks its tree had
when it first leased, plus the cost of every lease its processes hold, plus a margin of
`MARGIN`; `tasks_without_lease` while it holds none. Updated on every acquire, renew and
release, when a connection closes and when a lease expires. A job that oversteps then
gets EAGAIN inside its own cgroup, which the project's executor turns into a fallback,
instead of the host's or the service's limit refusing someone else. Per program
(`contain: false` turns it off). Peers that are not supervised workers are not touched.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from supervisord_batt.budget.ledger import BudgetLedger
from supervisord_batt.daemon.server import Connection
from supervisord_batt.supervise.supervisor import Supervisor

MARGIN = 4  # tasks above the lease: a short-lived helper thread or process, a shell


@dataclass
class Containment:
    ledger: BudgetLedger
    supervisor: Supervisor
    _pids: dict[str, set[int]] = field(default_factory=dict)  # instance -> pids that leased
    _base: dict[str, int] = field(default_factory=dict)  # instance -> tasks before its pools

    def follow(self, conn: Connection) -> None:
        """Set the pids.max of the worker whose tree holds this connection's peer."""
        state = conn.state
        if not state.instance_known:  # a peer's tree does not change: look it up once
            # its cgroups were read by its first acquire
            state.instance = self.supervisor.instance_of(conn.peer.pid, state.cgroups)
            state.instance_known = True
        instance = state.instance
        if instance is None:
            return
        pids = self._pids.setdefault(instance, set())
        pids.add(conn.peer.pid)
        leases = self.ledger.held_by(pids)
        if not leases:
            self.forget(instance)
            self.supervisor.contain(instance, None)
            return
        base = self._base.get(instance)
        if base is None:  # its first lease: its pools do not exist yet
            base = self._base[instance] = max(1, self.supervisor.tree_tasks(instance) or 1)
        self.supervisor.contain(instance, base + sum(x.cost_tasks for x in leases) + MARGIN)

    def forget(self, instance: str) -> None:
        """The instance holds no lease any more (or its tree is gone)."""
        self._pids.pop(instance, None)
        self._base.pop(instance, None)
