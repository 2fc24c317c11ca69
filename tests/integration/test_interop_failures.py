"""Failures across the wire with the real FastStream ``RedisBroker``, in both directions.

FastStream callers do not advertise that they read error replies, so our
servers send them none, as FastStream's own servers never do; our extra
request headers do not bother FastStream servers; and typed bodies cross
between attrs/cattrs and pydantic as plain JSON.
"""

from __future__ import annotations

import dataclasses
import threading
from typing import Any

import attrs
import faststream.redis
import pydantic
import pytest

from redis_rpc import RedisMessage
from redis_rpc._wire.message import ACCEPT_ERRORS, DEADLINE
from redis_rpc.errors import MessageDecodeError, RequestTimeoutError
from tests.conftest import LONG_TIMEOUT, SHORT_TIMEOUT
from tests.helpers import wait_for
from tests.integration.test_interop_faststream import (
    TRANSPORTS,
    MakeBroker,
    MakeService,
    faststream_service,  # noqa: F401 - a fixture, used by name
    faststream_source,
    run_async,
    target,
)

# A request nobody answers; loopback replies arrive long before it runs out.
NO_REPLY_TIMEOUT = 0.2


@attrs.frozen
class Item:
    name: str
    price: int


class PydanticItem(pydantic.BaseModel):
    name: str
    price: int


@dataclasses.dataclass
class DataclassItem:
    name: str
    price: int


class TestFastStreamClientOurServer:
    """A FastStream caller, which never advertises error replies, against our failing handlers."""

    @pytest.mark.parametrize(
        ("transport", "failure"),
        [
            *((transport, "raises") for transport in TRANSPORTS),
            ("list", "does-not-fit"),
            ("stream", "does-not-fit"),
        ],
    )
    def test_failure_sends_no_reply_and_consumer_keeps_serving(
        self,
        make_broker: MakeBroker,
        redis_url: str,
        unique_name: str,
        transport: str,
        failure: str,
    ):
        """A FastStream request whose handler raises, or whose body does not fit, gets no reply; the next request is answered."""
        broker = make_broker()
        calls: list[Item] = []

        @broker.subscriber(**target(transport, unique_name))
        def buy(item: Item) -> int:
            calls.append(item)
            if item.price < 0:
                raise ValueError("negative price")
            return item.price

        broker.start()
        bad = {"name": "pen", "price": -1 if failure == "raises" else "three"}

        async def call() -> Any:
            async with faststream.redis.RedisBroker(redis_url) as client:
                with pytest.raises(TimeoutError):
                    await client.request(
                        bad, **target(transport, unique_name), timeout=NO_REPLY_TIMEOUT
                    )
                response = await client.request(
                    {"name": "cup", "price": 4},
                    **target(transport, unique_name),
                    timeout=LONG_TIMEOUT,
                )
                return await response.decode()

        assert run_async(call()) == 4
        expected = [Item("pen", -1)] if failure == "raises" else []
        assert calls == [*expected, Item("cup", 4)]

    @pytest.mark.parametrize("model", [PydanticItem, DataclassItem])
    def test_typed_faststream_body_reaches_typed_handler(
        self,
        make_broker: MakeBroker,
        redis_url: str,
        unique_name: str,
        model: type[Any],
    ):
        """A pydantic model or dataclass sent by FastStream is structured into our attrs class, and our attrs result reaches FastStream as JSON."""
        broker = make_broker()

        @broker.subscriber(list=unique_name)
        def reprice(item: Item) -> Item:
            return attrs.evolve(item, price=item.price * 2)

        broker.start()

        async def call() -> Any:
            async with faststream.redis.RedisBroker(redis_url) as client:
                response = await client.request(
                    model(name="pen", price=3), list=unique_name, timeout=LONG_TIMEOUT
                )
                return await response.decode()

        assert run_async(call()) == {"name": "pen", "price": 6}


