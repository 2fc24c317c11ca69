"""Tracing with ``redis_rpc.opentelemetry.TelemetryHook``, and through FastStream's middleware.

Spans go to the real OpenTelemetry SDK and an in-memory exporter. Our
brokers and FastStream's ``RedisTelemetryMiddleware`` share one tracer
provider, so a trace that crosses both shows up whole in one exporter.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from typing import Any

import faststream.redis
import pytest

from tests.conftest import LONG_TIMEOUT, SHORT_TIMEOUT
from tests.helpers import wait_for
from tests.integration.test_interop_faststream import FastStreamService, run_async

try:
    from faststream.redis.opentelemetry import RedisTelemetryMiddleware
    from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
        InMemorySpanExporter,
    )
    from opentelemetry.trace import SpanKind, StatusCode

    from redis_rpc.opentelemetry import TelemetryHook
except ImportError:
    if os.environ.get("CI"):  # the test extra installs it: CI must not skip
        raise
    pytest.skip(
        "OpenTelemetry is not installed (pip install -e '.[test]')",
        allow_module_level=True,
    )

from redis_rpc import RedisBroker, RedisMessage, RemoteError
from redis_rpc.errors import NoSubscriberError

MakeBroker = Callable[..., RedisBroker]


class Tracing:
    """A tracer provider whose finished spans are kept in memory."""

    def __init__(self) -> None:
        self.exporter = InMemorySpanExporter()
        self.provider = TracerProvider()
        self.provider.add_span_processor(SimpleSpanProcessor(self.exporter))

    def hook(self) -> TelemetryHook:
        return TelemetryHook(tracer_provider=self.provider)

    def middleware(self) -> RedisTelemetryMiddleware:
        return RedisTelemetryMiddleware(tracer_provider=self.provider)

    def spans(self) -> list[ReadableSpan]:
        return list(self.exporter.get_finished_spans())

    def span(self, name: str) -> ReadableSpan:
        """The one finished span called *name*, waiting a little for it."""
        found = wait_for(lambda: [s for s in self.spans() if s.name == name])
        assert len(found) == 1, (name, [s.name for s in self.spans()])
        return found[0]

    def wait_for_count(self, count: int) -> list[ReadableSpan]:
        """The finished spans once there are *count*: FastStream ends some after replying."""
        spans = (
            wait_for(lambda: len(self.spans()) >= count, LONG_TIMEOUT) and self.spans()
        )
        assert len(spans) == count, [s.name for s in self.spans()]
        return spans


@pytest.fixture
def tracing() -> Iterator[Tracing]:
    tracing = Tracing()
    yield tracing
    tracing.provider.shutdown()


@pytest.fixture
def faststream_service(redis_url: str) -> Iterator[Callable[[], FastStreamService]]:
    """FastStream services on the private server, stopped after the test."""
    services: list[FastStreamService] = []

    def make() -> FastStreamService:
        services.append(FastStreamService(redis_url))
        return services[-1]

    yield make
    for service in services:
        service.stop()


def parent_of(span: ReadableSpan) -> int | None:
    return None if span.parent is None else span.parent.span_id


def is_child(child: ReadableSpan, parent: ReadableSpan) -> bool:
    """Whether *child* is in *parent*'s trace, directly under it."""
    return (
        child.context.trace_id == parent.context.trace_id
        and parent_of(child) == parent.context.span_id
    )


def ancestry(span: ReadableSpan, spans: Sequence[ReadableSpan]) -> list[str]:
    """The names from *span* up to its trace's root, following parents among *spans*."""
    by_id = {s.context.span_id: s for s in spans}
    names = [span.name]
    while (parent := by_id.get(parent_of(span) or 0)) is not None:
        names.append(parent.name)
        span = parent
    return names


def tree(spans: Sequence[ReadableSpan]) -> str:
    """The spans as an indented tree, kind and status shown: for the README, and for failures."""
    children: dict[int | None, list[ReadableSpan]] = {}
    for span in sorted(spans, key=lambda s: s.start_time or 0):
        children.setdefault(parent_of(span), []).append(span)
    lines: list[str] = []

    def walk(parent: int | None, depth: int) -> None:
        for span in children.get(parent, []):
            status = "" if span.status.status_code is StatusCode.UNSET else " ERROR"
            lines.append(f"{'  ' * depth}{span.name} [{span.kind.name}]{status}")
            walk(span.context.span_id, depth + 1)

    walk(None, 0)
    return "\n".join(lines)


