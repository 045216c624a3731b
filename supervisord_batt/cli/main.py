"""The `supervisord-batt` command line: one subcommand per operator task.

# Why one module
It is the parser and one short function per verb, each a thin call into the module
that does the work (`cli.status`, `cli.events`, `cli.report`, `cli.top`, the client);
the parser is read as one page, like `--help`. The verbs with logic of their own have
their own modules already.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from supervisord_batt import __version__, paths, protocol
from supervisord_batt.cli import exits

if TYPE_CHECKING:
    from supervisord_batt.client.leases import Connection
    from supervisord_batt.config.records import Config

T = TypeVar("T")


def _add_config_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "-c",
        "--config",
        type=Path,
        default=None,
        help=f"YAML config (default: ${paths.CONFIG_ENV}, {paths.ETC_CONFIG}, "
        "then the shipped default)",
    )


def _add_socket_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--socket",
        type=Path,
        default=None,
        help=f"daemon socket (default: ${paths.SOCKET_ENV}, then the config's daemon.socket)",
    )


# length kept: one add_argument per option of every verb, read top to bottom like --help
def build_parser() -> argparse.ArgumentParser:  # noqa: PLR0915
    parser = argparse.ArgumentParser(
        prog="supervisord-batt",
        description="Supervisor for batch hosts: thread/pid limits, a concurrency budget, "
        "and wall-clock limits on run_batt workers.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output")
    parser.add_argument("-q", "--quiet", action="count", default=0, help="less log output")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("probe", help="show how close the host is to every thread/pid limit")
    _add_config_arg(p)
    p.add_argument("--json", action="store_true", help="one JSON object (stable field names)")
    p.add_argument(
        "--cgroup",
        action="append",
        default=[],
        metavar="PATH",
        help="also watch this cgroup (cgroup path like /batt, or its directory)",
    )
    p.add_argument(
        "--user",
        action="append",
        default=[],
        metavar="USER",
        help="also count this user's tasks against its RLIMIT_NPROC",
    )
    p.set_defaults(func=cmd_probe)

    p = sub.add_parser("run", help="run the daemon in the foreground")
    _add_config_arg(p)
    _add_socket_arg(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("status", help="the daemon's budget, leases and host figures")
    _add_config_arg(p)
    _add_socket_arg(p)
    p.add_argument("--json", action="store_true", help="one JSON object (stable field names)")
    p.add_argument(
        "--summary",
        action="store_true",
        help="counts only: no list of instances, leases and leftovers (one request at any size)",
    )
    p.set_defaults(func=cmd_status)

    for name, text in (
        ("start", "start a program, one instance (PROGRAM:N) or all"),
        ("stop", "stop (stop signal, grace, kill the whole tree) and wait until gone"),
        ("restart", "stop, then start"),
    ):
        p = sub.add_parser(name, help=text)
        _add_config_arg(p)
        _add_socket_arg(p)
        p.add_argument("target", metavar="PROGRAM[:N]|all")
        p.set_defaults(func=cmd_control, op=name)

    p = sub.add_parser(
        "reload",
        help="re-read the config and apply it in place; a bad one is rejected, the old stays",
    )
    _add_config_arg(p)
    _add_socket_arg(p)
    p.add_argument(
        "--restart-changed",
        action="store_true",
        help="restart now the instances whose command, user, environment or working "
        "directory changed (by default they take it at their next start)",
    )
    p.set_defaults(func=cmd_reload)

    p = sub.add_parser("tail", help="the last output of an instance; -f follows")
    _add_config_arg(p)
    _add_socket_arg(p)
    p.add_argument("target", metavar="PROGRAM[:N]")
    p.add_argument("-f", "--follow", action="store_true", help="keep printing new output")
    p.add_argument("--stderr", action="store_true", help="stderr instead of stdout")
    p.add_argument(
        "-n",
        "--bytes",
        type=int,
        default=protocol.TAIL_DEFAULT,
        help=f"bytes to show (default {protocol.TAIL_DEFAULT}, at most {protocol.TAIL_MAX})",
    )
    p.set_defaults(func=cmd_tail)

    p = sub.add_parser(
        "reexec",
        help="replace the daemon's program in place (after an upgrade): same pid, workers "
        "and leases kept, the socket served throughout",
    )
    _add_config_arg(p)
    _add_socket_arg(p)
    p.add_argument(
        "--timeout", type=float, default=60.0, help="seconds to wait for the new program"
    )
    p.set_defaults(func=cmd_reexec)

    p = sub.add_parser(
        "cleanup",
        help="kill what a stopped daemon left running (the unit's ExecStopPost; nothing "
        "after a crash, whose restart adopts the workers)",
    )
    _add_config_arg(p)
    _add_socket_arg(p)
    p.set_defaults(func=cmd_cleanup)

    p = sub.add_parser("top", help="a live full-screen view of limits, programs and leases")
    _add_config_arg(p)
    _add_socket_arg(p)
    p.add_argument(
        "--interval", type=float, default=1.0, help="seconds between refreshes (default 1)"
    )
    p.set_defaults(func=cmd_top)

    p = sub.add_parser(
        "logs", help="the daemon's own events (its log file or the unit's journal), filtered"
    )
    _add_config_arg(p)
    _add_events_args(p)
    p.add_argument(
        "-f",
        "--follow",
        action="store_true",
        help="keep printing new events, after the last -n (as tail -f)",
    )
    p.add_argument(
        "-n",
        "--lines",
        type=_count,
        default=None,
        metavar="N",
        help="only the last N events so far (0: none); default: all, or with -f the last "
        "10 (every one since --since, if given)",
    )
    p.add_argument("--program", default=None, help="only events about this program")
    p.add_argument("--instance", default=None, help="only events about this instance (batt:0)")
    p.add_argument(
        "--event", action="append", default=[], help="only this event (repeat for several)"
    )
    p.add_argument(
        "--level",
        default=None,
        choices=protocol.LOG_LEVELS,
        help="only events at this level or above",
    )
    p.add_argument("--json", action="store_true", help="the raw JSON lines, for jq")
    p.set_defaults(func=cmd_logs)

    p = sub.add_parser(
        "report", help="the incident's monitoring figures and tuning advice, from the events"
    )
    _add_config_arg(p)
    _add_events_args(p)
    p.add_argument(
        "--prometheus",
        metavar="URL",
        help="the fleet's report instead, per host and in total, from this Prometheus "
        "(http://host:9090); --since defaults to 1d",
    )
    p.add_argument("--json", action="store_true", help="one JSON object (stable field names)")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser(
        "exec",
        help="run an unmodified program under a lease (env exports the grant); without a "
        "daemon it runs sequential, saying so on stderr",
    )
    _add_config_arg(p)
    _add_socket_arg(p)
    p.add_argument("--want", type=int, default=2, help="workers wanted (default 2)")
    p.add_argument("--job", default=None, help="job name shown in status and logs")
    p.add_argument("argv", nargs=argparse.REMAINDER, metavar="-- CMD ...")
    p.set_defaults(func=cmd_exec)

    p = sub.add_parser(
        "unit", help="print the systemd unit, its commands pointing at this installation"
    )
    p.add_argument(
        "-c",
        "--config",
        type=Path,
        default=None,
        metavar="FILE",
        help="the config the service reads (default /etc/supervisord-batt/supervisord-batt.yaml)",
    )
    p.set_defaults(func=cmd_unit)

    p = sub.add_parser(
        "check-config",
        help="validate a config file (FILE or -c FILE); exit 1 listing every error",
    )
    p.add_argument("file", type=Path, nargs="?", default=None)
    # `-c FILE` as every other command takes the config (and the shipped config says)
    _add_config_arg(p)
    p.set_defaults(func=cmd_check_config)
    return parser


def cmd_check_config(args: argparse.Namespace) -> int:
    from supervisord_batt.config.loader import load_config
    from supervisord_batt.config.yamlcheck import ConfigError
    from supervisord_batt.paths import default_config_path

    if args.file is not None and args.config is not None and args.file != args.config:
        print(
            f"supervisord-batt check-config: two files given ({args.file} and -c "
            f"{args.config}): give one",
            file=sys.stderr,
        )
        return exits.UNAVAILABLE
    path = args.file or args.config or default_config_path()
    try:
        config = load_config(path)
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        return exits.FAILED
    except OSError as exc:
        print(f"{path}: cannot read: {exc.strerror}", file=sys.stderr)
        return exits.FAILED
    names = ", ".join(p.name for p in config.programs) or "none"
    print(f"{path}: ok ({len(config.programs)} programs: {names})")
    return exits.OK


def _probe_targets(args: argparse.Namespace) -> tuple[list[str], list[int | str]]:
    """Cgroups and users to watch: the config's, plus the command line's."""
    from supervisord_batt.config.loader import load_config
    from supervisord_batt.config.yamlcheck import ConfigError
    from supervisord_batt.paths import default_config_path

    cgroups: list[str] = list(args.cgroup)
    users: list[int | str] = [os.geteuid()]
    path = args.config
    if path is None:
        candidate = default_config_path()
        path = candidate if candidate.exists() else None
    if path is not None:
        try:
            config = load_config(path)
        except (ConfigError, OSError) as exc:
            print(f"warning: config not used: {exc}", file=sys.stderr)
        else:
            cgroups += list(config.budget.cgroups)
            users += list(config.budget.watch_users)
            users += [p.user for p in config.programs if p.user]
    users += list(args.user)
    return cgroups, list(dict.fromkeys(users))


def cmd_probe(args: argparse.Namespace) -> int:
    from supervisord_batt.host.monitor import HostMonitor
    from supervisord_batt.host.probe import render_table, sample_to_json

    cgroups, users = _probe_targets(args)
    with HostMonitor(cgroups=cgroups, users=users) as monitor:
        monitor.scan()
        sample = monitor.sample()
    if args.json:
        print(json.dumps(sample_to_json(sample), indent=None))
    else:
        print(render_table(sample))
    return exits.OK


def _load(path: Path | None) -> Config:
    from supervisord_batt.config.loader import load_config
    from supervisord_batt.paths import default_config_path

    return load_config(path or default_config_path())


@dataclass(frozen=True)
class _Target:
    """The daemon's socket as the command line, the environment or the config name it;
    `broken`: the errors of a config that does not load (its socket read as far as it
    could be: the daemon runs the config it loaded before, not this one)."""

    socket: Path
    config: Path | None = None
    broken: str | None = None


def _target(args: argparse.Namespace) -> _Target:
    """--socket, then $SUPERVISORD_BATT_SOCKET, then the config's daemon.socket."""
    if args.socket is not None:
        return _Target(Path(args.socket))
    env = os.environ.get(paths.SOCKET_ENV)
    if env:
        return _Target(Path(env))
    from supervisord_batt.config.loader import load_config
    from supervisord_batt.config.socketkey import socket_named
    from supervisord_batt.config.yamlcheck import ConfigError
    from supervisord_batt.paths import client_socket_path, default_config_path

    given = getattr(args, "config", None)
    path = given or default_config_path()
    try:
        return _Target(load_config(path).daemon.socket, path)
    except ConfigError as exc:
        try:
            named = socket_named(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError):
            if given is None:  # no config file at all: the default, nothing to say
                return _Target(client_socket_path())
            named = None
        return _Target(named or client_socket_path(), path, str(exc))


