"""Shrink and grow through the real daemon: a newcomer makes the first holder shrink."""

from __future__ import annotations

from collections.abc import Callable

from supervisord_batt.client.leases import lease
from tests.helpers import CALM, wait_until
from tests.support.daemons import DaemonHandle


def test_newcomer_makes_the_holder_shrink_then_grows_itself(
    daemon: Callable[..., DaemonHandle],
) -> None:
    d = daemon({"budget": {"cpu_cap": 4, "max_per_lease": 4, "pressure": CALM}})
    with lease(want=4, job="first", socket_path=d.socket) as first:
        assert (first.kind, first.workers) == ("process", 4)
        with lease(want=4, job="second", socket_path=d.socket) as second:
            # 4 CPUs are all granted: the newcomer runs sequential for now
            assert second.kind == "sequential"
            first.renew()
            assert first.target == 2, "max-min: two holders that asked share 4 CPUs"
            first.renew(workers_in_use=2)  # the job resized its pool and acknowledges
            assert first.workers == 2
            second.renew()
            assert (second.kind, second.workers) == ("process", 2)
            leases = {lease["job"]: lease for lease in d.status()["leases"]}
            assert leases["first"]["workers"] == 2 and leases["second"]["workers"] == 2
        wait_until(lambda: len(d.status()["leases"]) == 1, timeout=5)
        first.renew()
        assert (first.workers, first.target) == (4, 4), "grows back once the other left"
