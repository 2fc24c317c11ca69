"""Failures at the edges: odd envelopes, unencodable error replies, limits, lifecycle."""

from __future__ import annotations

import json
import threading

import pytest

from redis_rpc import ListSub, StreamSub
from redis_rpc.errors import (
    BrokerStateError,
    RemoteError,
    RequestTimeoutError,
    ValidationError,
)
from tests.conftest import SHORT_TIMEOUT
from tests.helpers import wait_for

RECOVER_AFTER = 1.0  # above six of the test brokers' poll intervals


def _unsettled(raw, transport, name):
    """How many messages a consumer took and never settled."""
    if transport == "stream":
        return raw.xpending(name, "redis_rpc")["pending"]
    total = 0
    for member in raw.smembers(f"{name}:redis_rpc:consumers"):
        total += raw.llen(f"{name}:redis_rpc:processing:{member.decode()}")
    return total


def _subscribe(broker, transport, name, handler):
    if transport == "stream":
        broker.subscriber(stream=StreamSub(name, claim_idle_time=None))(handler)
    else:
        reliable = ListSub(name, reliable=True, recover_after=RECOVER_AFTER)
        broker.subscriber(list=reliable)(handler)


def _send_raw(raw, transport, name, payload):
    if transport == "stream":
        raw.xadd(name, {b"__data__": payload})
    else:
        raw.rpush(name, payload)


@pytest.mark.parametrize("transport", ["stream", "reliable_list"])
def test_envelope_deadline_too_large_for_a_float_is_not_left_unsettled(
    make_broker, unique_name, raw, transport
):
    """A legacy JSON envelope whose x-redis-rpc-deadline is an integer too large
    for a float (OverflowError, not ValueError) must be handled like any other
    unreadable deadline (ignored) or refused and dead-lettered; either way the
    stream entry is acknowledged / the item leaves the processing list."""
    broker = make_broker()
    calls = []
    _subscribe(broker, transport, unique_name, lambda body: calls.append(body))
    with broker:
        payload = json.dumps(
            {"data": "hi", "headers": {"x-redis-rpc-deadline": 10**400}}
        )
        _send_raw(raw, transport, unique_name, payload)
        settled = wait_for(
            lambda: (
                raw.llen(unique_name) == 0
                and _unsettled(raw, transport, unique_name) == 0
                if transport != "stream"
                else raw.xinfo_groups(unique_name)
                and raw.xinfo_groups(unique_name)[0]["entries-read"] == 1
                and _unsettled(raw, transport, unique_name) == 0
            ),
            SHORT_TIMEOUT,
        )
        assert settled, "the message was taken but never acknowledged nor dead-lettered"


@pytest.mark.parametrize("transport", ["stream", "reliable_list"])
def test_unencodable_error_reply_still_settles_the_message(
    make_broker, unique_name, raw, transport
):
    """When the reply (and so the error reply) cannot be encoded, here because the
    legacy envelope's correlation_id is longer than a frame header may be, the
    message must still be settled (acknowledged or dead-lettered), not left
    pending for ever."""
    broker = make_broker()
    _subscribe(broker, transport, unique_name, lambda body: "ok")
    with broker:
        payload = json.dumps(
            {
                "data": "hi",
                "headers": {
                    "correlation_id": "c" * 70_000,
                    "reply_to": f"{unique_name}-reply",
                    "x-redis-rpc-accept-errors": "1",
                },
            }
        )
        _send_raw(raw, transport, unique_name, payload)
        if transport == "stream":
            wait_for(lambda: raw.xinfo_groups(unique_name)[0]["entries-read"] == 1)
        else:
            wait_for(lambda: raw.llen(unique_name) == 0)
        settled = wait_for(
            lambda: _unsettled(raw, transport, unique_name) == 0, SHORT_TIMEOUT
        )
        assert settled, "the message was taken but never acknowledged nor dead-lettered"


def test_validation_error_with_non_string_errors_still_answers_the_caller(
    make_broker, unique_name
):
    """A handler that raises ValidationError with structured errors (as from
    pydantic's exc.errors(), which may hold exception objects) must still get the
    caller a RemoteError whose errors are strings ("only strings go out")."""
    server, client = make_broker(), make_broker()

    @server.subscriber(list=unique_name)
    def handle(body):
        raise ValidationError(
            "bad order",
            errors=[{"loc": ("qty",), "ctx": {"error": ValueError("neg")}}],  # type: ignore[list-item]
        )

    with server, pytest.raises(RemoteError) as info:
        client.request("x", list=unique_name, timeout=1.0)
    assert info.value.type_name == "ValidationError"
    assert all(isinstance(e, str) for e in info.value.errors)


def test_handler_may_close_another_broker(make_broker, unique_name):
    """close() refuses only to be called from a handler "of this broker" (its
    docstring), since only that would wait for itself. Closing a different
    broker from a handler must work."""
    server, other, client = make_broker(), make_broker(), make_broker()

    @server.subscriber(list=unique_name)
    def handle(body):
        try:
            other.close()
        except BrokerStateError as exc:
            return f"refused: {exc}"
        return "closed"

    with server:
        reply = client.request("x", list=unique_name, timeout=SHORT_TIMEOUT)
    assert reply.decode() == "closed"


def test_first_request_with_short_timeout_is_a_timeout(make_broker, unique_name):
    """A request that runs out of time is a RequestTimeoutError (a TimeoutError),
    as request()'s docstring says; RedisConnectionError means Redis could not be
    reached: so is a first request whose timeout is shorter than the reply
    subscription's set-up."""
    client = make_broker()
    with pytest.raises(TimeoutError):
        client.request("x", list=unique_name, timeout=1e-6)


def test_error_reply_respects_max_message_size(make_broker, unique_name, raw):
    """max_message_size is "the longest frame a broker sends". An error reply
    that does not fit even in brief form (here because of a long correlation id)
    must not be sent over the limit."""
    limit = 1024
    server = make_broker(max_message_size=limit)
    client = make_broker(max_message_size=None)

    @server.subscriber(list=unique_name)
    def handle(body):
        return "ok"

    sizes = []
    pubsub = raw.pubsub()
    pubsub.psubscribe("redis_rpc.reply.*")
    pubsub.get_message(timeout=SHORT_TIMEOUT)  # the confirmation
    done = threading.Event()

    def watch():
        while not done.is_set():
            message = pubsub.get_message(timeout=0.05)
            if message and message["type"] == "pmessage":
                sizes.append(len(message["data"]))

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        with server, pytest.raises((RemoteError, RequestTimeoutError)):
            client.request(
                "x" * 10,
                list=unique_name,
                correlation_id="c" * 3000,
                timeout=0.5,
            )
    finally:
        done.set()
        watcher.join(SHORT_TIMEOUT)
        pubsub.close()
    assert all(size <= limit for size in sizes), sizes
