"""The shared pipe against a real Redis: many caller threads, few connections."""

from __future__ import annotations

import threading
import time
from typing import cast

import pytest

from redis_rpc import RedisBroker
from redis_rpc._io.admin import RedisAdmin
from redis_rpc.errors import RedisConnectionError
from tests.conftest import LONG_TIMEOUT

CALLERS = 1000
REQUESTS_EACH = 2
# Pipe, reply listener, and one spare: the count must not grow with callers.
MAX_CLIENT_CONNECTIONS = 3


def connections(raw, name):
    return sum(c["name"] == name for c in raw.client_list())


def run_threads(target, count):
    """Run *target* on *count* threads released together; return what each raised."""
    errors: list[BaseException] = []
    lock = threading.Lock()
    barrier = threading.Barrier(count, timeout=LONG_TIMEOUT * 3)

    def run():
        try:
            barrier.wait()
            target()
        except Exception as exc:  # noqa: BLE001 - collected for the assertion
            with lock:
                errors.append(exc)

    threads = [
        threading.Thread(target=run, name=f"test-caller-{n}", daemon=True)
        for n in range(count)
    ]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + LONG_TIMEOUT * 6
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    assert not [t for t in threads if t.is_alive()], "callers still running"
    return errors


@pytest.mark.timeout(120)
def test_a_thousand_caller_threads_on_default_settings_all_succeed(
    redis_url, raw, unique_name
):
    """1,000 threads requesting at once through one broker with default settings all get their replies, over a few connections."""
    server = RedisBroker(redis_url)
    client = RedisBroker(redis_url, client_name=unique_name)

    @server.subscriber(list=unique_name)
    def echo(body):
        return body

    replies = []

    def call():
        for n in range(REQUESTS_EACH):
            body = f"{threading.current_thread().name}/{n}"
            replies.append(client.request(body, list=unique_name).decode() == body)

    with server, client:
        errors = run_threads(call, CALLERS)
        assert errors == []
        assert replies == [True] * (CALLERS * REQUESTS_EACH)
        assert connections(raw, unique_name) <= MAX_CLIENT_CONNECTIONS


@pytest.mark.timeout(60)
def test_connections_stay_few_whatever_the_number_of_publishing_threads(
    redis_url, raw, unique_name
):
    """Hundreds of threads publishing at once share one connection rather than one each."""
    broker = RedisBroker(redis_url, client_name=unique_name)

    def publish():
        for _ in range(10):
            broker.publish(b"x", list=unique_name)

    try:
        assert run_threads(publish, 300) == []
        assert raw.llen(unique_name) == 3000
        assert connections(raw, unique_name) == 1
    finally:
        broker.close()


def test_many_publishes_at_once_share_writes(make_broker, unique_name):
    """Publishes from many threads at once go out in fewer writes than calls."""
    broker = make_broker()

    def publish():
        for _ in range(20):
            broker.publish(b"x", list=unique_name)

    assert run_threads(publish, 50) == []
    pipe = broker._backend._pipe
    assert pipe.written == 1000
    assert pipe.batches < pipe.written


@pytest.mark.timeout(60)
def test_management_calls_from_many_threads_share_one_connection(
    redis_url, raw, unique_name
):
    """Heartbeats and consumers' looks for dead peers made at once by many threads go one at a time, over one connection."""
    broker = RedisBroker(redis_url, client_name=unique_name)
    admin = broker._backend.admin
    registry = f"{unique_name}:registry"
    raw.sadd(registry, "a", "b")

    def manage():
        for _ in range(20):
            assert admin.members(registry) == ["a", "b"]
            assert admin.server_time_ms() > 0

    try:  # not started: the calls below open the broker's only connections
        assert run_threads(manage, 16) == []
        assert connections(raw, unique_name) == 1
    finally:
        broker.close()


@pytest.mark.timeout(60)
def test_a_management_call_waits_for_its_turn_no_longer_than_socket_timeout(
    redis_url, raw, unique_name
):
    """A management call that another one holds up past socket_timeout fails as not sent, instead of waiting on."""
    socket_timeout = 0.5
    broker = RedisBroker(redis_url, socket_timeout=socket_timeout, poll_interval=0.1)
    admin = cast("RedisAdmin", broker._backend.admin)
    try:
        with admin._calling():  # a call that Redis does not finish
            started = time.monotonic()
            with pytest.raises(RedisConnectionError) as info:
                admin.members(f"{unique_name}:registry")
        assert socket_timeout <= time.monotonic() - started < socket_timeout + 2.0
        assert (info.value.reason, info.value.maybe_applied) == ("timeout", False)
        assert admin.members(f"{unique_name}:registry") == []  # its turn came
    finally:
        broker.close()
