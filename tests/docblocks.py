"""The code blocks of the project's Markdown documents, for the tests that run them.

A block is fenced with its kind: `sh` (commands: parsed, their programs found, each
`supervisord-batt` command line parsed by the CLI's own parser), `console` (a session:
the `$ ` lines are commands, the rest their output), `python` (executed against a real
daemon), `yaml` (loaded; a config fragment by the config loader), `protocol` (the wire
examples of docs/PROTOCOL.md, held to the protocol's types) and `text` (output, shown
as it is). An indented code block has no kind, so no test could know what to do with
it: the documents have none.
"""

from __future__ import annotations

import re
import shlex
import shutil
from dataclasses import dataclass
from pathlib import Path

from tests.helpers import REPO

KINDS = ("sh", "console", "python", "yaml", "protocol", "text")
# Documents another branch is rewriting (its fences land with it): listed, so that the
# exception is seen, and removed once that branch is merged.
NOT_YET_FENCED: set[str] = set()

_FENCE = re.compile(r"^(`{3,}|~{3,})(.*)$")


@dataclass(frozen=True)
class Block:
    document: str  # relative to the repository
    line: int  # of the opening fence, 1-based
    kind: str
    text: str

    @property
    def where(self) -> str:
        return f"{self.document}:{self.line}"


def documents() -> list[str]:
    """Every Markdown document of the project, relative to the repository."""
    found = [*REPO.glob("*.md"), *REPO.glob("docs/*.md"), *REPO.glob("systemd/*.md")]
    return sorted(str(p.relative_to(REPO)) for p in found)


def checked_documents() -> list[str]:
    return [d for d in documents() if d not in NOT_YET_FENCED]


def blocks_of(text: str, document: str) -> list[Block]:
    """The fenced blocks of a Markdown text, with the kind named after the fence."""
    out: list[Block] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        opening = _FENCE.match(lines[i])
        if opening is None:
            i += 1
            continue
        fence, info = opening.group(1), opening.group(2).strip()
        body: list[str] = []
        j = i + 1
        while j < len(lines) and not lines[j].startswith(fence):
            body.append(lines[j])
            j += 1
        out.append(Block(document, i + 1, info.split(" ")[0], "\n".join(body) + "\n"))
        i = j + 1
    return out


def indented_blocks(text: str) -> list[int]:
    """Lines (1-based) where an indented code block starts outside the fences: a line
    indented 4 spaces or more after a blank line, not continuing a list item."""
    found: list[int] = []
    in_fence, previous, in_list = "", "", False
    for number, line in enumerate(text.splitlines(), 1):
        opening = _FENCE.match(line)
        if in_fence:
            if line.startswith(in_fence):
                in_fence = ""
        elif opening is not None:
            in_fence = opening.group(1)
        elif line.strip():
            if re.match(r"^\s*([-*+]|\d+\.) ", line):
                in_list = True
            elif not line.startswith(" "):
                in_list = False
            if not previous.strip() and line.startswith("    ") and not in_list:
                found.append(number)
        previous = line
    return found


def blocks(document: str) -> list[Block]:
    return blocks_of((REPO / document).read_text(), document)


def all_blocks(kind: str | None = None) -> list[Block]:
    """Every fenced block of the checked documents (of one kind)."""
    out = [b for d in checked_documents() for b in blocks(d)]
    return [b for b in out if kind is None or b.kind == kind]


# -- shell -----------------------------------------------------------------------------

_OPERATORS = {"|", "||", "&&", ";", "&", "(", ")", "{", "}", "!"}
_REDIRECTS = {">", ">>", "<", "<<", "2>", "&>", ">&", "<<<"}


def shell_text(block: Block) -> str:
    """The commands of an `sh` block, or the `$ ` lines of a `console` block."""
    if block.kind == "console":
        return "".join(line[2:] + "\n" for line in block.text.splitlines() if line[:2] == "$ ")
    return block.text


def commands(script: str) -> list[list[str]]:
    """The simple commands of a shell script, as words, with what is not part of the
    command left out: comments, leading assignments, redirections and their targets,
    here-documents' bodies. Enough for the documents' commands, not a shell."""
    out: list[list[str]] = []
    lines = script.replace("\\\n", " ").splitlines()
    i = 0
    while i < len(lines):
        lexer = shlex.shlex(lines[i], posix=True, punctuation_chars=";&|()<>")
        lexer.whitespace_split = True
        lexer.commenters = "#"
        words = list(lexer)
        i += 1
        for k, word in enumerate(words):  # a here-document: skip its body
            if word == "<<" and k + 1 < len(words):
                end = words[k + 1]
                while i < len(lines) and lines[i].strip() != end:
                    i += 1
                i += 1
        current: list[str] = []
        skip_next = False
        for word in words:
            if skip_next:
                skip_next = False
            elif word in _REDIRECTS or re.fullmatch(r"\d?[<>]+&?\d*", word):
                skip_next = not re.fullmatch(r".*&\d", word)
            elif word in _OPERATORS or set(word) <= set(";&|"):
                if current:
                    out.append(current)
                current = []
            elif not current and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", word):
                continue  # an assignment before the command
            else:
                current.append(word)
        if current:
            out.append(current)
    return out


def venvs_made(script: str) -> list[Path]:
    """The directories a script makes virtual environments in (`python3 -m venv DIR`)."""
    made = []
    for words in commands(script):
        if len(words) >= 4 and words[1:3] == ["-m", "venv"]:
            made.append(Path(words[-1]))
    return made


def first_block(document: str, heading: str, kind: str = "sh") -> Block:
    """The first block of `kind` after the first line that starts with `heading`."""
    lines = (REPO / document).read_text().splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith(heading)), None)
    assert start is not None, f"no line {heading!r}... in {document}"
    for block in blocks_of("\n".join(lines[start + 1 :]), document):
        if block.kind == kind:
            return Block(document, block.line + start + 1, kind, block.text)
    raise AssertionError(f"no {kind} block after {heading!r} in {document}")


def command_lines(block: Block) -> list[str]:
    """The lines of a block that are not blank or comments."""
    return [
        line.strip()
        for line in block.text.splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]


def resolve(program: str, path: str, made: list[Path], cwd: Path = REPO) -> Path | None:
    """Where `program` is: a path (relative to `cwd`), under a venv made earlier in the
    same block, or on `path`."""
    if "/" in program:
        candidate = cwd / program
        if candidate.exists():
            return candidate
        if any(Path(program).is_relative_to(venv) for venv in made):
            return candidate
        return None
    found = shutil.which(program, path=path)
    return Path(found) if found else None
