"""A few thousand requests, a tenth of them timing out, some answered after their timeout: nothing grows.

The long run of the same traffic, with memory sampled along the way, is a
benchmark (``python -m benchmarks.soak``); this test is sized to take
seconds, and its bounds count things (pending requests, threads,
connections, live objects), so that a loaded machine cannot make it fail.
"""

from __future__ import annotations

import collections
import gc
import itertools
import logging
import os
import threading
from pathlib import Path

import pytest

from redis_rpc import RedisBroker
from redis_rpc.errors import RequestTimeoutError
from tests.conftest import LONG_TIMEOUT, POLL_INTERVAL, PROCESS_TEST_TIMEOUT
from tests.fault import server
from tests.helpers import Callers

REQUESTS = 2000
WARM_UP = 400  # pools, caches and interned objects fill up first
CALLERS = 16
# The timeout of the requests meant to time out; below server.SLOW_DELAY, so
# that the slow handler's replies always arrive after it, and long enough
# that a busy server still takes some of them before their deadline.
EXPIRING = 0.1
# A leak of one object per request grows its type by REQUESTS; caches that
# fill up once grow by far less than this.
OBJECT_GROWTH_BOUND = REQUESTS // 20
CLIENT_NAME = "leak-client"

pytestmark = pytest.mark.skipif(
    not Path("/proc/self/task").exists(),
    reason="counts the server process's threads in /proc",
)


def thread_count(pid):
    return len(os.listdir(f"/proc/{pid}/task"))


def live_objects():
    """How many objects the garbage collector tracks, by type name."""
    gc.collect()
    return collections.Counter(type(o).__qualname__ for o in gc.get_objects())


class DroppedReplies(logging.Filter):
    """Counts the late replies the reply listener drops, and keeps their records from any handler.

    pytest keeps every record a handler of its sees for its report: one per
    late reply would look like a leak.
    """

    def __init__(self):
        super().__init__()
        self.count = 0

    def filter(self, record):
        if record.getMessage().startswith("Dropped a reply"):
            self.count += 1  # one listener thread logs these: no race
            return False
        return True


@pytest.fixture
def dropped_replies():
    counter, logger = DroppedReplies(), logging.getLogger("redis_rpc._client.listener")
    level = logger.level
    logger.addFilter(counter)
    logger.setLevel(logging.DEBUG)
    yield counter
    logger.removeFilter(counter)
    logger.setLevel(level)


@pytest.mark.timeout(PROCESS_TEST_TIMEOUT)
def test_no_leaks_under_many_requests(
    own_server, raw, start_process, unique_name, dropped_replies
):
    """Pending requests, threads, live objects and connections stay flat over many requests with timeouts."""
    process = start_process("soak", unique_name)
    assert process.read_line() == "ready"
    client = RedisBroker(
        own_server.url, poll_interval=POLL_INTERVAL, client_name=CLIENT_NAME
    )
    numbers = itertools.count()
    outcomes = {"answered": 0, "timed out": 0}
    lock = threading.Lock()  # guards outcomes

    def call(limit):
        answered = timed_out = 0
        while (n := next(numbers)) < limit:
            try:
                if n % 20 == 0:  # nobody listens, and the caller waits anyway
                    client.request(
                        n,
                        channel=f"{unique_name}:nobody",
                        timeout=EXPIRING,
                        fail_fast=False,
                    )
                elif n % 20 == 1:  # answered, but too late
                    client.request(n, list=f"{unique_name}:slow", timeout=EXPIRING)
                else:
                    reply = client.request(n, list=unique_name, timeout=LONG_TIMEOUT)
                    assert reply.decode() == n
                answered += 1
            except RequestTimeoutError:
                timed_out += 1
        with lock:
            outcomes["answered"] += answered
            outcomes["timed out"] += timed_out

    def run(limit):
        futures = [callers.submit(call, limit) for _ in range(CALLERS)]
        for future in futures:
            future.result(PROCESS_TEST_TIMEOUT / 2)

    def connections():
        return sum(c["name"] == CLIENT_NAME for c in raw.client_list())

    def sample():
        return {
            # Python threads: a thread just joined may linger a moment in /proc.
            "threads": threading.active_count(),
            "connections": connections(),
            "objects": live_objects(),
        }

    with client, Callers(CALLERS, timeout=PROCESS_TEST_TIMEOUT / 2) as callers:
        run(WARM_UP)
        numbers = itertools.count(WARM_UP)
        warm = sample()
        run(REQUESTS)
        # Slow replies arrive after their request timed out and are dropped,
        # except for requests the server took after their deadline and skipped.
        # The slow list is first in, first out: once a last slow request is
        # answered, every one before it has been handled or skipped.
        late = sum(n % 20 == 1 for n in range(REQUESTS))
        client.request("last", list=f"{unique_name}:slow", timeout=LONG_TIMEOUT)
        assert 0 < dropped_replies.count <= late
        end = sample()
        pending = client._listener.pending if client._listener else 0
    expiring = sum(n % 20 < 2 for n in range(REQUESTS))
    # Every request ends one way or the other. A slow reply can still count as
    # answered when the caller thread was descheduled for longer than the
    # handler took, so only requests to nobody are sure to time out.
    assert outcomes["answered"] + outcomes["timed out"] == REQUESTS
    assert outcomes["answered"] >= REQUESTS - expiring
    assert outcomes["timed out"] >= sum(n % 20 == 0 for n in range(REQUESTS))
    assert pending == 0
    assert end["threads"] == warm["threads"]
    grown = {
        name: count
        for name, count in (end["objects"] - warm["objects"]).items()
        if count > OBJECT_GROWTH_BOUND
    }
    assert not grown, f"live objects grew with the requests: {grown}"
    # Its slow subscriber starts workers as needed, up to its max_workers.
    assert thread_count(process.popen.pid) <= server.SOAK_THREADS
    # The pool keeps one connection per caller that ever sent at the same
    # time as the others, plus the listener's: bounded by callers, not requests.
    assert warm["connections"] <= end["connections"] <= CALLERS + 1
    assert connections() == 0  # close() let go of all of them
