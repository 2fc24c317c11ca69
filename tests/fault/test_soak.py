"""Many requests, a tenth of them timing out, some answered after their timeout: nothing grows."""

from __future__ import annotations

import itertools
import logging
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from redis_rpc import RedisBroker
from redis_rpc.errors import RequestTimeoutError
from tests.conftest import LONG_TIMEOUT, POLL_INTERVAL
from tests.fault import server

# About 25 s on two cores; REDIS_RPC_SOAK_REQUESTS=10000 makes a quick run.
REQUESTS = int(os.environ.get("REDIS_RPC_SOAK_REQUESTS", "100000"))
WARM_UP = REQUESTS // 10  # pools, caches and allocator arenas fill up first
CALLERS = 32
# The timeout of the requests meant to time out; below server.SLOW_DELAY, so
# that the slow handler's replies always arrive after it.
EXPIRING = 0.01
# Generous: the allocator settles slowly (about 70 bytes per request was
# measured over 100,000, most of it early), but a leaked future, frame or
# connection per request is far more.
RSS_GROWTH_BOUND = 4 * 2**20 + 128 * REQUESTS
CLIENT_NAME = "soak-client"

pytestmark = pytest.mark.skipif(
    not Path("/proc/self/statm").exists(), reason="reads memory and threads in /proc"
)


def rss(pid="self"):
    pages = int(Path(f"/proc/{pid}/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE")


def thread_count(pid="self"):
    return len(os.listdir(f"/proc/{pid}/task"))


class DroppedReplies(logging.Handler):
    """Counts the late replies the reply listener drops."""

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.count = 0

    def emit(self, record):
        if record.getMessage().startswith("Dropped a reply"):
            self.count += 1  # one listener thread logs these: no race


@pytest.fixture
def dropped_replies():
    handler, logger = DroppedReplies(), logging.getLogger("redis_rpc._request")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(level)


@pytest.mark.timeout(120)
def test_no_leaks_under_many_requests(
    own_server, raw, start_process, unique_name, dropped_replies
):
    """Pending requests, threads, memory and connections stay flat over many requests with timeouts."""
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
            future.result(LONG_TIMEOUT * 10)

    def connections():
        return sum(c["name"] == CLIENT_NAME for c in raw.client_list())

    def sample():
        return {"threads": thread_count(), "connections": connections()}

    with client, ThreadPoolExecutor(CALLERS) as callers:
        run(WARM_UP)
        numbers = itertools.count(WARM_UP)
        warm, warm_rss = sample(), (rss(), rss(process.popen.pid))
        run(REQUESTS)
        # Slow replies arrive after their request timed out and are dropped,
        # except for requests the server took after their deadline and skipped.
        # The slow list is first in, first out: once a last slow request is
        # answered, every one before it has been handled or skipped.
        late = sum(n % 20 == 1 for n in range(REQUESTS))
        client.request("last", list=f"{unique_name}:slow", timeout=LONG_TIMEOUT)
        assert 0 < dropped_replies.count <= late
        end, end_rss = sample(), (rss(), rss(process.popen.pid))
        growth = [end_rss[i] - warm_rss[i] for i in range(2)]
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
    # Its slow subscriber starts workers as needed, up to its max_workers.
    assert thread_count(process.popen.pid) <= server.SOAK_THREADS
    # The pool keeps one connection per caller that ever sent at the same
    # time as the others, plus the listener's: bounded by callers, not requests.
    assert warm["connections"] <= end["connections"] <= CALLERS + 1
    assert max(growth) < RSS_GROWTH_BOUND, growth
    assert connections() == 0  # close() let go of all of them
