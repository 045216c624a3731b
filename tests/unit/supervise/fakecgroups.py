"""A cgroup v2 directory in a temp dir: the interface files the worker-cgroup code reads
(a regular file keeps the last value written, as cgroupfs shows it)."""

from __future__ import annotations

from pathlib import Path


def v2_cgroup(path: Path, controllers: str, subtree: str = "", root: bool = False) -> Path:
    """A fake v2 cgroup directory: the interface files plan_v2 reads."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "cgroup.controllers").write_text(controllers + "\n")
    (path / "cgroup.subtree_control").write_text(subtree + "\n")
    (path / "cgroup.procs").write_text("")
    if not root:
        (path / "cgroup.type").write_text("domain\n")
    return path
