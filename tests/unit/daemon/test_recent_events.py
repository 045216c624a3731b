"""The status reply's recent events: the cached parse against parsing every line."""

from __future__ import annotations

import json
import random
from typing import Any

from supervisord_batt.daemon.status import parse_event, parse_events


def _line(rng: random.Random) -> str:
    choice = rng.randrange(10)
    if choice == 0:
        return "not json {"
    if choice == 1:
        return json.dumps([1, 2])  # JSON, but not an event
    event = {"event": rng.choice(["spawned", "exited", "stats"]), "pid": rng.randrange(5)}
    return json.dumps(event)


def test_cached_parses_equal_parsing_every_line() -> None:
    """A stream of statuses over a window of recent lines that slides by 0-5 lines each
    time, with repeats (the same line text twice) and unparsable lines."""
    rng = random.Random(7)
    stream = [_line(rng) for _ in range(2000)]
    seen: dict[str, dict[str, Any]] = {}
    end = 20
    while end < len(stream):
        lines = stream[end - 20 : end]
        events = parse_events(lines, seen)
        assert events == [parse_event(line) for line in lines]
        seen = dict(zip(lines, events, strict=True))
        end += rng.randrange(6)


def test_a_line_not_seen_is_parsed_and_one_seen_is_reused() -> None:
    old = json.dumps({"event": "old"})
    new = json.dumps({"event": "new"})
    first = parse_events([old], {})
    again = parse_events([old, new], dict(zip([old], first, strict=True)))
    assert again == [{"event": "old"}, {"event": "new"}]
    assert again[0] is first[0]


def test_an_unparsable_line_is_an_event_not_an_error() -> None:
    assert parse_event("{oops") == {"event": "unparsable", "line": "{oops"}
    assert parse_event("[1]") == {"event": "unparsable"}
