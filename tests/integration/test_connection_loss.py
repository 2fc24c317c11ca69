"""Losing Redis: requests in flight outlive it, and the broker recovers by itself."""

from __future__ import annotations

import contextlib
import threading
import time

import pytest
import redis

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


def test_a_request_in_flight_outlives_a_redis_restart(own_server, unique_name):
    """A request whose handler runs while Redis dies and comes back gets its reply; a new caller meanwhile fails at once."""
    broker = RedisBroker(own_server.url, poll_interval=POLL_INTERVAL)
    entered, release = threading.Event(), threading.Event()

    @broker.subscriber(list=unique_name)
    def echo(msg):
        entered.set()
        release.wait(LONG_TIMEOUT)
        return msg

    with broker, Callers(1) as pool:
        ours = {t for t in threading.enumerate() if t.name.startswith("redis_rpc:")}
        waiting = pool.submit(
            broker.request, "x", list=unique_name, timeout=LONG_TIMEOUT
        )
        assert entered.wait(LONG_TIMEOUT)
        own_server.kill()
        listener = broker._listener
        assert listener is not None
        assert wait_for(lambda: not listener.ready.is_set())
        arrived = time.monotonic()
        with pytest.raises(RedisConnectionError, match="down"):
            broker.request("late", list=unique_name, timeout=LONG_TIMEOUT)
        assert time.monotonic() - arrived < SHORT_TIMEOUT
        own_server.start()
        release.set()
        assert waiting.result(LONG_TIMEOUT).decode() == "x"
        assert request_eventually(broker, "back", list=unique_name) == "back"
        assert [t.name for t in ours if not t.is_alive()] == []


def test_a_reply_outlives_a_killed_reply_connection(own_server, unique_name):
    """CLIENT KILL TYPE pubsub while the handler runs: the caller still gets its reply, from its kept key if it missed it."""
    server = RedisBroker(own_server.url, poll_interval=POLL_INTERVAL)
    entered, release = threading.Event(), threading.Event()

    @server.subscriber(list=unique_name)
    def echo(msg):
        entered.set()
        release.wait(LONG_TIMEOUT)
        return msg

    client = RedisBroker(own_server.url, poll_interval=POLL_INTERVAL)
    raw = redis.Redis.from_url(own_server.url)
    with server, client, Callers(1) as pool, contextlib.closing(raw):
        waiting = pool.submit(
            client.request, "x", list=unique_name, timeout=LONG_TIMEOUT
        )
        assert entered.wait(LONG_TIMEOUT)
        listener = client._listener
        assert listener is not None
        raw.client_kill_filter(_type="pubsub")
        assert wait_for(lambda: not listener.ready.is_set())
        release.set()  # answered while the caller's subscription may still be down
        assert waiting.result(LONG_TIMEOUT).decode() == "x"
        assert listener.ready.is_set()
        assert listener.pending == 0


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


def test_a_flood_on_the_reply_channels_fails_no_request(own_server, unique_name):
    """Publishing more than Redis' output buffer limit under a caller's reply prefix drops its subscription, and its requests still succeed."""
    raw = redis.Redis.from_url(own_server.url)
    raw.config_set("client-output-buffer-limit", "pubsub 256kb 64kb 60")
    server = RedisBroker(own_server.url, poll_interval=POLL_INTERVAL)
    entered, release = threading.Event(), threading.Event()

    @server.subscriber(list=unique_name, max_workers=4)
    def echo(msg: str) -> str:
        if msg == "slow":
            entered.set()
            release.wait(LONG_TIMEOUT)
        return msg

    client = RedisBroker(own_server.url, poll_interval=POLL_INTERVAL)
    with server, client, Callers(1) as pool, contextlib.closing(raw):
        waiting = pool.submit(
            client.request, "slow", list=unique_name, timeout=LONG_TIMEOUT
        )
        assert entered.wait(LONG_TIMEOUT)
        listener = client._listener
        assert listener is not None
        for _ in range(3):  # an attacker who has seen one reply_to, again and again
            assert wait_for(listener.ready.is_set)
            raw.publish(f"{listener.prefix}flood", b"x" * 1_000_000)
            assert wait_for(lambda: not listener.ready.is_set())
        release.set()
        assert waiting.result(LONG_TIMEOUT).decode() == "slow"
        assert request_eventually(client, "after", list=unique_name) == "after"
