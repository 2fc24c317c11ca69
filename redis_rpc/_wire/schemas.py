"""Where messages go and come from: ``PubSub``, ``ListSub`` and ``StreamSub``.

Each option object names one Redis destination of one transport. They are
frozen, so they can be handed between threads freely.
"""

from __future__ import annotations

import functools
import os
import socket
import uuid
from typing import Any, TypeAlias

import attrs

from redis_rpc._wire import path
from redis_rpc.errors import SetupError

DEFAULT_GROUP = "redis_rpc"


def _not_empty(instance: object, attribute: attrs.Attribute[str], value: str) -> None:
    if not isinstance(value, str) or not value:
        msg = f"{type(instance).__name__}.{attribute.name} must be a non-empty str, not {value!r}."
        raise SetupError(msg)


def _positive(instance: object, attribute: attrs.Attribute[Any], value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        msg = f"{type(instance).__name__}.{attribute.name} must be a positive number, not {value!r}."
        raise SetupError(msg)


def _positive_or_none(
    instance: object, attribute: attrs.Attribute[Any], value: Any
) -> None:
    if value is not None:
        _positive(instance, attribute, value)


def _non_negative_or_none(
    instance: object, attribute: attrs.Attribute[Any], value: Any
) -> None:
    if value is not None and (
        isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0
    ):
        msg = f"{type(instance).__name__}.{attribute.name} must be a number of seconds, at least 0, or None, not {value!r}."
        raise SetupError(msg)


def _default_consumer() -> str:
    # Unique per consumer, readable in XINFO CONSUMERS: host, process, then a tag
    # that tells apart two subscribers of one stream in the same process.
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


@attrs.frozen
class PubSub:
    """A Pub/Sub channel; a name containing ``*`` is subscribed as a pattern.

    So is a subscriber's channel template with ``{name}`` placeholders,
    such as ``"logs.{level}"`` (subscribed as ``logs.*``): a handler
    parameter with ``Path()`` as its default receives each placeholder's
    value. ``{{`` and ``}}`` are literal braces. Templates only matter to
    subscribers; a name published to is taken as it is.

    With ``sharded=True`` the channel is a sharded one (Redis 7.0 or newer):
    subscribed with ``SSUBSCRIBE`` and published to with ``SPUBLISH``. In a
    Redis Cluster its messages then reach only the nodes of its slot, not
    every node, and ``fail_fast`` works, since they count its subscribers.
    A sharded channel is a literal name: no patterns, no placeholders
    (braces are a hash tag). FastStream has no sharded channels.
    """

    channel: str = attrs.field(validator=_not_empty)
    # Before pattern, whose default depends on it; keyword-only, so after it in calls.
    sharded: bool = attrs.field(default=False, kw_only=True)
    pattern: bool = attrs.field()

    @pattern.default
    def _pattern_default(self) -> bool:
        if self.sharded:
            return False
        return "*" in self.channel or path.has_placeholders(self.channel)

    def __attrs_post_init__(self) -> None:
        if self.sharded and self.pattern:
            msg = f"{self} is sharded, and sharded channels cannot be patterns; subscribe to each channel by name."
            raise SetupError(msg)

    @property
    def name(self) -> str:
        return self.channel

    def __str__(self) -> str:
        return f"{'sharded channel' if self.sharded else 'channel'}:{self.channel}"


@attrs.frozen
class ListSub:
    """A list, consumed from the left with ``BLPOP``; producers ``RPUSH`` (FIFO).

    Args:
        list: The list's key.
        reliable: Consume at least once rather than at most once: each item
            is moved (``BLMOVE``) into a processing list of this consumer and
            removed from it only after its handler finished and the reply
            was sent. The items of a consumer that died are moved back to
            the head of the list by a live consumer. Ignored when publishing.
        recover_after: In reliable mode, seconds a consumer may go without
            refreshing its heartbeat before it counts as dead and its
            in-flight items are handed out again. A separate thread
            refreshes it, so a long handler does not make it look dead.
        dead_letter: In reliable mode, the list that an item whose handler
            failed (with no caller to tell) is moved to; ``"<list>:dead"``
            by default.
        prefetch: Take up to this many items per read, even when fewer
            workers are free (1, the default: never more than the free
            workers). Items taken ahead wait in this process for a worker,
            in order: they are lost if the process dies before handling
            them, and other consumers of the list cannot take them
            meanwhile. Not with ``reliable``, which moves one item at a time.
        max_queued: Load shedding: while the list holds this many items or
            more, a redis_rpc caller's ``request()`` or ``publish()`` to it
            fails at once with ``OverloadedError`` instead of queueing (the
            check and the push are one atomic step), and a server refuses
            at once a request whose caller would stop waiting before its
            handler's typical run time is over. ``None`` (the default)
            sheds nothing. FastStream callers are never refused.
    """

    list: str = attrs.field(validator=_not_empty)
    reliable: bool = attrs.field(default=False, kw_only=True)
    recover_after: float = attrs.field(default=30.0, kw_only=True, validator=_positive)
    dead_letter: str = attrs.field(kw_only=True, validator=_not_empty)
    prefetch: int = attrs.field(default=1, kw_only=True, validator=_positive)
    max_queued: int | None = attrs.field(
        default=None, kw_only=True, validator=_positive_or_none
    )

    def __attrs_post_init__(self) -> None:
        if self.reliable and self.prefetch > 1:
            msg = "ListSub(reliable=True) moves one item at a time; prefetch cannot be above 1."
            raise SetupError(msg)

    @dead_letter.default
    def _dead_letter_default(self) -> str:
        return f"{self.list}:dead"

    @property
    def name(self) -> str:
        return self.list

    def __str__(self) -> str:
        return f"list:{self.list}"


@attrs.frozen
class StreamSub:
    """A stream, consumed through a consumer group with ``XREADGROUP``.

    Args:
        stream: The stream's key.
        group: The consumer group. Server processes that share a group share
            the work: each entry is handled by one of them.
        consumer: This consumer's name in the group; unique by default.
        maxlen: When publishing to the stream, trim it to about this many
            entries (``XADD MAXLEN ~``).
        claim_idle_time: Seconds an entry may stay pending (read but not
            acknowledged) before a consumer of the group claims it
            (``XAUTOCLAIM``) and handles it again: an entry whose handler
            raised, or whose consumer does not beat (FastStream's, or an
            older redis_rpc's) and died. Keep it above the slowest
            handler's run time, or a live consumer's entry is taken over.
            ``None`` never claims this way. A consumer of ours that dies is
            found sooner, after *recover_after*.
        max_deliveries: After this many failed deliveries an entry is moved
            to the dead-letter stream instead of being retried.
        dead_letter: The dead-letter stream's key; ``"<stream>:dead"`` by
            default. Its entries keep the original ``__data__`` and add
            ``error``, ``stream``, ``group``, ``entry_id`` and ``deliveries``.
        replay_window: When the group is created or re-created (it was
            deleted, or Redis lost it), entries added up to this many
            seconds before are still handled, and older ones are skipped;
            entries this consumer has read already are never read again.
            Counted on the Redis server's clock, which stream ids are
            timestamps of. ``0`` handles only entries added from then on,
            ``None`` every entry in the stream.
        recover_after: Seconds a consumer may go without refreshing its
            heartbeat (a separate thread does, every second or more often)
            before it counts as dead: then a live consumer of the group
            claims its pending entries, whatever *claim_idle_time* says,
            and deletes it from the group once it has none left.
        max_queued: Load shedding: while this many entries or more of the
            stream wait for *group* (its lag, Redis 7.0 or newer), a
            redis_rpc caller's ``request()`` or ``publish()`` fails at once
            with ``OverloadedError`` instead of adding one (the check and
            the ``XADD`` are one atomic step), and a server refuses at once
            a request whose caller would stop waiting before its handler's
            typical run time is over. ``None`` (the default) sheds nothing.
            FastStream callers are never refused.
    """

    stream: str = attrs.field(validator=_not_empty)
    group: str = attrs.field(default=DEFAULT_GROUP, kw_only=True, validator=_not_empty)
    consumer: str = attrs.field(
        factory=_default_consumer, kw_only=True, validator=_not_empty
    )
    maxlen: int | None = attrs.field(default=None, kw_only=True)
    claim_idle_time: float | None = attrs.field(
        default=60.0, kw_only=True, validator=_positive_or_none
    )
    max_deliveries: int = attrs.field(default=3, kw_only=True, validator=_positive)
    dead_letter: str = attrs.field(kw_only=True, validator=_not_empty)
    # Twice request()'s default timeout: a request sent that long ago may
    # still have a caller waiting.
    replay_window: float | None = attrs.field(
        default=60.0, kw_only=True, validator=_non_negative_or_none
    )
    recover_after: float = attrs.field(default=5.0, kw_only=True, validator=_positive)
    max_queued: int | None = attrs.field(
        default=None, kw_only=True, validator=_positive_or_none
    )

    @dead_letter.default
    def _dead_letter_default(self) -> str:
        return f"{self.stream}:dead"

    @property
    def name(self) -> str:
        return self.stream

    def __str__(self) -> str:
        return f"stream:{self.stream}"


Destination: TypeAlias = PubSub | ListSub | StreamSub


@functools.lru_cache(maxsize=1024)
def _named(kind: type[Destination], name: str) -> Destination:
    """The destination of *kind* named *name*: built once, as they are immutable."""
    return kind(name)


def destination(
    channel: str | PubSub | None,
    list: str | ListSub | None,
    stream: str | StreamSub | None,
    *,
    fresh: bool = False,
) -> Destination:
    """Build the one destination named by exactly one of the three keywords.

    A name given as a string makes a destination that may be shared with
    other calls, unless *fresh*: a subscriber's source needs its own (a
    ``StreamSub`` draws its consumer name when built).

    Raises:
        SetupError: None or several of *channel*, *list* and *stream* were given.
    """
    if (channel is None) + (list is None) + (stream is None) != 2:
        given = 3 - (channel is None) - (list is None) - (stream is None)
        msg = f"Give exactly one of channel=, list= or stream=; got {given}."
        raise SetupError(msg)
    value, kind = (
        (channel, PubSub)
        if channel is not None
        else (list, ListSub)
        if list is not None
        else (stream, StreamSub)
    )
    if isinstance(value, str):
        return kind(value) if fresh else _named(kind, value)
    if not isinstance(value, kind):
        msg = f"Expected a str or {kind.__name__}, not {type(value).__name__}."
        raise SetupError(msg)
    return value


def subscription(source: Destination) -> path.ChannelTemplate | None:
    """The parsed channel template of a subscriber's *source*; ``None`` for a list or stream.

    Raises:
        SetupError: A malformed template, placeholders on a channel given
            ``pattern=False``, or on a list or stream.
    """
    if not isinstance(source, PubSub):
        if path.has_placeholders(source.name):
            msg = f"{source} has a {{placeholder}}, but only channels take them (as in FastStream); subscribe to a channel, or use the list's or stream's own name."
            raise SetupError(msg)
        return None
    if source.sharded:  # a literal name: its braces are a hash tag
        return path.ChannelTemplate(source.channel, source.channel)
    template = path.parse(source.channel)
    if template.names and not source.pattern:
        msg = f"{source} has placeholders, so it is subscribed as a pattern; leave out pattern=False, or write {{{{ and }}}} for literal braces."
        raise SetupError(msg)
    return template
