"""Cancellation: a handler learns that its caller gave up, and a request given up before it started does not run."""

from __future__ import annotations

import threading
import time
import uuid

import pytest

from redis_rpc import RedisMessage
from redis_rpc._wire.cancel import notice
from redis_rpc._wire.message import build_frame
from redis_rpc.errors import RequestTimeoutError
from tests.conftest import LONG_TIMEOUT, SHORT_TIMEOUT
from tests.helpers import wait_for


def _reply_to() -> str:
    return f"redis_rpc.reply.{uuid.uuid4().hex}.{uuid.uuid4().hex}"


def test_a_handler_sees_cancelled_soon_after_its_callers_timeout(
    make_broker, unique_name
):
    """msg.cancelled is set within a second of the caller's deadline, and wait() returns then."""
    seen: list[float] = []
    answer = threading.Event()
    server = make_broker()

    @server.subscriber(list=unique_name)
    def long(body: str, msg: RedisMessage) -> str:
        assert not msg.cancelled.is_set()
        if msg.cancelled.wait(LONG_TIMEOUT):
            seen.append(time.time())
        # The server's deadline is to the millisecond: it may come a hair
        # before the caller's. Answering only then keeps the reply out of time.
        answer.wait(LONG_TIMEOUT)
        return body

    client = make_broker()
    with server, client:
        timeout = 0.5
        started = time.time()
        with pytest.raises(RequestTimeoutError):
            client.request("x", list=unique_name, timeout=timeout)
        answer.set()
        assert wait_for(lambda: seen)
    # The deadline goes to the millisecond: it may fall a hair before started + timeout.
    assert started + timeout - 0.01 <= seen[0] < started + timeout + 1.0


def test_a_cancel_notice_reaches_the_running_handler(make_broker, raw, unique_name):
    """A caller's cancel notice sets the running handler's msg.cancelled at once."""
    entered, cancelled = threading.Event(), threading.Event()
    server = make_broker()

    @server.subscriber(list=unique_name)
    def long(body: str, msg: RedisMessage) -> None:
        entered.set()
        if msg.cancelled.wait(LONG_TIMEOUT):
            cancelled.set()

    client = make_broker()
    with server, client:
        reply_to = _reply_to()
        raw.rpush(unique_name, build_frame("x", correlation_id="1", reply_to=reply_to))
        assert entered.wait(LONG_TIMEOUT)
        client._caller.cancel(client._backend, reply_to)
        assert cancelled.wait(SHORT_TIMEOUT)


def test_a_request_cancelled_before_it_started_does_not_run(
    make_broker, raw, unique_name
):
    """A queued request whose caller cancelled it is acknowledged without running its handler."""
    entered, release = threading.Event(), threading.Event()
    ran: list[str] = []
    server = make_broker()

    @server.subscriber(list=unique_name)
    def handle(body: str) -> None:
        ran.append(body)
        entered.set()
        release.wait(LONG_TIMEOUT)

    client = make_broker()
    with server, client:
        listener = client._reply_listener()
        assert listener.wait_ready(SHORT_TIMEOUT)
        first, second = _reply_to(), _reply_to()
        raw.rpush(unique_name, build_frame("first", correlation_id="1", reply_to=first))
        assert entered.wait(LONG_TIMEOUT)
        raw.rpush(
            unique_name, build_frame("second", correlation_id="2", reply_to=second)
        )
        client._caller.cancel(client._backend, second)
        assert wait_for(lambda: server._cancellations.received == 1)
        release.set()
        counts = lambda: server.stats().subscribers[f"list:{unique_name}"]  # noqa: E731
        assert wait_for(lambda: counts().cancelled == 1)
    assert ran == ["first"]


def test_a_forged_cancel_notice_is_ignored_with_a_signing_key(
    make_broker, raw, unique_name
):
    """Between peers that share a signing key, an unsigned cancel notice cancels nothing."""
    key = b"k" * 32
    entered, release = threading.Event(), threading.Event()
    seen: list[bool] = []
    server = make_broker(signing_key=key)

    @server.subscriber(list=unique_name)
    def long(body: str, msg: RedisMessage) -> str:
        entered.set()
        release.wait(LONG_TIMEOUT)
        seen.append(msg.cancelled.is_set())
        return body

    client = make_broker(signing_key=key)
    with server, client:
        pending = [None]

        def call() -> None:
            pending[0] = client.request("x", list=unique_name, timeout=LONG_TIMEOUT)

        caller = threading.Thread(target=call)
        caller.start()
        try:
            assert entered.wait(LONG_TIMEOUT)
            listener = client._listener
            assert listener is not None
            (channel,) = list(listener._pending)
            raw.publish("redis_rpc.cancel", channel)  # unsigned: anyone could
            # Notices are heard in order: once a signed one that follows is
            # counted, the forged one has been read, and ignored.
            raw.publish("redis_rpc.cancel", notice(_reply_to(), key))
            assert wait_for(lambda: server._cancellations.received == 1)
        finally:
            release.set()
            caller.join(LONG_TIMEOUT)
    assert seen == [False]
