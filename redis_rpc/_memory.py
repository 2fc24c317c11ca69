"""The in-memory I/O layer behind ``TestRedisBroker``: what Redis would do with our commands, without Redis.

A ``MemoryConnection`` stands where a broker's ``Connection`` stands and
takes the same commands from the same code: ``request()`` and
``publish()`` build, sign and size-check their frames as ever, then hand
the command here instead of to a socket. Here it is routed at once, on the
calling thread, as Redis and the broker's consumers would route it:

- ``PUBLISH`` reaches every channel subscriber whose channel equals the
  name or whose pattern matches it (a template such as ``logs.{level}``
  is its pattern ``logs.*``, and its handler gets the path values), and,
  on a reply channel, the broker's reply listener (which checks nonce and
  signature as it does on Redis);
- ``RPUSH`` reaches the first subscriber of the list, as one ``BLPOP``
  would take it;
- ``XADD`` reaches one subscriber of each consumer group of the stream.

Each subscriber's consumer runs the message through its real processing
(``Consumer.process_inline``: decoding, signature and deadline checks,
typed arguments, the handler, error replies, ``@publisher`` events, dead
letters), and what that returns is routed the same way, depth first.
Acknowledgements have nothing to settle and are dropped. So when
``send()`` returns, every handler the request could reach has run, and a
request still without a reply will never get one: it fails at once with
the timeout error the real broker would raise once its timeout ran out.

Patterns are matched by Redis' glob rules (``*``, ``?``, ``[...]`` with
``^`` and ranges, ``\\`` escapes). Nothing here opens a socket or starts
a thread.
"""

from __future__ import annotations

import functools
import re
import threading
import time
from concurrent.futures import TimeoutError as FutureTimeoutError
from typing import TYPE_CHECKING, Any

from redis_rpc._channel import ChannelConsumer
from redis_rpc._consumer import Delivery
from redis_rpc._handler import Handler
from redis_rpc._list import ListConsumer
from redis_rpc._message import RedisMessage
from redis_rpc._redis import (
    STREAM_DATA_FIELD,
    Connection,
    LRem,
    Publish,
    RPush,
    XAdd,
)
from redis_rpc._schemas import ListSub, StreamSub
from redis_rpc._stream import StreamConsumer
from redis_rpc.errors import MessageDecodeError

if TYPE_CHECKING:
    from collections.abc import Sequence
    from unittest.mock import MagicMock

    from redis_rpc._consumer import Consumer
    from redis_rpc._engine import Outcome
    from redis_rpc._redis import Command
    from redis_rpc._request import ReplyListener

# What a reliable list's acknowledgement removes from; nothing is kept in
# memory, so only its presence matters (a failed item is dead-lettered).
_PROCESSING = "redis_rpc:in-memory:processing"


class MemoryConnection(Connection):
    """A ``Connection`` that routes each command to the broker's own consumers instead of Redis.

    Safe to use from any number of threads at once; each message is
    handled on the thread that sent it. Only the methods that ``request()``,
    ``publish()`` and ``close()`` use are served: any other would need a
    Redis, and fails (``AttributeError``) rather than open a socket.
    """

    def __init__(self) -> None:  # no super().__init__(): there is nothing to connect to
        self.address = "memory"
        self.socket_timeout = float("inf")
        self._channels: list[ChannelConsumer] = []
        self._lists: list[ListConsumer] = []
        self._streams: list[StreamConsumer] = []
        self._listener: ReplyListener | None = None
        self._lock = threading.Lock()  # guards _stored and _last_ids
        # How many items each list holds that no subscriber took: RPUSH answers the length.
        self._stored: dict[str, int] = {}
        # The last entry id handed out per stream, as (milliseconds, sequence).
        self._last_ids: dict[str, tuple[int, int]] = {}

    def attach(self, consumers: Sequence[Consumer], listener: ReplyListener) -> None:
        """Route to *consumers* and to *listener* from now on; before the first command."""
        for consumer in consumers:
            if isinstance(consumer, ChannelConsumer):
                self._channels.append(consumer)
            elif isinstance(consumer, ListConsumer):
                self._lists.append(consumer)
            elif isinstance(consumer, StreamConsumer):
                self._streams.append(consumer)
        self._listener = listener

    # -- what the broker calls ------------------------------------------------

    def execute(self, command: Command, *, deadline: float | None = None) -> Any:
        return self.route(command)

    def execute_many(
        self,
        commands: Sequence[Command],
        *,
        atomic: bool = False,
        deadline: float | None = None,
    ) -> list[Any]:
        return [self.route(command) for command in commands]

    def post(
        self, commands: Sequence[Command], *, atomic: bool = False, what: str
    ) -> None:
        for command in commands:
            self.route(command)

    def send(
        self, command: Command, *, deadline: float | None, outcome: Outcome
    ) -> None:
        """Route a request; once every handler it reaches has run, fail it if still unanswered."""
        answer = self.route(command)
        outcome.set_result([answer])  # a PUBLISH that reached nobody fails it here
        if self._listener is not None and isinstance(command, (Publish, RPush, XAdd)):
            reply_to = RedisMessage.from_frame_headers(command.data).reply_to
            # A no-op when answered: the reply took the request off the listener.
            self._listener.fail(reply_to, FutureTimeoutError())

    def close(self) -> None:
        """Nothing to close."""

    # Nothing is shared with a forked child.
    used = False

    def after_fork(self) -> None:
        """Nothing is shared with the parent."""

    # -- routing ----------------------------------------------------------------

    def route(self, command: Command) -> int | bytes:
        """Do with *command* what Redis would, handling what it delivers; return Redis' answer."""
        if isinstance(command, Publish):
            return self._publish(command.channel, command.data, sharded=command.sharded)
        if isinstance(command, RPush):
            return self._push(command.key, command.data)
        if isinstance(command, XAdd):
            return self._add(command)
        return (
            1  # XACK, LREM: nothing is pending in memory, so there is nothing to settle
        )

    def _publish(self, channel: str, data: bytes, *, sharded: bool = False) -> int:
        # Sharded channels are a namespace of their own.
        consumers = [
            c
            for c in self._channels
            if c.source.sharded == sharded and _subscribed(c, channel)
        ]
        listener = self._listener
        to_listener = (
            not sharded and listener is not None and channel.startswith(listener.prefix)
        )
        if to_listener:
            assert listener is not None
            listener.deliver(channel.encode(), data)
        raw = channel.encode()
        for consumer in consumers:
            self._run(consumer, consumer._delivery(data, raw))
        # Redis counts subscriptions, and the broker subscribes each name or
        # pattern once, however many subscribers share it.
        subscriptions = {(c.source.pattern, c.template.subscription) for c in consumers}
        return len(subscriptions) + to_listener

    def _push(self, key: str, data: bytes) -> int:
        consumer = next(
            (c for c in self._lists if c.subscriber.source.name == key), None
        )
        with self._lock:
            length = self._stored.get(key, 0) + 1
            if consumer is None:
                self._stored[key] = length
        if consumer is not None:
            source = consumer.subscriber.source
            reliable = isinstance(source, ListSub) and source.reliable
            self._run(
                consumer, Delivery(data, LRem(_PROCESSING, data) if reliable else None)
            )
        return length

    def _add(self, command: XAdd) -> bytes:
        stream = command.stream
        with self._lock:
            now, (last, sequence) = (
                int(time.time() * 1000),
                self._last_ids.get(stream, (0, -1)),
            )
            entry = (now, 0) if now > last else (last, sequence + 1)
            self._last_ids[stream] = entry
        entry_id = f"{entry[0]}-{entry[1]}".encode()
        fields = {STREAM_DATA_FIELD: command.data}
        fields.update((name.encode(), value.encode()) for name, value in command.extra)
        groups: set[str] = set()
        for consumer in self._streams:
            source = consumer.subscriber.source
            assert isinstance(source, StreamSub)  # the broker picks the class by source
            if source.stream == stream and source.group not in groups:
                groups.add(source.group)  # each group gets the entry once
                delivery = consumer._delivery(entry_id, fields, deliveries=1)
                self._run(consumer, delivery)
        return entry_id

    def _run(self, consumer: Consumer, delivery: Delivery) -> None:
        commands, _ = consumer.process_inline(delivery)
        for command in commands:
            self.route(command)


