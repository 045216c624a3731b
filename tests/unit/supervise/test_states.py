"""The worker state machine: every edge, the restart policy, backoff and the start limit."""

from __future__ import annotations

import json
import signal
import textwrap
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from supervisord_batt.config.loader import load_config_text
from supervisord_batt.config.records import ProgramConfig
from supervisord_batt.protocol import InstanceState
from supervisord_batt.supervise.states import (
    Action,
    CancelTimer,
    Deadline,
    Event,
    Exited,
    ExitInfo,
    Instance,
    KillTree,
    SetDeadline,
    SetTimer,
    Spawn,
    Spawned,
    SpawnFailed,
    Start,
    State,
    Stop,
    Transition,
    TreeGone,
    Wake,
    decode_wait_status,
    should_restart,
)

GONE = TreeGone(tasks_at_kill=1, needed_sigkill=0)
EAGAIN_TEXT = "Resource temporarily unavailable"


BASE = {
    "command": "run_batt",
    "min_runtime": "10s",
    "stop_grace": "5s",
    "backoff": "{initial: 1s, max: 8s, factor: 2}",
    "start_limit": "{burst: 3, interval: 60s}",
}


def program(extra: str = "") -> ProgramConfig:
    """A program `batt` with fast, small numbers; `extra` lines ("key: value") override."""
    keys = dict(BASE)
    for line in textwrap.dedent(extra).splitlines():
        key, _, value = line.partition(":")
        keys[key.strip()] = value.strip()
    body = "".join(f"    {key}: {value}\n" for key, value in keys.items())
    return load_config_text("programs:\n  batt:\n" + body).programs[0]


def effects(actions: list[Action]) -> list[Action]:
    """The actions without the Transition record."""
    return [a for a in actions if not isinstance(a, Transition)]


def transitions(actions: list[Action]) -> list[Transition]:
    return [a for a in actions if isinstance(a, Transition)]


def running(prog: ProgramConfig | None = None, now: float = 0.0, pid: int = 100) -> Instance:
    """An instance started at `now` with main pid `pid`."""
    inst = Instance(prog or program(), 0)
    inst.handle(Start(), now)
    inst.handle(Spawned(pid), now)
    assert inst.state is State.RUNNING
    return inst


def run_once(inst: Instance, start: float, runtime: float, rc: int) -> list[Action]:
    """From BACKOFF/STOPPED: start at `start`, exit with `rc` after `runtime`, tree gone."""
    if inst.state is State.BACKOFF:
        inst.handle(Wake(), start)
    else:
        inst.handle(Start(), start)
    inst.handle(Spawned(100), start)
    inst.handle(Exited(rc), start + runtime)
    return inst.handle(GONE, start + runtime)


# ----------------------------------------------------------------------- exit status


@pytest.mark.parametrize(
    ("returncode", "decoded"),
    [(0, (0, None)), (3, (3, None)), (-9, (None, 9)), (-15, (None, 15))],
)
def test_decode_wait_status(returncode: int, decoded: tuple[int | None, int | None]) -> None:
    assert decode_wait_status(returncode) == decoded


@pytest.mark.parametrize(
    ("info", "text"),
    [
        (ExitInfo(0, None, "exited", 1.0), "exit 0"),
        (ExitInfo(3, None, "exited", 1.0), "exit 3"),
        (ExitInfo(None, 9, "killed", 1.0), "killed by SIGKILL"),
        (
            ExitInfo(None, 15, "wall_clock_limit", 600.0),
            "killed by SIGTERM at wall_clock_limit after 600.0s",
        ),
        (ExitInfo(None, 15, "stopped", 2.0), "killed by SIGTERM after stop"),
        (
            ExitInfo(None, None, "spawn_failed", 0.0, f"[Errno 11] {EAGAIN_TEXT}"),
            f"spawn failed: [Errno 11] {EAGAIN_TEXT}",
        ),
    ],
)
def test_exit_info_describe(info: ExitInfo, text: str) -> None:
    assert info.describe() == text


