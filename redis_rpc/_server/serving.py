"""``Serving``: the consumers of one broker's subscribers, and what they share.

The broker decides when to serve; this builds what serves. Each subscriber
gets a ``Processor`` and a consumer: a ``FetchingConsumer`` over its
list's or stream's ``Source``, or a ``ChannelConsumer`` fed by the one
``ChannelHub`` that reads every channel of the broker. Consumers that keep
messages in Redis share one ``Heartbeat``, and those with several workers
one ``Watch`` (see ``_server.watch``). ``stop()`` takes them down in the
order that loses nothing: readers first, then the handlers, then the
heartbeat that keeps their messages theirs.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Protocol

from redis_rpc._server.channels import ChannelConsumer, ChannelHub
from redis_rpc._server.fetch import FetchingConsumer, reader_exit_bound, stop_all
from redis_rpc._server.heartbeat import Heartbeat
from redis_rpc._server.lists import ListSource
from redis_rpc._server.process import Processor
from redis_rpc._server.streams import StreamSource
from redis_rpc._server.watch import Watch
from redis_rpc._wire.schemas import ListSub, PubSub, StreamSub
from redis_rpc.errors import RedisCommandError, RedisConnectionError

if TYPE_CHECKING:
    import threading
    from collections.abc import Callable, Sequence

    from redis_rpc._io.interfaces import Backend, Connection
    from redis_rpc._server.cancel import Cancellations
    from redis_rpc._server.fetch import Consumer
    from redis_rpc._server.model import Policy, Subscriber
    from redis_rpc.errors import RedisRPCError

logger = logging.getLogger(__name__)


class Part(Protocol):
    """Something ``start()`` waits for: it is up once ``ready`` is set, or says why not in ``error``."""

    @property
    def name(self) -> str:
        """Names it in errors: its thread's name."""

    @property
    def ready(self) -> threading.Event:
        """Set while it is up."""

    @property
    def error(self) -> Exception | None:
        """Why it is not up, while it is not."""


class Serving:
    """The consumers of a broker's subscribers; built by ``start()``, taken down by ``close()``.

    Nothing runs until ``start()``: ``TestRedisBroker`` builds one and only
    runs its processors, in memory. ``start()`` and ``stop()`` are the
    broker's to call, once each, in that order; the rest may be read from
    any thread.

    Args:
        subscribers: What was declared, publishers included.
        backend: Where the sources are.
        policy: The broker's limits, key, hooks and topology.
        poll_interval: How long each blocking read waits before checking
            whether to stop.
        cancellations: The requests their callers cancelled, for the processors.
        connection: What the processors claim idempotency keys through:
            *backend* by default, ``TestRedisBroker``'s in memory.
    """

    def __init__(
        self,
        subscribers: Sequence[Subscriber],
        backend: Backend,
        policy: Policy,
        *,
        poll_interval: float,
        cancellations: Cancellations | None = None,
        connection: Connection | None = None,
    ) -> None:
        self._poll_interval = poll_interval
        connection = backend if connection is None else connection
        self.heartbeat = Heartbeat(backend.admin)
        self.watch = Watch()
        channels = [sub for sub in subscribers if isinstance(sub.source, PubSub)]
        self.hub = (
            ChannelHub(
                backend,
                poll_interval=poll_interval,
                max_workers=sum(sub.max_workers for sub in channels),
            )
            if channels
            else None
        )
        self.consumers: list[Consumer] = []
        for subscriber in subscribers:
            name = f"redis_rpc:{subscriber.source}"
            source = subscriber.source
            if isinstance(source, PubSub):
                assert self.hub is not None  # there is a channel subscriber
                processor = Processor(
                    subscriber,
                    policy,
                    name=name,
                    cancellations=cancellations,
                    connection=connection,
                )
                self.consumers.append(
                    ChannelConsumer(
                        processor, backend, poll_interval=poll_interval, hub=self.hub
                    )
                )
                continue
            fetched: ListSource | StreamSource
            if isinstance(source, ListSub):
                fetched = ListSource(source, backend, self.heartbeat, name=name)
            else:
                assert isinstance(source, StreamSub)  # the last transport
                fetched = StreamSource(source, backend, self.heartbeat, name=name)
            processor = Processor(
                subscriber,
                policy,
                fetched,
                name=name,
                cancellations=cancellations,
                connection=connection,
            )
            self.consumers.append(
                FetchingConsumer(
                    processor,
                    fetched,
                    backend,
                    poll_interval=poll_interval,
                    watch=self.watch,
                )
            )

    @property
    def processors(self) -> list[Processor]:
        return [consumer.processor for consumer in self.consumers]

    def destinations(self, most: int = 20) -> str:
        """What is consumed, for a log line: the first *most* sources, then how many more."""
        names = [str(consumer.subscriber.source) for consumer in self.consumers]
        if not names:
            return "nothing (no subscribers)"
        shown = ", ".join(names[:most])
        return shown if len(names) <= most else f"{shown} and {len(names) - most} more"

    def start(self) -> list[Part]:
        """Start every consumer and the hub; return what must come up before serving."""
        for consumer in self.consumers:
            consumer.start()
        parts: list[Part] = []
        if self.hub is not None:
            self.hub.start()
            parts.append(self.hub)  # ready once every channel is subscribed
        parts += [c for c in self.consumers if not isinstance(c, ChannelConsumer)]
        return parts

    def problems(self) -> list[str]:
        """What is down, one line each: the consumers that read for themselves, and the hub."""
        parts: list[Part] = [
            c for c in self.consumers if not isinstance(c, ChannelConsumer)
        ]
        if self.hub is not None:
            parts.append(self.hub)
        found = []
        for part in parts:
            if part.error is not None:
                found.append(f"{part.name}: {part.error}".rstrip("."))
            elif not part.ready.is_set():
                found.append(f"{part.name}: not up yet")
        return found

    def stop(self, graceful_timeout: float) -> list[str]:
        """Stop consuming and wait up to *graceful_timeout* seconds for the handlers.

        Returns within that plus about two poll intervals, whatever the
        handlers do.

        Returns:
            One line for each handler still running, left on its daemon thread.
        """
        exit_bound = reader_exit_bound(self._poll_interval)
        drain_deadline = time.monotonic() + graceful_timeout
        hub = self.hub
        if hub is not None:
            hub.stop()  # no more deliveries; each consumer then drops what it queued
        late = stop_all(self.consumers, graceful_timeout)
        # After the consumers: a handler stuck while they stop still gets relieved.
        if not self.watch.stop(exit_bound):
            logger.warning("The watch thread did not stop in time")
        if hub is not None:
            if not hub.join(exit_bound):
                logger.warning("The channel reader did not stop in time")
            # Idle workers end at once; those still in a handler are named in late.
            hub.shutdown_workers(
                0.0 if late else max(0.0, drain_deadline - time.monotonic())
            )
        # After the consumers: a handler still running must keep its messages.
        if not self.heartbeat.stop(exit_bound):
            logger.warning("The heartbeat thread did not stop in time")
        return late


