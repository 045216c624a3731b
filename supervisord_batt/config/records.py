"""The configuration as frozen, typed records: what every other module builds against.

No YAML here (the loader reads YAML into these), so the pure budget and state machine can
import the records they take without loading a parser.
"""

from __future__ import annotations

import signal
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

LogFormat = Literal["json", "console", "auto"]
RestartPolicy = Literal["always", "on-failure", "never"]
OutputMode = Literal["file", "daemon"]


@dataclass(frozen=True)
class DaemonConfig:
    """The daemon section; the loader sets every field (its defaults are the loader's)."""

    socket: Path
    socket_mode: int  # e.g. 0o660
    socket_group: str | None
    allowed_uids: tuple[int, ...]  # root and the daemon's own uid are always allowed
    allowed_groups: tuple[str, ...]
    sample_interval: float  # seconds
    scan_interval: float  # seconds, the slow /proc scan (per uid, per tree)
    log_format: LogFormat
    log_level: str  # debug|info|warning|error
    log_file: Path | None  # None = stdout
    max_connections: int
    idle_timeout: float  # seconds
    max_message_bytes: int
    pid_file: Path | None
    lease_log_rate: int  # grant/deny/release lines a second; 0 = every line
    admin_groups: tuple[str, ...]  # may control (start, stop, reload, tail any)
    max_connections_per_uid: int  # and per supervised instance; root, admins excepted
    bad_input_log_rate: int  # lines a second about bad input and refused peers
    stats_interval: float  # seconds between `stats` lines (what `report` reads)


@dataclass(frozen=True)
class MetricsConfig:
    """Prometheus metrics; both outputs are off by default."""

    listen: tuple[str, int] | None = None  # (IP address, port) of the HTTP endpoint
    textfile: Path | None = None  # a *.prom file for node_exporter, rewritten every tick


@dataclass(frozen=True)
class PressureThresholds:
    # a limit's headroom below this percent of the limit: level "high" / "extreme"
    headroom_high_percent: float
    headroom_extreme_percent: float
    # PSI "some avg10" percentages; None ("off" in YAML): this signal sets no level
    cpu_high: float | None
    cpu_extreme: float | None
    memory_high: float | None
    memory_extreme: float | None


@dataclass(frozen=True)
class BudgetConfig:
    reserve_tasks: int  # absolute floor kept free under every limit
    reserve_percent: float  # percent of each limit kept free (the larger of the two wins)
    max_per_lease: int
    cpu_cap: float | None  # None = usable CPUs of the host
    memory_per_slot: int  # bytes
    lease_ttl: float  # seconds
    cgroups: tuple[str, ...]  # extra cgroups to watch (cgroup paths like "/batt" or fs paths)
    watch_users: tuple[str, ...]  # extra users whose RLIMIT_NPROC is watched
    pressure: PressureThresholds
    # weights in the split across users, (name, weight) sorted by name: a user's own, else
    # the largest of its groups', else 1 (a user name may be a uid, as digits)
    user_weights: tuple[tuple[str, float], ...] = ()
    group_weights: tuple[tuple[str, float], ...] = ()
    # seconds: a newcomer asking this soon after another, or into no lease, is held
    # sequential until the burst has asked (budget.ledger); 0: never held
    burst_window: float = 0.0
    # percent of the memory limit that binds kept free: below it measured pools shrink
    memory_reserve_percent: float = 5.0
    # charge the memory a lease's processes will still write (its own process while it
    # runs its tasks, its workers not seen at their size yet): budget.claims.pending
    memory_unwritten: bool = True


@dataclass(frozen=True)
class BackoffConfig:
    initial: float
    max: float
    factor: float


@dataclass(frozen=True)
class StartLimit:
    burst: int
    interval: float


@dataclass(frozen=True)
class OutputConfig:
    mode: OutputMode  # "file": per-instance files with rotation; "daemon": daemon's stream
    directory: Path | None
    max_bytes: int
    backups: int


@dataclass(frozen=True)
class ProgramConfig:
    name: str
    command: tuple[str, ...]  # argv; a string in YAML is split with shlex
    numprocs: int
    cwd: Path | None
    environment: tuple[tuple[str, str], ...]
    user: str | None
    group: str | None
    wall_clock_limit: float | None
    stop_signal: signal.Signals
    stop_grace: float
    restart: RestartPolicy
    backoff: BackoffConfig
    start_limit: StartLimit
    min_runtime: float  # a run at least this long resets the backoff
    progress_timeout: float | None
    slots: int  # slots wanted per instance
    autostart: bool
    output: OutputConfig
    # the worker's cgroup pids.max follows its lease (cost + a margin), so a job that
    # ignores its grant runs out of tasks in its own cgroup, not the host's
    contain: bool = True
    tasks_without_lease: int = 64  # its pids.max while it holds no lease
    # names of the daemon's environment variables a worker run as another user gets
    # (it gets none of the others: see supervise.environ)
    pass_environment: tuple[str, ...] = ()
    # bytes one of its workers takes, as the operator declares it: given to the job in
    # $SUPERVISORD_BATT_WORKER_MEMORY, which its client sends with its acquire (None: not
    # declared; the budget charges memory_per_slot until it learns the job's size)
    worker_memory: int | None = None


@dataclass(frozen=True)
class Config:
    daemon: DaemonConfig
    budget: BudgetConfig
    programs: tuple[ProgramConfig, ...] = field(default_factory=tuple)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    source: Path | None = None


# -------------------------------------------------------------------------- defaults

# The stop time chain, each link derived from the one before; tests/unit/test_stop_chain.py
# holds the shipped unit's TimeoutStopSec to it.
DEFAULT_STOP_GRACE = 10.0  # programs.<name>.stop_grace when unset, and for a leftover worker
MAX_STOP_GRACE = 60.0  # the longest stop_grace the config accepts
STOP_MARGIN = 10.0  # after the grace: the SIGKILL rounds and the wait for the trees to go
LONGEST_STOP = MAX_STOP_GRACE + STOP_MARGIN  # the daemon's stop of its workers, at worst
# closing the socket, the metrics endpoint and the logs after the workers are gone
SHUTDOWN_MARGIN = 20.0
UNIT_STOP_TIMEOUT = LONGEST_STOP + SHUTDOWN_MARGIN  # the unit's TimeoutStopSec (90 s)
# how long the CLI waits for start/stop/restart/reload: as long as systemd would wait for
# the stop, and then the start of what was stopped
CONTROL_TIMEOUT = UNIT_STOP_TIMEOUT + 30.0

DEFAULT_PRESSURE = PressureThresholds(
    headroom_high_percent=25.0,
    headroom_extreme_percent=10.0,
    cpu_high=60.0,
    cpu_extreme=90.0,
    memory_high=20.0,
    memory_extreme=50.0,
)
DEFAULT_BACKOFF = BackoffConfig(initial=1.0, max=60.0, factor=2.0)
DEFAULT_START_LIMIT = StartLimit(burst=5, interval=60.0)
DEFAULT_OUTPUT = OutputConfig(mode="file", directory=None, max_bytes=10 * 1024**2, backups=3)