def test_exit_info_to_json() -> None:
    info = ExitInfo(None, 15, "progress_timeout", 12.3456)
    assert info.killed_by_limit
    assert info.to_json() == {
        "code": None,
        "signal": "SIGTERM",
        "reason": "progress_timeout",
        "runtime_s": 12.346,
        "by_limit": True,
        "detail": None,
    }
    assert not ExitInfo(0, None, "exited", 1.0).to_json()["by_limit"]


# ---------------------------------------------------------------------------- edges


def test_new_instance_is_stopped_and_named() -> None:
    inst = Instance(program(), 2)
    assert (inst.name, inst.state, inst.wanted, inst.delay) == ("batt:2", State.STOPPED, False, 1)


@pytest.mark.parametrize("state", [State.STOPPED, State.EXITED, State.FATAL])
def test_start_from_down_states_spawns(state: State) -> None:
    inst = Instance(program(), 0)
    inst.state = state
    actions = inst.handle(Start(), 0.0)
    assert effects(actions) == [Spawn()]
    assert inst.state is State.STARTING and inst.wanted
    [record] = transitions(actions)
    assert (record.old, record.new) == (state, State.STARTING)


def test_spawned_runs_and_arms_the_wall_clock_deadline() -> None:
    inst = Instance(program("wall_clock_limit: 600s"), 0)
    inst.handle(Start(), 5.0)
    actions = inst.handle(Spawned(4242), 7.0)
    assert effects(actions) == [SetDeadline(607.0)]
    assert (inst.state, inst.pid, inst.started_at, inst.deadline_at) == (
        State.RUNNING,
        4242,
        7.0,
        607.0,
    )
    [record] = transitions(actions)
    assert record.fields() == {
        "program": "batt",
        "instance": "batt:0",
        "pid": 4242,
        "from": "STARTING",
        "to": "RUNNING",
        "reason": "spawned",
    }


def test_spawned_without_a_limit_arms_nothing() -> None:
    inst = Instance(program(), 0)
    inst.handle(Start(), 0.0)
    assert effects(inst.handle(Spawned(1), 0.0)) == []


def test_spawn_failed_backs_off_and_records_a_failed_start() -> None:
    inst = Instance(program(), 0)
    inst.handle(Start(), 10.0)
    actions = inst.handle(SpawnFailed(11, "Resource temporarily unavailable"), 10.0)
    assert effects(actions) == [SetTimer(11.0)]
    assert inst.state is State.BACKOFF and inst.restarts == 1
    assert list(inst.failures) == [10.0]
    assert inst.last_exit is not None and inst.last_exit.reason == "spawn_failed"
    assert inst.last_exit.describe() == "spawn failed: [Errno 11] Resource temporarily unavailable"


def test_wake_in_backoff_spawns() -> None:
    inst = Instance(program(), 0)
    inst.handle(Start(), 0.0)
    inst.handle(SpawnFailed(11, "EAGAIN"), 0.0)
    actions = inst.handle(Wake(), 1.0)
    assert effects(actions) == [Spawn()]
    assert inst.state is State.STARTING and inst.wake_at is None


def test_stop_during_backoff_cancels_the_timer() -> None:
    inst = Instance(program(), 0)
    inst.handle(Start(), 0.0)
    inst.handle(SpawnFailed(11, "EAGAIN"), 0.0)
    actions = inst.handle(Stop(), 0.5)
    assert effects(actions) == [CancelTimer()]
    assert inst.state is State.STOPPED and not inst.wanted and inst.wake_at is None
    assert len(transitions(actions)) == 1


@pytest.mark.parametrize("reason", ["wall_clock_limit", "progress_timeout"])
def test_deadline_kills_the_tree_with_stop_signal_and_grace(reason: str) -> None:
    inst = running(program("wall_clock_limit: 600s\nstop_signal: INT\nstop_grace: 30s"))
    actions = inst.handle(Deadline(reason), 600.0)
    assert effects(actions) == [KillTree(signal.SIGINT, 30.0, reason), SetDeadline(None)]
    assert inst.state is State.STOPPING and inst.stop_reason == reason and inst.wanted
    assert inst.deadline_at is None


