"""Failures reach the caller, against a real redis-server.

Typed bodies in both directions, error replies (RemoteError), fail fast on an
empty channel, expired requests skipped by the server, and size limits.
"""

from __future__ import annotations

import dataclasses
import datetime
import enum
import logging
import time
from typing import Any

import attrs
import pytest
import redis

from redis_rpc import RedisMessage, RemoteError
from redis_rpc._wire.message import ACCEPT_ERRORS, DEADLINE, build_frame
from redis_rpc.errors import (
    MessageTooLargeError,
    NoSubscriberError,
    RequestTimeoutError,
    ValidationError,
)
from tests.conftest import LONG_TIMEOUT, SHORT_TIMEOUT
from tests.helpers import wait_for

TRANSPORTS = ["channel", "list", "stream"]
QUEUES = ["list", "stream"]  # transports that keep a request while nobody consumes
# A request nobody will answer in these tests; long enough for a reply on
# loopback to arrive first whenever one is sent at all.
NO_REPLY_TIMEOUT = 0.2
SMALL_LIMIT = 1024  # bytes; the oversized frames below are about twice that
BIG = "x" * (2 * SMALL_LIMIT)
CONSUMER_LOG = "redis_rpc._server.process"
UTC = datetime.timezone.utc


@attrs.frozen
class Item:
    name: str
    price: int


@dataclasses.dataclass(frozen=True)
class Point:
    x: float
    y: float


class Color(enum.Enum):
    RED = "red"
    BLUE = "blue"


class PaymentDeclinedError(Exception):
    """Raised by a handler; callers must only ever see its name."""


class UnprintableError(Exception):
    """An exception whose message cannot be rendered."""

    def __str__(self) -> str:
        raise RuntimeError("no message")


def send_raw(raw: redis.Redis, kind: str, name: str, frame: bytes) -> None:
    """Put *frame* where a consumer of *name* over *kind* reads it, as FastStream would."""
    if kind == "channel":
        assert raw.publish(name, frame) == 1
    elif kind == "list":
        raw.rpush(name, frame)
    else:
        raw.xadd(name, {"__data__": frame})


def typed_echo(annotation: Any, received: list[Any]):
    """A handler whose body parameter and result are annotated *annotation*."""

    def echo(body):
        received.append(body)
        return body

    echo.__annotations__ = {"body": annotation, "return": annotation}
    return echo


TYPED = [
    pytest.param(Item, Item("pen", 3), {"name": "pen", "price": 3}, id="attrs"),
    pytest.param(Point, Point(1.0, 2.5), {"x": 1.0, "y": 2.5}, id="dataclass"),
    pytest.param(list[int], [1, 2, 3], [1, 2, 3], id="list-int"),
    pytest.param(
        dict[str, Item],
        {"a": Item("a", 1), "b": Item("b", 2)},
        {"a": {"name": "a", "price": 1}, "b": {"name": "b", "price": 2}},
        id="dict-of-attrs",
    ),
    pytest.param(Color, Color.BLUE, "blue", id="enum"),
    pytest.param(
        datetime.datetime,
        datetime.datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC),
        "2024-05-06T07:08:09+00:00",
        id="datetime",
    ),
    pytest.param(Item | None, None, b"", id="optional-none"),
    pytest.param(
        Item | None, Item("cup", 2), {"name": "cup", "price": 2}, id="optional-item"
    ),
]


