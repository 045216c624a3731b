"""Directories and files the root daemon writes, checked so that no other user can
redirect them.

On a shared VM any user may own a directory on a configured path, or plant a symlink
where the daemon will create a file. So the daemon trusts a directory it writes in (its
socket's, an output directory, its log file's) only when nobody but root or the daemon's
own uid can change what is in it:

- the directory itself is a real directory owned by root or the daemon's uid, writable
  by nobody else (no group or other write bit);
- each ancestor is owned by root or that uid, and is not writable by others unless it is
  sticky (as /tmp is: in a sticky directory nobody can rename what they do not own);
- a symlink on the way is owned by root or that uid.

Then a file in it is opened relative to the directory's descriptor with `O_NOFOLLOW`, so
the file opened is the one checked, never where a planted link points.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Iterable
from pathlib import Path

_TRUSTED_OWNERS = (0,)


class UntrustedPath(PermissionError):
    """A directory or file another user could redirect: the daemon refuses to use it."""


def _owners(uid: int | None) -> tuple[int, ...]:
    return (*_TRUSTED_OWNERS, os.geteuid() if uid is None else uid)


def dir_problem(path: Path, uid: int | None = None) -> str | None:
    """Why the daemon (running as `uid`) must not write in `path`; None when it may.

    `path` must exist. Checks the path as given (its symlinks) and as resolved.
    """
    owners = _owners(uid)
    if ".." in Path(path).parts:  # abspath would drop "link/.." lexically; the kernel not
        return f"{path} has a '..' component: name the directory itself"
    path = Path(os.path.abspath(path))
    for p in (path, *path.parents):
        try:
            st = p.lstat()
        except OSError as exc:
            return f"cannot inspect {p}: {exc.strerror}"
        if stat.S_ISLNK(st.st_mode) and st.st_uid not in owners:
            return f"{p} is a symlink owned by uid {st.st_uid}"
    real = Path(os.path.realpath(path))
    try:
        st = real.stat()
    except OSError as exc:
        return f"cannot inspect {real}: {exc.strerror}"
    if not stat.S_ISDIR(st.st_mode):
        return f"{real} is not a directory"
    if st.st_uid not in owners:
        return f"{real} is owned by uid {st.st_uid}, not root or uid {owners[-1]}"
    if st.st_mode & 0o022:
        return f"{real} is writable by group or others (mode {stat.S_IMODE(st.st_mode):04o})"
    return _ancestors_problem(real.parents, real, owners)


def _ancestors_problem(
    ancestors: Iterable[Path], below: Path, owners: tuple[int, ...]
) -> str | None:
    """Why one of `ancestors` (resolved) lets another user rename what is below it."""
    for parent in ancestors:
        st = parent.stat()
        if st.st_uid not in owners:
            return f"{parent} (above {below}) is owned by uid {st.st_uid}"
        if st.st_mode & 0o022 and not st.st_mode & stat.S_ISVTX:
            mode = stat.S_IMODE(st.st_mode)
            return f"{parent} (above {below}) is writable by group or others (mode {mode:04o})"
    return None


def make_dir_problem(path: Path, uid: int | None = None) -> str | None:
    """Why `make_dir(path)` would refuse `path`; None when it would make or take it.

    An existing directory is judged by `dir_problem`. A missing one would be made by the
    daemon (and so be its own), so only the nearest existing ancestor and those above it
    count: a directory, reached through no link another user owns, none of them one
    another user controls."""
    path = Path(os.path.abspath(path))
    existing = path
    while not os.path.lexists(existing):
        existing = existing.parent
    if not os.path.isdir(existing):
        return f"{path} cannot be a directory: {existing} is not one"
    if existing == path:
        return dir_problem(path, uid)
    owners = _owners(uid)
    for p in (existing, *existing.parents):
        st = p.lstat()
        if stat.S_ISLNK(st.st_mode) and st.st_uid not in owners:
            return f"{p} is a symlink owned by uid {st.st_uid}"
    real = Path(os.path.realpath(existing))
    return _ancestors_problem((real, *real.parents), path, owners)


def check_dir(path: Path, uid: int | None = None) -> None:
    """Raise UntrustedPath with the reason when `path` is not a directory to write in."""
    problem = dir_problem(path, uid)
    if problem is not None:
        raise UntrustedPath(f"refusing {path}: {problem}")


def make_dir(path: Path, mode: int = 0o755, uid: int | None = None) -> None:
    """Create `path` (and missing parents, each with `mode`) if needed, then check it.

    An existing directory is used only if it passes `dir_problem`: one another user made
    first, or left writable, is refused rather than fixed, since its contents were theirs.
    """
    missing = []
    p = Path(os.path.abspath(path))
    while not os.path.lexists(p):
        missing.append(p)
        p = p.parent
    for d in reversed(missing):
        try:
            os.mkdir(d, mode)
        except FileExistsError:
            pass  # made by someone else in the meantime: the check below decides
        else:
            os.chmod(d, mode, follow_symlinks=False)  # mkdir's mode passed the umask
    check_dir(path, uid)


def file_problem(path: Path) -> str | None:
    """Why `open_append` would refuse the file at `path` as it is now (a symlink, not a
    regular file, a hard link); None when it is absent or usable."""
    try:
        st = path.lstat()
    except FileNotFoundError:
        return None
    except OSError as exc:
        return f"cannot inspect {path}: {exc.strerror}"
    if stat.S_ISLNK(st.st_mode):
        return f"{path} is a symlink"
    if not stat.S_ISREG(st.st_mode) or st.st_nlink > 1:
        return f"{path} is not a regular file with one link"
    return None


def open_append(path: Path, mode: int = 0o640, uid: int | None = None) -> int:
    """A descriptor to append to `path` in a checked directory, never through a symlink."""
    dir_fd, _ = _open_checked_dir(path.parent, uid)
    try:
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            fd = os.open(path.name, flags, mode, dir_fd=dir_fd)
        except OSError as exc:
            if exc.errno == errno.ELOOP:  # the name is a symlink
                raise UntrustedPath(f"refusing {path}: it is a symlink") from None
            raise
    finally:
        os.close(dir_fd)
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_nlink > 1:
        os.close(fd)
        raise UntrustedPath(f"refusing {path}: not a regular file with one link")
    return fd


def open_read(path: Path, uid: int | None = None) -> int:
    """A descriptor to read `path`, a plain file with one link in a checked directory,
    never through a symlink (a file another user planted is not read as ours)."""
    dir_fd, _ = _open_checked_dir(path.parent, uid)
    try:
        try:
            fd = os.open(path.name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise UntrustedPath(f"refusing {path}: it is a symlink") from None
            raise
    finally:
        os.close(dir_fd)
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_nlink > 1 or st.st_uid not in _owners(uid):
        os.close(fd)
        raise UntrustedPath(f"refusing {path}: not a plain file of ours with one link")
    return fd


def replace_file(path: Path, data: bytes, mode: int = 0o644, uid: int | None = None) -> None:
    """Replace `path` with `data` atomically (a reader sees the old file or the new, never
    half of one), in a checked directory: the data goes to a temporary name created
    O_EXCL|O_NOFOLLOW, then renamed over `path` (rename replaces a planted symlink itself,
    never its target)."""
    dir_fd, _ = _open_checked_dir(path.parent, uid)
    try:
        _replace_at(dir_fd, path.name, data, mode)
    finally:
        os.close(dir_fd)


def _open_checked_dir(path: Path, uid: int | None) -> tuple[int, os.stat_result]:
    """A descriptor of the directory `path` names, and its stat: opened first, then
    checked (`check_dir`), then compared with what the path names after the check, so
    that what is held is what was checked, whatever the path named in between."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        check_dir(path, uid)
        opened, named = os.fstat(fd), os.stat(path)
        if (opened.st_dev, opened.st_ino) != (named.st_dev, named.st_ino):
            raise UntrustedPath(f"refusing {path}: it changed while being checked")
        if not _private(opened, uid):
            raise UntrustedPath(f"refusing {path}: not private when opened")
    except BaseException:
        os.close(fd)
        raise
    return fd, opened