def test_stop_while_running_kills_and_clears_wanted() -> None:
    inst = running()
    actions = inst.handle(Stop(), 3.0)
    assert effects(actions) == [KillTree(signal.SIGTERM, 5.0, "stopped"), SetDeadline(None)]
    assert inst.state is State.STOPPING and not inst.wanted and inst.stop_reason == "stopped"


def test_exit_while_running_kills_leftovers_and_records_the_exit() -> None:
    inst = running(now=0.0)
    actions = inst.handle(Exited(3), 20.0)
    assert effects(actions) == [KillTree(signal.SIGTERM, 5.0, "leftovers"), SetDeadline(None)]
    assert inst.state is State.STOPPING and inst.stop_reason is None
    assert inst.last_exit == ExitInfo(3, None, "exited", 20.0)
    assert transitions(actions)[0].reason == "exit 3"


def test_signal_death_is_recorded_as_killed() -> None:
    inst = running()
    inst.handle(Exited(-9), 20.0)
    assert inst.last_exit == ExitInfo(None, 9, "killed", 20.0)


def test_exit_while_stopping_keeps_the_stop_reason() -> None:
    inst = running(program("wall_clock_limit: 600s"))
    inst.handle(Deadline("wall_clock_limit"), 600.0)
    actions = inst.handle(Exited(-15), 601.0)
    assert actions == [] and inst.state is State.STOPPING
    assert inst.last_exit == ExitInfo(None, 15, "wall_clock_limit", 601.0)
    assert inst.handle(Exited(-9), 602.0) == []  # a duplicate does not overwrite
    assert inst.last_exit.signal == 15


def test_stop_while_stopping_only_calls_off_the_restart() -> None:
    inst = running()
    inst.handle(Exited(3), 20.0)
    assert inst.handle(Stop(), 20.5) == []
    assert inst.state is State.STOPPING and not inst.wanted
    actions = inst.handle(GONE, 21.0)
    # the call above moved the state on; mypy still holds the one asserted before it
    assert inst.state is State.STOPPED and effects(actions) == [] and inst.pid is None  # type: ignore[comparison-overlap]
    assert inst.last_exit is not None and inst.last_exit.code == 3


def test_tree_gone_after_stop_is_stopped() -> None:
    inst = running(pid=77)
    inst.handle(Stop(), 3.0)
    inst.handle(Exited(-15), 3.1)
    actions = inst.handle(GONE, 3.2)
    [record] = transitions(actions)
    assert (record.old, record.new, record.pid) == (State.STOPPING, State.STOPPED, 77)
    assert record.reason == "killed by SIGTERM after stop"
    assert inst.pid is None


def test_tree_gone_without_an_exit_still_ends_the_run() -> None:
    inst = running()
    inst.handle(Stop(), 3.0)
    inst.handle(GONE, 4.0)
    assert inst.state is State.STOPPED
    assert inst.last_exit == ExitInfo(None, None, "stopped", 4.0)


def test_stop_before_spawned_kills_at_spawn() -> None:
    inst = Instance(program("wall_clock_limit: 600s"), 0)
    inst.handle(Start(), 0.0)
    assert inst.handle(Stop(), 0.1) == [] and inst.state is State.STARTING
    actions = inst.handle(Spawned(9), 0.2)
    assert effects(actions) == [KillTree(signal.SIGTERM, 5.0, "stopped"), SetDeadline(None)]
    # the call above moved the state on; mypy still holds the one asserted before it
    assert inst.state is State.STOPPING and inst.pid == 9  # type: ignore[comparison-overlap]


def test_stop_before_spawn_failed_is_stopped() -> None:
    inst = Instance(program(), 0)
    inst.handle(Start(), 0.0)
    inst.handle(Stop(), 0.1)
    actions = inst.handle(SpawnFailed(2, "No such file or directory"), 0.2)
    assert inst.state is State.STOPPED and effects(actions) == [] and not inst.failures