def _socket_for(args: argparse.Namespace) -> Path:
    return _target(args).socket


def cmd_run(args: argparse.Namespace) -> int:
    # structlog imports rich for its console renderer whenever rich is installed (the
    # `top` extra brings it): ~60 ms and ~10 MiB the daemon never uses. Marking it absent
    # before structlog loads keeps it out of the daemon process; the renderer then
    # formats without it.
    sys.modules.setdefault("rich", None)  # type: ignore[arg-type]
    from supervisord_batt import logs
    from supervisord_batt.config.yamlcheck import ConfigError
    from supervisord_batt.daemon.lifecycle import run_daemon

    logs.configure("auto", logs.level_from("info", args.verbose, args.quiet))
    try:
        config = _load(args.config)
    except (ConfigError, OSError) as exc:
        logs.get_logger().error("config_invalid", reason=str(exc))
        logs.fatal_to_stderr("config_invalid", str(exc))
        return exits.FAILED
    d = config.daemon
    try:  # checked by the loader; this is the file changing since (a link planted)
        logs.configure(
            d.log_format, logs.level_from(d.log_level, args.verbose, args.quiet), d.log_file
        )
    except OSError as exc:
        logs.get_logger().error("config_invalid", reason=f"daemon.log_file: {exc}")
        logs.fatal_to_stderr("config_invalid", f"daemon.log_file: {exc}")
        return exits.FAILED
    socket_path = args.socket or (
        Path(os.environ[paths.SOCKET_ENV]) if os.environ.get(paths.SOCKET_ENV) else None
    )
    return run_daemon(config, socket_path)


