"""safepath: which directories the root daemon may write in, and opening without links."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from supervisord_batt import safepath
from supervisord_batt.safepath import UntrustedPath, check_dir, dir_problem, make_dir, open_append

OTHER_UID = 54321  # a uid nobody on the machine has: only ownership is compared


def private(tmp_path: Path) -> Path:
    d = tmp_path / "d"
    d.mkdir(mode=0o755)
    os.chmod(d, 0o755)
    return d


def test_a_private_directory_is_trusted(tmp_path: Path) -> None:
    d = private(tmp_path)
    assert dir_problem(d) is None
    check_dir(d)


@pytest.mark.parametrize("mode", [0o777, 0o775, 0o757, 0o1777])
def test_a_directory_others_can_write_is_not(tmp_path: Path, mode: int) -> None:
    d = private(tmp_path)
    os.chmod(d, mode)
    problem = dir_problem(d)
    assert problem is not None and "writable by group or others" in problem
    with pytest.raises(UntrustedPath, match="refusing"):
        check_dir(d)


def test_a_regular_file_is_not_a_directory(tmp_path: Path) -> None:
    f = tmp_path / "f"
    f.write_text("")
    assert "is not a directory" in (dir_problem(f) or "")


def test_a_writable_parent_without_the_sticky_bit_is_not(tmp_path: Path) -> None:
    parent = tmp_path / "open"
    parent.mkdir()
    os.chmod(parent, 0o777)
    d = parent / "d"
    d.mkdir(mode=0o755)
    assert "above" in (dir_problem(d) or "")
    os.chmod(parent, 0o1777)  # sticky, as /tmp: nobody can rename what is not theirs
    assert dir_problem(d) is None


def test_make_dir_creates_missing_directories_with_the_mode(tmp_path: Path) -> None:
    d = tmp_path / "a" / "b"
    old = os.umask(0o077)
    try:
        make_dir(d, 0o755)
    finally:
        os.umask(old)
    assert oct(d.stat().st_mode & 0o777) == oct(0o755)
    assert oct((tmp_path / "a").stat().st_mode & 0o777) == oct(0o755)
    make_dir(d, 0o755)  # an existing trusted one is fine


def test_open_append_refuses_a_symlink_even_in_a_trusted_directory(tmp_path: Path) -> None:
    d = private(tmp_path)
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    (d / "w.log").symlink_to(victim)
    with pytest.raises(UntrustedPath, match="symlink"):
        open_append(d / "w.log")
    assert victim.read_text() == "precious\n"


def test_open_append_refuses_a_hard_link(tmp_path: Path) -> None:
    d = private(tmp_path)
    victim = d / "victim"
    victim.write_text("precious\n")
    os.link(victim, d / "w.log")
    with pytest.raises(UntrustedPath, match="one link"):
        open_append(d / "w.log")


def test_open_append_appends_to_a_plain_file(tmp_path: Path) -> None:
    d = private(tmp_path)
    for text in (b"one\n", b"two\n"):
        fd = open_append(d / "w.log")
        os.write(fd, text)
        os.close(fd)
    assert (d / "w.log").read_bytes() == b"one\ntwo\n"


@pytest.mark.usefixtures("needs_root")
def test_a_directory_owned_by_another_uid_is_not(tmp_path: Path) -> None:
    d = private(tmp_path)
    os.chown(d, OTHER_UID, -1)
    assert f"owned by uid {OTHER_UID}" in (dir_problem(d) or "")
    assert dir_problem(d, uid=OTHER_UID) is None  # a daemon run as that uid may use it


@pytest.mark.usefixtures("needs_root")
def test_a_symlink_owned_by_another_uid_on_the_way_is_not(tmp_path: Path) -> None:
    d = private(tmp_path)
    link = tmp_path / "link"
    link.symlink_to(d)
    os.chown(link, OTHER_UID, -1, follow_symlinks=False)
    assert "symlink owned by uid" in (dir_problem(link) or "")


def test_a_dot_dot_after_a_symlink_is_refused(tmp_path: Path) -> None:
    # private/link -> elsewhere/deep; "private/link/.." is elsewhere to the kernel, but
    # private to a lexical normalisation: the path is refused outright
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    elsewhere = tmp_path / "elsewhere" / "deep"
    elsewhere.mkdir(parents=True)
    (private / "link").symlink_to(elsewhere)
    problem = safepath.dir_problem(private / "link" / "..")
    assert problem is not None and "'..'" in problem


def test_replace_file_replaces_atomically_and_never_follows_a_link(tmp_path: Path) -> None:
    directory = tmp_path / "d"
    directory.mkdir(mode=0o700)
    target = directory / "m.prom"
    safepath.replace_file(target, b"one\n")
    safepath.replace_file(target, b"two\n")
    assert target.read_bytes() == b"two\n" and oct(target.stat().st_mode & 0o777) == "0o644"
    victim = tmp_path / "victim"
    victim.write_bytes(b"keep")
    target.unlink()
    target.symlink_to(victim)  # a link planted at the name: replaced, not followed
    safepath.replace_file(target, b"three\n")
    assert victim.read_bytes() == b"keep" and not target.is_symlink()
    (directory / ".m.prom.tmp").symlink_to(victim)  # and at the temporary name
    safepath.replace_file(target, b"four\n")
    assert victim.read_bytes() == b"keep" and target.read_bytes() == b"four\n"
    assert [p.name for p in directory.iterdir()] == ["m.prom"]


@pytest.fixture
def held(tmp_path: Path) -> Iterator[safepath.HeldDir]:
    """A HeldDir over a private directory `tmp_path / "d"`, closed after the test."""
    held = safepath.HeldDir(private(tmp_path))
    try:
        yield held
    finally:
        held.close()


def test_a_held_directory_replaces_like_replace_file(
    tmp_path: Path, held: safepath.HeldDir
) -> None:
    held.replace_file("m.prom", b"one\n")
    held.replace_file("m.prom", b"two\n")
    target = held.path / "m.prom"
    assert target.read_bytes() == b"two\n" and oct(target.stat().st_mode & 0o777) == "0o644"
    victim = tmp_path / "victim"
    victim.write_bytes(b"keep")
    target.unlink()
    target.symlink_to(victim)  # a link planted at the name: replaced, not followed
    held.replace_file("m.prom", b"three\n")
    assert victim.read_bytes() == b"keep" and target.read_bytes() == b"three\n"
    assert [p.name for p in held.path.iterdir()] == ["m.prom"]


def test_a_held_directory_follows_the_path_and_checks_what_it_names_now(
    tmp_path: Path, held: safepath.HeldDir
) -> None:
    directory = held.path
    held.replace_file("m.prom", b"one\n")
    directory.rename(tmp_path / "old")  # the path now names another directory:
    directory.mkdir(mode=0o755)  # checked, then written in
    held.replace_file("m.prom", b"two\n")
    assert (directory / "m.prom").read_bytes() == b"two\n"
    assert (tmp_path / "old" / "m.prom").read_bytes() == b"one\n"
    directory.rename(tmp_path / "older")
    directory.mkdir(mode=0o777)  # one anybody can write in: refused
    directory.chmod(0o777)  # (whatever the umask)
    with pytest.raises(safepath.UntrustedPath):
        held.replace_file("m.prom", b"three\n")
    assert not (directory / "m.prom").exists()
    directory.chmod(0o755)
    held.replace_file("m.prom", b"four\n")
    directory.chmod(0o757)  # the held directory itself made writable by others
    with pytest.raises(safepath.UntrustedPath):
        held.replace_file("m.prom", b"five\n")
    assert (directory / "m.prom").read_bytes() == b"four\n"


def test_a_held_directory_is_one_descriptor_until_closed(tmp_path: Path) -> None:
    before = len(os.listdir("/proc/self/fd"))
    held = safepath.HeldDir(private(tmp_path))
    for n in range(5):
        held.replace_file("m.prom", b"%d\n" % n)
    assert len(os.listdir("/proc/self/fd")) == before + 1
    held.close()
    assert len(os.listdir("/proc/self/fd")) == before


def test_a_held_directory_must_be_private_when_opened(tmp_path: Path) -> None:
    directory = tmp_path / "d"
    directory.mkdir()
    directory.chmod(0o777)
    held = safepath.HeldDir(directory)
    with pytest.raises(UntrustedPath):
        held.replace_file("m.prom", b"x\n")
    assert not (directory / "m.prom").exists()
    held.close()
