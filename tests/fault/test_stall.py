"""Redis stalls (SIGSTOP) or dies with commands in flight: callers keep their deadlines and learn what may have run."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from redis_rpc import RedisBroker
from redis_rpc.errors import RedisConnectionError, RequestTimeoutError
from tests.conftest import LONG_TIMEOUT, POLL_INTERVAL, SHORT_TIMEOUT
from tests.helpers import wait_for

TIMEOUT = 2.0
# What a busy machine may add to a timeout; well below socket_timeout (10 s).
MARGIN = 2.5


@pytest.fixture
def broker(own_server):
    broker = RedisBroker(own_server.url, poll_interval=POLL_INTERVAL)
    yield broker
    own_server.resume()
    broker.close()


def pipe_of(broker):
    return broker._backend._pipe


@pytest.mark.timeout(60)
def test_request_during_a_stall_returns_by_its_timeout(own_server, broker, unique_name):
    """While Redis is stopped, request(timeout=2) raises RequestTimeoutError after about 2 s, not socket_timeout."""

    @broker.subscriber(list=unique_name)
    def echo(body):
        return body

    with broker:
        assert (
            broker.request("warm", list=unique_name, timeout=LONG_TIMEOUT).decode()
            == "warm"
        )
        own_server.pause()
        started = time.monotonic()
        with pytest.raises(RequestTimeoutError) as info:
            broker.request("stalled", list=unique_name, timeout=TIMEOUT)
        took = time.monotonic() - started
        assert TIMEOUT - 0.1 <= took < TIMEOUT + MARGIN
        assert info.value.timeout == TIMEOUT
        own_server.resume()
        assert (
            broker.request("back", list=unique_name, timeout=LONG_TIMEOUT).decode()
            == "back"
        )


@pytest.mark.timeout(60)
def test_publish_during_a_stall_times_out_and_says_whether_it_was_sent(
    own_server, broker, raw, unique_name
):
    """A publish() written to a stopped Redis times out as maybe applied, one still queued as not sent, and only the first arrives."""
    broker.publish(b"warm", list=unique_name)
    own_server.pause()
    started = time.monotonic()
    with pytest.raises(RedisConnectionError) as written:
        broker.publish(b"written", list=unique_name, timeout=1.0)
    assert time.monotonic() - started < 1.0 + MARGIN
    # The writer wrote it (after "warm") and waits for its answer, so the
    # next one stays queued.
    pipe = pipe_of(broker)
    assert wait_for(lambda: pipe.written >= 2 and not pipe._queue, SHORT_TIMEOUT)
    with pytest.raises(RedisConnectionError) as queued:
        broker.publish(b"queued", list=unique_name, timeout=0.5)
    assert (written.value.reason, written.value.maybe_applied) == ("timeout", True)
    assert (queued.value.reason, queued.value.maybe_applied) == ("timeout", False)
    assert "may have been applied" in str(written.value)
    own_server.resume()
    assert wait_for(lambda: raw.llen(unique_name) == 2, SHORT_TIMEOUT)
    broker.publish(b"after", list=unique_name)
    # Frames end with their body.
    frames = raw.lrange(unique_name, 0, -1)
    assert [
        f.endswith(b)
        for f, b in zip(frames, [b"warm", b"written", b"after"], strict=False)
    ] == [True] * 3
    assert len(frames) == 3


@pytest.mark.timeout(60)
def test_redis_killed_mid_batch_fails_in_flight_commands_as_maybe_applied(
    own_server, broker, unique_name
):
    """Redis killed with commands written but unanswered fails those as maybe applied and the queued ones as not sent."""
    broker.publish(b"warm", list=unique_name)
    pipe = pipe_of(broker)
    own_server.pause()
    with ThreadPoolExecutor(5) as pool:
        batches = pipe.batches
        in_flight = pool.submit(broker.publish, b"in flight", list=unique_name)
        assert wait_for(lambda: pipe.batches > batches, SHORT_TIMEOUT)
        queued = [
            pool.submit(broker.publish, f"queued {n}", list=unique_name)
            for n in range(4)
        ]
        assert wait_for(lambda: len(pipe._queue) == 4, SHORT_TIMEOUT)
        own_server.kill()
        with pytest.raises(RedisConnectionError) as lost:
            in_flight.result(LONG_TIMEOUT)
        assert lost.value.maybe_applied is True
        assert lost.value.reason == "unreachable"
        for future in queued:
            with pytest.raises(RedisConnectionError) as refused:
                future.result(LONG_TIMEOUT)
            assert refused.value.maybe_applied is False
    own_server.start()

    def publishes():
        try:
            return broker.publish(b"again", list=unique_name) == 1
        except RedisConnectionError:
            return False

    assert wait_for(publishes, LONG_TIMEOUT, interval=0.1)