class TestTypedBodies:
    @pytest.mark.parametrize(("annotation", "value", "wire"), TYPED)
    def test_round_trip(self, make_broker, unique_name, annotation, value, wire):
        """A typed value reaches the handler structured, and the typed result comes back through decode(into)."""
        broker = make_broker()
        received: list[Any] = []
        broker.subscriber(list=unique_name)(typed_echo(annotation, received))
        with broker:
            reply = broker.request(value, list=unique_name, timeout=SHORT_TIMEOUT)
        assert received == [value]
        assert reply.decode() == wire
        assert reply.decode(annotation) == value

    @pytest.mark.parametrize("kind", TRANSPORTS)
    def test_round_trip_over_each_transport(self, make_broker, unique_name, kind):
        """A handler annotated with an attrs class gets an instance over every transport, and its result decodes back."""
        broker = make_broker()

        @broker.subscriber(**{kind: unique_name})
        def reprice(item: Item) -> Item:
            return attrs.evolve(item, price=item.price * 2)

        with broker:
            reply = broker.request(Item("pen", 3), **{kind: unique_name})
        assert reply.decode(Item) == Item("pen", 6)

    def test_result_nested_in_dict_and_response(self, make_broker, unique_name):
        """attrs instances, dataclasses and datetimes inside a returned dict are sent as JSON."""
        broker = make_broker()
        when = datetime.datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)

        @broker.subscriber(list=unique_name)
        def quote(body: Any) -> dict[str, Any]:
            return {"items": [Item("a", 1)], "at": Point(0.5, 1.0), "when": when}

        with broker:
            reply = broker.request(None, list=unique_name, timeout=SHORT_TIMEOUT)
        assert reply.decode() == {
            "items": [{"name": "a", "price": 1}],
            "at": {"x": 0.5, "y": 1.0},
            "when": "2024-01-02T03:04:05+00:00",
        }

    def test_reply_that_does_not_fit_raises_validation_error(
        self, make_broker, unique_name
    ):
        """decode(Item) on a reply that does not fit raises ValidationError naming the field."""
        broker = make_broker()

        @broker.subscriber(list=unique_name)
        def wrong(body: Any) -> dict[str, Any]:
            return {"name": "pen", "price": "three"}

        with broker:
            reply = broker.request(None, list=unique_name, timeout=SHORT_TIMEOUT)
        with pytest.raises(ValidationError) as info:
            reply.decode(Item)
        assert info.value.errors == ("invalid value for type, expected int @ $.price",)


class TestErrorReplies:
    @pytest.mark.parametrize("kind", TRANSPORTS)
    def test_validation_failure(self, make_broker, unique_name, kind):
        """A body that does not fit the handler's type raises RemoteError naming the field, without calling the handler, and the next request is served."""
        broker = make_broker()
        calls: list[Item] = []

        @broker.subscriber(**{kind: unique_name})
        def buy(item: Item) -> int:
            calls.append(item)
            return item.price

        with broker:
            with pytest.raises(RemoteError) as info:
                broker.request(
                    {"name": "pen", "price": "three"},
                    **{kind: unique_name},
                    correlation_id="cid-bad",
                    timeout=SHORT_TIMEOUT,
                )
            assert calls == []
            reply = broker.request(
                Item("pen", 3), **{kind: unique_name}, timeout=SHORT_TIMEOUT
            )
        error = info.value
        assert type(error) is RemoteError
        assert error.type_name == "ValidationError"
        assert error.errors == ("invalid value for type, expected int @ $.price",)
        assert "$.price" in error.remote_message
        assert error.destination == f"{kind}:{unique_name}"
        assert error.correlation_id == "cid-bad"
        assert reply.decode() == 3
        assert calls == [Item("pen", 3)]

    @pytest.mark.parametrize("kind", TRANSPORTS)
    def test_handler_exception(self, make_broker, unique_name, kind):
        """A handler that raises gives the caller RemoteError with its type name and message, and no traceback by default."""
        broker = make_broker()

        @broker.subscriber(**{kind: unique_name})
        def handle(body: str) -> str:
            if body == "bad":
                raise ValueError("out of stock")
            return body

        with broker:
            with pytest.raises(RemoteError) as info:
                broker.request("bad", **{kind: unique_name}, timeout=SHORT_TIMEOUT)
            reply = broker.request("ok", **{kind: unique_name}, timeout=SHORT_TIMEOUT)
        error = info.value
        assert error.type_name == "ValueError"
        assert error.remote_message == "out of stock"
        assert error.errors == ()
        assert error.traceback is None
        assert error.destination == f"{kind}:{unique_name}"
        assert reply.decode() == "ok"

    def test_traceback_sent_when_enabled(self, make_broker, unique_name):
        """A server built with send_tracebacks=True puts the handler's traceback in RemoteError."""
        server, client = make_broker(send_tracebacks=True), make_broker()

        @server.subscriber(list=unique_name)
        def fail_deep_inside(body: Any) -> None:
            raise ValueError("out of stock")

        with server, client, pytest.raises(RemoteError) as info:
            client.request("x", list=unique_name, timeout=SHORT_TIMEOUT)
        traceback = info.value.traceback
        assert traceback is not None
        assert traceback.startswith("Traceback (most recent call last):")
        assert "fail_deep_inside" in traceback
        assert "ValueError: out of stock" in traceback

    def test_validation_traceback_sent_when_enabled(self, make_broker, unique_name):
        """With send_tracebacks=True a validation failure's RemoteError carries a traceback too."""
        broker = make_broker(send_tracebacks=True)

        @broker.subscriber(list=unique_name)
        def buy(item: Item) -> None:
            raise AssertionError("not called")

        with broker, pytest.raises(RemoteError) as info:
            broker.request({"name": 1}, list=unique_name, timeout=SHORT_TIMEOUT)
        assert info.value.type_name == "ValidationError"
        assert info.value.traceback is not None
        assert "ValidationError" in info.value.traceback

    def test_custom_exception_is_only_a_name(self, make_broker, unique_name):
        """A custom exception reaches the caller as a type name in a RemoteError, never as its class."""
        broker = make_broker()

        @broker.subscriber(list=unique_name)
        def pay(body: Any) -> None:
            raise PaymentDeclinedError("card expired")

        with broker, pytest.raises(RemoteError) as info:
            broker.request("x", list=unique_name, timeout=SHORT_TIMEOUT)
        assert type(info.value) is RemoteError
        assert not isinstance(info.value, PaymentDeclinedError)
        assert info.value.type_name == "PaymentDeclinedError"
        assert info.value.remote_message == "card expired"
        assert info.value.__cause__ is None

    def test_exception_with_broken_str_still_reaches_caller(
        self, make_broker, unique_name
    ):
        """A handler exception whose str() fails still gives the caller a RemoteError naming its type."""
        broker = make_broker()

        @broker.subscriber(list=unique_name)
        def handle(body: Any) -> None:
            raise UnprintableError

        with broker, pytest.raises(RemoteError) as info:
            broker.request("x", list=unique_name, timeout=SHORT_TIMEOUT / 4)
        assert info.value.type_name == "UnprintableError"

    @pytest.mark.parametrize("kind", TRANSPORTS)
    def test_no_reply_subscriber_sends_no_error_reply(
        self, make_broker, unique_name, kind
    ):
        """A no_reply subscriber whose handler raises sends nothing: the caller times out."""
        broker = make_broker()
        calls: list[Any] = []

        @broker.subscriber(**{kind: unique_name}, no_reply=True)
        def handle(body: Any) -> None:
            calls.append(body)
            raise ValueError("nobody hears this")

        with broker:
            with pytest.raises(RequestTimeoutError):
                broker.request("x", **{kind: unique_name}, timeout=NO_REPLY_TIMEOUT)
            assert wait_for(lambda: calls == ["x"])


