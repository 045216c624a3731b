"""What a reload changes, per program (pure): the kind of every setting."""

from __future__ import annotations

from dataclasses import replace

from supervisord_batt.config.loader import load_config_text
from supervisord_batt.config.records import DEFAULT_OUTPUT, ProgramConfig
from supervisord_batt.supervise.changes import IDENTITY, plan, stale

BASE = load_config_text("programs:\n  batt:\n    command: [sleep, '60']\n").programs[0]


def _program(**changes: object) -> ProgramConfig:
    return replace(BASE, **changes)  # type: ignore[arg-type]


def test_limits_apply_in_place_and_what_a_worker_is_at_its_next_start() -> None:
    old = _program(name="batt", numprocs=2)
    new = replace(old, wall_clock_limit=60.0, command=("other",), stop_grace=1.0, numprocs=3)
    (change,) = plan((old,), (new,))
    assert change.how == "changed"
    assert change.in_place == ("wall_clock_limit", "stop_grace")
    assert change.identity == ("command",)
    assert change.indices() == (range(2), range(2, 3), range(3, 2))
    assert not change.new_sinks


def test_added_removed_unchanged_in_the_new_configs_order_then_the_removed() -> None:
    a, b, c = (_program(name=n) for n in "abc")
    changes = plan((a, b), (c, b))
    assert [(x.name, x.how) for x in changes] == [
        ("c", "added"),
        ("b", "unchanged"),
        ("a", "removed"),
    ]
    assert changes[0].indices()[1] == range(a.numprocs)  # every instance is new
    assert changes[2].indices()[2] == range(a.numprocs)  # every instance goes


def test_numprocs_down_removes_only_the_instances_past_the_new_count() -> None:
    old = _program(name="batt", numprocs=4)
    (change,) = plan((old,), (replace(old, numprocs=1),))
    assert change.indices() == (range(1), range(4, 1), range(1, 4))
    assert change.in_place == () and change.identity == ()


def test_new_files_only_when_the_output_moves() -> None:
    old = _program(name="batt", output=DEFAULT_OUTPUT)
    bigger = replace(old, output=replace(DEFAULT_OUTPUT, max_bytes=1 << 30))
    moved = replace(old, output=replace(DEFAULT_OUTPUT, mode="daemon"))
    assert not plan((old,), (bigger,))[0].new_sinks
    assert plan((old,), (bigger,))[0].in_place == ("output",)
    assert plan((old,), (moved,))[0].new_sinks


def test_stale_names_what_a_running_instance_is_not_any_more() -> None:
    running = _program(name="batt")
    assert stale(running, running) == ()
    current = replace(running, user="nobody", environment=(("A", "1"),), wall_clock_limit=5.0)
    assert stale(running, current) == ("environment", "user")
    assert set(stale(running, current)) <= IDENTITY