def _ask(args: argparse.Namespace, op: str, ask: Callable[[Connection], T]) -> T | int:
    """`ask(conn)` on a connection to the daemon; when it fails, the exit code after saying
    why on stderr: 2 when the daemon cannot be reached, 1 for an error reply. A config
    that does not load is said too (a reload's rejection lists its errors itself)."""
    from supervisord_batt.client.connect import CLI_RETRY_S
    from supervisord_batt.client.leases import Connection, DaemonError
    from supervisord_batt.config.records import CONTROL_TIMEOUT

    target = _target(args)
    if target.broken is not None and op != "reload":
        print(
            f"supervisord-batt: warning: {target.config} does not load; the daemon runs "
            f"the config it loaded before, and a reload would be rejected:\n{target.broken}",
            file=sys.stderr,
        )
    # a control op waits for trees to stop and start again
    timeout = CONTROL_TIMEOUT if op in protocol.CONTROL_OPS else 10.0
    try:
        with Connection(target.socket, timeout=timeout, retry=CLI_RETRY_S) as conn:
            return ask(conn)
    except DaemonError as exc:
        print(f"supervisord-batt: {op}: {exc}", file=sys.stderr)
        return exits.FAILED
    except OSError as exc:
        print(
            f"supervisord-batt: daemon not reachable at {target.socket}: {exc.strerror or exc}",
            file=sys.stderr,
        )
        if target.broken is not None:
            print(
                f"supervisord-batt: {target.config} does not load, so the daemon may serve "
                f"another socket: pass --socket",
                file=sys.stderr,
            )
            if op == "reload":
                print(target.broken, file=sys.stderr)
        return exits.UNAVAILABLE


