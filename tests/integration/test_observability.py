"""broker.ping(), broker.stats() and hooks, against a real redis-server."""

from __future__ import annotations

import contextlib
import logging
import threading
import time

import pytest

from redis_rpc import Event, RedisBroker, RedisMessage, Response, StreamSub
from redis_rpc.errors import NoSubscriberError, RemoteError, RequestTimeoutError
from redis_rpc.testing import RedisServer
from tests.conftest import LONG_TIMEOUT, POLL_INTERVAL, SHORT_TIMEOUT
from tests.helpers import wait_for

TRACE = "x-test-trace"


def test_stats_count_what_subscribers_and_callers_did(make_broker, raw, unique_name):
    """Handled, failed, rejected and dead-lettered messages, and requests by outcome, are counted exactly."""
    server = make_broker()
    stream = StreamSub(f"{unique_name}-s", claim_idle_time=None)

    @server.subscriber(list=unique_name)
    def double(n: int) -> int:
        if n < 0:
            raise ValueError("negative")
        return 2 * n

    @server.subscriber(stream=stream)
    def record(n: int) -> None:
        return None

    client = make_broker()
    with server, client:
        for n in range(5):
            assert client.request(n, list=unique_name).decode() == 2 * n
        with pytest.raises(RemoteError):
            client.request(-1, list=unique_name)
        with pytest.raises(RemoteError):
            client.request("not a number", list=unique_name)
        with pytest.raises(NoSubscriberError):
            client.request(1, channel=f"{unique_name}-nobody")
        with pytest.raises(RequestTimeoutError):
            client.request(1, list=f"{unique_name}-nobody", timeout=0.2)
        client.publish("not a number", stream=stream.stream)  # rejected, dead-lettered
        client.publish(7, stream=stream.stream)
        assert wait_for(
            lambda: server.stats().subscribers[f"stream:{stream.stream}"].handled == 1,
            SHORT_TIMEOUT,
        )
        stats = server.stats()
        sent = client.stats()
    listed = stats.subscribers[f"list:{unique_name}"]
    assert (listed.received, listed.handled, listed.failed, listed.rejected) == (
        7,
        5,
        1,
        1,
    )
    assert (listed.in_flight, listed.dead_lettered) == (0, 0)
    assert listed.handler_seconds > 0
    streamed = stats.subscribers[f"stream:{stream.stream}"]
    assert (streamed.received, streamed.handled, streamed.rejected) == (2, 1, 1)
    assert streamed.dead_lettered == 1
    assert raw.xlen(stream.dead_letter) == 1
    calls = sent.destinations[f"list:{unique_name}"]
    assert (calls.requests, calls.answered, calls.failed) == (7, 5, {"remote_error": 2})
    assert sent.destinations[f"channel:{unique_name}-nobody"].failed == {
        "no_subscriber": 1
    }
    assert sent.destinations[f"list:{unique_name}-nobody"].failed == {"timeout": 1}
    assert sent.destinations[f"stream:{stream.stream}"].published == 2


def test_hooks_run_around_publish_request_and_process(make_broker, unique_name):
    """A hook sees each operation with its outcome, may add headers, and the handler runs inside its context."""
    events: list[tuple[str, str, str]] = []
    inside = threading.local()
    seen_in_handler: list[tuple[str | None, bool]] = []
    lock = threading.Lock()

    @contextlib.contextmanager
    def hook(event: Event):
        if event.kind != "process":
            event.headers[TRACE] = f"from-{event.kind}"
        inside.active = True
        yield  # a bare yield: the broker never throws into it
        inside.active = False
        with lock:
            events.append((event.kind, event.destination, event.outcome))

    server = make_broker(hooks=[hook])

    @server.subscriber(list=unique_name)
    def handle(body: str) -> str:
        return body

    @server.subscriber(list=f"{unique_name}-raises")
    def fails(body: str) -> str:
        raise RuntimeError("no")

    # A handler that reports what it saw: the header and the hook's context.
    @server.subscriber(list=f"{unique_name}-peek")
    def peek(body: str, message: RedisMessage) -> str:
        seen_in_handler.append(
            (message.headers.get(TRACE), getattr(inside, "active", False))
        )
        return body

    client = make_broker(hooks=[hook])
    with server, client:
        assert client.request("hi", list=unique_name).decode() == "hi"
        with pytest.raises(RemoteError):
            client.request("x", list=f"{unique_name}-raises")
        client.request("look", list=f"{unique_name}-peek")
        client.publish("event", list=unique_name)
        # Processed twice: the request, then the published event.
        assert wait_for(
            lambda: events.count(("process", f"list:{unique_name}", "ok")) == 2,
            SHORT_TIMEOUT,
        )
    assert ("request", f"list:{unique_name}", "ok") in events
    assert ("publish", f"list:{unique_name}", "ok") in events
    assert ("request", f"list:{unique_name}-raises", "remote_error") in events
    assert ("process", f"list:{unique_name}-raises", "error") in events
    assert seen_in_handler == [("from-request", True)]


