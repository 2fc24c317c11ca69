"""TestRedisBroker against the real broker: the same scenarios give the same results.

Each scenario runs twice on brokers declared alike: once on a real broker
started against the session's redis-server, once in memory. What the
caller sees is compared: reply bodies, headers and correlation ids, and
for failures the exception's type, message and attributes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import attrs
import pytest

from redis_rpc import Path, PubSub, RedisBroker, RedisMessage, Response
from redis_rpc._wire.glob import glob
from redis_rpc.errors import BrokerStateError, RedisConnectionError
from redis_rpc.testing import TestRedisBroker
from tests.conftest import POLL_INTERVAL, SHORT_TIMEOUT
from tests.helpers import wait_for

if TYPE_CHECKING:
    from collections.abc import Callable

KEY = b"parity-signing-key-0123456789abcdef"
# Long enough for a real round trip on a busy machine; the scenarios that
# expect no reply wait this long on the real broker only.
QUIET_TIMEOUT = 0.3


@attrs.frozen
class Item:
    name: str
    qty: int


def declare(broker: RedisBroker, name: str) -> list[Any]:
    """Declare the scenarios' handlers on *broker*; return what the shipping handler sees."""
    shipped: list[Any] = []

    @broker.subscriber(f"{name}.total")
    def total(item: Item) -> int:
        return item.qty * 2

    @broker.subscriber(list=f"{name}.boom")
    def boom(body: str) -> None:
        raise KeyError(body)

    @broker.subscriber(stream=f"{name}.headers")
    def headers(body: str, message: RedisMessage) -> Response:
        return Response(
            {"got": body, "sent": dict(message.headers)},
            headers={"x-seen": "yes"},
            correlation_id="from-handler",
        )

    @broker.subscriber(f"{name}.orders")
    @broker.publisher(list=f"{name}.shipping")
    def order(item: Item) -> Item:
        return attrs.evolve(item, qty=item.qty + 1)

    @broker.subscriber(list=f"{name}.shipping")
    def ship(item: Item) -> None:
        shipped.append(item)

    @broker.subscriber(PubSub(f"{name}.logs.*"))
    def log(line: str) -> str:
        return f"{line}!"

    @broker.subscriber(f"{name}.logs.audit", no_reply=True)
    def audit(line: str) -> None:
        pass

    @broker.subscriber(f"{name}.outer")
    def outer(n: int) -> int:
        inner = broker.request(Item("inner", n), f"{name}.total", correlation_id="in")
        return inner.decode(int) + 1

    @broker.subscriber(f"{name}.shard.{{n}}")
    def shard(body: str, n: int = Path()) -> list[Any]:
        return [body, n]

    @broker.subscriber(f"{name}.quiet", no_reply=True)
    def quiet(body: str) -> str:
        return body

    return shipped


# What our exceptions carry besides their message.
_ATTRIBUTES = (
    "type_name",
    "remote_message",
    "errors",
    "traceback",
    "destination",
    "correlation_id",
    "timeout",
)


def outcome(call: Callable[[], Any]) -> Any:
    """What the caller sees: the reply's parts, or the failure's type, message and attributes."""
    try:
        result = call()
    except Exception as exc:  # noqa: BLE001 - any failure is an outcome to compare
        attributes = {
            key: value for key, value in vars(exc).items() if key in _ATTRIBUTES
        }
        return ("raised", type(exc).__name__, str(exc), attributes)
    if isinstance(result, RedisMessage):
        return (
            "reply",
            result.decode(),
            dict(result.headers),
            result.correlation_id,
            result.content_type,
        )
    return ("returned", result)


def _request(body: Any, **kwargs: Any) -> Callable[[RedisBroker, str, list[Any]], Any]:
    """A scenario that makes one request; "{}" in a target is the test's unique name."""
    kwargs.setdefault("correlation_id", "parity")
    kwargs.setdefault("timeout", SHORT_TIMEOUT)

    def scenario(br: RedisBroker, name: str, shipped: list[Any]) -> Any:
        target = {
            key: value.format(name) if key in ("channel", "list", "stream") else value
            for key, value in kwargs.items()
        }
        return outcome(lambda: br.request(body, **target))

    return scenario


