"""The `daemon.socket` a config file names, read even when the file does not load.

The CLI finds the daemon through the config's socket. A config on disk that does not
load (an edit not reloaded yet, a key the daemon rejects) is not the config the daemon
runs: the daemon keeps the one it loaded before, whose socket the edited file still
names in all but rare cases. So `status` and `reload` read that one key as far as the
file lets them, reach the daemon, and then say what is wrong with the file, instead of
reporting a running daemon as down.
"""

# How far: the whole document when it is valid YAML (the bad keys are elsewhere, or are
# values the loader refuses); else the `daemon:` block alone, cut out of the text at the
# next top-level key (a syntax error in another section leaves it readable). The value
# is checked as the loader checks it; anything doubtful is None, never a guess.

from __future__ import annotations

import re
from pathlib import Path

import yaml
from yaml.nodes import MappingNode, Node

from supervisord_batt.config.values import absolute_path
from supervisord_batt.config.yamlcheck import Invalid, is_null
from supervisord_batt.paths import DEFAULT_SOCKET, default_socket_path

_DAEMON_KEY = re.compile(r"daemon\s*:\s*(#.*)?$")
_TOP_LEVEL = re.compile(r"[^\s#]")  # a line that starts a new top-level entry


def socket_named(text: str) -> Path | None:
    """The socket a client of this config uses (the default when it names none); None
    when the file cannot tell."""
    for document in (text, _daemon_block(text)):
        if document is None:
            continue
        try:
            root = yaml.compose(document, Loader=yaml.SafeLoader)
        except yaml.YAMLError:
            continue
        return _socket_of(root)
    return None


def _socket_of(root: Node | None) -> Path | None:
    if root is None:  # an empty document: the default
        return default_socket_path(DEFAULT_SOCKET)
    node: Node = root
    for key in ("daemon", "socket"):
        if is_null(node):  # an empty section: the default
            return default_socket_path(DEFAULT_SOCKET)
        if not isinstance(node, MappingNode):
            return None
        found = [v for k, v in node.value if getattr(k, "value", None) == key]
        if len(found) > 1:  # refused by the loader: which one the daemon had is unknown
            return None
        if not found:
            return default_socket_path(DEFAULT_SOCKET)
        node = found[0]
    try:
        return default_socket_path(absolute_path(node))
    except Invalid:
        return None


def _daemon_block(text: str) -> str | None:
    """The lines of the top-level `daemon:` entry, as a document of their own."""
    lines = text.splitlines()
    for start, line in enumerate(lines):
        if _DAEMON_KEY.match(line):
            end = next(
                (i for i in range(start + 1, len(lines)) if _TOP_LEVEL.match(lines[i])),
                len(lines),
            )
            return "\n".join(lines[start:end]) + "\n"
    return None