class TestFailFast:
    def test_empty_channel_raises_at_once(self, make_broker, unique_name):
        """request() to a channel nobody subscribes to raises NoSubscriberError at once, not after the timeout."""
        broker = make_broker()
        started = time.monotonic()
        with pytest.raises(NoSubscriberError) as info:
            broker.request("x", channel=unique_name, timeout=LONG_TIMEOUT)
        assert time.monotonic() - started < SHORT_TIMEOUT
        assert info.value.destination == f"channel:{unique_name}"
        assert "pending_requests=0" in repr(broker)

    def test_fail_fast_off_waits_for_the_timeout(self, make_broker, unique_name):
        """With fail_fast=False, request() to an empty channel waits out its timeout."""
        broker = make_broker()
        started = time.monotonic()
        with pytest.raises(RequestTimeoutError):
            broker.request(
                "x", channel=unique_name, timeout=NO_REPLY_TIMEOUT, fail_fast=False
            )
        assert time.monotonic() - started >= NO_REPLY_TIMEOUT


class TestExpiredRequests:
    @pytest.mark.parametrize("kind", QUEUES)
    def test_request_queued_past_its_deadline_is_skipped(
        self, make_broker, unique_name, kind, raw, caplog
    ):
        """A request whose caller stopped waiting before a consumer ran is skipped with a warning, and later requests are answered."""
        if kind == "stream":  # the group must exist before the request is queued
            raw.xgroup_create(unique_name, "redis_rpc", id="$", mkstream=True)
        server, client = make_broker(), make_broker()
        calls: list[str] = []

        @server.subscriber(**{kind: unique_name})
        def handle(body: str) -> str:
            calls.append(body)
            return body

        with pytest.raises(RequestTimeoutError):
            client.request("expired", **{kind: unique_name}, timeout=0.1)
        queued = RedisMessage.from_payload(
            raw.lindex(unique_name, 0)
            if kind == "list"
            else raw.xrange(unique_name)[0][1][b"__data__"]
        )
        assert queued.deadline is not None
        assert queued.accepts_errors
        # The caller's clock ran out; make sure the server's has too.
        assert wait_for(lambda: time.time() > queued.deadline)
        caplog.set_level(logging.WARNING, logger=CONSUMER_LOG)
        with server:
            reply = client.request("live", **{kind: unique_name}, timeout=SHORT_TIMEOUT)
        assert reply.decode() == "live"
        assert calls == ["live"]  # FIFO: the expired one was taken, and skipped, first
        skipped = [r for r in caplog.records if "skipped" in r.getMessage()]
        assert len(skipped) == 1
        assert skipped[0].levelno == logging.WARNING
        assert "stopped waiting" in skipped[0].getMessage()
        if kind == "stream":
            assert raw.xpending(unique_name, "redis_rpc")["pending"] == 0
        else:
            assert raw.llen(unique_name) == 0

    @pytest.mark.parametrize("kind", TRANSPORTS)
    def test_frame_with_past_deadline_gets_no_reply(
        self, make_broker, unique_name, kind, raw, caplog
    ):
        """A frame whose deadline has passed is never handled and answered with nothing, not even an error."""
        broker = make_broker()
        calls: list[str] = []

        @broker.subscriber(**{kind: unique_name})
        def handle(body: str) -> str:
            calls.append(body)
            return body

        inbox = f"{unique_name}-inbox"
        replies = raw.pubsub()
        replies.subscribe(inbox)
        assert replies.get_message(timeout=SHORT_TIMEOUT)["type"] == "subscribe"
        frame = build_frame(
            "expired",
            correlation_id="cid-expired",
            reply_to=inbox,
            headers={ACCEPT_ERRORS: "1", DEADLINE: f"{time.time() - 60:.3f}"},
        )
        caplog.set_level(logging.WARNING, logger=CONSUMER_LOG)
        with broker:
            send_raw(raw, kind, unique_name, frame)
            reply = broker.request("live", **{kind: unique_name}, timeout=SHORT_TIMEOUT)
            assert reply.decode() == "live"
        assert calls == ["live"]
        assert replies.get_message(timeout=0.1) is None
        replies.close()
        assert any(
            "skipped" in r.getMessage() and "cid-expired" in r.getMessage()
            for r in caplog.records
        )
        if kind == "stream":
            assert raw.xpending(unique_name, "redis_rpc")["pending"] == 0

    def test_request_without_timeout_is_never_skipped(self, make_broker, unique_name):
        """A request sent with timeout=None carries no deadline and is always handled."""
        server, client = make_broker(), make_broker()
        seen: list[RedisMessage] = []

        @server.subscriber(list=unique_name)
        def handle(body: str, message: RedisMessage) -> str:
            seen.append(message)
            return body

        with server, client:
            assert client.request("x", list=unique_name, timeout=None).decode() == "x"
        assert seen[0].deadline is None
        assert seen[0].accepts_errors


