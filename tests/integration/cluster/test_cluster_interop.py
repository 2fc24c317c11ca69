"""Wire compatibility with FastStream's ``RedisClusterBroker`` on a real cluster, in both directions.

The shared 3-master cluster serves every test. Each transport's key lives
on a master of its own (the list on the first, the stream on the second,
the channel's slot on the third), and the two sides of a test connect
through two other nodes, neither of which owns the key, so that both
libraries have to find the key's master from the map they are given.

What crosses the wire differs from one server in one way: a redis_rpc caller
on a cluster asks in a header for its replies on a sharded channel, which
FastStream servers ignore, so they answer on the classic ``reply_to``
channel that the caller also listens to. FastStream callers name no shard,
and our servers answer them with a classic ``PUBLISH``.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from typing import Any

import attrs
import faststream
import faststream.redis
import pytest

from redis_rpc import RedisClusterBroker, RedisMessage, RedisResponse, Response
from redis_rpc._wire.message import REPLY_SHARD
from redis_rpc.errors import RequestTimeoutError
from tests.cluster_topology import ClusterServers
from tests.conftest import LONG_TIMEOUT, POLL_INTERVAL, PROCESS_TEST_TIMEOUT
from tests.helpers import wait_for
from tests.integration.test_interop_faststream import (
    BODIES,
    TRANSPORTS,
    USER_HEADERS,
    FastStreamService,
    faststream_source,
    run_async,
    target,
)

# The first test of the module waits for the shared cluster to form.
pytestmark = pytest.mark.timeout(PROCESS_TEST_TIMEOUT)

# A request nobody answers; loopback replies arrive long before it runs out.
NO_REPLY_TIMEOUT = 0.5
# Which master (by index in ClusterServers.masters()) owns each transport's key.
MASTER_OF = {"list": 0, "stream": 1, "channel": 2}

MakeBroker = Callable[..., RedisClusterBroker]


@attrs.frozen
class Placement:
    """Where one test's key lives and through which nodes each side connects."""

    name: str  # the key or channel, on its master's slot
    owner_url: str  # the master that owns it
    server_url: str  # the node the serving side is given: a replica of another master
    client_url: str  # the node the calling side is given: yet another master


@pytest.fixture
def place(
    redis_cluster: ClusterServers, unique_name: str
) -> Callable[[str], Placement]:
    """Place *transport*'s key on its master, and each side on a node that does not own it."""

    def make(transport: str) -> Placement:
        masters = redis_cluster.masters()
        n = MASTER_OF[transport]
        owner = masters[n]
        server_node = redis_cluster.replicas_of(masters[(n + 1) % len(masters)])[0]
        client_node = masters[(n + 2) % len(masters)]
        return Placement(
            name=redis_cluster.key_on(owner, unique_name),
            owner_url=owner.url,
            server_url=server_node.url,
            client_url=client_node.url,
        )

    return make


@pytest.fixture
def make_broker() -> Iterator[MakeBroker]:
    """Build ``redis_rpc.RedisClusterBroker``s that are closed after the test."""
    brokers: list[RedisClusterBroker] = []

    def make(url: str, **options: Any) -> RedisClusterBroker:
        options.setdefault("poll_interval", POLL_INTERVAL)
        broker = RedisClusterBroker(url, **options)
        brokers.append(broker)
        return broker

    yield make
    for broker in brokers:
        broker.close()


class FastStreamClusterService(FastStreamService):
    """A FastStream ``RedisClusterBroker`` served on its own event loop in a helper thread."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.broker = faststream.redis.RedisClusterBroker(url)


@pytest.fixture
def faststream_service() -> Iterator[Callable[[str], FastStreamClusterService]]:
    """Build FastStream cluster services, stopped after the test."""
    services: list[FastStreamClusterService] = []

    def make(url: str) -> FastStreamClusterService:
        service = FastStreamClusterService(url)
        services.append(service)
        return service

    yield make
    for service in services:
        service.stop()


def test_placement_spreads_keys_and_sides_over_the_cluster(redis_cluster, place):
    """Each transport's key sits on a master of its own, and neither side connects through it."""
    placements = {transport: place(transport) for transport in TRANSPORTS}
    owners = {p.owner_url for p in placements.values()}
    assert len(owners) == len(TRANSPORTS)
    for transport, p in placements.items():
        assert redis_cluster.node_for_key(p.name).url == p.owner_url, transport
        assert len({p.owner_url, p.server_url, p.client_url}) == 3, transport


