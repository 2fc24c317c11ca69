"""The commands the library sends, as values: ``Publish``, ``RPush``, ``XAdd``, ...

The server and the caller side build these; the backends turn them into
the words Redis reads (``words()``) and route them. Frozen, so they can be
handed between threads.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, TypeAlias

import attrs

from redis_rpc._io.scripts import (
    IDEMPOTENCY_CLAIM,
    IDEMPOTENCY_RELEASE,
    IDEMPOTENCY_STORE,
    RPUSH_IF_ROOM,
    XADD_IF_ROOM,
)
from redis_rpc._wire.schemas import ListSub, PubSub

if TYPE_CHECKING:
    from collections.abc import Sequence

    from redis_rpc._wire.schemas import Destination

# A command as Redis reads it: its name, then its arguments.
Args = tuple[bytes | str | int | float, ...]

# The stream entry field that holds a frame, as FastStream writes it.
STREAM_DATA_FIELD = b"__data__"


@attrs.frozen
class Publish:
    channel: str
    data: bytes
    sharded: bool = False  # SPUBLISH


@attrs.frozen
class RPush:
    key: str
    data: bytes


@attrs.frozen
class XAdd:
    stream: str
    data: bytes
    maxlen: int | None = None
    # More fields beside __data__, such as a dead letter's reason.
    extra: tuple[tuple[str, str], ...] = ()


@attrs.frozen
class XAck:
    stream: str
    group: str
    entry_id: bytes


@attrs.frozen
class LRem:
    """Remove one copy of *data* from list *key*: a reliable list's acknowledgement."""

    key: str
    data: bytes


@attrs.frozen
class RPushIfRoom:
    """``RPUSH`` unless list *key* holds *max_queued* items already; Redis then answers minus its length."""

    key: str
    data: bytes
    max_queued: int


@attrs.frozen
class XAddIfRoom:
    """``XADD`` unless *group* has *max_queued* entries to read already; Redis then answers minus that lag."""

    stream: str
    data: bytes
    group: str
    max_queued: int
    maxlen: int | None = None


@attrs.frozen
class IdempotencyClaim:
    """Claim idempotency *record* for *owner* for *lease_ms*; see ``scripts.IDEMPOTENCY_CLAIM``."""

    record: str
    owner: str
    lease_ms: int


@attrs.frozen
class IdempotencyStore:
    """Store *owner*'s result in *record* for *ttl_ms*; see ``scripts.IDEMPOTENCY_STORE``."""

    record: str
    owner: str
    data: bytes
    headers: str  # JSON
    ttl_ms: int


@attrs.frozen
class IdempotencyRelease:
    """Give *record* up, if *owner* still runs it; see ``scripts.IDEMPOTENCY_RELEASE``."""

    record: str
    owner: str


@attrs.frozen
class Set:
    """Set *key* to *data*, expiring after *ttl_ms* milliseconds: a kept reply."""

    key: str
    data: bytes
    ttl_ms: int


@attrs.frozen
class Get:
    """The value of *key*, or None."""

    key: str


@attrs.frozen
class Ping:
    """``PING``: whether Redis answers."""


Command: TypeAlias = (
    Publish
    | RPush
    | RPushIfRoom
    | XAdd
    | XAddIfRoom
    | XAck
    | LRem
    | IdempotencyClaim
    | IdempotencyStore
    | IdempotencyRelease
    | Set
    | Get
    | Ping
)


def send_command(
    destination: Destination,
    data: bytes,
    maxlen: int | None = None,
    *,
    shed: bool = False,
) -> Command:
    """The command that delivers *data* to *destination*.

    *maxlen* trims a stream destination, overriding the ``StreamSub``'s own.
    With *shed*, a list or stream with ``max_queued`` gets the command that
    refuses to queue past it (see ``scripts``).
    """
    if isinstance(destination, PubSub):
        return Publish(destination.channel, data, sharded=destination.sharded)
    if isinstance(destination, ListSub):
        if shed and destination.max_queued is not None:
            return RPushIfRoom(destination.list, data, int(destination.max_queued))
        return RPush(destination.list, data)
    maxlen = maxlen if maxlen is not None else destination.maxlen
    if shed and destination.max_queued is not None:
        return XAddIfRoom(
            destination.stream,
            data,
            destination.group,
            int(destination.max_queued),
            maxlen,
        )
    return XAdd(destination.stream, data, maxlen)


def words(command: Command) -> Args:
    """The words of *command*, as Redis reads them."""
    if isinstance(command, Publish):
        return (
            b"SPUBLISH" if command.sharded else b"PUBLISH",
            command.channel,
            command.data,
        )
    if isinstance(command, RPush):
        return (b"RPUSH", command.key, command.data)
    if isinstance(command, XAdd):
        trim: Args = () if command.maxlen is None else (b"MAXLEN", b"~", command.maxlen)
        fields = [word for pair in command.extra for word in pair]
        return (
            b"XADD",
            command.stream,
            *trim,
            b"*",
            STREAM_DATA_FIELD,
            command.data,
            *fields,
        )
    if isinstance(command, Ping):
        return (b"PING",)
    if isinstance(command, RPushIfRoom):
        return (
            b"EVAL",
            RPUSH_IF_ROOM,
            1,
            command.key,
            command.data,
            command.max_queued,
        )
    if isinstance(command, XAddIfRoom):
        trimmed = b"" if command.maxlen is None else command.maxlen
        return (
            b"EVAL",
            XADD_IF_ROOM,
            1,
            command.stream,
            command.data,
            command.max_queued,
            command.group,
            trimmed,
        )
    if isinstance(command, IdempotencyClaim):
        return (
            b"EVAL",
            IDEMPOTENCY_CLAIM,
            1,
            command.record,
            command.owner,
            command.lease_ms,
        )
    if isinstance(command, IdempotencyStore):
        return (
            b"EVAL",
            IDEMPOTENCY_STORE,
            1,
            command.record,
            command.owner,
            command.data,
            command.headers,
            command.ttl_ms,
        )
    if isinstance(command, IdempotencyRelease):
        return (b"EVAL", IDEMPOTENCY_RELEASE, 1, command.record, command.owner)
    if isinstance(command, Set):
        return (b"SET", command.key, command.data, b"PX", command.ttl_ms)
    if isinstance(command, Get):
        return (b"GET", command.key)
    if isinstance(command, LRem):
        # Counted from the tail, where the oldest in-flight items are.
        return (b"LREM", command.key, -1, command.data)
    return (b"XACK", command.stream, command.group, command.entry_id)


def grouped(commands: Sequence[Command], *, atomic: bool) -> list[Args]:
    """The words of *commands*, in a ``MULTI``/``EXEC`` group when *atomic*."""
    group = [words(command) for command in commands]
    if atomic and len(group) > 1:
        group = [(b"MULTI",), *group, (b"EXEC",)]
    return group
