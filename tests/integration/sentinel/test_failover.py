"""``SENTINEL FAILOVER`` under a steady request load: every call is answered or fails clearly, in time."""

from __future__ import annotations

import collections
import logging
import threading
import time

import attrs
import pytest
import redis

from redis_rpc import RedisBroker
from redis_rpc.errors import RedisRPCError
from tests.conftest import POLL_INTERVAL, PROCESS_TEST_TIMEOUT, READY_TIMEOUT
from tests.helpers import Callers, wait_for
from tests.integration.sentinel.conftest import SERVICE

REQUEST_TIMEOUT = 3.0
# How far past its timeout a call may return on a busy machine.
LATE_MARGIN = 1.5
CALLERS_PER_TRANSPORT = 2
# Load before the failover, and after the old master has become a replica.
LOAD_BEFORE = 2.0
LOAD_AFTER = 6.0
# Every transport answers again within this long after the sentinel's switch.
RECOVERY_BOUND = 15.0
# Each broker logs the switch within this long of the sentinel's switch: it
# listens for +switch-master (polled here every few milliseconds).
SWITCH_HEARD = 5.0
# The sentinel turns the old master into a replica some 10 to 20 s after the
# switch (it waits for its next INFO of the old master): generous.
DEMOTION_TIMEOUT = 40.0


@attrs.frozen
class Call:
    transport: str
    started: float
    duration: float
    outcome: str  # "ok", or the name of the error class


def load(broker, target, transport, stop, calls):
    """Send requests one after another until *stop*, recording each."""
    while not stop.is_set():
        started = time.monotonic()
        try:
            broker.request(b"ping", **target, timeout=REQUEST_TIMEOUT)
            outcome = "ok"
        except RedisRPCError as exc:
            outcome = type(exc).__name__
        except Exception as exc:  # noqa: BLE001 - counted as a test failure below
            outcome = f"unexpected {exc!r}"
        calls.append(Call(transport, started, time.monotonic() - started, outcome))
        if outcome != "ok":
            stop.wait(0.05)  # not a busy loop while Redis is away


@pytest.mark.timeout(PROCESS_TEST_TIMEOUT)
def test_callers_and_consumers_follow_a_failover(fresh_topology, unique_name, caplog):
    """During and after SENTINEL FAILOVER every request is answered or fails with our error within its timeout, and all transports work again on the new master."""
    caplog.set_level(logging.WARNING, logger="redis_rpc")
    url = fresh_topology.url()
    old = fresh_topology.sentinel.master()
    targets = {
        "list": {"list": f"{unique_name}-l"},
        "stream": {"stream": f"{unique_name}-s"},
        "channel": {"channel": f"{unique_name}-c"},
    }
    server = RedisBroker(url, poll_interval=POLL_INTERVAL)

    @server.subscriber(list=f"{unique_name}-l")
    @server.subscriber(stream=f"{unique_name}-s")
    @server.subscriber(channel=f"{unique_name}-c")
    def echo(body: bytes) -> bytes:
        return body

    client = RedisBroker(url, poll_interval=POLL_INTERVAL)
    calls: collections.deque[Call] = collections.deque()
    stop = threading.Event()
    with (
        server,
        client,
        Callers(
            CALLERS_PER_TRANSPORT * len(targets), timeout=REQUEST_TIMEOUT + 10
        ) as callers,
    ):
        for transport, target in targets.items():
            for _ in range(CALLERS_PER_TRANSPORT):
                callers.submit(load, client, target, transport, stop, calls)
        try:
            time.sleep(LOAD_BEFORE)  # the load runs meanwhile
            _fail_over(fresh_topology.sentinel.client)
            assert wait_for(
                lambda: fresh_topology.sentinel.master() != old, READY_TIMEOUT
            ), "the sentinel never switched"
            switched, switched_at = time.monotonic(), time.time()
            assert wait_for(
                lambda: fresh_topology.role(old[1]) == "slave", DEMOTION_TIMEOUT
            ), "the old master never became a replica"
            demoted = time.monotonic()
            time.sleep(LOAD_AFTER)  # the load runs meanwhile
        finally:
            stop.set()
    summary = collections.Counter((c.transport, c.outcome) for c in calls)
    story = f"switched {switched - min(c.started for c in calls):.1f} s in, old master demoted {demoted - switched:.1f} s later; calls: {sorted(summary.items())}"
    # Every call ended with an answer or one of our errors, within its timeout.
    assert not [c for c in calls if c.outcome.startswith("unexpected")], story
    late = [c for c in calls if c.duration > REQUEST_TIMEOUT + LATE_MARGIN]
    assert not late, story
    for transport in targets:
        done = [c for c in calls if c.transport == transport]
        assert any(c.outcome == "ok" and c.started < switched for c in done)
        # Answered again within the bound, and still answered at the end.
        again = [c for c in done if c.outcome == "ok" and c.started > switched]
        assert again, f"{transport}: no answer after the switch"
        assert again[0].started - switched < RECOVERY_BOUND, transport
        assert any(c.started > demoted + 1.0 for c in again), transport
        tail = [c for c in done if c.started > demoted + LOAD_AFTER / 2]
        assert tail
        assert all(c.outcome == "ok" for c in tail), (transport, story)
    # Each broker logged the switch once.
    switches = [r for r in caplog.records if "moved the master" in r.getMessage()]
    assert len(switches) == 2, [r.getMessage() for r in switches]
    assert all(f"from 127.0.0.1:{old[1]} to " in r.getMessage() for r in switches)
    assert SERVICE in switches[0].getMessage()
    # The brokers heard of the switch from the sentinels (+switch-master),
    # not only once the old master was demoted, seconds later.
    assert all(r.created - switched_at < SWITCH_HEARD for r in switches), story


def _fail_over(sentinel: redis.Redis) -> None:
    """``SENTINEL FAILOVER``, retried while the sentinel has no replica it is sure of yet."""
    deadline = time.monotonic() + READY_TIMEOUT
    while True:
        try:
            sentinel.sentinel_failover(SERVICE)
        except redis.ResponseError as exc:
            if "NOGOODSLAVE" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.2)
        else:
            return
