"""Every default path and environment variable name, in one place.

The daemon, the CLI and the job-side client all find the config and the socket here, so
a job and the daemon it talks to can never disagree on where the socket is by default.
Standard library only: the client imports this, and a job must not load the daemon.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Mapping
from pathlib import Path

CONFIG_ENV = "SUPERVISORD_BATT_CONFIG"  # the config file, for the daemon and the CLI
SOCKET_ENV = "SUPERVISORD_BATT_SOCKET"  # the socket, for the CLI and jobs
FALLBACK_ENV = "SUPERVISORD_BATT_FALLBACK"  # what a job runs when the daemon is away
KEEP_ALIVE_ENV = "SUPERVISORD_BATT_KEEP_ALIVE"  # idle seconds joblib keeps a pool (0: none)
INSTANCE_ENV = "SUPERVISORD_BATT_INSTANCE"  # set in each supervised worker: "batt:0"
WORKERS_ENV = "SUPERVISORD_BATT_WORKERS"  # exported by `exec`: the granted worker count
KIND_ENV = "SUPERVISORD_BATT_KIND"  # exported by `exec`: the granted pool kind
LEASE_ENV = "SUPERVISORD_BATT_LEASE"  # exported by `exec`: the lease id
DEBUG_STALL_ENV = "SUPERVISORD_BATT_DEBUG_STALL"  # "1": SIGUSR2 stalls the loop (tests)
WANT_ENV = "SUPERVISORD_BATT_WANT"  # set in each supervised worker: its program's slots
# bytes one worker of the job takes, as declared (a program's worker_memory sets it)
WORKER_MEMORY_ENV = "SUPERVISORD_BATT_WORKER_MEMORY"
# "PID;name=fd,name=fd": the descriptors an old program passes to the new one at reexec
REEXEC_FDS_ENV = "SUPERVISORD_BATT_REEXEC"
NOTEBOOK_ENV = "SUPERVISORD_BATT_NOTEBOOK"  # "0", "off", "no", "false": leave joblib alone

ETC_CONFIG = Path("/etc/supervisord-batt/supervisord-batt.yaml")
PACKAGE_CONFIG = Path(__file__).resolve().parent / "default-config.yaml"  # wheel builds
SOURCE_CONFIG = Path(__file__).resolve().parent.parent / "config" / "supervisord-batt.yaml"

PACKAGE_UNIT = Path(__file__).resolve().parent / "supervisord-batt.service"  # wheel builds
SOURCE_UNIT = Path(__file__).resolve().parent.parent / "systemd" / "supervisord-batt.service"

SOCKET_NAME = "supervisord-batt.sock"
MAX_SOCKET_PATH = 107  # bytes: sockaddr_un's sun_path holds 108 with the final NUL
RUNTIME_DIR = Path("/run/supervisord-batt")  # systemd's RuntimeDirectory= for the unit
DEFAULT_SOCKET = RUNTIME_DIR / SOCKET_NAME


LOG_DIR = Path("/var/log/supervisord-batt")  # root's default output directory


def daemon_id(socket: Path) -> str:
    """A short name for the daemon serving `socket`: what keeps two daemons on one host
    out of each other's worker cgroups and output files."""
    return hashlib.sha1(str(socket).encode()).hexdigest()[:8]


def default_config_path(env: Mapping[str, str] | None = None) -> Path:
    """The config to use when none is given.

    In order: $SUPERVISORD_BATT_CONFIG; /etc/supervisord-batt/supervisord-batt.yaml if it
    exists; the `default-config.yaml` a wheel installs in the package; the source
    checkout's config/supervisord-batt.yaml.
    """
    env = os.environ if env is None else env
    if env.get(CONFIG_ENV):
        return Path(env[CONFIG_ENV])
    for candidate in (ETC_CONFIG, PACKAGE_CONFIG):
        if candidate.is_file():
            return candidate
    return SOURCE_CONFIG


# The socket's directory is /run/supervisord-batt, which systemd makes for a root daemon
# (RuntimeDirectory=). A daemon started by hand as another user cannot create it, so it
# moves to that user's runtime directory. A socket that already exists at the configured
# path is kept: that is a client (or a second daemon) talking to a root daemon, and both
# must find, or collide with, the real socket rather than quietly go somewhere else.


def default_socket_path(
    configured: Path = DEFAULT_SOCKET,
    *,
    uid: int | None = None,
    env: Mapping[str, str] | None = None,
) -> Path:
    """The socket path to use: `configured` unless a non-root uid cannot create it there."""
    uid = os.geteuid() if uid is None else uid
    env = os.environ if env is None else env
    if uid == 0 or _exists(configured) or _can_create_in(configured.parent, uid):
        return configured
    runtime = env.get("XDG_RUNTIME_DIR", "")
    if os.path.isabs(runtime):
        return Path(runtime) / "supervisord-batt" / SOCKET_NAME
    return Path("/tmp") / f"supervisord-batt-{uid}" / SOCKET_NAME


def socket_path_problem(path: Path) -> str | None:
    """Why no Unix socket can be bound at `path` (too long for sun_path); None if one can."""
    size = len(os.fsencode(path))
    if size > MAX_SOCKET_PATH:
        return f"socket path is {size} bytes, the limit is {MAX_SOCKET_PATH}: {path}"
    return None


def default_output_dir() -> Path:
    """Where workers' output files go when a program names no directory."""
    if os.geteuid() == 0:
        return Path("/var/log/supervisord-batt")
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "supervisord-batt" / "log"


def output_file_name(instance: str, stream: str) -> str:
    """The file one stream of an instance is written to (`batt-0.out.log`); rotation
    adds `.1`, `.2` ... to it."""
    suffix = "out" if stream == "stdout" else "err"
    return f"{instance.replace(':', '-')}.{suffix}.log"


def client_socket_path(env: Mapping[str, str] | None = None) -> Path:
    """Where a job or the CLI looks first: $SUPERVISORD_BATT_SOCKET, else the default."""
    env = os.environ if env is None else env
    if env.get(SOCKET_ENV):
        return Path(env[SOCKET_ENV])
    return default_socket_path(env=env)


def _exists(path: Path) -> bool:
    """Path.exists that treats an unreadable directory as 'no'."""
    try:
        return path.exists()
    except OSError:
        return False


def _can_create_in(directory: Path, uid: int) -> bool:
    """Whether `uid` can write in `directory`, or create it under its nearest ancestor."""
    for candidate in (directory, *directory.parents):
        try:
            st = candidate.stat()
        except FileNotFoundError:
            continue
        except OSError:
            return False
        if not stat.S_ISDIR(st.st_mode):
            return False
        if uid == os.geteuid():
            return os.access(candidate, os.W_OK | os.X_OK)
        # Another uid (tests inject one): owner and "other" bits; groups are not resolved.
        owner = st.st_uid == uid and st.st_mode & 0o300 == 0o300
        return bool(owner or st.st_mode & 0o003 == 0o003)
    return False
