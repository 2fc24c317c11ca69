"""The commands the library sends, as values: ``Publish``, ``RPush``, ``XAdd``, ...

The server and the caller side build these; the backends turn them into
the words Redis reads (``words()``) and route them. Frozen, so they can be
handed between threads.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, TypeAlias

import attrs

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
class Ping:
    """``PING``: whether Redis answers."""


Command: TypeAlias = Publish | RPush | XAdd | XAck | LRem | Ping


def send_command(
    destination: Destination, data: bytes, maxlen: int | None = None
) -> Command:
    """The command that delivers *data* to *destination*.

    *maxlen* trims a stream destination, overriding the ``StreamSub``'s own.
    """
    if isinstance(destination, PubSub):
        return Publish(destination.channel, data, sharded=destination.sharded)
    if isinstance(destination, ListSub):
        return RPush(destination.list, data)
    return XAdd(
        destination.stream, data, maxlen if maxlen is not None else destination.maxlen
    )


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
