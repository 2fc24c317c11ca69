"""Requests made from inside a handler: they inherit their caller's deadline and never wait for themselves."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
import redis

from redis_rpc import RedisMessage
from redis_rpc.errors import RemoteError
from tests.conftest import LONG_TIMEOUT, SHORT_TIMEOUT
from tests.helpers import wait_for


def test_request_to_own_single_worker_subscriber_fails_at_once(
    make_broker, unique_name
):
    """A handler requesting its own single-worker subscriber gets a clear error at once, not a timeout."""
    broker = make_broker(max_workers=1)

    @broker.subscriber(list=unique_name)
    def recurse(body: int) -> int:
        if body == 0:
            return 0
        return broker.request(body - 1, list=unique_name, timeout=LONG_TIMEOUT).decode()

    broker.start()
    begun = time.monotonic()
    with pytest.raises(RemoteError) as info:
        broker.request(1, list=unique_name, timeout=LONG_TIMEOUT * 2)
    assert time.monotonic() - begun < LONG_TIMEOUT
    assert info.value.type_name == "BrokerStateError"
    assert "its own handler" in info.value.remote_message
    assert "max_workers" in info.value.remote_message


def test_request_to_own_subscriber_with_spare_workers_is_served(
    make_broker, unique_name
):
    """With a free worker, a handler's request to its own subscriber is answered."""
    broker = make_broker(max_workers=2)

    @broker.subscriber(list=unique_name)
    def recurse(body: int) -> int:
        if body == 0:
            return 0
        return (
            1
            + broker.request(body - 1, list=unique_name, timeout=LONG_TIMEOUT).decode()
        )

    broker.start()
    assert broker.request(1, list=unique_name, timeout=LONG_TIMEOUT).decode() == 1


def test_nested_request_inherits_the_remaining_deadline(
    make_broker, unique_name, redis_url
):
    """A handler's request waits no longer than its own caller, and sends that deadline on."""
    broker = make_broker(max_workers=2)
    nobody = f"{unique_name}:nobody"
    outcome: dict[str, Any] = {}

    # No reply: the handler's own timeout ends about when its caller's does,
    # and a reply racing the caller's timeout would make the outcome vary.
    @broker.subscriber(list=unique_name, no_reply=True)
    def forward(body: str) -> str:
        begun = time.monotonic()
        try:
            broker.request(body, list=nobody, timeout=LONG_TIMEOUT * 3)
        except TimeoutError as exc:
            outcome["error"] = exc
        outcome["waited"] = time.monotonic() - begun
        return "done"

    broker.start()
    sent = time.time()
    with pytest.raises(TimeoutError):
        broker.request("hello", list=unique_name, timeout=1.0)
    assert wait_for(lambda: "waited" in outcome, LONG_TIMEOUT)
    assert outcome["waited"] < 1.0 + SHORT_TIMEOUT
    assert isinstance(outcome["error"], TimeoutError)
    raw = redis.Redis.from_url(redis_url)
    try:
        forwarded = RedisMessage.from_payload(raw.lpop(nobody))  # type: ignore[arg-type]
    finally:
        raw.close()
    assert forwarded.deadline is not None
    assert forwarded.deadline <= sent + 1.0 + 0.01  # the outer caller's deadline


def test_request_after_the_callers_deadline_fails_at_once(make_broker, unique_name):
    """A handler whose caller already gave up cannot start a new request."""
    broker = make_broker(max_workers=2)
    outcome: dict[str, Any] = {}
    nobody = f"{unique_name}:nobody"

    caller_gave_up = threading.Event()

    @broker.subscriber(list=unique_name)
    def late(body: str) -> None:
        caller_gave_up.wait(LONG_TIMEOUT)
        begun = time.monotonic()
        try:
            broker.request(body, list=nobody, timeout=LONG_TIMEOUT)
        except TimeoutError as exc:
            outcome["error"] = exc
        outcome["waited"] = time.monotonic() - begun

    broker.start()
    with pytest.raises(TimeoutError):
        broker.request("hello", list=unique_name, timeout=0.2)
    caller_gave_up.set()
    assert wait_for(lambda: "waited" in outcome, LONG_TIMEOUT)
    # Far below the request's own LONG_TIMEOUT. The deadline header is rounded
    # to the millisecond, so a few microseconds may be left: the request then
    # times out at once instead of being refused, which is as good.
    assert outcome["waited"] < SHORT_TIMEOUT
