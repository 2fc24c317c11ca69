"""What the broker refuses rather than transforms silently: bad timeouts, bodies JSON cannot carry, forged error replies, options that cannot work."""

from __future__ import annotations

import math
import threading

import pytest
import redis.sentinel

from redis_rpc import RedisBroker, RemoteError
from redis_rpc._wire.codec import encode_frame
from redis_rpc._wire.message import (
    CONTENT_TYPE,
    CORRELATION_ID,
    ERROR,
    NONCE,
    REPLY_TO,
)
from redis_rpc.errors import SetupError
from tests.conftest import LONG_TIMEOUT, SHORT_TIMEOUT

BAD_TIMEOUTS = [
    math.inf,
    1e12,
    1e308,
    10**400,
    math.nan,
    -1,
    0,
    threading.TIMEOUT_MAX * 2,
    "5",
    True,
]


@pytest.mark.parametrize("timeout", BAD_TIMEOUTS, ids=repr)
def test_request_with_a_bad_timeout_is_refused_before_sending(
    make_broker, raw, unique_name, timeout
):
    """request() refuses an infinite, huge, NaN, negative or non-numeric timeout with SetupError, and sends nothing."""
    broker = make_broker()
    with pytest.raises(SetupError, match="timeout must be") as info:
        broker.request("x", list=unique_name, timeout=timeout)
    assert isinstance(info.value, ValueError)
    assert raw.llen(unique_name) == 0


@pytest.mark.parametrize("timeout", BAD_TIMEOUTS, ids=repr)
def test_publish_with_a_bad_timeout_is_refused_before_sending(
    make_broker, raw, unique_name, timeout
):
    """publish() refuses the same timeouts, and sends nothing."""
    broker = make_broker()
    with pytest.raises(SetupError, match="timeout must be"):
        broker.publish("x", list=unique_name, timeout=timeout)
    assert raw.llen(unique_name) == 0


def test_the_longest_timeout_the_platform_can_wait_is_accepted(
    make_broker, raw, unique_name
):
    """publish() takes a timeout up to threading.TIMEOUT_MAX."""
    broker = make_broker()
    assert broker.publish("x", list=unique_name, timeout=threading.TIMEOUT_MAX) == 1


def test_handler_returning_bytes_inside_a_structure_fails_instead_of_sending_text(
    make_broker, unique_name
):
    """A handler returning {"a": b"x"} answers with an error naming the bytes, not with base85 text."""
    server = make_broker()

    @server.subscriber(list=unique_name)
    def handle(body):
        return {"a": b"x"}

    with server, pytest.raises(RemoteError) as info:
        make_broker().request("go", list=unique_name, timeout=LONG_TIMEOUT)
    assert info.value.type_name == "TypeError"
    assert "bytes" in info.value.remote_message


def test_request_with_bytes_inside_a_structure_is_refused(
    make_broker, raw, unique_name
):
    """request() refuses a body holding bytes inside a structure with TypeError, and sends nothing."""
    broker = make_broker()
    with pytest.raises(TypeError, match="bytes"):
        broker.request({"a": [b"x"]}, list=unique_name, timeout=SHORT_TIMEOUT)
    assert raw.llen(unique_name) == 0


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf], ids=repr)
def test_handler_returning_nan_fails_instead_of_sending_non_standard_json(
    make_broker, unique_name, value
):
    """A handler returning NaN or an infinity answers with an error, never with JSON other peers cannot read."""
    server = make_broker()

    @server.subscriber(list=unique_name)
    def handle(body):
        return {"price": value}

    with server, pytest.raises(RemoteError) as info:
        make_broker().request("go", list=unique_name, timeout=LONG_TIMEOUT)
    assert "NaN" in info.value.remote_message


def test_publish_of_nan_is_refused(make_broker, raw, unique_name):
    """publish() refuses a body holding NaN with ValueError, and sends nothing."""
    broker = make_broker()
    with pytest.raises(ValueError, match="NaN"):
        broker.publish([1.0, math.nan], list=unique_name)
    assert raw.llen(unique_name) == 0


@pytest.mark.parametrize(
    ("body", "type_name", "message"),
    [
        (b'{"type":["a","b"],"message":{"x":1}}', "Forged", ""),
        (b'{"type":7,"message":[1],"errors":"abc","traceback":3}', "Forged", ""),
        (
            b'{"type":"KeyError","message":"gone","errors":[1,"two"]}',
            "KeyError",
            "gone",
        ),
    ],
)
def test_forged_error_reply_yields_only_strings(
    make_broker, raw, unique_name, body, type_name, message
):
    """An error reply whose fields are not strings gives a RemoteError whose type name, message, errors and traceback are strings all the same."""
    caller = make_broker()
    with caller:
        future_reply = []

        def answer():
            _, payload = raw.blpop([unique_name], timeout=LONG_TIMEOUT)
            from redis_rpc._wire.codec import decode_payload

            _, headers = decode_payload(payload)
            frame = encode_frame(
                body,
                {
                    CORRELATION_ID: headers[CORRELATION_ID],
                    CONTENT_TYPE: "application/json",
                    ERROR: "Forged",
                    NONCE: headers[NONCE],
                },
            )
            future_reply.append(raw.publish(headers[REPLY_TO], frame))

        forger = threading.Thread(target=answer)
        forger.start()
        try:
            with pytest.raises(RemoteError) as info:
                caller.request("x", list=unique_name, timeout=LONG_TIMEOUT)
        finally:
            forger.join(LONG_TIMEOUT)
    error = info.value
    assert (error.type_name, error.remote_message) == (type_name, message)
    assert all(isinstance(e, str) for e in error.errors)
    assert error.traceback is None or isinstance(error.traceback, str)


def test_sentinel_managed_connection_class_is_a_setup_error(redis_url):
    """connection_class=SentinelManagedConnection raises SetupError naming the redis+sentinel:// URL, not a bare KeyError."""
    with pytest.raises(SetupError, match=r"redis\+sentinel://"):
        RedisBroker(
            redis_url, connection_class=redis.sentinel.SentinelManagedConnection
        )
