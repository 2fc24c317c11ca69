"""Huge sends: refused before copies are made, nothing kept alive after a failure, and Redis' own limit named."""

from __future__ import annotations

import json
import logging
import subprocess
import sys

import pytest

from redis_rpc import RedisBroker
from redis_rpc.errors import MessageTooLargeError
from redis_rpc.testing import RedisServer
from tests.conftest import LONG_TIMEOUT, POLL_INTERVAL, READY_TIMEOUT
from tests.fault.conftest import ROOT

# What a process may grow by for reasons of its own (allocator, caches), in MiB.
SLACK = 20.0
# The subprocess moves 100 MB bodies around a few times, on a busy machine.
PROCESS_TIMEOUT = 120


@pytest.fixture
def results(own_server):
    """What tests.fault.huge_send measured in a process of its own."""
    done = subprocess.run(
        [sys.executable, "-m", "tests.fault.huge_send", own_server.url],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=PROCESS_TIMEOUT,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.mark.timeout(PROCESS_TIMEOUT + 30)
def test_huge_sends_leave_nothing_behind(results):
    """A 100 MB request over max_message_size is refused before a copy is made; a sent one and one whose connection broke leave nothing in memory, even with the exception kept."""
    assert results["refused_error"] == "MessageTooLargeError"
    assert results["refused_peak_growth"] < SLACK, results
    assert results["sent_left"] < SLACK, results
    assert results["failed_error"] == "RedisConnectionError"
    assert results["failed_left"] < SLACK, results


@pytest.fixture
def small_bulk_server(redis_server):
    """A redis-server whose proto-max-bulk-len is 1 MB."""
    server = RedisServer(
        startup_timeout=READY_TIMEOUT, extra_args=("--proto-max-bulk-len", "1mb")
    )
    server.start()
    yield server
    server.stop()


def test_an_argument_over_redis_limit_is_refused_as_such_and_spares_the_connection(
    small_bulk_server, unique_name, caplog
):
    """A frame longer than Redis' proto-max-bulk-len raises MessageTooLargeError naming that limit, unsent, and the shared connection carries on."""
    caplog.set_level(logging.WARNING, logger="redis_rpc")
    broker = RedisBroker(
        small_bulk_server.url, poll_interval=POLL_INTERVAL, max_message_size=None
    )
    try:
        assert broker.publish(b"small", list=unique_name) == 1
        link = broker._backend._pipe._link  # type: ignore[attr-defined]
        with pytest.raises(MessageTooLargeError, match="proto-max-bulk-len") as info:
            broker.publish(b"x" * (2 * 1024 * 1024), list=unique_name)
        assert "it was not sent" in str(info.value)
        assert broker.publish(b"after", list=unique_name, timeout=LONG_TIMEOUT) == 2
        assert broker._backend._pipe._link is link  # type: ignore[attr-defined]
    finally:
        broker.close()
    assert not [r for r in caplog.records if "Lost the connection" in r.getMessage()]
