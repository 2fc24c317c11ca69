"""Hooks around publish, request and process, and the counters every broker keeps.

A hook is a callable that takes an ``Event`` and returns a context manager:
the broker enters it before the operation and leaves it after, with the
event's ``outcome``, ``error`` and ``duration`` filled in. The operation's
exception never passes through a hook: a hook written as a generator with a
bare ``yield`` still sees the end of a failed call, and cannot swallow or
replace its exception. Before a publish or a request, a hook may add
headers to ``event.headers`` (a trace context, say); around a process, the
handler runs inside every hook's context, on the hook's thread, and headers
a hook adds to ``event.reply_headers`` go out with the handler's reply.

The counters (``broker.stats()``) are kept whether or not there are hooks,
under one small lock per subscriber or destination, so that they are exact.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from typing import TYPE_CHECKING, Any, TypeVar

import attrs

from redis_rpc.errors import (
    NoSubscriberError,
    OverloadedError,
    RedisCommandError,
    RedisConnectionError,
    RemoteError,
    RequestTimeoutError,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from contextlib import AbstractContextManager

    from redis_rpc._wire.message import RedisMessage

    Hook = Callable[["Event"], AbstractContextManager[object]]

T = TypeVar("T")

logger = logging.getLogger(__name__)

# Destinations counted by name at most; the rest are counted together.
MAX_COUNTED_DESTINATIONS = 10_000
OTHER_DESTINATIONS = "(others)"

# What a publish or a request came to, besides "ok", by the exception it raised.
_OUTCOMES: tuple[tuple[type[BaseException], str], ...] = (
    (RequestTimeoutError, "timeout"),
    (RemoteError, "remote_error"),
    (NoSubscriberError, "no_subscriber"),
    (OverloadedError, "overloaded"),
    (RedisConnectionError, "connection_error"),
    (RedisCommandError, "command_error"),
)


@attrs.define(eq=False)
class Event:
    """One publish, request or process, as hooks see it.

    Attributes:
        kind: ``"publish"``, ``"request"``, ``"process"``, or ``"reply"``:
            a handler's result being sent back to its caller, inside that
            handler's process (FastStream's middlewares see it as a publish
            of type ``REPLY``); ``"drop"`` for the event handed to a hook's
            optional ``dropped(event, count)`` method when channel messages
            are dropped unhandled.
        destination: Where the message goes or came from, such as ``"list:orders"``.
        headers: For a publish, a request or a reply, the headers about to be
            sent, which a hook may add to; for a process, the message's headers.
        correlation_id: The message's; for a publish or a request, the one
            the broker picked when the caller gave none.
        message: For a process, the message handled; for a request, the reply once in.
        outcome: Filled in before the hooks are left: ``"ok"``, or why not.
            A publish or request: ``"timeout"``, ``"remote_error"``,
            ``"no_subscriber"``, ``"connection_error"``,
            ``"command_error"`` or ``"error"``. A process: ``"error"``
            (the handler raised, or the body did not fit its parameters,
            as FastStream counts it). A reply: ``"error"`` (it could not be
            built, as when it is too large).
        error: The exception, when there was one.
        duration: Seconds the operation took.
        reply_headers: For a process, headers to add to the handler's reply
            and to the results it sends to publishers; the handler's own
            ``Response`` headers win over them. Unused otherwise.
    """

    kind: str
    destination: str
    headers: dict[str, Any]
    correlation_id: str = ""
    message: RedisMessage | None = None
    outcome: str = ""
    error: BaseException | None = None
    duration: float = 0.0
    reply_headers: dict[str, str] = attrs.field(factory=dict)


def tell_dropped(hooks: Sequence[Hook], destination: str, count: int) -> None:
    """Tell every hook with a ``dropped(event, count)`` method that *count* messages of *destination* were dropped.

    Hooks without one are left alone: a drop is not an operation for them
    to run around. A hook that raises is logged, never propagated.
    """
    for hook in hooks:
        dropped = getattr(hook, "dropped", None)
        if dropped is None:
            continue
        try:
            dropped(Event("drop", destination, {}), count)
        except Exception:
            logger.exception("Hook %r failed on %d dropped message(s)", hook, count)


def outcome_of(error: BaseException) -> str:
    for kind, outcome in _OUTCOMES:
        if isinstance(error, kind):
            return outcome
    return "error"


def around(hooks: Sequence[Hook], event: Event, call: Callable[[], T]) -> T:
    """Run *call* inside every hook's context, filling in *event*'s outcome; return or raise as *call* did."""
    failure: BaseException | None = None
    with contextlib.ExitStack() as stack:
        for hook in hooks:
            stack.enter_context(hook(event))
        started = time.monotonic()
        try:
            result = call()
        except BaseException as exc:  # noqa: BLE001 - told to the hooks, then raised as it was
            failure = exc
            event.outcome, event.error = outcome_of(exc), exc
        else:
            event.outcome = "ok"
        event.duration = time.monotonic() - started
    if failure is not None:
        raise failure
    return result


@attrs.frozen
class SubscriberStats:
    """What one subscriber did since its broker was created.

    Attributes:
        received: Messages taken out of Redis.
        handled: Handlers that returned.
        failed: Handlers that raised.
        rejected: Messages that could not be handled: unreadable, too
            large, or not fitting the handler's types.
        expired: Requests skipped because their caller had stopped waiting.
        refused: Messages dropped for a missing or wrong signature.
        shed: Requests refused at once, their caller stopping to wait
            before the handler's typical run time (``max_queued``).
        cancelled: Requests skipped because their caller cancelled them
            before they started.
        replayed: Duplicates of keyed messages (``idempotency_key``),
            answered with the stored reply without running the handler.
        dead_lettered: Messages moved to a dead-letter list or stream.
        dropped: Channel messages dropped without being handled, because
            the subscriber's queue was full (it fell behind a flood), or
            was still holding them when the broker closed. Not counted in
            ``received``.
        in_flight: Messages being handled right now.
        handler_seconds: Wall time spent in the handler, in all.
    """

    received: int = 0
    handled: int = 0
    failed: int = 0
    rejected: int = 0
    expired: int = 0
    refused: int = 0
    shed: int = 0
    cancelled: int = 0
    replayed: int = 0
    dead_lettered: int = 0
    dropped: int = 0
    in_flight: int = 0
    handler_seconds: float = 0.0


@attrs.frozen
class DestinationStats:
    """What a broker sent to one destination since it was created.

    Attributes:
        published: ``publish()`` calls that Redis took.
        requests: ``request()`` calls, whatever came of them.
        answered: Requests that got a reply that was not an error.
        failed: Requests that did not, by outcome (``"timeout"``,
            ``"remote_error"``, ``"no_subscriber"``, ``"overloaded"``,
            ``"connection_error"``, ...).
        request_seconds: Wall time spent in ``request()``, in all.
        recovered: Replies taken from where the server kept them, because
            the reply subscription was lost while their request waited.
    """

    published: int = 0
    requests: int = 0
    answered: int = 0
    failed: dict[str, int] = attrs.field(factory=dict)
    request_seconds: float = 0.0
    recovered: int = 0


@attrs.frozen
class Stats:
    """A snapshot of a broker's counters: ``broker.stats()``.

    Attributes:
        subscribers: By source, such as ``"list:orders"``.
        destinations: By destination of publish() and request().
    """

    subscribers: dict[str, SubscriberStats]
    destinations: dict[str, DestinationStats]


# Weight of the newest handler time in the running average of typical().
_TYPICAL_WEIGHT = 0.05


class SubscriberCounter:
    """The live counters of one subscriber; safe from any thread."""

    def __init__(self) -> None:
        # A running average of the handler's run time, in seconds, over the
        # messages it handled: what inline handling and load shedding go by.
        # Written under the lock, read without it (a float is read whole).
        self.typical = 0.0
        self._lock = threading.Lock()
        self._counts: dict[str, int] = dict.fromkeys(
            (
                "received",
                "handled",
                "failed",
                "rejected",
                "expired",
                "refused",
                "shed",
                "cancelled",
                "replayed",
                "dead_lettered",
                "dropped",
                "in_flight",
            ),
            0,
        )
        self._handler_seconds = 0.0

    def started(self) -> None:
        with self._lock:
            self._counts["received"] += 1
            self._counts["in_flight"] += 1

    def finished(self, outcome: str, *, dead: bool, seconds: float) -> None:
        """One message done: *outcome* is ``handled``, ``failed``, ``rejected``, ``expired``, ``refused``, ``shed``, ``cancelled`` or ``replayed``."""
        with self._lock:
            counts = self._counts
            counts["in_flight"] -= 1
            counts[outcome] += 1
            counts["dead_lettered"] += dead
            self._handler_seconds += seconds
            if outcome == "handled":  # the first one sets it, later ones move it
                weight = _TYPICAL_WEIGHT if counts["handled"] > 1 else 1.0
                self.typical += (seconds - self.typical) * weight

    def dropped(self, count: int) -> None:
        with self._lock:
            self._counts["dropped"] += count

    def snapshot(self) -> SubscriberStats:
        with self._lock:
            return SubscriberStats(
                **self._counts, handler_seconds=self._handler_seconds
            )


class DestinationCounter:
    """The live counters of one destination; safe from any thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._published = self._requests = self._answered = self._recovered = 0
        self._failed: dict[str, int] = {}
        self._seconds = 0.0

    def published(self) -> None:
        with self._lock:
            self._published += 1

    def recovered(self) -> None:
        with self._lock:
            self._recovered += 1

    def requested(self, outcome: str, seconds: float) -> None:
        with self._lock:
            self._requests += 1
            self._seconds += seconds
            if outcome == "ok":
                self._answered += 1
            else:
                self._failed[outcome] = self._failed.get(outcome, 0) + 1

    def snapshot(self) -> DestinationStats:
        with self._lock:
            return DestinationStats(
                published=self._published,
                requests=self._requests,
                answered=self._answered,
                failed=dict(self._failed),
                request_seconds=self._seconds,
                recovered=self._recovered,
            )


@attrs.frozen
class Health:
    """What ``broker.ping()`` found: true when nothing is down.

    Attributes:
        healthy: Whether Redis answered and every part is up.
        problems: One line per part that is down, naming it and why.
    """

    healthy: bool
    problems: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return self.healthy
