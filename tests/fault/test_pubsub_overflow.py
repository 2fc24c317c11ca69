"""A message too large for Redis' Pub/Sub output buffer: the server's channel connection is dropped, comes back at once, and says why."""

from __future__ import annotations

import logging
import time

import pytest

from redis_rpc import RedisBroker
from redis_rpc.errors import NoSubscriberError, RedisRPCError
from redis_rpc.testing import RedisServer
from tests.conftest import LONG_TIMEOUT, POLL_INTERVAL, READY_TIMEOUT
from tests.helpers import wait_for

# Redis drops a Pub/Sub client whose output buffer passes 1 MB: as its
# default 32 MB, for a test that sends 2 MB instead of 40.
LIMIT = ("--client-output-buffer-limit", "pubsub 1mb 1mb 0")
HUGE = b"x" * (2 * 1024 * 1024)
# Subscribing again, and one request proving it, on a busy machine.
BACK_WITHIN = 1.5


@pytest.fixture
def small_buffer_server(redis_server):
    server = RedisServer(startup_timeout=READY_TIMEOUT, extra_args=LIMIT)
    server.start()
    yield server
    server.stop()


@pytest.mark.timeout(60)
def test_channel_server_dropped_for_its_output_buffer_says_why_and_is_back_at_once(
    small_buffer_server, unique_name, caplog
):
    """A message over Redis' Pub/Sub output limit drops the server's channel connection; it subscribes again at once, and the log names the output buffer limit, not a Redis that is down."""
    caplog.set_level(logging.WARNING, logger="redis_rpc")
    broker = RedisBroker(small_buffer_server.url, poll_interval=POLL_INTERVAL)

    @broker.subscriber(unique_name)
    def echo(body):
        return body

    with broker:
        assert broker.request("before", unique_name, timeout=LONG_TIMEOUT).decode()
        broker.publish(HUGE, unique_name, timeout=LONG_TIMEOUT)
        dropped = time.monotonic()

        def answers():
            try:
                return broker.request("after", unique_name, timeout=0.3).decode()
            except (NoSubscriberError, RedisRPCError, TimeoutError):
                return None

        assert wait_for(answers, LONG_TIMEOUT) == "after"
        back = time.monotonic() - dropped
    lines = [r.getMessage() for r in caplog.records]
    assert any("client-output-buffer-limit" in line for line in lines), lines
    assert not any("check that the server is running" in line for line in lines)
    assert back < BACK_WITHIN, back