def _count(text: str) -> int:
    """A count of 0 or more, for argparse."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def _add_events_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--since",
        default=None,
        metavar="DURATION",
        help="only events of the last DURATION (30m, 2h, 1d)",
    )
    p.add_argument(
        "--file",
        type=Path,
        default=None,
        help="read this log file (default: the config's daemon.log_file, else the journal)",
    )
    p.add_argument(
        "--unit",
        default="supervisord-batt.service",
        help="the systemd unit whose journal to read when there is no log file",
    )


def cmd_top(args: argparse.Namespace) -> int:
    """A live view; exit 2 (saying so) when the daemon is not running."""
    from supervisord_batt.cli.top import run_top

    return run_top(_socket_for(args), args.interval)


def cmd_logs(args: argparse.Namespace) -> int:
    from supervisord_batt.cli.events import run_logs

    return run_logs(args, _load_quietly(args))


def cmd_report(args: argparse.Namespace) -> int:
    if args.prometheus:
        from supervisord_batt.cli.fleetreport import run_fleet_report

        return run_fleet_report(args)
    from supervisord_batt.cli.report import run_report

    return run_report(args, _load_quietly(args))


def _load_quietly(args: argparse.Namespace) -> Config | None:
    """The config, or None when it cannot be read (the views then say what they read)."""
    from supervisord_batt.config.yamlcheck import ConfigError

    try:
        return _load(getattr(args, "config", None))
    except (ConfigError, OSError):
        return None


def cmd_status(args: argparse.Namespace) -> int:
    """Exit 0 when every instance that should run is RUNNING, 1 when one is not, 2 when
    the daemon cannot be reached (or answers with an error)."""
    from supervisord_batt.cli.status import render_status
    from supervisord_batt.client.status import LISTS, read_status

    lists = () if args.summary else LISTS
    reply = _ask(args, "status", lambda conn: read_status(conn, lists))
    if isinstance(reply, int):
        return exits.UNAVAILABLE
    fields = {key: value for key, value in reply.items() if key != "ok"}  # as before: no "ok"
    print(json.dumps(fields) if args.json else render_status(reply))
    return exits.OK if reply["all_running"] else exits.FAILED


def cmd_control(args: argparse.Namespace) -> int:
    op, target = args.op, args.target
    reply = _ask(args, op, lambda conn: conn.call(protocol.ControlReply, op, target=target))
    if isinstance(reply, int):
        return reply
    for name, state in reply["instances"].items():
        print(f"{name}: {state}")
    return exits.OK


def cmd_reload(args: argparse.Namespace) -> int:
    fields = {"restart_changed": True} if args.restart_changed else {}
    reply = _ask(args, "reload", lambda conn: conn.call(protocol.ReloadReply, "reload", **fields))
    if isinstance(reply, int):
        return reply
    for key in ("added", "removed", "changed", "unchanged"):
        print(f"{key}: {', '.join(reply[key]) or '-'}")
    for name, row in reply["programs"].items():
        done = [f"{label} {', '.join(row[key])}" for key, label in _RELOAD_PARTS if row.get(key)]
        if done:
            print(f"  {name}: {'; '.join(done)}")
    return exits.OK


# what `reload` says it did to a changed program, in this order
_RELOAD_PARTS = (
    ("in_place", "applied now:"),
    ("next_start", "at each instance's next start:"),
    ("restarted", "restarted"),
    ("started", "started"),
    ("stopped", "stopped"),
)


def cmd_tail(args: argparse.Namespace) -> int:
    import time

    stream = "stderr" if args.stderr else "stdout"

    def tail(offset: int | None, size: int) -> protocol.TailReply | int:
        at = {} if offset is None else {"offset": offset}
        return _ask(
            args,
            "tail",
            lambda c: c.call(
                protocol.TailReply, "tail", target=args.target, stream=stream, bytes=size, **at
            ),
        )

    reply = tail(None, args.bytes)
    if isinstance(reply, int):
        return reply
    sys.stdout.write(reply["data"])
    sys.stdout.flush()
    while args.follow:
        time.sleep(0.5)  # a person is watching: poll twice a second
        nxt = tail(reply["offset"], protocol.TAIL_MAX)
        if isinstance(nxt, int):
            return nxt
        if nxt["truncated"]:
            sys.stdout.write(f"\n[... {nxt['start'] - reply['offset']} bytes skipped ...]\n")
        sys.stdout.write(nxt["data"])
        sys.stdout.flush()
        reply = nxt
    return exits.OK


def cmd_reexec(args: argparse.Namespace) -> int:
    from supervisord_batt.cli.reexec import reexec

    return reexec(_socket_for(args), args.timeout)


def cmd_cleanup(args: argparse.Namespace) -> int:
    from supervisord_batt.cli.cleanup import cleanup

    for line in cleanup(_socket_for(args), os.environ.get("SERVICE_RESULT")):
        print(f"supervisord-batt cleanup: {line}")
    return exits.OK


def cmd_unit(args: argparse.Namespace) -> int:
    from supervisord_batt.cli.unit import render_unit

    try:
        print(render_unit(config=args.config), end="")
    except (OSError, ValueError) as exc:
        print(f"supervisord-batt unit: {exc}", file=sys.stderr)
        return exits.FAILED
    return exits.OK


def cmd_exec(args: argparse.Namespace) -> int:
    from supervisord_batt.client.leases import exec_main

    argv = list(args.argv)
    if argv and argv[0] == "--":
        argv = argv[1:]
    if not argv:
        print(
            "supervisord-batt exec: no command given (usage: exec [--want N] -- CMD ...)",
            file=sys.stderr,
        )
        return exits.UNAVAILABLE
    socket = _socket_for(args)
    # the program's own leases (a joblib backend inside it) go to the same daemon
    os.environ[paths.SOCKET_ENV] = str(socket)
    return exec_main(argv, want=args.want, job=args.job, socket_path=socket)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        rc: int = args.func(args)
    except KeyboardInterrupt:
        return exits.INTERRUPTED
    except BrokenPipeError:
        # `supervisord-batt probe | head`: the reader left; not an error of ours
        sys.stderr.close()
        return exits.OK
    return rc
