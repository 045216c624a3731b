"""The simulation's kernel: a clock, C cores shared by the runnable threads, and processes.

A process is a generator that yields what it waits for:

- `Cpu(s)`: s seconds of CPU. Every runnable thread gets min(1, C / R) of a core while R
  threads are runnable (processor sharing, what CFS approximates for CPU-bound work). All
  of them progress at the same rate, so one "virtual time" V (CPU seconds each runnable
  thread has received) orders their completions: a thread that needs s seconds from V0
  is done when V reaches V0 + s, and a change of R only changes how fast V moves.
  With `per_group` (each user's processes in a cgroup of its own with the cpu
  controller, equal weights), the cores are first shared among the groups with
  runnable threads, each getting min(its R_g, the level) cores, the level as high as C
  allows (what one group cannot use goes to the others), then by processor sharing
  within each group: one virtual time per group.
- `Sleep(s)`: s seconds of wall time.
- `Wait(signal, timeout)`: until the signal fires (or the timeout passes, if given).

PSI: the kernel's "some" CPU stall of a period is min(delayed / min(runnable, C), 1) with
delayed = max(0, runnable - C); avg10 is updated every 2 s as avg * e + stall * (1 - e),
e = exp(-2 / 10), as kernel/sched/psi.c does.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from functools import partial
from typing import Any

PSI_PERIOD = 2.0  # seconds between the kernel's PSI average updates
PSI_DECAY_10 = math.exp(-PSI_PERIOD / 10.0)


@dataclass(frozen=True)
class Cpu:
    seconds: float


@dataclass(frozen=True)
class Sleep:
    seconds: float


@dataclass
class Signal:
    """Fired once; a process waiting on it resumes. A fired signal stays fired."""

    fired: bool = False
    waiters: list[Proc] = field(default_factory=list)


@dataclass(frozen=True)
class Wait:
    signal: Signal
    timeout: float | None = None


Step = Cpu | Sleep | Wait
ProcGen = Generator[Step, None, None]


@dataclass(eq=False)
class Proc:
    """One running generator; `token` invalidates a wake-up that is no longer wanted."""

    gen: ProcGen
    name: str
    group: int = 0  # whose CPU share it runs in (`Kernel.per_group`; else all in 0)
    alive: bool = True
    token: int = 0
    on_cpu: bool = False
    done: Signal = field(default_factory=Signal)


def psi_some(runnable: int, cores: float) -> float:
    """The fraction of time some runnable thread waits for a CPU (kernel/sched/psi.c)."""
    if runnable <= cores:
        return 0.0
    return min((runnable - cores) / min(runnable, cores), 1.0)


@dataclass
class _Group:
    """The runnable threads of one group, in processor sharing at `rate` of a core each."""

    vtime: float = 0.0  # CPU seconds each of its runnable threads has received so far
    runnable: int = 0
    rate: float = 1.0
    cpu: list[tuple[float, int, int, Proc]] = field(default_factory=list)  # (V, seq, token)


class Kernel:
    """The clock, the processor-sharing CPUs, timers and processes."""

    def __init__(self, cores: float, psi_avg10: float = 0.0, per_group: bool = False) -> None:
        self.cores = cores
        self.per_group = per_group
        self.now = 0.0
        self.runnable = 0
        self.peak_runnable = 0
        self.busy_cpu_s = 0.0  # CPU seconds given out, over all threads
        self.psi_avg10 = psi_avg10  # percent, as /proc/pressure/cpu reports it
        self._stall = 0.0  # stalled seconds in the current PSI period
        self._seq = 0
        self._current: Proc | None = None  # the process whose generator is running
        self._groups: dict[int, _Group] = {}
        self._timers: list[tuple[float, int, Callable[[], None]]] = []
        self.at(PSI_PERIOD, self._psi_tick)

    # -- scheduling -------------------------------------------------------------------------

    def at(self, when: float, fn: Callable[[], None]) -> None:
        self._seq += 1
        heapq.heappush(self._timers, (when, self._seq, fn))

    def after(self, delay: float, fn: Callable[[], None]) -> None:
        self.at(self.now + delay, fn)

    def start(self, gen: ProcGen, name: str = "", group: int = 0) -> Proc:
        proc = Proc(gen, name, group if self.per_group else 0)
        self.at(self.now, lambda: self._resume(proc, proc.token))
        return proc

    def kill(self, proc: Proc) -> None:
        """Stop a process wherever it is (its CPU share goes back at once)."""
        if not proc.alive:
            return
        proc.alive = False
        proc.token += 1
        if proc.on_cpu:
            proc.on_cpu = False
            self._set_runnable(self._groups[proc.group], -1)
        if proc is not self._current:  # a process ending itself just returns
            proc.gen.close()
        self.fire(proc.done)

    def fire(self, signal: Signal) -> None:
        if signal.fired:
            return
        signal.fired = True
        waiters, signal.waiters = signal.waiters, []
        for proc in waiters:
            token = proc.token
            self.at(self.now, partial(self._resume, proc, token))

    # -- the run ----------------------------------------------------------------------------

    def run(self, until: float, stop: Callable[[], bool] | None = None) -> None:
        """Run events up to `until` seconds, or until `stop()` is true after an event."""
        while True:
            next_cpu, first = math.inf, None
            for g in self._groups.values():
                if g.cpu:
                    done = self.now + (g.cpu[0][0] - g.vtime) / g.rate
                    if done < next_cpu:
                        next_cpu, first = done, g
            next_timer = self._timers[0][0] if self._timers else math.inf
            when = min(next_cpu, next_timer)
            if when > until:
                self._advance(until)
                return
            self._advance(when)
            if first is not None and next_cpu <= next_timer:
                _finish, _seq, token, proc = heapq.heappop(first.cpu)
                if proc.alive and proc.token == token:
                    proc.on_cpu = False
                    self._set_runnable(first, -1)
                    self._resume(proc, token)
            else:
                _when, _seq, fn = heapq.heappop(self._timers)
                fn()
            if stop is not None and stop():
                return

    def _advance(self, when: float) -> None:
        dt = when - self.now
        if dt <= 0:
            return
        if self.runnable:
            for g in self._groups.values():
                if g.runnable:
                    g.vtime += dt * g.rate
            self.busy_cpu_s += dt * min(self.runnable, self.cores)
        self._stall += dt * psi_some(self.runnable, self.cores)
        self.now = when

    def _set_runnable(self, group: _Group, delta: int) -> None:
        group.runnable += delta
        self.runnable += delta
        self.peak_runnable = max(self.peak_runnable, self.runnable)
        if not self.per_group:  # one group: each thread min(1, C / R) of a core
            r = group.runnable
            group.rate = 1.0 if r <= self.cores else self.cores / r
            return
        # the cores water-filled over the groups by their runnable threads, then shared
        # within each group
        busy = sorted((g for g in self._groups.values() if g.runnable), key=lambda g: g.runnable)
        left = float(self.cores)
        for k, g in enumerate(busy):
            share = min(float(g.runnable), left / (len(busy) - k))
            g.rate = share / g.runnable
            left -= share

    def _psi_tick(self) -> None:
        stall = 100.0 * self._stall / PSI_PERIOD
        self.psi_avg10 = self.psi_avg10 * PSI_DECAY_10 + stall * (1 - PSI_DECAY_10)
        self._stall = 0.0
        self.after(PSI_PERIOD, self._psi_tick)

    def _resume(self, proc: Proc, token: int) -> None:
        if not proc.alive or proc.token != token:
            return
        proc.token += 1
        self._current = proc
        try:
            step: Any = next(proc.gen)
        except StopIteration:
            proc.alive = False
            self.fire(proc.done)
            return
        finally:
            self._current = None
        if not proc.alive:
            return
        token = proc.token
        if isinstance(step, Cpu):
            self._seq += 1
            proc.on_cpu = True
            group = self._groups.get(proc.group)
            if group is None:
                group = self._groups[proc.group] = _Group()
            self._set_runnable(group, 1)
            finish = group.vtime + max(0.0, step.seconds)
            heapq.heappush(group.cpu, (finish, self._seq, token, proc))
        elif isinstance(step, Sleep):
            self.after(max(0.0, step.seconds), lambda: self._resume(proc, token))
        elif isinstance(step, Wait):
            if step.signal.fired:
                self.at(self.now, lambda: self._resume(proc, token))
                return
            step.signal.waiters.append(proc)
            if step.timeout is not None:
                self.after(step.timeout, lambda: self._resume(proc, token))
        else:
            raise TypeError(f"{proc.name} yielded {step!r}")
