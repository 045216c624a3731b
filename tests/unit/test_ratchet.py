"""The complexity ratchet's exceptions: every `# noqa` for C901 / PLR0912 / PLR0915 in the
package sits on a `def` under a comment saying why it stays, and docs/DEVELOPMENT.md
lists exactly those functions with exactly those codes."""

from __future__ import annotations

import ast
import re

from tests.helpers import REPO

RULES = ("C901", "PLR0912", "PLR0915")
MARK = re.compile(r"^\s*(?:async\s+)?def (\w+)\(.*#\s*noqa:\s*([A-Z0-9, ]+)$")


def marked_in_code() -> set[tuple[str, str, str]]:
    found = set()
    for path in sorted((REPO / "supervisord_batt").rglob("*.py")):
        lines = path.read_text().splitlines()
        for i, line in enumerate(lines):
            codes = {c.strip() for c in line.partition("# noqa:")[2].split(",")} & set(RULES)
            if not codes:
                continue
            m = MARK.match(line)
            assert m, f"{path.relative_to(REPO)}:{i + 1}: a complexity noqa off a def line"
            assert re.match(r"\s*# (complexity|length) kept: ", _comment_start(lines, i)), (
                f"{path.relative_to(REPO)}:{i + 1}: {m.group(1)} has no reason above it"
            )
            rel = str(path.relative_to(REPO))
            found.add((rel, m.group(1), ", ".join(sorted(codes))))
    return found


def _comment_start(lines: list[str], def_line: int) -> str:
    """The first line of the comment block right above line `def_line`."""
    i = def_line
    while i > 0 and lines[i - 1].lstrip().startswith("#"):
        i -= 1
    return lines[i] if i < def_line else ""


def listed_in_docs() -> set[tuple[str, str, str]]:
    text = (REPO / "docs" / "DEVELOPMENT.md").read_text()
    section = text.split("## The complexity ratchet", 1)[1]
    block = section.split("```text\n", 1)[1].split("```", 1)[0]
    rows = set()
    for line in block.splitlines():
        path, func, rest = line.split(None, 2)
        codes = re.match(r"((?:[A-Z0-9]+, )*[A-Z0-9]+)\s", rest)
        assert codes, line
        rows.add((path, func, ", ".join(sorted(codes.group(1).split(", ")))))
    return rows


def test_every_exception_is_marked_with_a_reason_and_listed() -> None:
    assert marked_in_code() == listed_in_docs()


def test_the_ratchet_is_on_for_the_package() -> None:
    pyproject = (REPO / "pyproject.toml").read_text()
    assert re.search(r"^\[tool\.ruff\.lint\.mccabe\]\nmax-complexity = 12$", pyproject, re.M)
    select = re.search(r"^select = \[(.*)\]$", pyproject, re.M)
    ignore = re.search(r"^ignore = \[(.*)\]$", pyproject, re.M)
    assert select and '"C90"' in select.group(1)
    assert ignore and not any(rule in ignore.group(1) for rule in RULES)


def test_a_module_over_500_lines_says_why_it_is_one_module() -> None:
    long = [
        str(path.relative_to(REPO))
        for path in sorted((REPO / "supervisord_batt").rglob("*.py"))
        if len(path.read_text().splitlines()) > 500
        and "\n# Why one module\n" not in (ast.get_docstring(ast.parse(path.read_text())) or "")
    ]
    assert long == []


def test_no_test_module_imports_a_conftest_or_another_test_module() -> None:
    """Builders shared by tests live in tests/support; a conftest.py holds fixtures only."""
    found = []
    for path in sorted((REPO / "tests").rglob("*.py")) + sorted(
        (REPO / "benchmarks").rglob("*.py")
    ):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                last = node.module.rsplit(".", 1)[-1]
                if last == "conftest" or last.startswith("test_"):
                    found.append(f"{path.relative_to(REPO)}: from {node.module}")
    assert found == []
