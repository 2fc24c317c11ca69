"""The reply listener's registration rules, without a server."""

from __future__ import annotations

import threading
from concurrent.futures import TimeoutError as FutureTimeoutError

import pytest

from redis_rpc._client.listener import ReplyListener
from redis_rpc._latch import Latch
from redis_rpc.errors import BrokerClosedError, RedisConnectionError
from tests.unit.fakes import FakeBackend


@pytest.fixture
def listener():
    # The listener thread is never started.
    return ReplyListener(FakeBackend(), cluster=False, poll_interval=0.1)


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


class TestLatch:
    def test_result_waits_for_the_payload(self):
        """result() returns the payload once the listener sets it, from another thread."""
        reply: Latch[bytes] = Latch()
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
            Latch().result(0.01)

    def test_result_raises_the_set_error(self):
        """result() raises what the listener failed the request with."""
        reply: Latch[bytes] = Latch()
        reply.set_error(BrokerClosedError("Closed."))
        with pytest.raises(BrokerClosedError):
            reply.result(1.0)