def _publisher_chain(br: RedisBroker, name: str, shipped: list[Any]) -> Any:
    reply = outcome(
        lambda: br.request(Item("pen", 1), f"{name}.orders", correlation_id="p")
    )
    wait_for(lambda: shipped)
    return reply, list(shipped)


def _publish_counts(br: RedisBroker, name: str, shipped: list[Any]) -> Any:
    return [
        br.publish("x", f"{name}.logs.audit"),  # the channel and the pattern
        br.publish("x", f"{name}.logs.error"),  # the pattern
        br.publish("x", f"{name}.nobody"),
    ]


# Each scenario, and the gist of what it must give on both brokers, so that
# the comparison cannot pass with both wrong alike.
SCENARIOS: dict[str, tuple[Callable[[RedisBroker, str, list[Any]], Any], Any]] = {
    "typed body": (_request(Item("pen", 3), channel="{}.total"), ("reply", 6)),
    "validation error": (
        _request({"name": "pen", "qty": "many"}, channel="{}.total"),
        ("raised", "RemoteError"),
    ),
    "handler error": (_request("lost", list="{}.boom"), ("raised", "RemoteError")),
    "response headers": (
        _request("hi", stream="{}.headers", headers={"x-user": "ada"}),
        ("reply", {"got": "hi", "sent": {"x-user": "ada"}}),
    ),
    "pattern channel": (
        _request("disk full", channel="{}.logs.error"),
        ("reply", "disk full!"),
    ),
    "path parameter": (_request("x", channel="{}.shard.7"), ("reply", ["x", 7])),
    "path parameter that does not fit": (
        _request("x", channel="{}.shard.seven"),
        ("raised", "RemoteError"),
    ),
    "nested request": (_request(4, channel="{}.outer"), ("reply", 9)),
    "publisher chain": (
        _publisher_chain,
        (("reply", {"name": "pen", "qty": 2}), [Item("pen", 2)]),
    ),
    "publish counts": (_publish_counts, [2, 1, 0]),
    "channel without subscriber": (
        _request("x", channel="{}.nobody"),
        ("raised", "NoSubscriberError"),
    ),
    "channel without subscriber, no fail_fast": (
        _request("x", channel="{}.nobody", fail_fast=False, timeout=QUIET_TIMEOUT),
        ("raised", "RequestTimeoutError"),
    ),
    "list without subscriber": (
        _request("x", list="{}.nobody", timeout=QUIET_TIMEOUT),
        ("raised", "RequestTimeoutError"),
    ),
    "stream without subscriber": (
        _request("x", stream="{}.nobody", timeout=QUIET_TIMEOUT),
        ("raised", "RequestTimeoutError"),
    ),
    "no_reply handler": (
        _request("x", channel="{}.quiet", timeout=QUIET_TIMEOUT),
        ("raised", "RequestTimeoutError"),
    ),
}


def gist(result: Any) -> Any:
    """The first two parts of an outcome (reply and body, or raised and type), in whatever holds them."""
    if isinstance(result, tuple) and result and result[0] in ("reply", "raised"):
        return result[:2]
    if isinstance(result, tuple):
        return tuple(gist(part) for part in result)
    return result


@pytest.mark.parametrize("signing_key", [None, KEY], ids=["unsigned", "signed"])
@pytest.mark.parametrize("scenario", list(SCENARIOS), ids=list(SCENARIOS))
def test_same_outcome_in_memory_and_on_redis(
    make_broker, redis_url, unique_name, scenario, signing_key
):
    """The in-memory broker gives the caller what a real broker on Redis gives."""
    run, expected_gist = SCENARIOS[scenario]
    real = make_broker(signing_key=signing_key)
    shipped = declare(real, unique_name)
    real.start()
    on_redis = run(real, unique_name, shipped)

    memory = RedisBroker(redis_url, signing_key=signing_key)
    shipped = declare(memory, unique_name)
    with TestRedisBroker(memory) as br:
        in_memory = run(br, unique_name, shipped)

    assert gist(on_redis) == expected_gist
    assert in_memory == on_redis


