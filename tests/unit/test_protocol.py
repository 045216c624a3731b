"""protocol.decode: what a request may contain, and the error each mistake gets."""

from __future__ import annotations

import json

import pytest

from supervisord_batt import protocol


@pytest.mark.parametrize(
    "msg",
    [
        {"op": "acquire", "want": 2},
        {"op": "acquire", "want": 0, "kinds": ["thread"], "job": "j", "pid": 7, "id": 1},
        {"op": "release", "lease": "L1", "id": "x"},
        {"op": "heartbeat", "progress": 1.5},
        {"op": "heartbeat", "lease": "L1", "progress": "start"},
        {"op": "status"},
        {"op": "tail", "target": "batt:0", "stream": "stderr", "offset": 0, "bytes": 10},
    ],
)
def test_well_formed_requests_decode_to_themselves(msg: dict[str, object]) -> None:
    assert protocol.decode(json.dumps(msg).encode() + b"\n") == msg


@pytest.mark.parametrize(
    ("line", "code", "says"),
    [
        (b"nope\n", "bad_json", "not a JSON object"),
        (b"\xff\n", "bad_json", "not a JSON object"),
        (b"[1]\n", "bad_json", "got list"),
        (b'{"op": "acquire", "want": ' + b"9" * 5000 + b"}\n", "bad_json", "not a JSON object"),
        (b'{"want": 2}\n', "bad_request", "missing 'op'"),
        (b'{"op": 3}\n', "bad_request", "missing 'op'"),
        (b'{"op": "fly"}\n', "unknown_op", "unknown op 'fly'"),
        (b'{"op": "acquire"}\n', "bad_request", "acquire: missing field 'want'"),
        (b'{"op": "acquire", "want": true}\n', "bad_request", "acquire.want: expected int"),
        (b'{"op": "acquire", "want": 2.0}\n', "bad_request", "acquire.want: expected int"),
        (b'{"op": "acquire", "want": -1}\n', "bad_request", "must be >= 0"),
        (b'{"op": "acquire", "want": 2, "kinds": []}\n', "bad_request", "acquire.kinds"),
        (b'{"op": "acquire", "want": 2, "kinds": ["gpu"]}\n', "bad_request", "acquire.kinds"),
        (b'{"op": "acquire", "want": 2, "x": 1}\n', "bad_request", "unknown field 'x'"),
        (b'{"op": "acquire", "want": 2, "worker_bytes": 0}\n', "bad_request", "1MiB to 1TiB"),
        (b'{"op": "acquire", "want": 2, "worker_bytes": 1536}\n', "bad_request", "1MiB to 1TiB"),
        (b'{"op": "acquire", "want": 2, "worker_bytes": 1099511627777}\n', "bad_request", "1TiB"),
        (b'{"op": "acquire", "want": 2, "worker_bytes": "1G"}\n', "bad_request", "expected int"),
        (b'{"op": "status", "id": [1]}\n', "bad_request", "'id' must be an integer or a string"),
        (b'{"op": "status", "id": false}\n', "bad_request", "'id' must be an integer"),
        (b'{"op": "heartbeat", "progress": null}\n', "bad_request", "heartbeat.progress"),
        (b'{"op": "tail", "target": "b", "stream": "x"}\n', "bad_request", "tail.stream"),
        (b'{"op": "release", "lease": 7}\n', "bad_request", "release.lease: expected str"),
    ],
)
def test_mistakes_get_their_code_and_a_message_that_says_what(
    line: bytes, code: str, says: str
) -> None:
    with pytest.raises(protocol.ProtocolError) as caught:
        protocol.decode(line)
    assert caught.value.code == code
    assert says in caught.value.message, caught.value.message


def test_replies_are_one_compact_line() -> None:
    line = protocol.encode(protocol.ok(7, lease="L1", workers=2))
    assert line == b'{"ok":true,"id":7,"lease":"L1","workers":2}\n'
    err = protocol.encode(protocol.error("bad_json", "not \u00e9", "r"))
    assert err.endswith(b"\n") and err.count(b"\n") == 1
    assert json.loads(err) == {
        "ok": False,
        "error": {"code": "bad_json", "message": "not é"},
        "id": "r",
    }


@pytest.mark.parametrize(
    ("op", "key", "extra"),
    [
        ("acquire", "job", {"want": 1}),
        ("hello", "client", {"version": 1}),
        ("fallback", "stage", {"from": "process", "to": "thread"}),
        ("fallback", "reason", {"from": "process", "to": "thread"}),
        ("heartbeat", "progress", {}),
        ("release", "lease", {}),
        ("tail", "target", {}),
    ],
)
def test_issue_22_text_fields_are_capped_and_the_refusal_names_field_and_limit(
    op: str, key: str, extra: dict[str, object]
) -> None:
    cap = protocol.MAX_CHARS[key]
    at_cap = {"op": op, **extra, key: "é" * cap}  # characters, not bytes: é is two bytes
    assert protocol.decode(json.dumps(at_cap).encode()) == at_cap
    with pytest.raises(protocol.ProtocolError) as caught:
        protocol.decode(json.dumps({**at_cap, key: "x" * (cap + 1)}).encode())
    assert caught.value.code == protocol.BAD_REQUEST
    assert caught.value.message == f"{op}.{key}: at most {cap} characters, got {cap + 1}"


def test_issue_22_every_text_field_of_every_request_has_a_cap() -> None:
    """A new text field must get a cap in MAX_CHARS (the enumerations excepted)."""
    enumerated = {("fallback", "from"), ("fallback", "to"), ("tail", "stream")}
    uncapped = [
        f"{op}.{key}"
        for op, schema in protocol.SCHEMAS.items()
        for key, field in schema.items()
        if str in field.types and key not in protocol.MAX_CHARS and (op, key) not in enumerated
    ]
    assert uncapped == []