class TestSize:
    @pytest.mark.parametrize("action", ["publish", "request"])
    @pytest.mark.parametrize("kind", QUEUES)
    def test_oversized_send_is_refused_before_sending(
        self, make_broker, unique_name, raw, action, kind
    ):
        """publish() and request() of a frame over max_message_size raise MessageTooLargeError and send nothing."""
        broker = make_broker(max_message_size=SMALL_LIMIT)
        with pytest.raises(MessageTooLargeError, match="max_message_size"):
            getattr(broker, action)(BIG, **{kind: unique_name})
        assert raw.exists(unique_name) == 0
        assert "pending_requests=0" in repr(broker)

    def test_oversized_request_to_channel_is_refused(self, make_broker, unique_name):
        """request() of an oversized frame on a channel raises MessageTooLargeError, not NoSubscriberError."""
        broker = make_broker(max_message_size=SMALL_LIMIT)
        with pytest.raises(MessageTooLargeError):
            broker.request(BIG, channel=unique_name)

    def test_default_limit_is_eight_mebibytes(self, make_broker, unique_name, raw):
        """By default a frame over 8 MiB is refused, and None lifts the limit."""
        body = b"x" * (8 * 1024 * 1024)
        with pytest.raises(MessageTooLargeError):
            make_broker().publish(body, list=unique_name)
        assert raw.exists(unique_name) == 0
        assert make_broker(max_message_size=None).publish(body, list=unique_name) == 1

    @pytest.mark.parametrize("kind", TRANSPORTS)
    def test_oversized_incoming_is_not_handled(
        self, make_broker, unique_name, raw, kind, caplog
    ):
        """An incoming frame over max_message_size is rejected with a warning, and the consumer goes on serving."""
        broker = make_broker(max_message_size=SMALL_LIMIT)
        calls: list[str] = []

        @broker.subscriber(**{kind: unique_name})
        def handle(body: str) -> str:
            calls.append(body)
            return body

        caplog.set_level(logging.WARNING, logger=CONSUMER_LOG)
        with broker:
            send_raw(raw, kind, unique_name, build_frame(BIG, correlation_id="big"))
            reply = broker.request(
                "small", **{kind: unique_name}, timeout=SHORT_TIMEOUT
            )
        assert reply.decode() == "small"
        assert calls == ["small"]
        assert any("rejected" in r.getMessage() for r in caplog.records)
        if kind == "stream":
            assert raw.xpending(unique_name, "redis_rpc")["pending"] == 0
            dead = raw.xrange(f"{unique_name}:dead")
            assert len(dead) == 1
            assert b"MessageTooLargeError" in dead[0][1][b"error"]

    @pytest.mark.parametrize("kind", TRANSPORTS)
    def test_oversized_incoming_request_gets_error_reply(
        self, make_broker, unique_name, kind
    ):
        """A request over the server's limit is not handled, and its caller gets RemoteError("MessageTooLargeError") rather than a timeout."""
        server = make_broker(max_message_size=SMALL_LIMIT)
        client = make_broker(max_message_size=None)
        calls: list[str] = []

        @server.subscriber(**{kind: unique_name})
        def handle(body: str) -> str:
            calls.append(body)
            return body

        with server, client:
            with pytest.raises(RemoteError) as info:
                client.request(BIG, **{kind: unique_name}, timeout=SHORT_TIMEOUT)
            reply = client.request(
                "small", **{kind: unique_name}, timeout=SHORT_TIMEOUT
            )
        assert info.value.type_name == "MessageTooLargeError"
        assert str(SMALL_LIMIT) in info.value.remote_message
        assert reply.decode() == "small"
        assert calls == ["small"]

    def test_oversized_result_becomes_error_reply(self, make_broker, unique_name):
        """A handler result over max_message_size reaches the caller as RemoteError("MessageTooLargeError")."""
        broker = make_broker(max_message_size=SMALL_LIMIT)

        @broker.subscriber(list=unique_name)
        def handle(body: str) -> str:
            return BIG if body == "big" else body

        with broker:
            with pytest.raises(RemoteError) as info:
                broker.request("big", list=unique_name, timeout=SHORT_TIMEOUT)
            reply = broker.request("small", list=unique_name, timeout=SHORT_TIMEOUT)
        assert info.value.type_name == "MessageTooLargeError"
        assert "max_message_size" in info.value.remote_message
        assert reply.decode() == "small"

    def test_oversized_reply_is_refused_by_caller(self, make_broker, unique_name):
        """A reply over the caller's max_message_size makes request() raise MessageTooLargeError."""
        server = make_broker(max_message_size=None)
        client = make_broker(max_message_size=SMALL_LIMIT)

        @server.subscriber(list=unique_name)
        def handle(body: str) -> str:
            return BIG if body == "big" else body

        with server, client:
            with pytest.raises(MessageTooLargeError, match="reply"):
                client.request("big", list=unique_name, timeout=SHORT_TIMEOUT)
            assert "pending_requests=0" in repr(client)
            reply = client.request("small", list=unique_name, timeout=SHORT_TIMEOUT)
        assert reply.decode() == "small"


def test_consumer_survives_a_burst_of_failures(make_broker, unique_name):
    """Error replies for many bad requests in a row leave the consumer answering good ones."""
    broker = make_broker()

    @broker.subscriber(list=unique_name)
    def handle(item: Item) -> int:
        if item.price < 0:
            raise ValueError("negative price")
        return item.price

    with broker:
        kinds = []
        for body in [{"name": "a"}, {"name": "b", "price": -1}] * 5:
            with pytest.raises(RemoteError) as info:
                broker.request(body, list=unique_name, timeout=SHORT_TIMEOUT)
            kinds.append(info.value.type_name)
        assert kinds == ["ValidationError", "ValueError"] * 5
        reply = broker.request(Item("c", 7), list=unique_name, timeout=SHORT_TIMEOUT)
        assert reply.decode() == 7
