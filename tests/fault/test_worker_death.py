"""A server process dies mid-request: in reliable list mode, another one answers what it held."""

from __future__ import annotations

import pytest

from redis_rpc import RedisBroker
from tests.conftest import (
    LONG_TIMEOUT,
    POLL_INTERVAL,
    PROCESS_TEST_TIMEOUT,
    READY_TIMEOUT,
    SHORT_TIMEOUT,
)
from tests.helpers import Callers

REQUESTS = 5
IN_FLIGHT = 3  # the server's max_workers: the rest wait in the list
# The requests are answered by a server process started after them.
ANSWER_TIMEOUT = READY_TIMEOUT + LONG_TIMEOUT


@pytest.mark.timeout(PROCESS_TEST_TIMEOUT)
def test_reliable_list_survives_a_killed_server(
    own_server, raw, start_process, unique_name
):
    """Items a SIGKILLed server held are answered by the next server, with those still queued."""
    first = start_process("reliable-hold", unique_name)
    assert first.read_line() == "ready"
    client = RedisBroker(own_server.url, poll_interval=POLL_INTERVAL)
    with client, Callers(REQUESTS, timeout=ANSWER_TIMEOUT + SHORT_TIMEOUT) as callers:
        replies = [
            callers.submit(client.request, n, list=unique_name, timeout=ANSWER_TIMEOUT)
            for n in range(REQUESTS)
        ]
        held = sorted(first.read_line() for _ in range(IN_FLIGHT))
        assert all(line.startswith("handling ") for line in held), held
        first.popen.kill()
        first.popen.wait(LONG_TIMEOUT)
        # What it held sits in its processing list, the rest in the list.
        (dead,) = raw.smembers(f"{unique_name}:redis_rpc:consumers")
        processing = f"{unique_name}:redis_rpc:processing:{dead.decode()}"
        assert raw.llen(processing) == IN_FLIGHT
        assert raw.llen(unique_name) == REQUESTS - IN_FLIGHT
        second = start_process("reliable-echo", unique_name)
        assert second.read_line() == "ready"
        answers = [r.result(ANSWER_TIMEOUT).decode() for r in replies]
    assert answers == [{"pid": second.popen.pid, "body": n} for n in range(REQUESTS)]
    assert raw.llen(processing) == raw.llen(unique_name) == 0
