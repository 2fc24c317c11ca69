"""The reply listener's registration rules, without a server."""

from __future__ import annotations

import threading
from concurrent.futures import TimeoutError as FutureTimeoutError

import pytest

from redis_rpc._redis import Connection
from redis_rpc._request import Reply, ReplyListener
from redis_rpc.errors import BrokerClosedError, RedisConnectionError


@pytest.fixture
def listener():
    # Building a client opens no socket; the listener thread is never started.
    connection = Connection(
        "redis://127.0.0.1:1",
        socket_timeout=1.0,
        health_check_interval=30.0,
        options={},
    )
    return ReplyListener(connection, poll_interval=0.1)


def test_register_refused_until_subscribed(listener):
    """No request is registered while the reply subscription is not confirmed."""
    with pytest.raises(RedisConnectionError):
        listener.register()


def test_register_refused_after_stop(listener):
    """After stop(), registering raises BrokerClosedError, so no request waits in vain."""
    listener.stop(timeout=0.1)
    with pytest.raises(BrokerClosedError):
        listener.register()
    assert listener.pending == 0


class TestReply:
    def test_result_waits_for_the_payload(self):
        """result() returns the payload once the listener sets it, from another thread."""
        reply = Reply()
        setter = threading.Timer(0.01, reply.set_result, (b"payload",))
        setter.start()
        try:
            assert reply.result(5.0) == b"payload"
            assert reply.result(0.0) == b"payload"  # stays available
        finally:
            setter.join(5.0)

    def test_result_times_out(self):
        """result() raises the futures TimeoutError that request() catches when nothing arrives."""
        with pytest.raises(FutureTimeoutError):
            Reply().result(0.01)

    def test_result_raises_the_set_error(self):
        """result() raises what the listener failed the request with."""
        reply = Reply()
        reply.set_exception(BrokerClosedError("Closed."))
        with pytest.raises(BrokerClosedError):
            reply.result(1.0)
