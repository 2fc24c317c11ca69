"""The reply listener's registration rules, without a server."""

from __future__ import annotations

import pytest

from redis_rpc._redis import Connection
from redis_rpc._request import ReplyListener
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
