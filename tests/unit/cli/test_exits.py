"""The CLI's exit statuses have one home (cli/exits.py): no verb returns a bare number, and
docs/CLI.md gives the same meaning to each."""

from __future__ import annotations

import re

from supervisord_batt.cli import exits
from tests.helpers import REPO

CLI = REPO / "supervisord_batt" / "cli"


def test_no_verb_returns_a_bare_number() -> None:
    bare = re.compile(r"\b(return|exit\(|SystemExit\()\s*\d+\b")
    found = [
        f"{path.name}:{n}"
        for path in sorted(CLI.glob("*.py"))
        if path.name != "exits.py"
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if bare.search(line)
    ]
    assert found == []


def test_the_docs_give_each_status_its_meaning() -> None:
    text = (REPO / "docs" / "CLI.md").read_text()
    section = text.split("## Exit status", 1)[1].split("\n## ", 1)[0]
    for name in ("OK", "FAILED", "UNAVAILABLE", "INTERRUPTED"):
        value = getattr(exits, name)
        assert re.search(rf"^- `{value}` ", section, re.M), name