GLOBS = ["*", "h?llo", "h[ae]llo", "h[^e]llo", "h[a-c]llo", "h[c-a]llo"]
GLOBS += [r"what\?", r"h[\]]", "h[", "h[]", "a.b+c", "x[^]", "y[ab"]
NAMES = ["hello", "hallo", "hbllo", "hdllo", "hllo", "what?", "whatX", "h]", "h["]
NAMES += ["h", "ha", "a.b+c", "aXb+c", "xy", "x", "ya", "yc", "y[ab"]


def test_glob_agrees_with_redis(raw, unique_name):
    """Patterns match in memory exactly as PSUBSCRIBE patterns match on Redis."""
    subscription = raw.pubsub()
    confirmed: list[Any] = []
    try:
        for pattern in GLOBS:
            subscription.psubscribe(unique_name + pattern)

        def all_confirmed() -> bool:
            confirmed.extend(
                message
                for message in iter(
                    lambda: subscription.get_message(timeout=0.01), None
                )
                if message["type"] == "psubscribe"
            )
            return len(confirmed) == len(GLOBS)

        assert wait_for(all_confirmed)
        for name in NAMES:
            expected = sum(
                glob(unique_name + pattern).fullmatch(unique_name + name) is not None
                for pattern in GLOBS
            )
            assert raw.publish(unique_name + name, b"") == expected, name
    finally:
        subscription.close()


class TestWithReal:
    """TestRedisBroker(broker, with_real=True): the same block, on the real Redis, with the mocks recording."""

    def test_a_test_written_the_faststream_way(self, redis_url, unique_name, raw):
        """Handler and publisher mocks record on Redis as in memory, and the block starts and closes the broker."""
        broker = RedisBroker(redis_url, poll_interval=POLL_INTERVAL)
        to_shipping = broker.publisher(list=f"{unique_name}.shipping")

        @broker.subscriber(list=f"{unique_name}.orders")
        @to_shipping
        def place(order: dict[str, Any]) -> dict[str, Any]:
            return {**order, "placed": True}

        with TestRedisBroker(broker, with_real=True) as br:
            assert br is broker
            assert repr(br).startswith("<RedisBroker RUNNING")
            reply = br.request({"item": "pen"}, list=f"{unique_name}.orders")
            assert reply.decode() == {"item": "pen", "placed": True}
            place.mock.assert_called_once_with({"item": "pen"})  # type: ignore[attr-defined]
            to_shipping.mock.assert_called_once_with({"item": "pen", "placed": True})
            to_shipping.publish({"item": "cup"})
            assert to_shipping.mock.call_count == 2
        assert repr(broker).startswith("<RedisBroker CLOSED")
        # It was Redis: both results are in the shipping list, which nobody consumes.
        assert raw.llen(f"{unique_name}.shipping") == 2
        with pytest.raises(BrokerStateError, match="not under a test broker"):
            to_shipping.mock.assert_called_once_with({"item": "pen", "placed": True})

    def test_published_messages_are_handled_on_their_own_thread(
        self, redis_url, unique_name
    ):
        """publish() returns before the handler runs, whose mock then records on the consumer's thread."""
        broker = RedisBroker(redis_url, poll_interval=POLL_INTERVAL)

        @broker.subscriber(stream=unique_name)
        def collect(body: str) -> None:
            return None

        test_broker = TestRedisBroker(broker, with_real=True)
        with test_broker as br:
            br.publish("event", stream=unique_name)
            assert wait_for(lambda: test_broker.mock(collect).called)
            test_broker.mock(collect).assert_called_once_with("event")

    def test_a_broker_that_cannot_start_leaves_nothing_running(self, redis_server):
        """A with_real block whose broker cannot start raises as start() does, and the broker ends closed."""
        url = f"redis://nobody:wrong@127.0.0.1:{redis_server.port}/0"
        broker = RedisBroker(url, poll_interval=POLL_INTERVAL)
        with (
            pytest.raises(RedisConnectionError),
            TestRedisBroker(broker, with_real=True),
        ):
            pytest.fail("the block ran without Redis")
        assert repr(broker).startswith("<RedisBroker CLOSED")