class TestOurCallerOurServer:
    """Both sides are redis_rpc brokers with a TelemetryHook."""

    def test_process_span_is_child_of_request_span(
        self, make_broker: MakeBroker, tracing: Tracing, unique_name: str
    ):
        """A handler's process span is the child of its caller's request span, with the messaging attributes."""
        broker = make_broker(hooks=[tracing.hook()])

        @broker.subscriber(list=unique_name)
        def square(n: int) -> int:
            return n * n

        broker.start()
        broker.request(7, list=unique_name, correlation_id="c-1", timeout=LONG_TIMEOUT)

        request = tracing.span(f"{unique_name} publish")
        process = tracing.span(f"{unique_name} process")
        assert is_child(process, request)
        assert request.kind is SpanKind.PRODUCER
        assert process.kind is SpanKind.CONSUMER
        assert dict(request.attributes or {}) == {
            "messaging.system": "redis",
            "messaging.destination.name": unique_name,
            "messaging.message.conversation_id": "c-1",
            "messaging.operation": "publish",
        }
        assert dict(process.attributes or {}) == {
            "messaging.system": "redis",
            "messaging.destination.name": unique_name,
            "messaging.destination_publish.name": unique_name,
            "messaging.message.conversation_id": "c-1",
            # No message_id header from a redis_rpc caller: the correlation id.
            "messaging.message.id": "c-1",
            "messaging.message.payload_size_bytes": 1,
            "messaging.operation": "process",
        }
        assert request.status.status_code is StatusCode.UNSET
        assert process.status.status_code is StatusCode.UNSET
        # Sending the reply has a span of its own, under the handler's, as in FastStream.
        (reply,) = [s for s in tracing.spans() if s not in (request, process)]
        assert is_child(reply, process)
        assert reply.kind is SpanKind.PRODUCER
        reply_channel = str((reply.attributes or {})["messaging.destination.name"])
        assert reply.name == f"{reply_channel} publish"
        assert dict(reply.attributes or {}) == {
            "messaging.system": "redis",
            "messaging.destination.name": reply_channel,
            "messaging.message.conversation_id": "c-1",
            "messaging.operation": "publish",
        }
        # The request's span lasts until the reply is in: around the handler's.
        order = [
            request.start_time,
            process.start_time,
            process.end_time,
            request.end_time,
        ]
        assert all(order), order
        assert order == sorted(t or 0 for t in order)

    def test_failing_handler_marks_both_spans(
        self, make_broker: MakeBroker, tracing: Tracing, unique_name: str
    ):
        """A handler exception is recorded on the process span, and both spans get an error status."""
        broker = make_broker(hooks=[tracing.hook()])

        @broker.subscriber(channel=unique_name)
        def refuse(body: str) -> None:
            raise ValueError("not today")

        broker.start()
        with pytest.raises(RemoteError):
            broker.request("hi", channel=unique_name, timeout=LONG_TIMEOUT)

        request = tracing.span(f"{unique_name} publish")
        process = tracing.span(f"{unique_name} process")
        assert is_child(process, request)
        assert process.status.status_code is StatusCode.ERROR
        assert process.status.description == "ValueError: not today"
        assert (process.attributes or {})["error.type"] == "ValueError"
        (recorded,) = process.events
        assert recorded.name == "exception"
        assert (recorded.attributes or {})["exception.type"] == "ValueError"
        assert "not today" in str((recorded.attributes or {})["exception.stacktrace"])
        assert request.status.status_code is StatusCode.ERROR
        assert (request.attributes or {})["error.type"] == "RemoteError"

    def test_invalid_body_fails_the_process_span(
        self, make_broker: MakeBroker, tracing: Tracing, unique_name: str
    ):
        """A body that does not fit the handler's types ends its process span with an error, as in FastStream."""
        broker = make_broker(hooks=[tracing.hook()])

        @broker.subscriber(list=unique_name)
        def double(n: int) -> int:
            return 2 * n

        broker.start()
        with pytest.raises(RemoteError):
            broker.request("not a number", list=unique_name, timeout=LONG_TIMEOUT)

        process = tracing.span(f"{unique_name} process")
        assert process.status.status_code is StatusCode.ERROR
        assert (process.attributes or {})["error.type"] == "ValidationError"

    def test_request_without_subscriber_fails_its_span(
        self, make_broker: MakeBroker, tracing: Tracing, unique_name: str
    ):
        """A request that nobody receives ends its span with an error status."""
        broker = make_broker(hooks=[tracing.hook()])
        with pytest.raises(NoSubscriberError):
            broker.request("hi", channel=unique_name, timeout=SHORT_TIMEOUT)

        request = tracing.span(f"{unique_name} publish")
        assert request.status.status_code is StatusCode.ERROR
        assert (request.attributes or {})["error.type"] == "NoSubscriberError"

    def test_published_message_continues_the_trace(
        self, make_broker: MakeBroker, tracing: Tracing, unique_name: str
    ):
        """publish() puts its span's context in the message; the handler's span is its child."""
        broker = make_broker(hooks=[tracing.hook()])
        handled: Future[dict[str, Any]] = Future()

        @broker.subscriber(stream=unique_name)
        def collect(body: str) -> None:
            handled.set_result({})

        broker.start()
        broker.publish("event", stream=unique_name)
        handled.result(LONG_TIMEOUT)

        publish = tracing.span(f"{unique_name} publish")
        process = tracing.span(f"{unique_name} process")
        assert is_child(process, publish)
        assert (publish.attributes or {})["messaging.message.conversation_id"]

    def test_message_without_context_starts_a_trace(
        self, make_broker: MakeBroker, tracing: Tracing, unique_name: str
    ):
        """A message sent without a trace context gets a process span with no parent."""
        server = make_broker(hooks=[tracing.hook()])

        @server.subscriber(list=unique_name)
        def echo(body: str) -> str:
            return body

        server.start()
        make_broker().request("hi", list=unique_name, timeout=LONG_TIMEOUT)

        process = tracing.span(f"{unique_name} process")
        assert process.parent is None
        (reply,) = [s for s in tracing.spans() if s is not process]
        assert is_child(reply, process)

    def test_handler_requests_are_children_of_its_span(
        self, make_broker: MakeBroker, tracing: Tracing, unique_name: str
    ):
        """A request made inside a handler is a child of that handler's process span."""
        broker = make_broker(hooks=[tracing.hook()], max_workers=2)
        inner = f"{unique_name}-inner"

        @broker.subscriber(list=inner)
        def double(n: int) -> int:
            return 2 * n

        @broker.subscriber(list=unique_name)
        def outer(n: int) -> int:
            return int(broker.request(n, list=inner, timeout=LONG_TIMEOUT).decode()) + 1

        broker.start()
        assert broker.request(5, list=unique_name, timeout=LONG_TIMEOUT).decode() == 11

        # Two requests, two processes, and the two replies' spans.
        spans = tracing.wait_for_count(6)
        assert ancestry(tracing.span(f"{inner} process"), spans) == [
            f"{inner} process",
            f"{inner} publish",
            f"{unique_name} process",
            f"{unique_name} publish",
        ], tree(spans)


