"""Bodies that JSON would not give a handler's parameter type are refused, over a real Redis."""

from __future__ import annotations

from typing import Any

import pytest

from redis_rpc import RemoteError
from tests.conftest import LONG_TIMEOUT

JSON = {"content-type": "application/json"}

# (annotation, body, headers, reason): each body sent raw (no content type, so
# FastStream's rule decodes it as JSON when it parses, else hands over bytes)
# and, where it is JSON, also labelled as JSON.
BAD_BODIES = [
    pytest.param(
        list[int], b"hello", {}, "expected an array, got bytes", id="list-int-raw-bytes"
    ),
    pytest.param(
        list[int],
        b'"hello"',
        JSON,
        "expected an array, got str",
        id="list-int-json-string",
    ),
    pytest.param(
        list[int],
        b'{"k":1}',
        JSON,
        "expected an array, got dict",
        id="list-int-json-object",
    ),
    pytest.param(
        list[str], b"abc", {}, "expected an array, got bytes", id="list-str-raw-bytes"
    ),
    pytest.param(
        list[str], "abc", {}, "expected an array, got str", id="list-str-text"
    ),
    pytest.param(
        list[str],
        b'"abc"',
        {},
        "expected an array, got str",
        id="list-str-raw-json-string",
    ),
    pytest.param(
        list[str],
        b'"abc"',
        JSON,
        "expected an array, got str",
        id="list-str-json-string",
    ),
    pytest.param(
        list[str],
        b'{"k":"v"}',
        {},
        "expected an array, got dict",
        id="list-str-raw-json-object",
    ),
    pytest.param(
        list[str],
        {"k": "v"},
        {},
        "expected an array, got dict",
        id="list-str-json-object",
    ),
    pytest.param(
        dict, [["k", "v"]], {}, "expected an object, got list", id="dict-json-pairs"
    ),
    pytest.param(
        dict,
        b'[["k","v"]]',
        {},
        "expected an object, got list",
        id="dict-raw-json-pairs",
    ),
    pytest.param(
        dict,
        ["ab", "cd"],
        {},
        "expected an object, got list",
        id="dict-json-two-letter-strings",
    ),
    pytest.param(
        dict[str, str],
        [["k", "v"]],
        {},
        "expected an object, got list",
        id="dict-str-str-json-pairs",
    ),
    pytest.param(
        dict, b"k=v", {}, "expected an object, got bytes", id="dict-raw-bytes"
    ),
    pytest.param(dict, "kv", {}, "expected an object, got str", id="dict-text"),
    pytest.param(
        float, b"NaN", {}, "expected a finite float, got nan", id="float-raw-nan"
    ),
    pytest.param(
        float,
        b"Infinity",
        JSON,
        "expected a finite float, got inf",
        id="float-json-infinity",
    ),
    pytest.param(
        float,
        b"-Infinity",
        {},
        "expected a finite float, got -inf",
        id="float-raw-minus-infinity",
    ),
    pytest.param(
        float,
        b"1e999",
        JSON,
        "expected a finite float, got inf",
        id="float-json-overflow",
    ),
    pytest.param(
        list[float],
        b"[1.5,NaN]",
        JSON,
        "expected float @ $[1]",
        id="list-float-json-nan",
    ),
    pytest.param(
        dict[str, float],
        b'{"x":Infinity}',
        {},
        "expected float @ $['x']",
        id="dict-float-raw-inf",
    ),
]

# A body each handler takes, sent after the bad one.
GOOD_BODIES: dict[Any, Any] = {
    list[int]: [1, 2],
    list[str]: ["a"],
    dict: {"k": "v"},
    dict[str, str]: {"k": "v"},
    float: 1.5,
    list[float]: [1.5],
    dict[str, float]: {"x": 1.5},
}


def _serve(broker, name: str, annotation: Any, calls: list[Any]) -> None:
    def handle(body):
        calls.append(body)
        return "handled"

    handle.__annotations__ = {"body": annotation, "return": str}
    broker.subscriber(list=name)(handle)


@pytest.mark.parametrize(("annotation", "body", "headers", "reason"), BAD_BODIES)
def test_bad_body_is_a_validation_error(
    make_broker, unique_name, annotation, body, headers, reason
):
    """A body that JSON would not give the handler's type reaches our caller as
    RemoteError("ValidationError"), and the handler is never called."""
    broker = make_broker()
    calls: list[Any] = []
    _serve(broker, unique_name, annotation, calls)
    with broker:
        with pytest.raises(RemoteError) as info:
            broker.request(
                body, list=unique_name, headers=headers, timeout=LONG_TIMEOUT
            )
        good = GOOD_BODIES[annotation]
        reply = broker.request(good, list=unique_name, timeout=LONG_TIMEOUT)
    assert info.value.type_name == "ValidationError"
    assert any(reason in error for error in info.value.errors), info.value.errors
    assert reply.decode() == "handled"
    assert calls == [good]
