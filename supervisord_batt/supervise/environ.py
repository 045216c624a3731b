"""What a worker starts with: its environment, and the descriptor limit it inherits.

# Why a worker run as another user gets a login's environment, not the daemon's
The daemon runs as root, often started by an operator whose shell exported tokens,
proxies and credentials; before, a program with `user:` inherited all of it (a token
exported in the operator's shell reached a notebook user's job), with `HOME=/root` and
root's PATH. Such a worker now starts as systemd's `User=` or `su -` start one: HOME,
USER, LOGNAME and SHELL of its user (from the password database), a plain PATH, then
the program's `environment`, then the three variables the daemon sets for every worker
(socket, instance, slots wanted). Nothing of the daemon's own environment reaches it
unless the program names it in `pass_environment`: the operator decides, per program,
what crosses from root to another user. The PATH is Debian's login default for an
ordinary user (login.defs ENV_PATH without the games directories); `environment` can
set another.

# What a root worker gets
A program without `user:` (or whose user is the daemon's own) runs with the daemon's
privileges, can read the daemon's environment in /proc anyway, and is the operator's own
code: it keeps the daemon's environment, with the program's `environment` and the
daemon's three variables on top, as before. `pass_environment` changes nothing for it.

# Why the descriptor limit is put back
The daemon raises its own soft RLIMIT_NOFILE to the hard limit (every job holds a
connection). Workers must not inherit that: a program that uses select() cannot watch a
descriptor above 1023 (FD_SETSIZE), which is why systemd keeps the soft limit at 1024 by
default and leaves raising it to the programs that can take more (up to the hard limit,
which they keep). Every worker, root's included, starts with the soft limit the daemon
itself started with: under systemd the unit's `LimitNOFILE=` soft value (1024 unless the
operator set another), by hand the operator's shell's. The other limits are the daemon's
as it was started (the unit's), which the daemon never changes.
"""

from __future__ import annotations

import pwd
from collections.abc import Mapping

from supervisord_batt.config.records import ProgramConfig

PLAIN_PATH = "/usr/local/bin:/usr/bin:/bin"
FALLBACK_SHELL = "/bin/sh"  # an account with an empty shell field logs in with sh


def login_environment(account: pwd.struct_passwd) -> dict[str, str]:
    """What a login of `account` starts with, before anything of the program's."""
    return {
        "HOME": account.pw_dir,
        "USER": account.pw_name,
        "LOGNAME": account.pw_name,
        "SHELL": account.pw_shell or FALLBACK_SHELL,
        "PATH": PLAIN_PATH,
    }


def worker_environment(
    program: ProgramConfig,
    daemon_env: Mapping[str, str],
    account: pwd.struct_passwd | None,
    own: Mapping[str, str],
) -> dict[str, str]:
    """The environment a worker of `program` is started with.

    `account`: the user it runs as when that is not the daemon's own uid (None: a root
    worker, see the module's notes). `own`: the variables the daemon sets for every
    worker, which nothing overrides."""
    if account is None:
        env = dict(daemon_env)
    else:
        env = login_environment(account)
        env.update(
            (name, daemon_env[name]) for name in program.pass_environment if name in daemon_env
        )
    env.update(program.environment)
    env.update(own)
    return env
