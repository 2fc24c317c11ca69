"""Losing Redis: waiting callers fail fast, and the broker recovers by itself."""

from __future__ import annotations

import threading
import time

import pytest

from redis_rpc import RedisBroker
from redis_rpc.errors import RedisConnectionError
from redis_rpc.testing import RedisServer
from tests.conftest import LONG_TIMEOUT, POLL_INTERVAL, READY_TIMEOUT, SHORT_TIMEOUT
from tests.helpers import Callers, request_eventually, wait_for


@pytest.fixture
def own_server(redis_server):
    """A private server this test may kill; redis_server only guarantees the binary."""
    server = RedisServer(startup_timeout=READY_TIMEOUT)
    server.start()
    yield server
    server.stop()


def test_waiting_caller_fails_fast_and_broker_recovers(own_server, unique_name):
    """A caller waiting when Redis dies gets RedisConnectionError; after a restart, requests work."""
    broker = RedisBroker(own_server.url, poll_interval=POLL_INTERVAL)

    @broker.subscriber(list=unique_name)
    def echo(msg):
        return msg

    with broker, Callers(1) as pool:
        ours = {t for t in threading.enumerate() if t.name.startswith("redis_rpc:")}
        waiting = pool.submit(
            broker.request, "x", list=f"{unique_name}-nobody", timeout=LONG_TIMEOUT
        )
        assert wait_for(lambda: "pending_requests=1" in repr(broker))
        started = time.monotonic()
        own_server.kill()
        with pytest.raises(RedisConnectionError):
            waiting.result(LONG_TIMEOUT)
        assert time.monotonic() - started < SHORT_TIMEOUT
        own_server.start()
        assert request_eventually(broker, "back", list=unique_name) == "back"
        assert [t.name for t in ours if not t.is_alive()] == []


def test_silent_pubsub_connection_is_detected(own_server, unique_name):
    """A Pub/Sub connection that stops answering is noticed by PING and opened again."""
    broker = RedisBroker(
        own_server.url,
        poll_interval=POLL_INTERVAL,
        socket_timeout=0.5,
        health_check_interval=0.2,
    )

    @broker.subscriber(channel=unique_name)
    def echo(msg):
        return msg

    with broker:
        listener = broker._listener
        assert listener is not None
        # A stopped server keeps its sockets open but answers nothing, as a dropped NAT entry.
        own_server.pause()
        try:
            noticed = wait_for(lambda: not listener.ready.is_set(), LONG_TIMEOUT)
            assert noticed, "the silent connection was never noticed"
        finally:
            own_server.resume()
        assert request_eventually(broker, "hi", channel=unique_name) == "hi"