class TestWithFastStream:
    """One side is a FastStream broker with its RedisTelemetryMiddleware."""

    def test_faststream_subscriber_continues_our_trace(
        self,
        make_broker: MakeBroker,
        faststream_service: Callable[[], FastStreamService],
        tracing: Tracing,
        unique_name: str,
    ):
        """A FastStream subscriber's process span is the child of our request span."""
        service = faststream_service()
        service.broker.add_middleware(tracing.middleware())

        @service.broker.subscriber(list=unique_name)
        async def shout(body: str) -> str:
            return body.upper()

        service.start()
        broker = make_broker(hooks=[tracing.hook()])
        reply = broker.request(
            "hi", list=unique_name, correlation_id="c-2", timeout=LONG_TIMEOUT
        )
        assert reply.decode() == "HI"

        # Ours: the request; FastStream's: its process span and its reply's publish span.
        spans = tracing.wait_for_count(3)
        request = next(s for s in spans if s.name == f"{unique_name} publish")
        theirs = tracing.span(f"{unique_name} process")
        assert is_child(theirs, request), tree(spans)
        assert {s.context.trace_id for s in spans} == {request.context.trace_id}
        # The attributes FastStream sets on its side are named as ours.
        attributes = dict(theirs.attributes or {})
        assert attributes["messaging.system"] == "redis"
        assert attributes["messaging.message.conversation_id"] == "c-2"
        assert attributes["messaging.operation"] == "process"
        assert theirs.kind is SpanKind.CONSUMER

    def test_our_handler_continues_faststream_trace(
        self,
        make_broker: MakeBroker,
        redis_url: str,
        tracing: Tracing,
        unique_name: str,
    ):
        """A FastStream request's trace runs through our handler's span and back to its span for the reply."""
        broker = make_broker(hooks=[tracing.hook()])

        @broker.subscriber(channel=unique_name)
        def shout(body: str) -> str:
            return body.upper()

        broker.start()

        async def call() -> Any:
            async with faststream.redis.RedisBroker(
                redis_url, middlewares=[tracing.middleware()]
            ) as client:
                response = await client.request(
                    "hi", channel=unique_name, timeout=LONG_TIMEOUT
                )
                return await response.decode()

        assert run_async(call()) == "HI"

        # FastStream's: create, publish, and its reply's process; ours: process and reply.
        spans = tracing.wait_for_count(5)
        ours = next(
            s
            for s in spans
            if s.name == f"{unique_name} process"
            and s.instrumentation_scope
            and s.instrumentation_scope.name == "redis_rpc.opentelemetry"
        )
        created = tracing.span(f"{unique_name} create")
        assert is_child(ours, created), tree(spans)
        assert {s.context.trace_id for s in spans} == {created.context.trace_id}
        # FastStream makes a process span for the reply: a child of our span
        # for sending it, through the trace context our reply carries.
        (sent,) = [s for s in spans if is_child(s, ours)]
        assert sent.kind is SpanKind.PRODUCER
        (reply,) = [s for s in spans if s.kind is SpanKind.CONSUMER and s is not ours]
        assert is_child(reply, sent), tree(spans)

    def test_faststream_publish_reaches_our_handler_span(
        self,
        make_broker: MakeBroker,
        redis_url: str,
        tracing: Tracing,
        unique_name: str,
    ):
        """A message published by FastStream with its middleware is handled under its trace."""
        broker = make_broker(hooks=[tracing.hook()])
        handled: Future[str] = Future()

        @broker.subscriber(list=unique_name)
        def collect(body: str, message: RedisMessage) -> None:
            handled.set_result(message.correlation_id)

        broker.start()

        async def send() -> None:
            async with faststream.redis.RedisBroker(
                redis_url, middlewares=[tracing.middleware()]
            ) as client:
                await client.publish("event", list=unique_name)

        run_async(send())
        correlation_id = handled.result(LONG_TIMEOUT)

        created = tracing.span(f"{unique_name} create")
        ours = tracing.span(f"{unique_name} process")
        assert is_child(ours, created)
        # FastStream 0.7 sends no message_id header: the span names the message
        # by its correlation id, where FastStream's makes one up.
        assert (ours.attributes or {})["messaging.message.id"] == correlation_id

    def test_chain_through_faststream_is_one_trace(
        self,
        make_broker: MakeBroker,
        faststream_service: Callable[[], FastStreamService],
        tracing: Tracing,
        unique_name: str,
    ):
        """redis_rpc caller, FastStream service, redis_rpc service and back: one unbroken trace."""
        prices, quotes = f"{unique_name}-prices", f"{unique_name}-quotes"
        pricing = make_broker(hooks=[tracing.hook()])

        @pricing.subscriber(list=prices)
        def price(item: str) -> float:
            return 9.5

        pricing.start()
        service = faststream_service()
        service.broker.add_middleware(tracing.middleware())

        @service.broker.subscriber(list=quotes)
        async def quote(item: str) -> dict[str, Any]:
            reply = await service.broker.request(
                item, list=prices, timeout=LONG_TIMEOUT
            )
            return {"item": item, "price": await reply.decode()}

        service.start()
        caller = make_broker(hooks=[tracing.hook()])
        reply = caller.request("tea", list=quotes, timeout=LONG_TIMEOUT)
        assert reply.decode() == {"item": "tea", "price": 9.5}

        # Ours: the request, the prices process and its reply; FastStream's: quotes
        # process, prices create and publish, the price reply's process, the quote reply's publish.
        spans = tracing.wait_for_count(8)
        assert len({s.context.trace_id for s in spans}) == 1, tree(spans)
        inner = next(
            s
            for s in spans
            if s.name == f"{prices} process"
            and s.instrumentation_scope
            and s.instrumentation_scope.name == "redis_rpc.opentelemetry"
        )
        assert ancestry(inner, spans) == [
            f"{prices} process",
            f"{prices} create",
            f"{quotes} process",
            f"{quotes} publish",
        ], tree(spans)
