"""Fixtures that create real kernel objects and always remove them."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from tests.helpers import PidsCgroup, TestUser, is_root, pids_v1_writable


@pytest.fixture
def pids_cgroup() -> Iterator[Callable[..., PidsCgroup]]:
    """Factory for real cgroup v1 pids children; every one is emptied and removed."""
    if not pids_v1_writable():
        pytest.skip("needs root and a writable cgroup v1 pids hierarchy at /sys/fs/cgroup/pids")
    made: list[PidsCgroup] = []

    def make(**kwargs: object) -> PidsCgroup:
        cg = PidsCgroup(**kwargs)  # type: ignore[arg-type]
        made.append(cg)
        return cg

    try:
        yield make
    finally:
        for cg in reversed(made):
            cg.close()


@pytest.fixture
def test_user() -> Iterator[Callable[[], TestUser]]:
    """Factory for real users made with useradd; every one is deleted."""
    if not is_root():
        pytest.skip("needs root to create users")
    made: list[TestUser] = []

    def make() -> TestUser:
        u = TestUser()
        made.append(u)
        return u

    try:
        yield make
    finally:
        for u in made:
            u.close()
