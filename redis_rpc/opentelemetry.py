"""OpenTelemetry tracing: a broker hook that makes spans and carries the trace context.

Install with ``pip install "redis-rpc[otel]"``; ``import redis_rpc`` never
imports this module, so OpenTelemetry is never a dependency of the broker.

The spans, their names, kinds and attributes are those of FastStream's
``RedisTelemetryMiddleware`` (the messaging semantic conventions as it
uses them), and the trace context travels the same way: W3C
``traceparent`` and ``tracestate`` headers (and ``baggage``, when there is
any) among the message's headers. A trace therefore runs unbroken across
redis_rpc and FastStream services, in both directions:

- ``publish()`` and ``request()``: a ``"<destination> publish"`` span of
  kind PRODUCER, whose context goes out in the message's headers. A
  request's span lasts until the reply is in, as FastStream's does.
- A handler: a ``"<destination> process"`` span of kind CONSUMER, the
  child of the context in the message's headers (a new trace without
  one), current while the handler runs, so that the handler's own
  requests are its children. Its ``messaging.message.id`` is the
  message's ``message_id`` header (FastStream senders set one), or else
  its correlation id.
- Its reply: a ``"<reply channel> publish"`` span of kind PRODUCER, the
  child of the handler's, as FastStream makes for its replies. Its
  context goes out with the reply, so that a FastStream caller's span
  for the reply joins the trace too.

The headers are injected and extracted by OpenTelemetry's global
propagator, W3C trace context and baggage unless the application set
another; FastStream reads and writes only the W3C headers.
"""

from __future__ import annotations

import contextlib
import uuid
from typing import TYPE_CHECKING, Any

import redis_rpc

try:
    from opentelemetry import context, propagate, trace
except ImportError as exc:  # the optional extra is not installed
    msg = 'redis_rpc.opentelemetry needs OpenTelemetry: pip install "redis-rpc[otel]".'
    raise ImportError(msg) from exc

if TYPE_CHECKING:
    from collections.abc import Iterator
    from contextlib import AbstractContextManager

    from redis_rpc import Event

__all__ = ["TelemetryHook"]

# FastStream's middleware declares this schema version; the attribute names follow it.
_SCHEMA_URL = "https://opentelemetry.io/schemas/1.11.0"
_SYSTEM = "redis"


class TelemetryHook:
    """Traces every publish, request and process of a broker: ``RedisBroker(hooks=[TelemetryHook()])``.

    One instance may serve several brokers, and is safe to use from any
    number of threads at once.

    Args:
        tracer_provider: Where the spans go; OpenTelemetry's global tracer
            provider by default.
    """

    def __init__(self, *, tracer_provider: trace.TracerProvider | None = None) -> None:
        self._tracer = trace.get_tracer(
            __name__,
            redis_rpc.__version__,
            tracer_provider,
            schema_url=_SCHEMA_URL,
        )

    def __call__(self, event: Event) -> AbstractContextManager[object]:
        if event.kind == "process":
            return self._process(event)
        return self._send(event)  # a publish, a request, or a handler's reply

    @contextlib.contextmanager
    def _send(self, event: Event) -> Iterator[None]:
        """A publish or a request: a PRODUCER span, whose context rides in the headers."""
        name = _name(event.destination)
        attributes = {
            "messaging.system": _SYSTEM,
            "messaging.destination.name": name,
            "messaging.message.conversation_id": event.correlation_id,
            "messaging.operation": "publish",
        }
        with self._tracer.start_as_current_span(
            f"{name} publish",
            kind=trace.SpanKind.PRODUCER,
            attributes=attributes,
            record_exception=False,  # the error never passes through a hook
            set_status_on_exception=False,
        ) as span:
            propagate.inject(event.headers)
            yield
            _finish(span, event)

    @contextlib.contextmanager
    def _process(self, event: Event) -> Iterator[None]:
        """A handler: a CONSUMER span under the sender's, current while the handler runs."""
        name = _name(event.destination)
        attributes: dict[str, Any] = {
            "messaging.system": _SYSTEM,
            "messaging.destination.name": name,
            "messaging.destination_publish.name": name,
            "messaging.message.conversation_id": event.correlation_id,
            "messaging.operation": "process",
        }
        if event.message is not None:
            attributes["messaging.message.payload_size_bytes"] = len(event.message.body)
        message_id = event.headers.get("message_id")
        attributes["messaging.message.id"] = (
            message_id
            if isinstance(message_id, str) and message_id
            else event.correlation_id or uuid.uuid4().hex  # FastStream makes one up
        )
        # The sender's context becomes current, not only the span's parent, so
        # that its baggage reaches the handler and the handler's own requests.
        token = context.attach(propagate.extract(event.headers))
        try:
            with self._tracer.start_as_current_span(
                f"{name} process",
                kind=trace.SpanKind.CONSUMER,
                attributes=attributes,
                record_exception=False,
                set_status_on_exception=False,
            ) as span:
                propagate.inject(event.reply_headers)
                yield
                _finish(span, event)
        finally:
            context.detach(token)


def _name(destination: str) -> str:
    """The name alone, as FastStream puts it in span names: ``orders`` from ``list:orders``."""
    return destination.partition(":")[2] or destination


def _finish(span: trace.Span, event: Event) -> None:
    """Mark the span failed when the operation was, recording the exception."""
    if event.error is None:
        return
    span.set_attribute("error.type", type(event.error).__name__)
    span.record_exception(event.error)
    span.set_status(
        trace.Status(
            trace.StatusCode.ERROR, f"{type(event.error).__name__}: {event.error}"
        )
    )
