"""Fuzzed input never stops the daemon from serving a well-behaved client."""

from __future__ import annotations

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.helpers import WireClient
from tests.support.daemons import DaemonHandle

json_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=20)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=10,
)
ops = st.sampled_from(
    [
        "hello",
        "acquire",
        "renew",
        "release",
        "heartbeat",
        "status",
        "start",
        "stop",
        "restart",
        "reload",
        "nope",
        "",
    ]
)
wrong_typed = st.builds(
    lambda op, fields: json.dumps({"op": op, **fields}).encode(),
    ops,
    st.dictionaries(
        st.sampled_from(
            [
                "want",
                "kinds",
                "lease",
                "version",
                "id",
                "job",
                "pid",
                "progress",
                "workers_in_use",
                "target",
                "x",
            ]
        ),
        json_values,
        max_size=4,
    ),
)
payloads = st.one_of(
    st.binary(max_size=2000),
    wrong_typed,
    st.builds(lambda n: b"{" * n, st.integers(1, 100_000)),  # huge, deep, never ending
    st.builds(lambda b: b[: len(b) // 2], wrong_typed),  # half messages
)

SETTINGS = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@SETTINGS
@given(payload=payloads, newline=st.booleans())
def test_fuzzed_input_keeps_the_daemon_serving(
    daemon_once: DaemonHandle, payload: bytes, newline: bool
) -> None:
    c = WireClient(daemon_once.socket, timeout=10)
    try:
        c.send_raw(payload + (b"\n" if newline else b""))
        if newline and b"\n" not in payload:
            # one line: it must get exactly one reply and the connection must stay in sync
            c.send_raw(b'{"op":"status","id":"after"}\n')
            first, second = c.read_reply(), c.read_reply()
            assert "ok" in first
            assert second["ok"] and second["id"] == "after", (first, second)
    except (TimeoutError, ConnectionError, BrokenPipeError):
        pass  # the daemon may close a connection it cannot resynchronise
    finally:
        c.close()
    with WireClient(daemon_once.socket, timeout=10) as good:
        assert good.request("status")["ok"]
    assert daemon_once.proc.poll() is None
