"""Under journald each line starts with its syslog priority, and the JSON is unchanged."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from supervisord_batt import logs


@pytest.fixture
def log_file(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "out.log"
    yield path
    logs.configure("json", logs.LEVELS["info"])  # back to stdout for the other tests


def _journal_of(path: Path) -> str:
    st = os.stat(path)
    return f"{st.st_dev}:{st.st_ino}"


def test_lines_carry_their_priority_when_the_stream_is_the_journal(
    log_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log_file.touch()
    monkeypatch.setenv("JOURNAL_STREAM", _journal_of(log_file))
    logs.configure("json", logs.LEVELS["debug"], log_file)
    log = logs.get_logger(component="t")
    log.debug("d", n=1)
    log.info("i")
    log.warning("w")
    log.error("e")
    logs.flush()
    lines = log_file.read_text().splitlines()
    assert [line[:3] for line in lines] == ["<7>", "<6>", "<4>", "<3>"]
    events = [json.loads(line[3:]) for line in lines]
    assert [e["event"] for e in events] == ["d", "i", "w", "e"]
    assert events[0]["n"] == 1 and events[0]["level"] == "debug"


def test_no_prefix_when_journal_stream_names_another_file(
    log_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    other = tmp_path / "other"
    other.touch()
    monkeypatch.setenv("JOURNAL_STREAM", _journal_of(other))
    logs.configure("json", logs.LEVELS["info"], log_file)
    logs.get_logger().info("plain")
    logs.flush()
    assert json.loads(log_file.read_text())["event"] == "plain"


@pytest.mark.parametrize("value", ["", "junk", "1:", ":2", "a:b"])
def test_a_malformed_journal_stream_means_not_the_journal(value: str, log_file: Path) -> None:
    log_file.touch()
    with open(log_file) as f:
        assert not logs.is_journal(f, {"JOURNAL_STREAM": value})
        assert logs.is_journal(f, {"JOURNAL_STREAM": _journal_of(log_file)})
