"""The socket a config names, read from a file that does not load (issue 25): what the
CLI reaches the running daemon through, and where it must not guess."""

from __future__ import annotations

from pathlib import Path

import pytest

from supervisord_batt.config.loader import load_config_text
from supervisord_batt.config.socketkey import socket_named
from supervisord_batt.config.yamlcheck import ConfigError
from supervisord_batt.paths import DEFAULT_SOCKET, default_socket_path

NAMED = "daemon:\n  log_level: info\n  socket: /run/other/s.sock\n"


@pytest.mark.parametrize(
    "rest",
    [
        "  sample_interval: soon\n",  # a value the loader refuses
        "  sampel_interval: 1s\n",  # an unknown key
        "programs:\n  batt: {command: [a, b]\n",  # YAML broken after the daemon section
        "programs:\n\tbatt: {}\n",  # a tab: no YAML at all
    ],
)
def test_the_socket_is_read_from_a_file_that_does_not_load(rest: str) -> None:
    text = NAMED + rest
    with pytest.raises(ConfigError):
        load_config_text(text)
    assert socket_named(text) == default_socket_path(Path("/run/other/s.sock"))


def test_a_broken_section_before_the_daemon_one_leaves_it_readable() -> None:
    text = "budget:\n  reserve_tasks: [1\n" + NAMED
    assert socket_named(text) == default_socket_path(Path("/run/other/s.sock"))


def test_no_socket_key_is_the_default() -> None:
    for text in ("", "daemon:\n", "daemon:\n  log_level: info\n", "programs: {}\n"):
        assert socket_named(text) == default_socket_path(DEFAULT_SOCKET), text


@pytest.mark.parametrize(
    "text",
    [
        "daemon:\n  socket: relative.sock\n",  # the loader refuses it: so do we
        "daemon:\n  socket: /a/../b.sock\n",
        "daemon:\n  socket: [/a.sock]\n",
        "daemon:\n  socket:\n",
        "daemon:\n  socket: /a.sock\n  socket: /b.sock\n",  # which one the daemon had?
        "daemon:\n  socket: [/a.sock\n",  # the daemon section itself broken
        "daemon: [1, 2]\n",
        "- a list\n",
    ],
)
def test_a_doubtful_socket_is_none_never_a_guess(text: str) -> None:
    assert socket_named(text) is None
