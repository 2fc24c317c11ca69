"""Shutdown under load: in-flight handlers finish and are answered, nothing new is taken, callers never hang."""

from __future__ import annotations

import signal
import threading

import pytest

from redis_rpc import RedisBroker
from redis_rpc.errors import BrokerClosedError
from tests.conftest import (
    LONG_TIMEOUT,
    POLL_INTERVAL,
    PROCESS_TEST_TIMEOUT,
    SHORT_TIMEOUT,
)
from tests.helpers import Callers, wait_for

TRANSPORTS = ["list", "stream"]
GROUP = "redis_rpc"  # the default consumer group


def assert_late_message_untouched(raw, transport, name):
    """The message sent after shutdown began is still waiting in Redis, and nothing is pending."""
    if transport == "list":
        assert raw.llen(name) == 1
        return
    assert raw.xpending(name, GROUP)["pending"] == 0  # the in-flight entries were acked
    # A new consumer of the group still gets the late entry: nobody read it.
    (late,) = raw.xreadgroup(GROUP, "inspector", {name: ">"})[0][1]
    assert late[0] == raw.xrevrange(name, count=1)[0][0]


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_close_finishes_inflight_handlers(own_server, raw, unique_name, transport):
    """close() stops taking messages, answers and acks in-flight ones, and fails its own pending request."""
    server = RedisBroker(own_server.url, poll_interval=POLL_INTERVAL)
    client = RedisBroker(own_server.url, poll_interval=POLL_INTERVAL)
    entered = threading.Semaphore(0)
    release = threading.Event()

    @server.subscriber(**{transport: unique_name}, max_workers=2)
    def hold(body):
        entered.release()
        release.wait(LONG_TIMEOUT)
        return f"done {body}"

    server.start()
    with client, Callers(4) as pool:
        replies = [
            pool.submit(
                client.request, n, **{transport: unique_name}, timeout=LONG_TIMEOUT
            )
            for n in range(2)
        ]
        own = pool.submit(
            server.request, "x", list=f"{unique_name}-nobody", timeout=LONG_TIMEOUT
        )
        assert all(entered.acquire(timeout=SHORT_TIMEOUT) for _ in range(2))
        assert wait_for(lambda: "pending_requests=1" in repr(server))
        closing = pool.submit(server.close)
        assert wait_for(lambda: "CLOSING" in repr(server))
        client.publish("late", **{transport: unique_name})
        with pytest.raises(BrokerClosedError):
            server.request("refused", **{transport: unique_name})
        release.set()
        closing.result(LONG_TIMEOUT)
        assert sorted(r.result(SHORT_TIMEOUT).decode() for r in replies) == [
            "done 0",
            "done 1",
        ]
        with pytest.raises(BrokerClosedError):
            own.result(SHORT_TIMEOUT)
    assert_late_message_untouched(raw, transport, unique_name)


@pytest.mark.timeout(PROCESS_TEST_TIMEOUT)
@pytest.mark.parametrize("transport", TRANSPORTS)
def test_sigterm_finishes_inflight_handlers(
    own_server, raw, start_process, unique_name, transport
):
    """SIGTERM to App.run() stops taking messages, answers and acks in-flight ones, fails its own request, and exits 0."""
    process = start_process(f"hold-{transport}", unique_name)
    assert process.read_line() == "ready"
    client = RedisBroker(own_server.url, poll_interval=POLL_INTERVAL)
    with client, Callers(2) as pool:
        replies = [
            pool.submit(
                client.request, n, **{transport: unique_name}, timeout=LONG_TIMEOUT
            )
            for n in range(2)
        ]
        assert sorted(process.read_line() for _ in range(2)) == [
            "handling 0",
            "handling 1",
        ]
        process.popen.send_signal(signal.SIGTERM)
        assert process.read_line() == "closing"
        client.publish("late", **{transport: unique_name})
        raw.rpush(f"{unique_name}:release", "go", "go")
        assert sorted(r.result(LONG_TIMEOUT).decode() for r in replies) == [0, 1]
    assert process.read_line() == "own request: BrokerClosedError"
    assert process.popen.wait(LONG_TIMEOUT) == 0
    assert_late_message_untouched(raw, transport, unique_name)
