"""The users' weights in the budget's split across users: `Weights(config).weigh(uid)`,
from `budget.user_weights` and `budget.group_weights`.

The ledger is pure, so it is given this as a function (as it is given a clock) and asks
it once per user holding leases, and again on reload. A user's own weight wins, else the
largest weight of the groups the user database puts it in (primary and supplementary),
else 1. The peer's groups on the socket are not used: a user's leases come over many
connections, and its weight must be one.
"""

from __future__ import annotations

import grp
import os
import pwd

from supervisord_batt.config.records import BudgetConfig
from supervisord_batt.logs import get_logger

log = get_logger(component="daemon")

MAX_CACHED = 4096  # uids whose weight is kept; past it the cache starts again


class Weights:
    """The weight of any uid under one config, looked up once per uid (the user database
    can be slow: NSS, LDAP), so a reload makes a new one."""

    def __init__(self, config: BudgetConfig) -> None:
        self._users: dict[int, float] = {}
        for name, weight in config.user_weights:
            uid = _uid(name)
            if uid is None:  # the loader checked it; the user went since
                log.warning("weight_ignored", user=name, reason="no such user")
            else:
                self._users[uid] = weight
        self._groups: dict[int, float] = {}
        for name, weight in config.group_weights:
            try:
                self._groups[grp.getgrnam(name).gr_gid] = weight
            except KeyError:
                log.warning("weight_ignored", group=name, reason="no such group")
        self._cache: dict[int, float] = {}

    def weigh(self, uid: int) -> float:
        """The uid's weight: its own, else its groups' largest, else 1."""
        weight = self._cache.get(uid)
        if weight is None:
            weight = self._find(uid)
            if len(self._cache) >= MAX_CACHED:
                self._cache.clear()
            self._cache[uid] = weight
        return weight

    def _find(self, uid: int) -> float:
        own = self._users.get(uid)
        if own is not None:
            return own
        if not self._groups:
            return 1.0
        try:
            user = pwd.getpwuid(uid)
        except KeyError:  # a uid with no name has no groups either
            return 1.0
        gids = os.getgrouplist(user.pw_name, user.pw_gid)
        return max((self._groups[g] for g in gids if g in self._groups), default=1.0)


def _uid(name: str) -> int | None:
    if name.isdigit():
        return int(name)
    try:
        return pwd.getpwnam(name).pw_uid
    except KeyError:
        return None