class TestOurClientFastStreamServer:
    """``redis_rpc.RedisClusterBroker`` calling and publishing to FastStream cluster subscribers."""

    @pytest.mark.parametrize("body", BODIES)
    @pytest.mark.parametrize("transport", TRANSPORTS)
    def test_body_round_trips(
        self, make_broker, faststream_service, place, transport: str, body: Any
    ):
        """A body sent by request() comes back unchanged from a FastStream echo handler, with our correlation id."""
        where = place(transport)
        service = faststream_service(where.server_url)
        seen: list[dict[str, Any]] = []

        @service.broker.subscriber(**faststream_source(transport, where.name))
        async def echo(value: Any, message: faststream.redis.RedisMessage) -> Any:
            seen.append(dict(message.headers))
            return value

        service.start()
        broker = make_broker(where.client_url)
        reply = broker.request(
            body,
            **target(transport, where.name),
            correlation_id="our-correlation-id",
            timeout=LONG_TIMEOUT,
        )
        assert reply.decode() == body
        assert reply.correlation_id == "our-correlation-id"
        # FastStream got the sharded reply channel, ignored it, and still answered.
        assert seen[0][REPLY_SHARD]

    @pytest.mark.parametrize(
        "response_class", [faststream.Response, faststream.redis.RedisResponse]
    )
    @pytest.mark.parametrize("transport", TRANSPORTS)
    def test_headers_and_correlation_id_cross_both_ways(
        self,
        make_broker,
        faststream_service,
        place,
        transport: str,
        response_class: type[faststream.Response],
    ):
        """Our user headers reach the FastStream handler, and its Response's headers and correlation id reach us."""
        where = place(transport)
        service = faststream_service(where.server_url)

        @service.broker.subscriber(**faststream_source(transport, where.name))
        async def whoami(
            value: str, message: faststream.redis.RedisMessage
        ) -> faststream.Response:
            return response_class(
                body={"body": value, "user": message.headers.get("x-user")},
                headers={"x-token": "secret-token"},
                correlation_id=f"{message.correlation_id}-answered",
            )

        service.start()
        reply = make_broker(where.client_url).request(
            "hi",
            **target(transport, where.name),
            headers=USER_HEADERS,
            correlation_id="our-correlation-id",
            timeout=LONG_TIMEOUT,
        )
        assert reply.decode() == {"body": "hi", "user": "alice"}
        assert reply.headers == {"x-token": "secret-token"}
        assert reply.correlation_id == "our-correlation-id-answered"

    @pytest.mark.parametrize("transport", TRANSPORTS)
    def test_published_dict_arrives_with_headers_and_correlation_id(
        self, make_broker, faststream_service, place, transport: str
    ):
        """A dict sent by publish() reaches a FastStream cluster subscriber as a dict, with its headers and correlation id."""
        where = place(transport)
        service = faststream_service(where.server_url)
        received: Future[tuple[Any, str | None, str]] = Future()

        @service.broker.subscriber(**faststream_source(transport, where.name))
        async def collect(value: Any, message: faststream.redis.RedisMessage) -> None:
            received.set_result(
                (value, message.headers.get("x-user"), message.correlation_id)
            )

        service.start()
        make_broker(where.client_url).publish(
            {"n": 1, "items": ["a", "b"]},
            **target(transport, where.name),
            headers=USER_HEADERS,
            correlation_id="our-correlation-id",
        )
        assert received.result(LONG_TIMEOUT) == (
            {"n": 1, "items": ["a", "b"]},
            "alice",
            "our-correlation-id",
        )

    @pytest.mark.parametrize("transport", TRANSPORTS)
    def test_faststream_handler_that_raises_sends_nothing(
        self, make_broker, faststream_service, place, transport: str
    ):
        """A FastStream handler that raises sends no reply, so our caller gets RequestTimeoutError, and the next request is answered."""
        where = place(transport)
        service = faststream_service(where.server_url)
        called = threading.Event()

        @service.broker.subscriber(**faststream_source(transport, where.name))
        async def handle(value: str) -> str:
            if value == "bad":
                called.set()
                raise ValueError("out of stock")
            return value

        service.start()
        broker = make_broker(where.client_url)
        with pytest.raises(RequestTimeoutError):
            broker.request(
                "bad", **target(transport, where.name), timeout=NO_REPLY_TIMEOUT
            )
        assert wait_for(called.is_set, LONG_TIMEOUT)
        reply = broker.request(
            "ok", **target(transport, where.name), timeout=LONG_TIMEOUT
        )
        assert reply.decode() == "ok"


@attrs.frozen
class Item:
    name: str
    price: int


