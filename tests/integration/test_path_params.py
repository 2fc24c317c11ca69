"""Path parameters against a real Redis: channel templates such as ``logs.{level}``.

A template is subscribed as a pattern, and a handler parameter with
``Path()`` as its default gets the value from the channel each message was
published to, whether our broker or FastStream's published it.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import faststream.redis
import pytest

from redis_rpc import Path, RedisMessage
from redis_rpc.errors import NoSubscriberError, RemoteError, SetupError
from tests.conftest import LONG_TIMEOUT
from tests.helpers import wait_for
from tests.integration.test_interop_faststream import run_async


def test_request_gets_the_value(make_broker, unique_name):
    """request() to <name>.logs.info reaches the handler of <name>.logs.{level} with level="info"."""
    broker = make_broker()

    @broker.subscriber(channel=f"{unique_name}.logs.{{level}}")
    def log(body: str, level: str = Path()) -> list[str]:
        return [body, level]

    with broker:
        for level in ("info", "warn"):
            reply = broker.request(
                "hi", channel=f"{unique_name}.logs.{level}", timeout=LONG_TIMEOUT
            )
            assert reply.decode() == ["hi", level]


def test_publish_reaches_the_handler(make_broker, unique_name):
    """publish() to a channel that fits the template reaches the handler, which sees the value in message.path too."""
    broker = make_broker()
    seen: list[tuple[str, dict[str, str]]] = []

    @broker.subscriber(channel=f"{unique_name}.logs.{{level}}", no_reply=True)
    def log(level: str = Path(), *, message: RedisMessage) -> None:
        seen.append((level, dict(message.path)))

    with broker:
        broker.publish("x", channel=f"{unique_name}.logs.error")
        assert wait_for(lambda: seen, timeout=LONG_TIMEOUT)
    assert seen == [("error", {"level": "error"})]


def test_two_placeholders_and_an_alias(make_broker, unique_name):
    """Two placeholders each give their own value; Path("name") takes a placeholder under another name."""
    broker = make_broker()

    @broker.subscriber(channel=f"{unique_name}.{{service}}.{{level}}")
    def log(svc: str = Path("service"), level: str = Path()) -> dict[str, str]:
        return {"service": svc, "level": level}

    with broker:
        reply = broker.request(
            None, channel=f"{unique_name}.billing.warn", timeout=LONG_TIMEOUT
        )
    assert reply.decode() == {"service": "billing", "level": "warn"}


def test_typed_value_and_a_bad_one(make_broker, unique_name):
    """An int path parameter gets 7 from "7"; "seven" fails validation, and our caller gets RemoteError."""
    broker = make_broker()
    calls: list[int] = []

    @broker.subscriber(channel=f"{unique_name}.codes.{{code}}")
    def code(code: int = Path()) -> int:
        calls.append(code)
        return code + 1

    with broker:
        assert (
            broker.request(
                None, channel=f"{unique_name}.codes.7", timeout=LONG_TIMEOUT
            ).decode()
            == 8
        )
        with pytest.raises(RemoteError) as info:
            broker.request(
                None, channel=f"{unique_name}.codes.seven", timeout=LONG_TIMEOUT
            )
    assert info.value.type_name == "ValidationError"
    assert "Path parameter 'code'" in info.value.remote_message
    assert calls == [7]


def test_channel_that_does_not_fit(make_broker, unique_name):
    """A value with a dot reaches the pattern but not the template: an error without a default, the default with one."""
    broker = make_broker()

    @broker.subscriber(channel=f"{unique_name}.strict.{{level}}")
    def strict(level: str = Path()) -> str:
        return level

    @broker.subscriber(channel=f"{unique_name}.lenient.{{level}}")
    def lenient(level: str = Path(default="unknown")) -> str:
        return level

    with broker:
        with pytest.raises(RemoteError) as info:
            broker.request(
                None, channel=f"{unique_name}.strict.a.b", timeout=LONG_TIMEOUT
            )
        reply = broker.request(
            None, channel=f"{unique_name}.lenient.a.b", timeout=LONG_TIMEOUT
        )
    assert info.value.type_name == "ValidationError"
    assert "does not fit" in info.value.remote_message
    assert reply.decode() == "unknown"


def test_glob_characters_in_the_template_are_literal(make_broker, unique_name):
    """Brackets in a template's fixed text match themselves in Redis, not as a glob character class."""
    broker = make_broker()

    @broker.subscriber(channel=f"{unique_name}.[ab].{{level}}")
    def log(level: str = Path()) -> str:
        return level

    with broker:
        reply = broker.request(
            None, channel=f"{unique_name}.[ab].info", timeout=LONG_TIMEOUT
        )
        # As a glob, [ab] would match "a": Redis says nobody subscribes.
        with pytest.raises(NoSubscriberError):
            broker.request(None, channel=f"{unique_name}.a.info", timeout=LONG_TIMEOUT)
    assert reply.decode() == "info"