def _subscribed(consumer: ChannelConsumer, channel: str) -> bool:
    """Whether Redis would hand a message on *channel* to the hub for *consumer*."""
    name = consumer.template.subscription
    if consumer.source.pattern:
        return glob(name).fullmatch(channel) is not None
    return name == channel


@functools.lru_cache(maxsize=1024)
def glob(pattern: str) -> re.Pattern[str]:
    """The expression matching what the Redis glob *pattern* matches (``PSUBSCRIBE``'s rules).

    ``*`` any text, ``?`` one character, ``[abc]``, ``[a-z]`` and ``[^a]``
    one character of a set, ``\\`` takes the next character as it is.
    An unclosed set runs to the end of the pattern, as in Redis.
    """
    out, i = [], 0
    while i < len(pattern):
        char = pattern[i]
        if char == "\\" and i + 1 < len(pattern):
            out.append(re.escape(pattern[i + 1]))
            i += 2
            continue
        if char == "*":
            out.append(".*")
        elif char == "?":
            out.append(".")
        elif char == "[":  # a set; an unclosed one runs to the end of the pattern
            end = _set_end(pattern, i + 1)
            out.append(_char_set(pattern[i + 1 : end]))
            i = end
        else:
            out.append(re.escape(char))
        i += 1
    return re.compile("".join(out), re.DOTALL)


def _set_end(pattern: str, start: int) -> int:
    """The index of the ``]`` closing a set that opens before *start*, or the pattern's length."""
    i = start
    while i < len(pattern):
        if pattern[i] == "\\":
            i += 2
            continue
        if pattern[i] == "]":
            return i
        i += 1
    return len(pattern)


def _char_set(body: str) -> str:
    """A regex character class for the inside of a Redis glob set."""
    negate = body.startswith("^")
    if negate:
        body = body[1:]
    parts, i = [], 0
    while i < len(body):
        char = body[i]
        if char == "\\" and i + 1 < len(body):
            i += 1
            char = body[i]
        elif i + 2 < len(body) and body[i + 1] == "-":
            low, high = sorted((char, body[i + 2]))  # Redis takes z-a as a-z
            parts.append(f"{re.escape(low)}-{re.escape(high)}")
            i += 3
            continue
        parts.append(re.escape(char))
        i += 1
    if not parts:  # "[]" matches nothing, "[^]" any one character
        return "." if negate else "(?!)"
    return f"[{'^' if negate else ''}{''.join(parts)}]"


class RecordingHandler(Handler):
    """A handler that first calls *mock* with each message's body, decoded by its content type.

    As FastStream's ``handler.mock``: called before the body is structured
    into the parameter's type, so a body that then fails validation is
    recorded too; a body that cannot be decoded at all is not.
    """

    def __init__(self, handler: Handler, mock: MagicMock) -> None:
        super().__init__(
            handler.func, handler._logger, handler.converter, handler._template
        )
        self.mock = mock

    def arguments(self, message: RedisMessage) -> tuple[list[Any], dict[str, Any]]:
        try:
            body = message.decode()
        except MessageDecodeError:
            pass  # raised again just below, as the real handler raises it
        else:
            self.mock(body)
        return super().arguments(message)
