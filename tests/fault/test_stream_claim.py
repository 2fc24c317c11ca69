"""A stream server killed in the middle of a handler: its entry is answered in seconds, not after claim_idle_time."""

from __future__ import annotations

import signal
import time

import pytest

from redis_rpc import RedisBroker
from tests.conftest import LONG_TIMEOUT, POLL_INTERVAL
from tests.helpers import Callers

REQUEST_TIMEOUT = 40.0  # what the callers wait; claim_idle_time is 60 s
# StreamSub's default recover_after (5 s), a look for dead consumers and a
# server start, with room for a busy machine; far below REQUEST_TIMEOUT.
ANSWERED_WITHIN = 25.0


@pytest.mark.timeout(REQUEST_TIMEOUT + 30)
def test_killed_stream_servers_entry_is_answered_in_seconds(
    own_server, start_process, unique_name, raw
):
    """With default settings, a request whose stream server was SIGKILLed mid-handler is
    answered by another server of the group well within the caller's 40 s timeout."""
    doomed = start_process("stuck-stream", unique_name)
    assert doomed.read_line() == "ready"
    client = RedisBroker(own_server.url, poll_interval=POLL_INTERVAL)
    try:
        with Callers(3, timeout=REQUEST_TIMEOUT + LONG_TIMEOUT) as callers:
            replies = [
                callers.submit(
                    client.request, n, stream=unique_name, timeout=REQUEST_TIMEOUT
                )
                for n in range(3)
            ]
            # One worker: it holds one entry, and leaves the others unread.
            assert doomed.read_line().startswith("handling")
            doomed.popen.kill()
            assert doomed.popen.wait(LONG_TIMEOUT) == -signal.SIGKILL
            killed = time.monotonic()
            survivor = start_process("echo-stream", unique_name)
            assert survivor.read_line() == "ready"
            answered = [reply.result(REQUEST_TIMEOUT).decode() for reply in replies]
            took = time.monotonic() - killed
    finally:
        client.close()
    assert sorted(reply["body"] for reply in answered) == [0, 1, 2]
    assert {reply["pid"] for reply in answered} == {survivor.popen.pid}
    assert took < ANSWERED_WITHIN
    assert raw.xpending(unique_name, "redis_rpc")["pending"] == 0