def test_process_hook_adds_headers_to_the_reply(make_broker, unique_name):
    """Headers a process hook puts in reply_headers go out with the reply; the handler's own win."""
    seen: list[str] = []

    @contextlib.contextmanager
    def hook(event: Event):
        if event.kind == "process":
            event.reply_headers.update({TRACE: "from-process", "x-both": "hook"})
        elif event.kind == "request":
            seen.append(event.correlation_id)
        yield

    server = make_broker(hooks=[hook])

    @server.subscriber(list=unique_name)
    def answer(body: str) -> Response:
        return Response(body, headers={"x-both": "handler"})

    with server:
        reply = server.request("hi", list=unique_name)
    assert reply.headers == {TRACE: "from-process", "x-both": "handler"}
    # The broker picked a correlation id before the hook ran, and sent that one.
    assert seen == [reply.correlation_id]
    assert reply.correlation_id


def test_a_hook_cannot_swallow_or_hide_a_failure(make_broker, unique_name):
    """The operation's exception reaches the caller unchanged, after every hook saw it."""
    seen: list[BaseException | None] = []

    @contextlib.contextmanager
    def hook(event: Event):
        yield
        seen.append(event.error)

    client = make_broker(hooks=[hook, hook])
    with pytest.raises(RequestTimeoutError) as info:
        client.request(1, list=unique_name, timeout=0.1)
    assert seen == [info.value, info.value]


def test_ping_says_healthy_and_what_is_down(make_broker, unique_name):
    """A running broker is healthy; a closed one, and one whose Redis is gone, say why, within the timeout."""
    server = make_broker()
    server.subscriber(list=unique_name)(lambda body: body)
    assert not server.ping(SHORT_TIMEOUT)  # declared handlers, not started yet
    with server:
        health = server.ping(SHORT_TIMEOUT)
        assert health, health.problems
        assert health.problems == ()
    closed = server.ping(SHORT_TIMEOUT)
    assert not closed
    assert any("closed" in problem for problem in closed.problems)


@pytest.mark.timeout(60)
def test_ping_during_an_outage_returns_within_its_timeout(unique_name):
    """With Redis gone, ping() answers unhealthy within its timeout, naming Redis and the consumer."""
    with RedisServer() as redis_server:
        broker = RedisBroker(redis_server.url, poll_interval=POLL_INTERVAL)
        broker.subscriber(list=unique_name)(lambda body: body)
        with broker:
            assert broker.ping(SHORT_TIMEOUT)
            redis_server.kill()
            started = time.monotonic()
            health = broker.ping(0.5)
            assert time.monotonic() - started < 0.5 + SHORT_TIMEOUT / 2
            assert not health
            assert any(problem.startswith("redis:") for problem in health.problems)
            assert wait_for(
                lambda: any(
                    unique_name in problem for problem in broker.ping(0.2).problems
                ),
                LONG_TIMEOUT,
            )
            redis_server.start()
            assert wait_for(lambda: bool(broker.ping(0.5)), LONG_TIMEOUT)


def test_serve_health_answers_probes_with_what_ping_found(
    make_broker, raw, unique_name
):
    """A broker serving health on a channel answers each request with its ping(): healthy, then what is down."""
    channel = f"{unique_name}.health"
    server = make_broker()
    server.subscriber(list=unique_name)(lambda body: body)
    server.serve_health(channel, timeout=SHORT_TIMEOUT)
    probe = make_broker()

    def ask():
        return probe.request(None, channel=channel, timeout=LONG_TIMEOUT).decode()

    with server:
        assert ask() == {"healthy": True, "problems": []}
        # The list's consumer goes down for good: its key now holds a string.
        raw.set(unique_name, "not a list")
        assert wait_for(lambda: not ask()["healthy"], LONG_TIMEOUT)
        problems = ask()["problems"]
        assert any(unique_name in p and "WRONGTYPE" in p for p in problems), problems


def test_start_up_line_names_the_address_and_each_destination(
    raw, redis_server, unique_name, caplog
):
    """The start-up log line names Redis' host and port, never a password, and every subscribed destination."""
    user = f"u-{unique_name}"
    raw.acl_setuser(user, enabled=True, passwords=["+not-shown"], reset=True)
    raw.execute_command("ACL", "SETUSER", user, "~*", "&*", "+@all")
    url = f"redis://{user}:not-shown@127.0.0.1:{redis_server.port}/0"
    broker = RedisBroker(url, poll_interval=POLL_INTERVAL)

    def handle(body: str) -> None:
        return None

    broker.subscriber(list=f"{unique_name}-l")(handle)
    broker.subscriber(stream=f"{unique_name}-s")(handle)
    broker.subscriber(channel=f"{unique_name}-c")(handle)
    caplog.set_level(logging.INFO, logger="redis_rpc")
    try:
        broker.start()
    finally:
        broker.close()
        raw.acl_deluser(user)
    (line,) = [
        r.getMessage() for r in caplog.records if "Broker started" in r.getMessage()
    ]
    assert line == (
        f"Broker started on Redis at 127.0.0.1:{redis_server.port}, consuming"
        f" list:{unique_name}-l, stream:{unique_name}-s, channel:{unique_name}-c"
    )
    assert "not-shown" not in caplog.text
