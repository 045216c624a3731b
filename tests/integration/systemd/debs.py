"""The Debian packages the package tests install, built by packaging/build-deb and cached.

A build takes about 40 s (dh-virtualenv: a venv, pip, dpkg-deb), so each package is kept
in the checkout's .cache/debs/ (git-ignored), under a key of what went into it: for this
checkout, the content of every file the build copies but the tests, benchmarks and docs/
(tracked, and untracked but not ignored: an edit not yet committed builds a new package,
where a commit id would serve the old one); for the previous release, its commit and this
checkout's debian/ and build script, which its build uses. A new build removes the older
ones of the same name.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from tests.helpers import REPO

BUILD = REPO / "packaging" / "build-deb"
CACHE = REPO / ".cache" / "debs"
TOOLS = ("dpkg-buildpackage", "dh", "dh_virtualenv", "dpkg-deb")


def cannot_build() -> str | None:
    """Why this machine cannot build the package, or None."""
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing or not Path("/usr/bin/python3").is_file():
        return f"no {', '.join(missing) or '/usr/bin/python3'} (apt-get install dh-virtualenv)"
    return None


def debian_version(version: str) -> str:
    """The Debian version of a Python version: pre-releases sort before the release."""
    version = re.sub(r"\.?(dev|a|b|rc)(\d+)", r"~\1\2", version, count=1)
    return re.sub(r"\.?post(\d+)", r"+post\1", version, count=1)


def _digest(root: Path, names: list[str], seed: str = "") -> str:
    h = hashlib.sha256(seed.encode())
    for name in sorted(names):
        path = root / name
        h.update(name.encode() + b"\0")
        if path.is_symlink():
            h.update(b"link:" + os.readlink(path).encode())
        elif path.is_file():
            h.update(path.read_bytes())
    return h.hexdigest()[:16]


def _files(root: Path, *under: str) -> list[str]:
    out = subprocess.run(
        ["git", "-C", str(root), "ls-files", "-z", "-c", "-o", "--exclude-standard", *under],
        capture_output=True,
        check=True,
        timeout=60,
    ).stdout
    return [name for name in out.decode().split("\0") if name]


# what the build copies but the package does not hold: editing a test builds no package
NOT_PACKAGED = (":!tests", ":!benchmarks", ":!docs", ":!.ci")


def checkout_key() -> str:
    return _digest(REPO, _files(REPO, ".", *NOT_PACKAGED))


def release_key(commit: str) -> str:
    return _digest(REPO, _files(REPO, "debian", "packaging"), seed=commit)


@dataclass
class Build:
    """A package being built (or found in the cache): `finish` gives its .deb."""

    name: str
    done: Path  # the cache directory it ends up in
    work: Path | None = None  # the build's own directory while it runs
    proc: subprocess.Popen[str] | None = None

    def finish(self) -> Path:
        if self.proc is None:
            return cached(self.done)
        assert self.work is not None
        try:
            out, err = self.proc.communicate(timeout=900)
            assert self.proc.returncode == 0, f"{BUILD} failed:\n{err[-6000:]}"
            deb = Path(out.split()[-1])
            for stale in CACHE.glob(f"{self.name}-*"):
                shutil.rmtree(stale, ignore_errors=True)
            try:
                self.work.rename(self.done)
            except OSError:  # another session built the same meanwhile
                if not (self.done / deb.name).is_file():
                    raise
        finally:
            self.abandon()
        return self.done / deb.name

    def abandon(self) -> None:
        """Stops the build if it still runs and removes what it left (a no-op once done)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate()
        if self.work is not None:
            shutil.rmtree(self.work, ignore_errors=True)


def cached(done: Path) -> Path:
    debs = sorted(done.glob("*.deb"))
    assert debs, f"no package in {done}"
    return debs[0]


def start(source: Path, name: str, key: str) -> Build:
    """Starts building the .deb of `source`, unless one built with the same `key` is in
    the cache. Two builds started before either is finished run side by side: most of a
    build's time is dh-virtualenv's pip and byte-compiling, one CPU each, and the
    upgrade test needs two packages."""
    done = CACHE / f"{name}-{key}"
    if done.is_dir() and any(done.glob("*.deb")):
        return Build(name, done)
    CACHE.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=CACHE))
    cmd = [str(BUILD), "-o", str(work), str(source)]
    pipe = subprocess.PIPE
    proc = subprocess.Popen(cmd, stdout=pipe, stderr=pipe, text=True)
    return Build(name, done, work, proc)


def repack(deb: Path, version: str) -> Path:
    """`deb` as it is but for a higher version (a later release for an upgrade), in a
    directory beside it."""
    out = deb.parent / "repacked" / f"supervisord-batt_{version}_{deb.name.rsplit('_', 1)[1]}"
    if out.is_file():
        return out
    out.parent.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        tree = Path(tmp) / "tree"
        subprocess.run(["dpkg-deb", "-R", str(deb), str(tree)], check=True, timeout=300)
        control = tree / "DEBIAN" / "control"
        text = re.sub(r"^Version: .*$", f"Version: {version}", control.read_text(), flags=re.M)
        control.write_text(text)
        made = Path(tmp) / out.name
        subprocess.run(
            ["dpkg-deb", "--root-owner-group", "-Zgzip", "-z1", "-b", str(tree), str(made)],
            check=True,
            capture_output=True,
            timeout=300,
        )
        made.rename(out)
    return out
