"""The Debian package's own files (debian/): the config it installs in /etc and its
version. How they behave installed is tests/integration/systemd/test_package.py."""

from __future__ import annotations

import importlib.metadata
import re

from supervisord_batt import __version__
from supervisord_batt.config.loader import load_config_text
from supervisord_batt.paths import DEFAULT_SOCKET
from tests.helpers import REPO

PACKAGED = REPO / "debian" / "supervisord-batt.yaml"


def test_the_packaged_config_lets_the_group_lease_and_runs_no_program() -> None:
    # without the host's checks: the group is made by the package's postinst
    config = load_config_text(PACKAGED.read_text(), str(PACKAGED))
    daemon = config.daemon
    assert daemon.socket == DEFAULT_SOCKET
    assert (daemon.socket_mode, daemon.socket_group) == (0o660, "supervisord-batt")
    assert daemon.allowed_groups == ("supervisord-batt",)
    assert daemon.admin_groups == () and daemon.allowed_uids == ()
    assert config.programs == ()
    assert "/opt/venvs/supervisord-batt/bin/python" in PACKAGED.read_text()


def test_the_package_and_the_wheel_have_one_version() -> None:
    """packaging/build-deb takes the .deb's version from __version__, and so does the
    wheel: pyproject declares the version dynamic, read by hatch from that one line."""
    pyproject = (REPO / "pyproject.toml").read_text()
    assert re.search(r"^version\s*=", pyproject, re.M) is None
    assert re.search(r'^dynamic = \["version"\]$', pyproject, re.M)
    hatch = re.search(r'^\[tool\.hatch\.version\]\npath = "(.+)"$', pyproject, re.M)
    assert hatch is not None and hatch.group(1) == "supervisord_batt/__init__.py"
    assert importlib.metadata.version("supervisord-batt") == __version__