class TestOurClientFastStreamServer:
    """Our caller, with its extra headers, against FastStream handlers."""

    @pytest.mark.parametrize("transport", TRANSPORTS)
    def test_faststream_ignores_our_headers_and_answers(
        self,
        make_broker: MakeBroker,
        faststream_service: MakeService,  # noqa: F811 - the fixture imported above
        unique_name: str,
        transport: str,
    ):
        """A FastStream handler gets our request, with our x-redis-rpc-* headers as plain headers, and its answer reaches us."""
        service = faststream_service()
        seen: list[dict[str, Any]] = []

        @service.broker.subscriber(**faststream_source(transport, unique_name))
        async def echo(value: str, message: faststream.redis.RedisMessage) -> str:
            seen.append(dict(message.headers))
            return value.upper()

        service.start()
        reply = make_broker().request(
            "hi", **target(transport, unique_name), timeout=SHORT_TIMEOUT
        )
        assert reply.decode() == "HI"
        assert reply.error_details() is None
        assert seen[0][ACCEPT_ERRORS] == "1"
        assert float(seen[0][DEADLINE]) > 0

    def test_non_ascii_reply_header_from_faststream_names_its_framing(
        self,
        make_broker: MakeBroker,
        faststream_service: MakeService,  # noqa: F811 - the fixture imported above
        unique_name: str,
    ):
        """A FastStream reply with a non-ASCII header, which its framing cuts short, fails with a hint at FastStream's character counts."""
        service = faststream_service()

        @service.broker.subscriber(list=unique_name)
        async def greet(value: str) -> faststream.redis.RedisResponse:
            return faststream.redis.RedisResponse(value, headers={"x-note": "café"})

        service.start()
        with pytest.raises(MessageDecodeError) as info:
            make_broker().request("hi", list=unique_name, timeout=LONG_TIMEOUT)
        message = str(info.value)
        assert message.startswith("A header at byte ")
        assert (
            "FastStream's framing writes each header's length as its number of characters, not of bytes"
            in message
        )

    @pytest.mark.parametrize("transport", TRANSPORTS)
    def test_faststream_handler_that_raises_sends_nothing(
        self,
        make_broker: MakeBroker,
        faststream_service: MakeService,  # noqa: F811 - the fixture imported above
        unique_name: str,
        transport: str,
    ):
        """A FastStream handler that raises sends no reply, so our caller gets RequestTimeoutError, and the next request is answered."""
        service = faststream_service()
        called = threading.Event()

        @service.broker.subscriber(**faststream_source(transport, unique_name))
        async def handle(value: str) -> str:
            if value == "bad":
                called.set()
                raise ValueError("out of stock")
            return value

        service.start()
        broker = make_broker()
        with pytest.raises(RequestTimeoutError):
            broker.request(
                "bad", **target(transport, unique_name), timeout=NO_REPLY_TIMEOUT
            )
        assert wait_for(called.is_set)
        reply = broker.request(
            "ok", **target(transport, unique_name), timeout=SHORT_TIMEOUT
        )
        assert reply.decode() == "ok"

    @pytest.mark.parametrize(
        ("transport", "model"),
        [
            *((transport, PydanticItem) for transport in TRANSPORTS),
            ("list", DataclassItem),
        ],
    )
    def test_typed_faststream_handler_reads_our_attrs_body(
        self,
        make_broker: MakeBroker,
        faststream_service: MakeService,  # noqa: F811 - the fixture imported above
        unique_name: str,
        transport: str,
        model: type[Any],
    ):
        """Our attrs body reaches a FastStream handler typed with a pydantic model or dataclass, and its typed result decodes into our attrs class."""
        service = faststream_service()
        received: list[Any] = []

        async def reprice(item: Any) -> Any:
            received.append(item)
            return model(name=item.name.upper(), price=item.price * 2)

        reprice.__annotations__ = {"item": model, "return": model}
        service.broker.subscriber(**faststream_source(transport, unique_name))(reprice)
        service.start()
        reply = make_broker().request(
            Item("pen", 3), **target(transport, unique_name), timeout=SHORT_TIMEOUT
        )
        assert received == [model(name="pen", price=3)]
        assert isinstance(reply, RedisMessage)
        assert reply.decode(Item) == Item("PEN", 6)
