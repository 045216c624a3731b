"""What a reload changes, program by program: pure, from the old and the new config.

A reload applies in place (issue 23: a reload that changed only a limit used to restart
every running instance, killing the jobs it was meant to spare). So each setting of a
program is one of three kinds:

- what the worker *is* (`IDENTITY`: its command, user, environment...): a running
  instance keeps what it was started with and takes the new one at its next start, or
  now when the operator asks for it (`reload --restart-changed`);
- how many instances there are (`numprocs`): the extra ones are started, or the ones
  past the new count are stopped, and only those;
- everything else (limits, thresholds, the restart policy, output sizes...): applied to
  the running instances at once (a wall-clock limit counts from the instance's start).

`plan` names the kind of every change, so the reply and the log can say per program what
was applied and how.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Literal

from supervisord_batt.config.records import ProgramConfig

# a running worker cannot change these without a new process
IDENTITY = frozenset({"command", "cwd", "environment", "user", "group", "slots", "worker_memory"})
# the output's destination: new sinks (opened before the reload applies, so it can fail
# whole); its sizes are applied to the open files in place
OUTPUT_DESTINATION = ("mode", "directory")

How = Literal["added", "removed", "changed", "unchanged"]


@dataclass(frozen=True)
class ProgramChange:
    """One program's part of a reload."""

    name: str
    how: How
    old: ProgramConfig | None
    new: ProgramConfig | None
    fields: tuple[str, ...] = ()  # the settings that differ (changed programs only)

    @property
    def identity(self) -> tuple[str, ...]:
        """Settings a running instance takes at its next start."""
        return tuple(f for f in self.fields if f in IDENTITY)

    @property
    def in_place(self) -> tuple[str, ...]:
        """Settings applied to running instances now."""
        return tuple(f for f in self.fields if f not in IDENTITY and f != "numprocs")

    @property
    def new_sinks(self) -> bool:
        """Whether the output's destination moved (the instances get new files)."""
        if self.old is None or self.new is None:
            return False
        old, new = self.old.output, self.new.output
        return any(getattr(old, f) != getattr(new, f) for f in OUTPUT_DESTINATION)

    def indices(self) -> tuple[range, range, range]:
        """(kept, added, removed) instance indices."""
        old = self.old.numprocs if self.old is not None else 0
        new = self.new.numprocs if self.new is not None else 0
        return range(min(old, new)), range(old, new), range(new, old)


_FIELDS = tuple(f.name for f in fields(ProgramConfig))


def stale(running: ProgramConfig, current: ProgramConfig) -> tuple[str, ...]:
    """What a running instance, started as `running`, is not of its program's `current`
    config: it takes those at its next start (or a `reload --restart-changed`)."""
    return tuple(f for f in sorted(IDENTITY) if getattr(running, f) != getattr(current, f))


def plan(old: tuple[ProgramConfig, ...], new: tuple[ProgramConfig, ...]) -> list[ProgramChange]:
    """Every program of either config, in the new config's order, then the removed."""
    before = {p.name: p for p in old}
    after = {p.name: p for p in new}
    out: list[ProgramChange] = []
    for name, program in after.items():
        was = before.get(name)
        if was is None:
            out.append(ProgramChange(name, "added", None, program))
            continue
        differ = tuple(f for f in _FIELDS if getattr(was, f) != getattr(program, f))
        out.append(ProgramChange(name, "changed" if differ else "unchanged", was, program, differ))
    out += [ProgramChange(n, "removed", p, None) for n, p in before.items() if n not in after]
    return out
