"""How a server sends and handles: replies riding on the next read, quick handlers run inline, relief of a stuck one."""

from __future__ import annotations

import threading
import time

import pytest
from redis._parsers import _RESP2Parser

from redis_rpc.errors import RedisCommandError
from tests.conftest import LONG_TIMEOUT, SHORT_TIMEOUT
from tests.helpers import Callers, wait_for

REQUESTS = 200


def pipe_of(broker):
    return broker._backend._pipe


@pytest.mark.parametrize("transport", ["list", "stream"])
def test_replies_and_acks_go_out_with_the_next_read(
    make_broker, unique_name, transport
):
    """A single-worker server answers many requests without its shared pipe: each reply rides on the next blocking read."""
    server = make_broker()

    @server.subscriber(**{transport: unique_name})
    def echo(body: int) -> int:
        return body

    client = make_broker()
    with server, client:
        client.request(0, **{transport: unique_name}, timeout=LONG_TIMEOUT)
        before = pipe_of(server).written
        for n in range(REQUESTS):
            assert client.request(n, **{transport: unique_name}).decode(int) == n
        # Only a reply produced while the consumer sat in a read goes on its own.
        assert pipe_of(server).written - before < REQUESTS // 2


@pytest.mark.timeout(60)
def test_a_handler_stuck_inline_does_not_hold_up_the_others(
    make_broker, raw, unique_name
):
    """Quick handlers run on the consumer thread; when one of them blocks, its batch and later messages are handled by other threads."""
    server = make_broker()
    release = threading.Event()
    blocked = threading.Event()

    @server.subscriber(list=unique_name, max_workers=3)
    def handle(body: str) -> str:
        if body == "block":
            blocked.set()
            release.wait(LONG_TIMEOUT)
        return body

    client = make_broker()
    client.start()
    bodies = ["quick", "block", "in the same batch", "later"]
    with Callers(len(bodies)) as callers:
        replies = {}
        for body in bodies[:3]:  # queued before the server starts: fetched in batches
            replies[body] = callers.submit(
                client.request, body, list=unique_name, timeout=LONG_TIMEOUT
            )
            queued = len(replies)
            assert wait_for(lambda queued=queued: raw.llen(unique_name) == queued)
        server.start()
        try:
            assert blocked.wait(SHORT_TIMEOUT)
            replies["later"] = callers.submit(
                client.request, "later", list=unique_name, timeout=LONG_TIMEOUT
            )
            for body in ("quick", "in the same batch", "later"):
                assert replies[body].result(SHORT_TIMEOUT).decode(str) == body
            assert not replies["block"].done()
        finally:
            release.set()
        assert replies["block"].result(SHORT_TIMEOUT).decode(str) == "block"


@pytest.mark.timeout(60)
def test_a_handler_may_request_its_own_subscriber_when_it_has_two_workers(
    make_broker, unique_name
):
    """A request to its own list from an inline handler is fetched by the thread that relieves it."""
    server = make_broker()

    @server.subscriber(list=unique_name, max_workers=2)
    def handle(body: str) -> str:
        if body == "outer":
            inner = server.request("inner", list=unique_name, timeout=LONG_TIMEOUT)
            return f"outer({inner.decode(str)})"
        return body

    client = make_broker()
    with server, client:
        started = time.monotonic()
        reply = client.request("outer", list=unique_name, timeout=LONG_TIMEOUT)
        assert reply.decode(str) == "outer(inner)"
        assert time.monotonic() - started < SHORT_TIMEOUT


@pytest.mark.parametrize("transport", ["list", "stream"])
def test_a_request_redis_refuses_fails_at_once(
    make_broker, raw, unique_name, transport
):
    """request() does not wait for Redis to take the request, yet a refusal reaches it at once, not as a timeout."""
    raw.set(unique_name, "not a list or a stream")
    client = make_broker()
    with client:
        started = time.monotonic()
        with pytest.raises(RedisCommandError) as info:
            client.request("x", **{transport: unique_name}, timeout=LONG_TIMEOUT)
        assert time.monotonic() - started < SHORT_TIMEOUT
    assert "WRONGTYPE" in str(info.value)
    assert client._listener is None or client._listener.pending == 0


@pytest.mark.parametrize("transport", ["channel", "list", "stream"])
def test_the_pure_python_parser_works_as_well(make_broker, unique_name, transport):
    """Without hiredis, redis-py parses in Python: the bulk reads take its own path then."""
    options = {"parser_class": _RESP2Parser}
    server = make_broker(**options)

    @server.subscriber(**{transport: unique_name}, max_workers=2)
    def echo(body: int) -> int:
        return body

    client = make_broker(**options)
    with server, client:
        for broker in (server, client):
            pool = broker._backend._client.connection_pool
            assert pool.connection_kwargs["parser_class"] is _RESP2Parser
        with Callers(8) as callers:
            replies = list(
                callers.map(
                    lambda n: client.request(n, **{transport: unique_name}).decode(int),
                    range(REQUESTS),
                )
            )
    assert replies == list(range(REQUESTS))