def _private(st: os.stat_result, uid: int | None) -> bool:
    """Owned by root or the daemon's uid, and writable by nobody else."""
    return st.st_uid in _owners(uid) and not st.st_mode & 0o022


def _replace_at(dir_fd: int, name: str, data: bytes, mode: int) -> None:
    tmp = f".{name}.tmp"
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(tmp, flags, mode, dir_fd=dir_fd)
    except FileExistsError:  # left by a write that died: ours, in our checked directory
        os.unlink(tmp, dir_fd=dir_fd)
        fd = os.open(tmp, flags, mode, dir_fd=dir_fd)
    try:
        try:
            os.fchmod(fd, mode)  # whatever the umask
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
        finally:
            os.close(fd)
        os.replace(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp, dir_fd=dir_fd)
        raise


class HeldDir:
    """A checked directory kept open, for a file replaced in it again and again (the
    metrics textfile, every tick).

    The whole check (`check_dir`: every ancestor and every link on the way, 0.2-0.3 ms
    with cold caches, more than the write itself) runs when the directory is first
    opened, and again whenever the path names another directory than the one held. In
    between, one stat of the path tells that, and that the directory is still owned by
    root or the daemon's uid and writable by nobody else. Writes go through the held
    descriptor: they land in the directory that was checked, whatever became of the path.
    """

    def __init__(self, path: Path, uid: int | None = None) -> None:
        self.path = path
        self.uid = uid
        self._fd = -1
        self._held: tuple[int, int] | None = None  # (st_dev, st_ino) of the held directory

    def replace_file(self, name: str, data: bytes, mode: int = 0o644) -> None:
        """`replace_file(self.path / name, data, mode)`, through the held directory."""
        st = os.stat(self.path)
        if (st.st_dev, st.st_ino) != self._held or not _private(st, self.uid):
            self.close()
            self._fd, opened = _open_checked_dir(self.path, self.uid)
            self._held = (opened.st_dev, opened.st_ino)
        _replace_at(self._fd, name, data, mode)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
        self._fd, self._held = -1, None
