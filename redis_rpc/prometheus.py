"""Prometheus metrics for a broker, as a hook: ``RedisBroker(hooks=[PrometheusHook()])``.

The metrics have the names, label names and label values of FastStream's
Prometheus middleware for Redis wherever the concept is the same, so that a
dashboard or alert built for FastStream services shows redis_rpc services
too, side by side. That is why the default prefix is ``faststream``.

This is the only module that imports ``prometheus_client``: it is the
``prometheus`` extra, never a runtime dependency, and ``import redis_rpc``
never loads it.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, TypeVar

import attrs

try:
    from prometheus_client import REGISTRY, Counter, Gauge, Histogram
except ImportError as exc:  # the optional extra is not installed
    msg = 'redis_rpc.prometheus needs prometheus_client: pip install "redis-rpc[prometheus]".'
    raise ImportError(msg) from exc

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Mapping, Sequence
    from contextlib import AbstractContextManager

    from prometheus_client import CollectorRegistry
    from prometheus_client.metrics import MetricWrapperBase

    from redis_rpc._hooks import Event

    M = TypeVar("M", bound=MetricWrapperBase)

    # A handler's or destination's name, and the custom label values.
    _Key = tuple[str, tuple[str, ...]]

__all__ = ["PrometheusHook"]

# The value of the "broker" label, FastStream's name for the messaging system.
BROKER = "redis"

# Message sizes in bytes: powers of four from 16 B to 16 MiB, FastStream's buckets.
DEFAULT_SIZE_BUCKETS: tuple[float, ...] = (
    *(4.0**n * 16 for n in range(11)),
    float("inf"),
)

# Labels the hook sets itself, which custom_labels cannot name.
_OWN_LABELS = frozenset(
    ("app_name", "broker", "handler", "destination", "status", "exception_type")
)

# What a failed publish or request is labelled with in exception_type,
# where FastStream raises a different class for the same failure.
_EXCEPTION_TYPES = {"timeout": "TimeoutError"}


@attrs.frozen
class _Handled:
    """The labelled metrics of one handler."""

    labels: dict[str, str]
    received: Counter = attrs.field(kw_only=True)
    size: Histogram = attrs.field(kw_only=True)
    in_process: Gauge = attrs.field(kw_only=True)
    duration: Histogram = attrs.field(kw_only=True)
    # By status, added once one is counted: FastStream shows no series at 0.
    statuses: dict[str, Counter] = attrs.field(factory=dict, kw_only=True)


@attrs.frozen
class _Sent:
    """The labelled metrics of one destination of publishes and requests."""

    labels: dict[str, str]
    duration: Histogram = attrs.field(kw_only=True)
    statuses: dict[str, Counter] = attrs.field(factory=dict, kw_only=True)


class PrometheusHook:
    """Counters, gauges and latency histograms of every publish, request and process.

    Pass it to a broker, ``RedisBroker(url, hooks=[PrometheusHook()])``; one
    hook may serve several brokers, and two hooks on one registry with the
    same prefix share its metrics, as FastStream's middlewares do. Safe to
    use from any number of threads at once.

    Named for what it is in our API, a hook, as FastStream's
    ``RedisPrometheusMiddleware`` is named for its place in FastStream's.

    The metrics, with the prefix ``faststream`` and the labels ``app_name``
    and ``broker`` (always ``"redis"``) on each, plus *custom_labels*:

    * ``faststream_received_messages_total``, ``..._received_messages_size_bytes``
      (the body's length), ``..._received_messages_in_process``,
      ``..._received_processed_messages_total`` (label ``status``: ``acked``
      or ``error``), ``..._received_processed_messages_duration_seconds`` and
      ``..._received_processed_messages_exceptions_total`` (label
      ``exception_type``) and ``..._received_messages_dropped_total``
      (channel messages dropped unhandled, as ``SubscriberStats.dropped``;
      FastStream has no such metric), all labelled ``handler`` with the
      subscribed name;
    * ``faststream_published_messages_total`` (``status``: ``success`` or
      ``error``), ``..._published_messages_duration_seconds`` and
      ``..._published_messages_exceptions_total``, labelled ``destination``
      with the channel, list or stream name. A ``request()`` counts here as
      one publish that lasts until its reply is in, as FastStream's does;
      replies sent by handlers are not counted, in FastStream neither.

    ``exception_type`` is the exception's class name, except that a request
    that timed out says ``TimeoutError``, as FastStream's does, rather than
    ``RequestTimeoutError``. A body that does not fit the handler's types,
    or that its content type cannot decode, counts as FastStream counts it:
    received, processed with ``status="error"``, and an exception of its
    type (``ValidationError``, ``MessageDecodeError``). Where we differ:
    messages that never reach the handler's parameters (a frame that cannot
    be read, too large, expired or refused) are not counted here but in
    ``broker.stats()``; FastStream's ``nacked``, ``rejected`` and
    ``skipped`` statuses never occur; and a pattern subscriber is labelled
    with its pattern, not with each channel.

    Args:
        registry: Where the metrics are registered; prometheus_client's
            default registry when ``None``.
        app_name: The value of the ``app_name`` label; *metrics_prefix* by
            default, as in FastStream. Set it to tell services apart.
        metrics_prefix: The start of every metric's name.
        received_messages_size_buckets: Buckets of the size histogram, in bytes.
        custom_labels: More labels: a fixed string, or a function of the
            ``Event`` that returns the value.

    Raises:
        ValueError: *custom_labels* names a label of the hook's own, or
            *registry* already has a metric of one of these names that is
            of another type or has other labels.
    """

    def __init__(
        self,
        registry: CollectorRegistry | None = None,
        *,
        app_name: str | None = None,
        metrics_prefix: str = "faststream",
        received_messages_size_buckets: Sequence[float] | None = None,
        custom_labels: Mapping[str, str | Callable[[Event], str]] | None = None,
    ) -> None:
        self._registry = REGISTRY if registry is None else registry
        self._prefix = metrics_prefix
        self._app_name = metrics_prefix if app_name is None else app_name
        self._custom_labels = dict(custom_labels or {})
        if taken := sorted(_OWN_LABELS.intersection(self._custom_labels)):
            msg = (
                f"custom_labels cannot name the hook's own labels: {', '.join(taken)}."
            )
            raise ValueError(msg)
        extra = tuple(self._custom_labels)
        on_handler = ("app_name", "broker", "handler", *extra)
        to_destination = ("app_name", "broker", "destination", *extra)
        # Labelled metrics by name and custom label values, looked up once:
        # labels() takes a lock and checks its arguments on every call.
        self._handlers: dict[_Key, _Handled] = {}
        self._destinations: dict[_Key, _Sent] = {}

        self._received = self._metric(
            Counter,
            "received_messages_total",
            "Messages taken by subscribers, by handler.",
            on_handler,
        )
        self._received_size = self._metric(
            Histogram,
            "received_messages_size_bytes",
            "Body sizes of the messages taken, in bytes.",
            on_handler,
            buckets=tuple(received_messages_size_buckets or DEFAULT_SIZE_BUCKETS),
        )
        self._in_process = self._metric(
            Gauge,
            "received_messages_in_process",
            "Messages whose handler is running now.",
            on_handler,
        )
        self._processed = self._metric(
            Counter,
            "received_processed_messages_total",
            "Messages handled, by handler and status.",
            (*on_handler[:3], "status", *extra),
        )
        self._process_duration = self._metric(
            Histogram,
            "received_processed_messages_duration_seconds",
            "How long handlers ran, in seconds.",
            on_handler,
        )
        self._dropped = self._metric(
            Counter,
            "received_messages_dropped_total",
            "Channel messages dropped unhandled: the subscriber's queue was full, or the broker closed.",
            on_handler,
        )
        self._process_exceptions = self._metric(
            Counter,
            "received_processed_messages_exceptions_total",
            "Handlers that raised, by handler and exception class.",
            (*on_handler[:3], "exception_type", *extra),
        )
        self._published = self._metric(
            Counter,
            "published_messages_total",
            "Messages published and requests sent, by destination and status.",
            (*to_destination[:3], "status", *extra),
        )
        self._publish_duration = self._metric(
            Histogram,
            "published_messages_duration_seconds",
            "How long publishes took, and requests until their reply, in seconds.",
            to_destination,
        )
        self._publish_exceptions = self._metric(
            Counter,
            "published_messages_exceptions_total",
            "Publishes and requests that failed, by destination and exception class.",
            (*to_destination[:3], "exception_type", *extra),
        )

    def __repr__(self) -> str:
        return f"<PrometheusHook prefix={self._prefix!r} app_name={self._app_name!r}>"

    def __call__(self, event: Event) -> AbstractContextManager[None]:
        """The context to run *event*'s publish, request or process in."""
        if event.kind == "process":
            return self._process(event)
        if event.kind == "reply":  # FastStream does not count replies either
            return contextlib.nullcontext()
        return self._publish(event)

    def dropped(self, event: Event, count: int) -> None:
        """Count *count* channel messages of *event*'s subscriber dropped unhandled; the broker calls it."""
        # Labelled on the first drop only: FastStream shows no series at 0.
        self._dropped.labels(**self._handled(event).labels).inc(count)

    @contextlib.contextmanager
    def _process(self, event: Event) -> Iterator[None]:
        series = self._handled(event)
        series.received.inc()
        if event.message is not None:
            series.size.observe(len(event.message.body))
        series.in_process.inc()
        try:
            yield
        finally:
            series.in_process.dec()
        # The broker fills in the outcome before leaving the hooks; a failed
        # handler never raises through here, so this runs for it too.
        series.duration.observe(event.duration)
        if event.outcome == "ok":
            self._count(self._processed, series, "acked")
            return
        if event.error is not None:
            self._process_exceptions.labels(
                **series.labels, exception_type=type(event.error).__name__
            ).inc()
        self._count(self._processed, series, "error")

    @contextlib.contextmanager
    def _publish(self, event: Event) -> Iterator[None]:
        series = self._sent(event)
        yield
        series.duration.observe(event.duration)
        if event.outcome == "ok":
            self._count(self._published, series, "success")
            return
        if event.error is not None:
            exception_type = _EXCEPTION_TYPES.get(
                event.outcome, type(event.error).__name__
            )
            self._publish_exceptions.labels(
                **series.labels, exception_type=exception_type
            ).inc()
        self._count(self._published, series, "error")

    def _handled(self, event: Event) -> _Handled:
        """The labelled metrics of *event*'s handler, looked up once."""
        key = self._key(event)
        series = self._handlers.get(key)
        if series is None:
            labels = self._labels("handler", key)
            # Two threads may both get here: labels() hands both the same
            # children, so whichever is kept counts the same series.
            series = self._handlers.setdefault(
                key,
                _Handled(
                    labels,
                    received=self._received.labels(**labels),
                    size=self._received_size.labels(**labels),
                    in_process=self._in_process.labels(**labels),
                    duration=self._process_duration.labels(**labels),
                ),
            )
        return series

    def _sent(self, event: Event) -> _Sent:
        """The labelled metrics of *event*'s destination, looked up once."""
        key = self._key(event)
        series = self._destinations.get(key)
        if series is None:
            labels = self._labels("destination", key)
            series = self._destinations.setdefault(  # as in _handled()
                key,
                _Sent(
                    labels,
                    duration=self._publish_duration.labels(**labels),
                ),
            )
        return series

    @staticmethod
    def _count(metric: Counter, series: _Handled | _Sent, status: str) -> None:
        """Add one to *metric* labelled as *series* with *status*."""
        counter = series.statuses.get(status)
        if counter is None:  # a race here, too, ends with the one child
            counter = series.statuses.setdefault(
                status, metric.labels(**series.labels, status=status)
            )
        counter.inc()

    def _key(self, event: Event) -> _Key:
        # event.destination is "kind:name" ("list:orders"); FastStream labels
        # with the bare name, and a kind never contains a colon.
        custom = tuple(
            value if isinstance(value, str) else value(event)
            for value in self._custom_labels.values()
        )
        return event.destination.partition(":")[2], custom

    def _labels(self, where: str, key: _Key) -> dict[str, str]:
        name, custom = key
        return {
            "app_name": self._app_name,
            "broker": BROKER,
            where: name,
            **dict(zip(self._custom_labels, custom, strict=True)),
        }

    def _metric(
        self,
        kind: type[M],
        name: str,
        documentation: str,
        labelnames: Sequence[str],
        **options: object,
    ) -> M:
        """The metric *name* of *kind*: the one already in the registry, or a new one."""
        full_name = f"{self._prefix}_{name}"
        # prometheus_client has no public lookup by name; FastStream's
        # middleware reads the same mapping to share metrics between brokers.
        known = getattr(self._registry, "_names_to_collectors", {}).get(full_name)
        if known is None:
            return kind(
                full_name,
                documentation,
                labelnames,
                registry=self._registry,
                **options,  # type: ignore[arg-type]
            )
        theirs = tuple(getattr(known, "_labelnames", ()))
        if not isinstance(known, kind) or sorted(theirs) != sorted(labelnames):
            msg = (
                f"The registry already has a metric {full_name!r} of another type or"
                f" with other labels ({', '.join(theirs) or 'none'});"
                " give this hook another metrics_prefix, or the same custom_labels."
            )
            raise ValueError(msg)
        return known
