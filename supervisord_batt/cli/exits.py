"""The command line's exit statuses, one name each, used by every verb.

Scripts and systemd units branch on them (`status` in a health check, `check-config` in
ExecStartPre, postinst's `reexec`), so each number means one thing across verbs."""

from __future__ import annotations

OK = 0
# done, and the answer is no: a config with errors, an instance that should run and
# does not, a request the daemon refused, a reexec whose new program did not answer
FAILED = 1
# could not be done at all: the daemon not reachable, the command line contradicts
# itself, a file or a library (rich) or a terminal it needs is missing
UNAVAILABLE = 2
INTERRUPTED = 130  # Ctrl-C: 128 + SIGINT, as a shell reports it
