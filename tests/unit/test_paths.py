"""Default paths: the config search order and where the socket goes for each uid."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from supervisord_batt import paths
from supervisord_batt.paths import client_socket_path, default_config_path, default_socket_path

# --------------------------------------------------------------------- socket path


def test_socket_path_root_keeps_configured() -> None:
    configured = Path("/run/supervisord-batt/supervisord-batt.sock")
    assert default_socket_path(configured, uid=0, env={}) == configured


def test_socket_path_non_root_unwritable_uses_xdg_runtime_dir(tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o755)  # owned by the test's uid, not by uid 54321
    configured = locked / "sub" / "s.sock"
    got = default_socket_path(configured, uid=54321, env={"XDG_RUNTIME_DIR": "/run/user/54321"})
    assert got == Path("/run/user/54321/supervisord-batt/supervisord-batt.sock")


def test_socket_path_non_root_without_xdg_uses_tmp(tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o755)
    for env in ({}, {"XDG_RUNTIME_DIR": ""}, {"XDG_RUNTIME_DIR": "relative"}):
        got = default_socket_path(locked / "s.sock", uid=54321, env=env)
        assert got == Path("/tmp/supervisord-batt-54321/supervisord-batt.sock")


def test_socket_path_non_root_writable_keeps_configured(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    configured = shared / "new-dir" / "s.sock"
    assert default_socket_path(configured, uid=54321, env={"XDG_RUNTIME_DIR": "/x"}) == configured


def test_socket_path_own_uid_uses_access(tmp_path: Path) -> None:

    configured = tmp_path / "s.sock"
    assert default_socket_path(configured, uid=os.geteuid(), env={}) == configured


def test_socket_path_existing_socket_is_kept(tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o755)
    existing = locked / "s.sock"
    existing.touch()
    assert default_socket_path(existing, uid=54321, env={"XDG_RUNTIME_DIR": "/x"}) == existing


# --------------------------------------------------------------------- config path


def test_default_config_path_env_wins(tmp_path: Path) -> None:
    chosen = tmp_path / "mine.yaml"
    assert default_config_path({"SUPERVISORD_BATT_CONFIG": str(chosen)}) == chosen


def test_default_config_path_env_var_from_environ(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    chosen = tmp_path / "mine.yaml"
    monkeypatch.setenv("SUPERVISORD_BATT_CONFIG", str(chosen))
    assert default_config_path() == chosen


def test_default_config_path_search_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    etc, package, source = tmp_path / "etc.yaml", tmp_path / "pkg.yaml", tmp_path / "src.yaml"
    monkeypatch.setattr(paths, "ETC_CONFIG", etc)
    monkeypatch.setattr(paths, "PACKAGE_CONFIG", package)
    monkeypatch.setattr(paths, "SOURCE_CONFIG", source)
    assert default_config_path({}) == source
    package.write_text("")
    assert default_config_path({}) == package
    etc.write_text("")
    assert default_config_path({}) == etc
    assert default_config_path({"SUPERVISORD_BATT_CONFIG": ""}) == etc


def test_source_checkout_path_is_the_shipped_config() -> None:
    assert paths.SOURCE_CONFIG.is_file()
    assert paths.SOURCE_CONFIG.parent.name == "config"


def test_client_socket_path_env_wins() -> None:
    assert client_socket_path({"SUPERVISORD_BATT_SOCKET": "/x/y.sock"}) == Path("/x/y.sock")


def test_client_and_daemon_agree_on_the_default(tmp_path: Path) -> None:
    """One source for the default socket: the client finds the daemon's, whoever runs it."""
    assert client_socket_path({}) == default_socket_path(paths.DEFAULT_SOCKET, env={})


def test_every_environment_variable_name_is_spelled_in_paths_only() -> None:
    """A name like SUPERVISORD_BATT_SOCKET written as a string literal anywhere else in the
    package would be a second home that can drift from the first."""
    package = Path(paths.__file__).parent
    spelled = re.compile(r"""["']SUPERVISORD_BATT_""")
    found = [
        f"{path.relative_to(package)}:{n}"
        for path in sorted(package.rglob("*.py"))
        if path.name != "paths.py" or path.parent != package
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if spelled.search(line)
    ]
    assert found == []
    assert len({v for k, v in vars(paths).items() if k.endswith("_ENV")}) >= 12