@pytest.mark.parametrize(
    ("state", "event"),
    [
        (State.RUNNING, Wake()),
        (State.RUNNING, Start()),
        (State.RUNNING, GONE),
        (State.STOPPING, Deadline("wall_clock_limit")),
        (State.STOPPING, Start()),
        (State.STOPPED, Exited(0)),
        (State.STOPPED, Wake()),
        (State.BACKOFF, Spawned(5)),
        (State.EXITED, Deadline("progress_timeout")),
    ],
)
def test_stale_events_change_nothing(state: State, event: Event) -> None:
    inst = running() if state in (State.RUNNING, State.STOPPING) else Instance(program(), 0)
    if state is State.STOPPING:
        inst.handle(Stop(), 1.0)
    inst.state = state
    before = inst.snapshot(5.0)
    assert inst.handle(event, 5.0) == []
    assert inst.snapshot(5.0) == before


def test_unknown_objects_are_ignored() -> None:
    inst = running()
    assert inst.handle("not an event", 1.0) == []  # type: ignore[arg-type]
    assert inst.state is State.RUNNING


# ------------------------------------------------------------------- restart policy


@pytest.mark.parametrize(
    ("policy", "rc", "restarts"),
    [
        ("on-failure", 0, False),
        ("on-failure", 3, True),
        ("on-failure", -9, True),
        ("never", 3, False),
        ("never", -9, False),
        ("always", 0, True),
        ("always", 3, True),
    ],
)
def test_restart_policy_on_exit(policy: str, rc: int, restarts: bool) -> None:
    inst = running(program(f"restart: {policy}"))
    inst.handle(Exited(rc), 100.0)
    actions = inst.handle(GONE, 100.5)
    if restarts:
        assert inst.state is State.BACKOFF and effects(actions) == [SetTimer(101.5)]
        assert inst.restarts == 1
    else:
        assert inst.state is State.EXITED and effects(actions) == [] and inst.restarts == 0
        assert transitions(actions)[0].reason.endswith(f"(restart: {policy})")


def test_on_failure_restarts_after_a_wall_clock_kill_even_with_exit_0() -> None:
    inst = running(program("wall_clock_limit: 600s"))
    inst.handle(Deadline("wall_clock_limit"), 600.0)
    inst.handle(Exited(0), 600.5)  # the job caught SIGTERM and exited cleanly
    inst.handle(GONE, 601.0)
    assert inst.state is State.BACKOFF
    assert inst.last_exit is not None and inst.last_exit.killed_by_limit


def test_should_restart_table() -> None:
    clean, failed = ExitInfo(0, None, "exited", 1), ExitInfo(1, None, "exited", 1)
    assert should_restart("always", clean) and not should_restart("never", failed)
    assert should_restart("on-failure", failed) and not should_restart("on-failure", clean)


# ------------------------------------------------------------- backoff, start limit


def test_backoff_grows_and_caps() -> None:
    # burst high enough that the limit never trips: only the delays are under test
    inst = Instance(program("start_limit: {burst: 100, interval: 60s}"), 0)
    inst.handle(Start(), 0.0)
    waits = []
    now = 0.0
    for _ in range(6):
        [timer] = effects(inst.handle(SpawnFailed(11, "EAGAIN"), now))
        assert isinstance(timer, SetTimer)
        waits.append(timer.at - now)
        now = timer.at
        inst.handle(Wake(), now)
    assert waits == [1, 2, 4, 8, 8, 8]
    assert inst.restarts == 6


def test_quick_exits_are_failed_starts_and_grow_the_backoff() -> None:
    inst = Instance(program("start_limit: {burst: 100, interval: 60s}"), 0)
    run_once(inst, 0.0, 1.0, 3)
    assert inst.wake_at == 2.0 and list(inst.failures) == [1.0]
    run_once(inst, 2.0, 1.0, 3)
    assert inst.wake_at == 5.0 and inst.delay == 4


