"""The in-memory backend behind ``TestRedisBroker``: what Redis would do with our commands, without Redis.

A ``MemoryConnection`` implements the ``Connection`` of the I/O seam
(``_io.interfaces``) and takes the same commands from the same code: ``request()`` and
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

Each subscriber's ``Processor`` runs the message through its real
processing (decoding, signature and deadline checks, typed arguments, the
handler, error replies, ``@publisher`` events, dead letters), and what that
returns is routed the same way, depth first.
Acknowledgements have nothing to settle and are dropped. So when
``send()`` returns, every handler the request could reach has run, and a
request still without a reply will never get one: it fails at once with
the timeout error the real broker would raise once its timeout ran out.

Patterns are matched by Redis' glob rules (``_wire.glob``). Nothing here
opens a socket or starts a thread.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import TimeoutError as FutureTimeoutError
from typing import TYPE_CHECKING, Any

from redis_rpc._broker import State
from redis_rpc._client.listener import ReplyListener
from redis_rpc._io.commands import (
    STREAM_DATA_FIELD,
    IdempotencyClaim,
    IdempotencyRelease,
    IdempotencyStore,
    LRem,
    Publish,
    RPush,
    RPushIfRoom,
    XAdd,
    XAddIfRoom,
)
from redis_rpc._server.channels import ChannelConsumer
from redis_rpc._server.fetch import FetchingConsumer, reader_exit_bound
from redis_rpc._server.handler import Handler
from redis_rpc._server.model import Delivery
from redis_rpc._server.streams import entry_delivery
from redis_rpc._wire.cancel import CANCEL_CHANNEL
from redis_rpc._wire.glob import matches
from redis_rpc._wire.message import RedisMessage
from redis_rpc._wire.schemas import ListSub, StreamSub
from redis_rpc.errors import BrokerStateError, MessageDecodeError

if TYPE_CHECKING:
    from collections.abc import Sequence
    from unittest.mock import MagicMock

    from redis_rpc._broker import RedisBroker
    from redis_rpc._io.commands import Command
    from redis_rpc._io.interfaces import Connection, Outcome
    from redis_rpc._publisher import Recorder
    from redis_rpc._server.fetch import Consumer
    from redis_rpc._server.process import Processor
    from redis_rpc._server.serving import Serving

logger = logging.getLogger(__name__)

# What a reliable list's acknowledgement removes from; nothing is kept in
# memory, so only its presence matters (a failed item is dead-lettered).
_PROCESSING = "redis_rpc:in-memory:processing"


def serve_in_memory(broker: RedisBroker, recorder: Recorder) -> MemoryConnection:
    """Have *broker* serve in memory until ``leave_memory()``, recording in *recorder*.

    Raises:
        BrokerStateError: The broker is not new.
    """
    connection = MemoryConnection()
    listener = ReplyListener(
        None,
        cluster=False,
        poll_interval=broker._poll_interval,
        signing_key=broker._signing_key,
        on_cancel=broker._heard_cancel,
    )
    listener.accept_in_memory()  # the thread is never started
    serving = _enter(broker, connection, listener, recorder)
    connection.attach(serving.consumers, listener)
    return connection


def _enter(
    broker: RedisBroker,
    connection: MemoryConnection,
    listener: ReplyListener,
    recorder: Recorder,
) -> Serving:
    """Have *broker* send through *connection* and take replies from *listener*; return what serves.

    The broker counts as ``RUNNING`` until ``leave_memory()``; the
    consumers returned are never started: only their processors run. The
    real connection and listener are set aside meanwhile.

    Raises:
        BrokerStateError: The broker is not ``NEW``.
    """
    with broker._lock:
        check_new(broker)
        broker._real = broker._connection, broker._listener
        broker._connection = Tapped(connection, recorder)
        broker._listener, broker._recorder = listener, recorder
        broker._serving = broker._new_serving(
            [recorder.wrap(sub) for sub in broker._subscribers], connection
        )
        broker._state = State.RUNNING
        return broker._serving


def check_new(broker: RedisBroker) -> None:
    """Refuse a broker that a test broker cannot take over; under its lock.

    Raises:
        BrokerStateError: The broker is not ``NEW``.
    """
    if broker._state is not State.NEW:
        msg = f"Cannot test a broker that is {broker._state.name}: hand TestRedisBroker a broker that was never started."
        raise BrokerStateError(msg)


def leave_memory(broker: RedisBroker) -> None:
    """Undo ``serve_in_memory()``: *broker* is ``NEW`` again, on its real connection, unless closed meanwhile."""
    with broker._lock:
        listener = broker._listener
        broker._connection, broker._listener = broker._real
        broker._serving, broker._recorder = None, None
        closed = broker._state is not State.RUNNING
        if not closed:
            broker._state = State.NEW
    if listener is not None:
        listener.stop(0.0)  # fails a request still waiting in another thread
    if closed:  # close() ran in memory: what was set aside is closed too
        real_listener = broker._real[1]
        if real_listener is not None and not real_listener.stop(
            reader_exit_bound(broker._poll_interval)
        ):
            logger.warning("The reply listener did not stop in time")
        broker._connection.close()


class Tapped:
    """A ``Connection`` that shows *recorder* every message sent through it, then sends it on.

    What ``publish()`` and ``request()`` send, under ``TestRedisBroker``: in
    memory or on Redis (``with_real=True``). Implements ``_io.interfaces.Connection``.
    """

    def __init__(self, inner: Connection, recorder: Recorder) -> None:
        self.inner = inner
        self._recorder = recorder
        self.address = inner.address
        self.socket_timeout = inner.socket_timeout

    @property
    def cluster(self) -> bool:
        return self.inner.cluster

    @property
    def used(self) -> bool:
        return self.inner.used

    def execute(self, command: Command, *, deadline: float | None = None) -> Any:
        self._recorder.saw(command)
        return self.inner.execute(command, deadline=deadline)

    def execute_many(
        self,
        commands: Sequence[Command],
        *,
        atomic: bool = False,
        deadline: float | None = None,
    ) -> list[Any]:
        for command in commands:
            self._recorder.saw(command)
        return self.inner.execute_many(commands, atomic=atomic, deadline=deadline)

    def post(
        self,
        commands: Sequence[Command],
        *,
        atomic: bool = False,
        what: str,
        deadline: float | None = None,
    ) -> None:
        for command in commands:
            self._recorder.saw(command)
        self.inner.post(commands, atomic=atomic, what=what, deadline=deadline)

    def send(
        self, command: Command, *, deadline: float | None, outcome: Outcome
    ) -> None:
        self._recorder.saw(command)
        self.inner.send(command, deadline=deadline, outcome=outcome)

    def ping(self) -> None:
        self.inner.ping()

    def close(self) -> None:
        self.inner.close()

    def after_fork(self) -> None:
        self.inner.after_fork()


class MemoryConnection:
    """Routes each command to the broker's own consumers instead of Redis.

    Safe to use from any number of threads at once; each message is
    handled on the thread that sent it. Implements the
    ``_io.interfaces.Connection`` Protocol, all of it: serving needs none
    of a ``Backend``'s readers and subscriptions, since messages are
    handed to the processors directly.
    """

    address = "memory"
    socket_timeout = float("inf")
    cluster = False
    # Nothing is shared with a forked child.
    used = False

    def __init__(self) -> None:
        self._channels: list[ChannelConsumer] = []
        self._lists: list[FetchingConsumer] = []
        self._streams: list[FetchingConsumer] = []
        self._listener: ReplyListener | None = None
        self._lock = threading.Lock()  # guards _stored, _last_ids and _records
        # How many items each list holds that no subscriber took: RPUSH answers the length.
        self._stored: dict[str, int] = {}
        # The last entry id handed out per stream, as (milliseconds, sequence).
        self._last_ids: dict[str, tuple[int, int]] = {}
        # Idempotency records, by key: their owner, then the stored reply.
        self._records: dict[str, dict[str, Any]] = {}

    def attach(self, consumers: Sequence[Consumer], listener: ReplyListener) -> None:
        """Route to *consumers* and to *listener* from now on; before the first command."""
        for consumer in consumers:
            if isinstance(consumer, ChannelConsumer):
                self._channels.append(consumer)
            elif isinstance(consumer, FetchingConsumer):
                source = consumer.subscriber.source
                (self._lists if isinstance(source, ListSub) else self._streams).append(
                    consumer
                )
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
        self,
        commands: Sequence[Command],
        *,
        atomic: bool = False,
        what: str,
        deadline: float | None = None,
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

    def ping(self) -> None:
        """Memory always answers."""

    def close(self) -> None:
        """Nothing to close."""

    def after_fork(self) -> None:
        """Nothing is shared with the parent."""

    # -- routing ----------------------------------------------------------------

    def route(self, command: Command) -> Any:
        """Do with *command* what Redis would, handling what it delivers; return Redis' answer."""
        if isinstance(
            command, (IdempotencyClaim, IdempotencyStore, IdempotencyRelease)
        ):
            return self._idempotency(command)
        if isinstance(command, Publish):
            return self._publish(command.channel, command.data, sharded=command.sharded)
        # Nothing waits in memory: a list or stream never has a queue to shed.
        if isinstance(command, (RPush, RPushIfRoom)):
            return self._push(command.key, command.data)
        if isinstance(command, XAdd):
            return self._add(command.stream, command.data, command.extra)
        if isinstance(command, XAddIfRoom):
            return self._add(command.stream, command.data)
        # XACK, LREM: nothing is pending in memory, so there is nothing to
        # settle; SET: kept replies are for callers on Redis.
        return 1

    def _idempotency(
        self, command: IdempotencyClaim | IdempotencyStore | IdempotencyRelease
    ) -> object:
        """The idempotency scripts' answers, on records kept in memory; nothing expires."""
        with self._lock:
            record = self._records.get(command.record)
            if isinstance(command, IdempotencyClaim):
                if record is None:
                    self._records[command.record] = {"owner": command.owner}
                    return [b"run"]
                if "data" in record:
                    return [b"done", record["data"], record["headers"].encode()]
                return [b"running", 1]
            if record is None or record.get("owner") != command.owner:
                return 0
            if isinstance(command, IdempotencyStore):
                record.update(data=command.data, headers=command.headers)
                return 1
            if "data" not in record:
                del self._records[command.record]
                return 1
            return 0

    def _publish(self, channel: str, data: bytes, *, sharded: bool = False) -> int:
        # Sharded channels are a namespace of their own.
        consumers = [
            c
            for c in self._channels
            if c.source.sharded == sharded and _subscribed(c, channel)
        ]
        listener = self._listener
        if listener is not None and not sharded and channel == CANCEL_CHANNEL:
            listener.heard_cancel(data)
        to_listener = (
            not sharded and listener is not None and channel.startswith(listener.prefix)
        )
        if to_listener:
            assert listener is not None
            listener.deliver(channel.encode(), data)
        raw = channel.encode()
        for consumer in consumers:
            self._run(consumer.processor, consumer.delivery(data, raw))
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
                consumer.processor,
                Delivery(data, LRem(_PROCESSING, data) if reliable else None),
            )
        return length

    def _add(
        self, stream: str, data: bytes, extra: tuple[tuple[str, str], ...] = ()
    ) -> bytes:
        with self._lock:
            now, (last, sequence) = (
                int(time.time() * 1000),
                self._last_ids.get(stream, (0, -1)),
            )
            entry = (now, 0) if now > last else (last, sequence + 1)
            self._last_ids[stream] = entry
        entry_id = f"{entry[0]}-{entry[1]}".encode()
        fields = {STREAM_DATA_FIELD: data}
        fields.update((name.encode(), value.encode()) for name, value in extra)
        groups: set[str] = set()
        for consumer in self._streams:
            source = consumer.subscriber.source
            assert isinstance(source, StreamSub)  # the broker picks the class by source
            if source.stream == stream and source.group not in groups:
                groups.add(source.group)  # each group gets the entry once
                delivery = entry_delivery(source, entry_id, fields, deliveries=1)
                self._run(consumer.processor, delivery)
        return entry_id

    def _run(self, processor: Processor, delivery: Delivery) -> None:
        for command in processor.run(delivery).commands:
            self.route(command)


def _subscribed(consumer: ChannelConsumer, channel: str) -> bool:
    """Whether Redis would hand a message on *channel* to the hub for *consumer*."""
    name = consumer.template.subscription
    if consumer.source.pattern:
        return matches(name, channel)
    return name == channel


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
