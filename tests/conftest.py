"""Fixtures that create real kernel objects and always remove them, and the `root` marker.

Every fixture that needs root requests `needs_root`; a test whose fixture closure holds
it is marked `root` at collection, so `pytest -m "not root"` runs the rest as any user.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from typing import TypeVar

import pytest

from tests.helpers import (
    MemoryCgroup,
    PidsCgroup,
    TestUser,
    is_root,
    memory_cgroup_root,
    pids_v1_writable,
)

ROOT_FIXTURE = "needs_root"


@pytest.hookimpl(tryfirst=True)  # before -m deselects by marker
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark `root` every test that needs root through its fixtures (or usefixtures)."""
    for item in items:
        if ROOT_FIXTURE in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.root)


@pytest.fixture
def needs_root() -> None:
    """Requested by each fixture (or test) that needs root; skips when not root."""
    if not is_root():
        pytest.skip("needs root (run as root, or deselect with -m 'not root')")


C = TypeVar("C", PidsCgroup, MemoryCgroup)


def _made_and_closed(new: Callable[..., C]) -> Iterator[Callable[..., C]]:
    """A factory that keeps what it made; each one is closed at the end, children first."""
    made: list[C] = []

    def make(**kwargs: object) -> C:
        cg = new(**kwargs)
        made.append(cg)
        return cg

    try:
        yield make
    finally:
        for cg in reversed(made):
            cg.close()


@pytest.fixture
def pids_cgroup(needs_root: None) -> Iterator[Callable[..., PidsCgroup]]:
    """Factory for real cgroup v1 pids children; every one is emptied and removed."""
    if not pids_v1_writable():
        pytest.skip("needs a writable cgroup v1 pids hierarchy at /sys/fs/cgroup/pids")
    yield from _made_and_closed(PidsCgroup)


@pytest.fixture
def memory_cgroup(needs_root: None) -> Iterator[Callable[..., MemoryCgroup]]:
    """Factory for real memory cgroups (v1, else v2); every one is emptied and removed."""
    where = memory_cgroup_root()
    if where is None:
        pytest.skip("needs a writable memory cgroup hierarchy (v1, or v2 with memory enabled)")
    yield from _made_and_closed(functools.partial(MemoryCgroup, *where))


@pytest.fixture
def test_user(needs_root: None) -> Iterator[Callable[[], TestUser]]:
    """Factory for real users made with useradd; every one is deleted."""
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