def test_min_runtime_resets_the_backoff() -> None:
    inst = Instance(program("start_limit: {burst: 100, interval: 60s}"), 0)
    now = 0.0
    for _ in range(3):
        run_once(inst, now, 1.0, 3)
        assert inst.wake_at is not None
        now = inst.wake_at
    assert inst.delay == 8 and len(inst.failures) == 3
    actions = run_once(inst, now, 10.0, 3)  # ran min_runtime: the program works
    assert effects(actions) == [SetTimer(now + 10.0 + 1.0)]
    assert inst.delay == 1 and not inst.failures


def test_fatal_after_burst_plus_one_failed_starts() -> None:
    inst = Instance(program(), 0)  # burst 3 within 60s
    inst.handle(Start(), 0.0)
    for i in range(3):
        inst.handle(SpawnFailed(11, "EAGAIN"), float(i))
        assert inst.state is State.BACKOFF
        inst.handle(Wake(), float(i) + 0.5)
    actions = inst.handle(SpawnFailed(11, "EAGAIN"), 3.0)
    assert inst.state is State.FATAL and effects(actions) == []
    assert transitions(actions)[0].reason == "start limit: 4 failed starts within 60s"
    assert inst.restarts == 3 and inst.wake_at is None


def test_fatal_after_quick_exits() -> None:
    inst = Instance(program("start_limit: {burst: 1, interval: 60s}"), 0)
    run_once(inst, 0.0, 1.0, 3)
    assert inst.state is State.BACKOFF
    run_once(inst, 2.0, 1.0, 3)
    # the call above moved the state on; mypy still holds the one asserted before it
    assert inst.state is State.FATAL  # type: ignore[comparison-overlap]


def test_spread_out_failures_never_reach_fatal() -> None:
    inst = Instance(program("start_limit: {burst: 2, interval: 10s}"), 0)
    inst.handle(Start(), 0.0)
    for i in range(10):
        now = i * 6.0  # at most two failures within any 10s
        inst.handle(SpawnFailed(11, "EAGAIN"), now)
        assert inst.state is State.BACKOFF, i
        inst.handle(Wake(), now + 1.0)
    assert len(inst.failures) <= 2


def test_start_recovers_fatal() -> None:
    inst = Instance(program("start_limit: {burst: 1, interval: 60s}"), 0)
    inst.handle(Start(), 0.0)
    inst.handle(SpawnFailed(11, "EAGAIN"), 0.0)
    inst.handle(Wake(), 1.0)
    inst.handle(SpawnFailed(11, "EAGAIN"), 1.0)
    assert inst.state is State.FATAL and inst.delay == 2
    actions = inst.handle(Start(), 2.0)
    # the call above moved the state on; mypy still holds the one asserted before it
    assert effects(actions) == [Spawn()] and inst.state is State.STARTING  # type: ignore[comparison-overlap]
    assert not inst.failures and inst.delay == 1
    inst.handle(SpawnFailed(11, "EAGAIN"), 2.0)
    assert inst.state is State.BACKOFF  # a fresh budget of failed starts


# ---------------------------------------------------------------- records, status


def test_one_record_per_state_change_over_a_whole_life() -> None:
    inst = Instance(program("wall_clock_limit: 600s"), 0)
    events: list[tuple[Event, float]] = [
        (Start(), 0),
        (Spawned(1), 0),
        (Deadline("wall_clock_limit"), 600),
        (Exited(-15), 601),
        (GONE, 601),
        (Wake(), 602),
        (Spawned(2), 602),
        (Exited(0), 700),
        (Stop(), 700),
        (GONE, 701),
    ]
    path = [inst.state]
    for event, now in events:
        old = inst.state
        records = transitions(inst.handle(event, now))
        assert len(records) == (inst.state is not old), event
        if records:
            assert (records[0].old, records[0].new) == (old, inst.state)
            path.append(inst.state)
    assert path == [
        State.STOPPED,
        State.STARTING,
        State.RUNNING,
        State.STOPPING,
        State.BACKOFF,
        State.STARTING,
        State.RUNNING,
        State.STOPPING,
        State.STOPPED,
    ]


