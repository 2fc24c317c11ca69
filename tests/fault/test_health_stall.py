"""Health checks against a stalled Redis, and after close(): bounded in time, and saying what is wrong."""

from __future__ import annotations

import time

import pytest

from redis_rpc import RedisBroker
from redis_rpc._cli.command import main
from tests.conftest import LONG_TIMEOUT, POLL_INTERVAL

PROBE_TIMEOUT = 2.0
# What the probe may take beyond its timeout: closing its broker, and a busy machine.
MARGIN = 0.6


@pytest.mark.timeout(60)
def test_health_command_returns_within_its_timeout_against_a_stalled_redis(
    own_server, unique_name, capsys
):
    """redis-rpc health --timeout 2 exits 1 within about 2 s while Redis is stopped, not after socket_timeout more."""
    own_server.pause()
    try:
        started = time.monotonic()
        status = main(
            [
                "health",
                own_server.url,
                f"{unique_name}.health",
                "--timeout",
                str(PROBE_TIMEOUT),
            ]
        )
        took = time.monotonic() - started
    finally:
        own_server.resume()
    assert status == 1
    assert "no health answer" in capsys.readouterr().err
    assert took < PROBE_TIMEOUT + MARGIN, took


@pytest.mark.timeout(60)
def test_ping_timeout_says_redis_did_not_answer_not_that_it_may_have_been_applied(
    own_server,
):
    """ping() against a stopped Redis reports a PING without answer, not a command that may have been applied."""
    broker = RedisBroker(own_server.url, poll_interval=POLL_INTERVAL)
    try:
        assert broker.ping(LONG_TIMEOUT)
        own_server.pause()
        health = broker.ping(0.5)
    finally:
        own_server.resume()
        broker.close()
    assert not health
    (problem,) = health.problems
    assert problem.startswith("redis: no answer to PING within 0.5 s")
    assert "applied" not in problem


def test_health_after_close_says_closed_and_nothing_else(own_server, unique_name):
    """ping() after close() says the broker is closed, not that its reply subscription is not up yet."""
    broker = RedisBroker(own_server.url, poll_interval=POLL_INTERVAL)

    @broker.subscriber(list=unique_name)
    def echo(body):
        return body

    with broker:
        assert broker.request("x", list=unique_name, timeout=LONG_TIMEOUT).decode()
        assert broker.ping(LONG_TIMEOUT)
    health = broker.ping(LONG_TIMEOUT)
    assert (health.healthy, health.problems) == (False, ("broker: closed",))