def wait_until_up(
    parts: Sequence[Part],
    *,
    timeout: float,
    poll_interval: float,
    cluster: bool,
    starting: Callable[[], bool],
) -> list[Part]:
    """Wait up to *timeout* seconds for every part to be up; return those that are not.

    Gives up early once every late part has failed for a reason that
    retrying cannot cure, or once *starting()* turns false (a ``close()``
    from another thread, noticed within *poll_interval*).
    """
    deadline = time.monotonic() + timeout
    while late := [part for part in parts if not part.ready.is_set()]:
        remaining = deadline - time.monotonic()
        # Retrying cannot cure it; wait only until every late part has
        # said why, so that the error names each cause.
        hopeless = all(part.error is not None for part in late) and any(
            _permanent(part.error, cluster=cluster) for part in late
        )
        if hopeless or remaining <= 0 or not starting():
            return late
        late[0].ready.wait(min(remaining, poll_interval))
    return []


def start_error(late: Sequence[Part], timeout: float, address: str) -> RedisRPCError:
    """Why start() failed, cause first: each distinct cause once, with the parts it kept down.

    The class and ``reason`` are those of the first part's Redis error, if
    any; without one, a ``RedisConnectionError`` with reason ``"timeout"``.
    """
    causes: dict[str, list[str]] = {}  # by cause, in the order first met
    for part in late:
        cause = "" if part.error is None else str(part.error).strip().rstrip(".")
        causes.setdefault(cause, []).append(part.name)
    first = next(
        (
            part.error
            for part in late
            if isinstance(part.error, (RedisConnectionError, RedisCommandError))
        ),
        None,
    )
    sentences = []
    if first is None:
        sentences.append(
            f"Could not start within {timeout} s; is Redis reachable at {address}?"
        )
    else:  # its cause first, however the parts came in
        first_cause = str(first).strip().rstrip(".")
        causes = {first_cause: causes.pop(first_cause), **causes}
    for cause, names in causes.items():
        if cause:
            sentences.append(f"{cause}. Not started: {', '.join(names)}.")
    if waiting := causes.get(""):
        sentences.append(f"Not up yet: {', '.join(waiting)}.")
    msg = " ".join(sentences)
    error: RedisRPCError
    if first is None:
        return RedisConnectionError(msg, reason="timeout")
    if isinstance(first, RedisCommandError):
        error = RedisCommandError(msg, reason=first.reason, redirect=first.redirect)
    else:
        error = RedisConnectionError(msg, reason=first.reason)
    error.__cause__ = first
    return error


def _permanent(error: Exception | None, *, cluster: bool) -> bool:
    """Whether *error* will not go away by retrying: start() need not wait it out.

    ``max_clients`` may go away once other clients leave, but a service
    that cannot connect at start is better told at once than after
    ``start_timeout``.

    ``MOVED`` is for good when a single-server broker talks to a cluster
    node; a cluster broker follows it.
    """
    permanent = (
        ("authentication", "permission", "tls", "max_clients")
        if cluster
        else ("authentication", "permission", "tls", "max_clients", "moved")
    )
    return getattr(error, "reason", None) in permanent