def test_snapshot() -> None:
    inst = running(program("wall_clock_limit: 600s"), now=100.0, pid=55)
    snap = inst.snapshot(130.0)
    assert snap == {
        "name": "batt:0",
        "program": "batt",
        "state": "RUNNING",
        "pid": 55,
        "uptime_s": 30.0,
        "restarts": 0,
        "last_exit": None,
        "backoff_s": None,
        "wall_clock_left_s": 570.0,
        "stop_reason": None,
    }
    inst.handle(Exited(3), 130.0)
    inst.handle(GONE, 130.0)
    snap = inst.snapshot(130.25)
    assert snap["state"] == "BACKOFF" and snap["backoff_s"] == 0.75 and snap["pid"] is None
    assert snap["last_exit"] is not None
    assert snap["last_exit"]["code"] == 3 and snap["uptime_s"] is None
    json.dumps(snap)


def test_update_program_moves_the_deadline_and_clamps_the_delay() -> None:
    inst = running(program("wall_clock_limit: 600s"), now=100.0)
    inst.delay = 8.0
    changed = program("wall_clock_limit: 900s\nbackoff: {initial: 1s, max: 4s, factor: 2}")
    assert inst.update_program(changed) == [SetDeadline(1000.0)]
    assert inst.delay == 4.0 and inst.program is changed
    assert inst.update_program(changed) == []
    with pytest.raises(ValueError, match="cannot become"):
        inst.update_program(replace(changed, name="other"))


# --------------------------------------------------------------------- properties

EVENTS = st.one_of(
    st.just(Start()),
    st.just(Stop()),
    st.integers(1, 2**22).map(Spawned),
    st.sampled_from([SpawnFailed(11, "EAGAIN"), SpawnFailed(2, "No such file")]),
    st.sampled_from([0, 1, 3, 143, -9, -15]).map(Exited),
    st.sampled_from(["wall_clock_limit", "progress_timeout", "bogus"]).map(Deadline),
    st.just(GONE),
    st.just(Wake()),
)
POLICIES = st.sampled_from(["always", "on-failure", "never"])


def check_invariants(inst: Instance, prog: ProgramConfig) -> None:
    assert isinstance(inst.state, State)
    assert prog.backoff.initial <= inst.delay <= prog.backoff.max
    assert (inst.state is State.BACKOFF) == (inst.wake_at is not None)
    if inst.state is State.RUNNING:
        assert inst.pid is not None and inst.started_at is not None
    if inst.state in (State.STOPPED, State.EXITED, State.FATAL, State.BACKOFF, State.STARTING):
        assert inst.pid is None
    if inst.state is not State.RUNNING:
        assert inst.deadline_at is None


@settings(max_examples=300, deadline=None)
@given(
    policy=POLICIES,
    steps=st.lists(st.tuples(EVENTS, st.floats(0, 30)), max_size=60),
    initial=st.sampled_from([0.5, 1, 3]),
    factor=st.sampled_from([1, 1.5, 2, 10]),
)
def test_random_event_sequences_never_raise(
    policy: str, steps: list[tuple[Event, float]], initial: float, factor: float
) -> None:
    prog = program(
        f"restart: {policy}\nwall_clock_limit: 100s\n"
        f"backoff: {{initial: {initial}, max: 20, factor: {factor}}}"
    )
    inst = Instance(prog, 0)
    now = 0.0
    for event, dt in steps:
        now += dt
        old = inst.state
        actions = inst.handle(event, now)
        records = transitions(actions)
        assert len(records) == (inst.state is not old)
        assert all(isinstance(a, Transition) for a in actions[: len(records)])
        check_invariants(inst, prog)
        snap: InstanceState = inst.snapshot(now)
        json.dumps(snap)