def test_request_to_own_template_from_its_handler(make_broker, unique_name):
    """A single-worker handler requesting a channel its own template takes fails at once, not after the timeout."""
    broker = make_broker(max_workers=1)

    @broker.subscriber(channel=f"{unique_name}.{{n}}")
    def recurse(n: int = Path()) -> Any:
        if n == 0:
            return 0
        return broker.request(
            None, channel=f"{unique_name}.{n - 1}", timeout=LONG_TIMEOUT
        ).decode()

    broker.start()
    begun = time.monotonic()
    with pytest.raises(RemoteError) as info:
        broker.request(None, channel=f"{unique_name}.1", timeout=LONG_TIMEOUT * 2)
    assert time.monotonic() - begun < LONG_TIMEOUT
    assert info.value.type_name == "BrokerStateError"


@pytest.mark.parametrize(
    ("source", "match"),
    [
        ({"channel": "logs.{level"}, "Channel template"),
        ({"list": "jobs.{level}"}, "only channels"),
        ({"channel": "logs.{lvl}"}, "has no \\{level\\}"),
    ],
)
def test_setup_errors(make_broker, source, match):
    """Malformed templates, templates on lists, and path parameters the template lacks fail at registration."""
    broker = make_broker()
    with pytest.raises(SetupError, match=match):

        @broker.subscriber(**source)
        def log(level: str = Path()) -> None: ...


class TestFastStream:
    def test_faststream_publisher_reaches_our_handler(
        self, make_broker, redis_url, unique_name
    ):
        """A FastStream publish() to <name>.logs.info reaches our handler of <name>.logs.{level} with level="info"."""
        broker = make_broker()
        seen: list[tuple[str, str]] = []
        arrived = threading.Event()

        @broker.subscriber(channel=f"{unique_name}.logs.{{level}}")
        def log(body: str, level: str = Path()) -> None:
            seen.append((body, level))
            arrived.set()

        broker.start()

        async def publish() -> None:
            async with faststream.redis.RedisBroker(redis_url) as client:
                await client.publish("disk full", channel=f"{unique_name}.logs.info")

        run_async(publish())
        assert arrived.wait(LONG_TIMEOUT)
        assert seen == [("disk full", "info")]

    def test_faststream_request_gets_the_typed_value(
        self, make_broker, redis_url, unique_name
    ):
        """FastStream's request() to <name>.orders.42 is answered by our handler with order=42 as an int."""
        broker = make_broker()

        @broker.subscriber(channel=f"{unique_name}.orders.{{order}}")
        def order(body: dict[str, int], order: int = Path()) -> dict[str, int]:
            return {"order": order, "qty": body["qty"]}

        broker.start()

        async def call() -> Any:
            async with faststream.redis.RedisBroker(redis_url) as client:
                response = await client.request(
                    {"qty": 3},
                    channel=f"{unique_name}.orders.42",
                    timeout=LONG_TIMEOUT,
                )
                return await response.decode()

        assert run_async(call()) == {"order": 42, "qty": 3}
