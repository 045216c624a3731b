"""The previous release, for the upgrade tests: CHANGELOG.md names each release with its
commit; its source is that commit's tree (its tag's, when the clone has the tag)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

from tests.helpers import REPO

# PSI thresholds for a config the previous release loads: its highest (it reads no
# `off`), which only a saturated host reaches
RELEASE_CALM = {"cpu_high": 99, "cpu_extreme": 100, "memory_high": 99, "memory_extreme": 100}


def release_budget(budget: dict[str, Any]) -> dict[str, Any]:
    """A budget section the previous release loads too: its pressure thresholds as it
    reads them, and none of the keys it does not know (burst_window came after it)."""
    out = {k: v for k, v in budget.items() if k != "burst_window"}
    out["pressure"] = RELEASE_CALM
    return out


_RELEASE = re.compile(r"^## (\d+\.\d+\.\d+) \(\S+, commit ([0-9a-f]{7,40})\)", re.M)


def previous_release() -> tuple[str, str]:
    """(version, commit) of the newest release CHANGELOG.md names with its commit."""
    found = _RELEASE.search((REPO / "CHANGELOG.md").read_text())
    assert found, "CHANGELOG.md names no release with its commit"
    return found.group(1), found.group(2)


def git(*args: str) -> bytes:
    return subprocess.run(
        ["git", "-C", str(REPO), *args], check=True, capture_output=True, timeout=60
    ).stdout


def release_ref() -> tuple[str, str]:
    """(version, the tag v<version> if the clone has it, else the commit)."""
    version, commit = previous_release()
    tag = f"v{version}"
    has_tag = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "-q", "--verify", f"{tag}^{{commit}}"],
        capture_output=True,
        check=False,
    )
    return version, tag if has_tag.returncode == 0 else commit


def release_source(dest: Path) -> str:
    """Extract the previous release's tree into `dest` (made); its version."""
    version, ref = release_ref()
    dest.mkdir(parents=True)
    archive = git("archive", "--format=tar", ref)
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True, timeout=60)
    return version
