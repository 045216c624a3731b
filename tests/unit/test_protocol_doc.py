"""Issue 22: docs/PROTOCOL.md's examples hold to the protocol's types.

Every `->` line of the document's `protocol` blocks (with the lines indented past it) must
be a request `protocol.decode` accepts; every `<-` must have exactly the shape of the reply
to the request before it (`protocol.REPLIES`, or `ErrorReply`), no key missing and none more.
The document had drifted from the daemon (a sequential grant said `workers: 1`; the
daemon sends 0): the daemon's side is held to the same types by
tests/integration/daemon/test_reply_shapes.py.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from supervisord_batt import protocol, shapes
from tests import docblocks

DOC = "docs/PROTOCOL.md"
_ARROW = re.compile(r"^(\s*)(->|<-) (.*)$")


def examples() -> list[tuple[int, str, str]]:
    """(line number, arrow, JSON text) of each example in the document's `protocol`
    blocks: an arrow line and the lines indented past it."""
    found = []
    for block in docblocks.blocks(DOC):
        if block.kind != "protocol":
            continue
        lines = block.text.splitlines()
        i = 0
        while i < len(lines):
            match = _ARROW.match(lines[i])
            assert match is not None, f"{DOC}:{block.line + 1 + i}: not an example line"
            indent, number, text = len(match.group(1)), block.line + 1 + i, [match.group(3)]
            i += 1
            while i < len(lines) and lines[i].strip() and not _ARROW.match(lines[i]):
                assert len(lines[i]) - len(lines[i].lstrip()) > indent, f"{DOC}:{number}"
                text.append(lines[i].strip())
                i += 1
            found.append((number, match.group(2), " ".join(text)))
    return found


def pairs() -> list[tuple[int, str, dict[str, Any]]]:
    """(line, the op answered, the reply) for each `<-`: it answers the `->` before it."""
    out, op = [], None
    for number, arrow, text in examples():
        message = json.loads(text)
        if arrow == "->":
            op = message["op"]
        else:
            assert op is not None, f"line {number}: a reply before any request"
            out.append((number, op, message))
    return out


def test_there_are_examples_of_every_reply_and_an_error() -> None:
    replied = {protocol.REPLIES[op] for _, op, reply in pairs() if reply["ok"]}
    assert replied == set(protocol.REPLIES.values())
    assert any(not reply["ok"] for _, _, reply in pairs())


@pytest.mark.parametrize(
    ("number", "text"), [(n, t) for n, arrow, t in examples() if arrow == "->"]
)
def test_every_request_example_is_a_request_the_daemon_accepts(number: int, text: str) -> None:
    assert protocol.decode(text.encode()) == json.loads(text), f"line {number}"


@pytest.mark.parametrize(("number", "op", "reply"), pairs())
def test_every_reply_example_has_exactly_its_ops_shape(
    number: int, op: str, reply: dict[str, Any]
) -> None:
    shape: Any = protocol.REPLIES[op] if reply["ok"] else protocol.ErrorReply
    assert shapes.problems(shape, reply, strict=True) == [], f"line {number}"


def test_issue_22_a_sequential_grant_has_no_workers_in_the_document() -> None:
    grants = [r for _, op, r in pairs() if op in ("acquire", "renew") and r["ok"]]
    sequential = [g for g in grants if g["kind"] == "sequential"]
    assert sequential, "the document shows a sequential grant"
    assert {g["workers"] for g in sequential} == {0}