class TestFastStreamClientOurServer:
    """FastStream's ``RedisClusterBroker`` calling and publishing to ``redis_rpc`` cluster subscribers."""

    @pytest.mark.parametrize("body", BODIES)
    @pytest.mark.parametrize("transport", TRANSPORTS)
    def test_body_round_trips(self, make_broker, place, transport: str, body: Any):
        """A body sent by FastStream's request() comes back unchanged from our echo handler, with its correlation id."""
        where = place(transport)
        broker = make_broker(where.server_url)

        @broker.subscriber(**target(transport, where.name))
        def echo(value: Any) -> Any:
            return value

        broker.start()

        async def call() -> tuple[Any, str]:
            async with faststream.redis.RedisClusterBroker(where.client_url) as client:
                response = await client.request(
                    body,
                    **target(transport, where.name),
                    correlation_id="fs-correlation-id",
                    timeout=LONG_TIMEOUT,
                )
                return await response.decode(), response.correlation_id

        assert run_async(call()) == (body, "fs-correlation-id")

    @pytest.mark.parametrize("response_class", [Response, RedisResponse])
    @pytest.mark.parametrize("transport", TRANSPORTS)
    def test_headers_and_correlation_id_cross_both_ways(
        self,
        make_broker,
        place,
        transport: str,
        response_class: type[Response],
    ):
        """FastStream's headers reach our handler, and our Response's headers and correlation id reach FastStream."""
        where = place(transport)
        broker = make_broker(where.server_url)

        @broker.subscriber(**target(transport, where.name))
        def whoami(value: str, message: RedisMessage) -> Response:
            return response_class(
                {"body": value, "user": message.headers.get("x-user")},
                headers={"x-token": "secret-token"},
                correlation_id=f"{message.correlation_id}-answered",
            )

        broker.start()

        async def call() -> tuple[Any, dict[str, Any], str]:
            async with faststream.redis.RedisClusterBroker(where.client_url) as client:
                response = await client.request(
                    "hi",
                    **target(transport, where.name),
                    headers=USER_HEADERS,
                    correlation_id="fs-correlation-id",
                    timeout=LONG_TIMEOUT,
                )
                return (
                    await response.decode(),
                    dict(response.headers),
                    response.correlation_id,
                )

        decoded, headers, correlation_id = run_async(call())
        assert decoded == {"body": "hi", "user": "alice"}
        assert headers.get("x-token") == "secret-token"
        assert correlation_id == "fs-correlation-id-answered"

    @pytest.mark.parametrize("transport", TRANSPORTS)
    def test_handler_that_raises_sends_no_reply_and_consumer_keeps_serving(
        self, make_broker, place, transport: str
    ):
        """A FastStream request whose handler raises gets no reply (FastStream's TimeoutError); the next request is answered."""
        where = place(transport)
        broker = make_broker(where.server_url)
        calls: list[Item] = []

        @broker.subscriber(**target(transport, where.name))
        def buy(item: Item) -> int:
            calls.append(item)
            if item.price < 0:
                raise ValueError("negative price")
            return item.price

        broker.start()

        async def call() -> Any:
            async with faststream.redis.RedisClusterBroker(where.client_url) as client:
                with pytest.raises(TimeoutError):
                    await client.request(
                        {"name": "pen", "price": -1},
                        **target(transport, where.name),
                        timeout=NO_REPLY_TIMEOUT,
                    )
                response = await client.request(
                    {"name": "cup", "price": 4},
                    **target(transport, where.name),
                    timeout=LONG_TIMEOUT,
                )
                return await response.decode()

        assert run_async(call()) == 4
        assert calls == [Item("pen", -1), Item("cup", 4)]

    @pytest.mark.parametrize("transport", TRANSPORTS)
    def test_publish_with_reply_to_sends_result_to_channel(
        self, make_broker, place, transport: str
    ):
        """FastStream's publish(reply_to=...) makes our handler publish its result to that channel, which FastStream's cluster subscriber gets."""
        where = place(transport)
        reply_channel = f"{where.name}-reply"
        broker = make_broker(where.server_url)

        @broker.subscriber(**target(transport, where.name))
        def double(value: int) -> dict[str, int]:
            return {"doubled": value * 2}

        broker.start()

        async def publish_and_wait() -> tuple[Any, str]:
            client = faststream.redis.RedisClusterBroker(where.client_url)
            replies: asyncio.Future[tuple[Any, str]] = (
                asyncio.get_running_loop().create_future()
            )

            @client.subscriber(channel=reply_channel)
            async def on_reply(
                value: Any, message: faststream.redis.RedisMessage
            ) -> None:
                replies.set_result((value, message.correlation_id))

            async with client:
                await client.start()
                await client.publish(
                    21,
                    **target(transport, where.name),
                    reply_to=reply_channel,
                    correlation_id="fs-correlation-id",
                )
                return await replies

        assert run_async(publish_and_wait()) == ({"doubled": 42}, "fs-correlation-id")
