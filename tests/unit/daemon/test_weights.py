"""The users' weights the daemon gives the ledger (`daemon.weights.Weights`): a user's
own, else the largest of its groups', else 1; looked up in this host's user database."""

from __future__ import annotations

import dataclasses
import grp
import os
import pwd

from supervisord_batt.config.loader import load_config_text
from supervisord_batt.daemon.weights import Weights

NOBODY_UID = 2**31 - 7  # no user has it: no name, no groups


def weights(users: dict[str, float], groups: dict[str, float]) -> Weights:
    budget = dataclasses.replace(
        load_config_text("").budget,
        user_weights=tuple(sorted(users.items())),
        group_weights=tuple(sorted(groups.items())),
    )
    return Weights(budget)


def test_no_weights_weigh_every_uid_one() -> None:
    w = weights({}, {})
    assert [w.weigh(uid) for uid in (0, os.getuid(), NOBODY_UID)] == [1.0, 1.0, 1.0]


def test_a_users_own_weight_wins_over_its_groups() -> None:
    me = pwd.getpwuid(os.getuid())
    group = grp.getgrgid(me.pw_gid).gr_name
    assert weights({}, {group: 3.0}).weigh(me.pw_uid) == 3.0
    assert weights({me.pw_name: 0.5}, {group: 3.0}).weigh(me.pw_uid) == 0.5
    assert weights({str(me.pw_uid): 2.0}, {}).weigh(me.pw_uid) == 2.0  # a uid, as digits


def test_the_largest_of_a_users_groups_counts() -> None:
    me = pwd.getpwuid(os.getuid())
    names = [grp.getgrgid(g).gr_name for g in os.getgrouplist(me.pw_name, me.pw_gid)]
    other = next(g.gr_name for g in grp.getgrall() if g.gr_name not in names)
    w = weights({}, {names[0]: 2.0, other: 9.0})
    assert w.weigh(me.pw_uid) == 2.0  # not in `other`
    assert w.weigh(NOBODY_UID) == 1.0  # no name: no groups


def test_names_gone_from_the_host_are_left_out() -> None:
    w = weights({"nosuchuser-sbt": 5.0}, {"nosuchgroup-sbt": 5.0})
    assert w.weigh(os.getuid()) == 1.0
