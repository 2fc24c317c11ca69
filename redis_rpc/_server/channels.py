"""Pub/Sub consumers: one shared connection and reader thread per broker.

Every channel subscriber of a broker is served by one ``ChannelHub``: a
single Pub/Sub connection that ``SUBSCRIBE``s and ``PSUBSCRIBE``s all their
channels and patterns, in batches, and one reader thread (named
``redis_rpc:channels``) that reads messages in bulk and hands each to the
``ChannelConsumer`` of every subscriber it is for. So a broker with
thousands of channel subscribers holds one connection and one reader for
them, not one of each per subscriber.

Each ``ChannelConsumer`` keeps its own queue and runs its ``Processor`` on
the hub's shared pool of worker threads, never more than its ``max_workers``
messages at once; with ``max_workers=1`` one message at a time, in the
order they were published.

Pub/Sub keeps nothing and has no backpressure: a message published while
no consumer is subscribed is lost, and Redis pushes every message at once
whether or not a worker is free. Blocking the shared reader behind one slow
subscriber would stall every other one, and soon make Redis drop the
connection for its output buffer limit, losing everything queued for all
of them. So each subscriber's queue is bounded instead (``QUEUE_LIMIT``
messages, ``QUEUE_BYTES`` bytes): when it is full the *oldest* message is
dropped, since its caller is the likeliest to have stopped waiting, and a
warning is logged when dropping starts and when the queue has caught up.
Messages still queued when the broker closes are dropped too, as unread
ones were before.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from typing import TYPE_CHECKING

from redis_rpc._backoff import Backoff
from redis_rpc._io.commands import Ping, Publish
from redis_rpc._server.fetch import (
    PERMISSION_PROBE_CHANNEL,
    log_failure,
    reader_exit_bound,
    run_logged,
)
from redis_rpc._server.model import Delivery
from redis_rpc._server.workers import WorkerPool
from redis_rpc._wire.schemas import PubSub, subscription
from redis_rpc.errors import RedisConnectionError, RedisRPCError

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from redis_rpc._io.interfaces import Backend, Subscription
    from redis_rpc._server.process import Processor

logger = logging.getLogger(__name__)

# A subscriber's queue holds at most this many messages, and this many
# bytes: far more than a healthy subscriber ever has waiting, and few
# enough that a stuck handler cannot make the process swallow all memory.
QUEUE_LIMIT = 10_000
QUEUE_BYTES = 64 * 1024 * 1024

# Worker threads shared by all channel subscribers of a broker, at most: a
# broker's subscribers may want more workers in all (one each, by default),
# but threads are started only as handlers run at once, and a few dozen
# keep a 2-core machine busy. A handler that blocks on a request to another
# channel subscriber of the same broker holds one of them meanwhile.
SHARED_WORKERS = 64

# A worker handles at most this many messages of one subscriber in a row
# before letting other subscribers' messages go first.
_TURN = 16

# How long a PING may take to prove Redis up after it dropped a subscription:
# a Redis that is up answers at once; one that is not is an outage.
_UP_CHECK_TIMEOUT = 1.0
# How often, at most, a line says that Redis dropped a subscription again.
_DROPS_TOLD_EVERY = 60.0


class ChannelConsumer:
    """Consumes one channel or pattern for its subscriber, fed by the broker's ``ChannelHub``.

    It has no thread of its own: ``deliver()`` runs on the hub's reader
    thread, the processing on the hub's shared workers. ``stop()``,
    ``join_reader()``, ``drain()`` and ``busy()`` may be called from any
    thread.
    """

    def __init__(
        self,
        processor: Processor,
        backend: Backend,
        *,
        poll_interval: float,
        hub: ChannelHub,
    ) -> None:
        self.processor = processor
        self.subscriber = processor.subscriber
        self.name = processor.name
        # Set, and error cleared or set, by the hub's line that reads for us.
        self.ready = threading.Event()
        self.error: Exception | None = None
        self._backend = backend
        self._poll_interval = poll_interval
        self._stopping = threading.Event()
        self._slots = threading.BoundedSemaphore(self.subscriber.max_workers)
        self._hub = hub
        template = subscription(self.source)
        assert template is not None  # a channel always has one
        # What is subscribed to, and how placeholder values are taken from
        # the channel a message arrived on, if it has placeholders.
        self.template = template
        # Guards _queue, _queued_bytes, _running and _dropped.
        self._lock = threading.Lock()
        # Each payload with the channel it arrived on.
        self._queue: collections.deque[tuple[bytes, bytes]] = collections.deque()
        self._queued_bytes = 0
        # Turns on the shared pool serving this consumer, queued or running:
        # never more than max_workers, so neither are its handlers.
        self._running = 0
        self._dropped = 0  # messages dropped since the queue was last short enough
        hub.add(self)

    @property
    def source(self) -> PubSub:
        source = self.subscriber.source
        # The broker picks the consumer class by the source type.
        assert isinstance(source, PubSub)
        return source

    @property
    def exit_bound(self) -> float:
        """How long the hub's reader may take to notice ``stop()``."""
        return reader_exit_bound(self._poll_interval)

    def start(self) -> None:
        """Nothing to start: the hub reads for every channel consumer."""

    def join_reader(self, timeout: float) -> bool:
        """Nothing to wait for: the hub's reader is the broker's to join."""
        return True

    def drain(self, timeout: float) -> bool:
        """Wait up to *timeout* seconds for the handlers that began before ``stop()``.

        Returns:
            Whether every handler finished in time.
        """
        deadline = time.monotonic() + timeout
        taken = 0
        # Holding every slot means no handler is running any more.
        while taken < self.subscriber.max_workers and self._slots.acquire(
            timeout=max(0.0, deadline - time.monotonic())
        ):
            taken += 1
        return taken == self.subscriber.max_workers

    def busy(self) -> list[str]:
        """What the handlers still running are busy with, one line each."""
        return self.processor.busy()

    def stop(self) -> None:
        """Take no more messages and drop those queued; handlers running go on."""
        with self._lock:
            self._stopping.set()
            dropped = len(self._queue)
            self._queue.clear()
            self._queued_bytes = 0
        if dropped:
            self.processor.dropped(dropped)
            logger.info(
                "%s dropped %d queued message(s) on closing", self.name, dropped
            )

    def deliver(self, payload: bytes, channel: bytes = b"") -> None:
        """Queue *payload*, which arrived on *channel*, for the handler.

        Called by the hub's reader thread; never blocks.
        """
        dropped = 0
        with self._lock:
            if self._stopping.is_set():
                return
            self._queue.append((payload, channel))
            self._queued_bytes += len(payload)
            while len(self._queue) > 1 and (
                len(self._queue) > QUEUE_LIMIT or self._queued_bytes > QUEUE_BYTES
            ):
                self._queued_bytes -= len(self._queue.popleft()[0])
                dropped += 1
            first_drop = dropped > 0 and self._dropped == 0
            self._dropped += dropped
            start = self._running < self.subscriber.max_workers
            if start:
                self._running += 1
        if dropped:
            self.processor.dropped(dropped)
        if first_drop:
            logger.warning(
                "%s is falling behind: its queue is full, so the oldest messages are dropped until it catches up",
                self.name,
            )
        if start:
            self._submit()

    def _submit(self) -> None:
        try:
            self._hub.pool.submit(self._turn)
        except RuntimeError:  # the pool is shut down: the broker is closing
            with self._lock:
                self._running -= 1

    def _turn(self) -> None:
        """Handle queued messages one by one on a shared worker, for a while."""
        for _ in range(_TURN):
            with self._lock:
                # The slot is taken under the lock that stop() takes, so that
                # drain() waits for every handler that began before it.
                if (
                    not self._queue
                    or self._stopping.is_set()
                    or not self._slots.acquire(blocking=False)
                ):
                    self._running -= 1
                    caught_up, self._dropped = self._dropped, 0
                    break
                payload, channel = self._queue.popleft()
                self._queued_bytes -= len(payload)
            try:
                self._handle(self.delivery(payload, channel))
            finally:
                self._slots.release()
        else:  # more may be waiting: behind other subscribers' turns
            self._submit()
            return
        if caught_up:
            logger.info(
                "%s caught up after dropping %d message(s)", self.name, caught_up
            )

    def _handle(self, delivery: Delivery) -> None:
        """Process one message and send what it produced. Never raises."""
        try:
            done = self.processor.run(delivery)
            if done.commands:  # nobody waits: a failure is logged
                self._backend.post(
                    done.commands,
                    atomic=done.atomic,
                    what=f"the replies or acks of {self.name}",
                    deadline=done.send_by(),
                )
        except RedisRPCError as exc:  # Redis went away: the hub says so too
            logger.warning("%s could not send the reply or ack: %s", self.name, exc)
        except Exception:
            logger.exception("%s could not send the reply or ack", self.name)

    def delivery(self, payload: bytes, channel: bytes) -> Delivery:
        """The delivery of *payload*, which arrived on *channel*."""
        if not (self.source.pattern or self.template.names):
            return Delivery(payload)
        # A pattern's: the channel says where it was addressed, and fills the path.
        name = channel.decode(errors="replace")
        return Delivery(
            payload,
            where=f"a message on {name[:200]!r}",
            path=self.template.values(name) if self.template.names else None,
            channel=name if self.source.pattern else "",
        )


class ChannelHub:
    """The Pub/Sub connections and reader threads shared by a broker's channel subscribers.

    Classic channels and patterns share one connection and one thread
    (named ``redis_rpc:channels``). Each sharded channel has a line of its
    own (``redis_rpc:channels:<name>``): in a Redis Cluster it must be read
    from its slot's master, and follow the slot when it moves.

    ``ready`` is set once every channel and pattern is subscribed, and
    ``error`` says why not, while not. ``start()``, ``stop()``, ``join()``
    and ``shutdown_workers()`` may be called from any thread; each
    subscription belongs to its line's own thread.
    """

    name = "redis_rpc:channels"  # of its thread, and in start() errors

    def __init__(
        self, connection: Backend, *, poll_interval: float, max_workers: int
    ) -> None:
        """*max_workers*: how many handlers the subscribers may run at once, in all."""
        self.ready = threading.Event()
        self._connection = connection
        self._poll_interval = poll_interval
        self._consumers: list[ChannelConsumer] = []
        self._lines: dict[str | None, _Line] = {}  # by sharded channel; None: the rest
        self._stopping = threading.Event()
        self.pool = WorkerPool(max(1, min(max_workers, SHARED_WORKERS)), self.name)

    @property
    def consumers(self) -> Sequence[ChannelConsumer]:
        return self._consumers

    @property
    def error(self) -> Exception | None:
        """Why a line is not subscribed, while one is not."""
        return next(
            (line.error for line in self._lines.values() if line.error is not None),
            None,
        )

    def add(self, consumer: ChannelConsumer) -> None:
        """Serve *consumer* too; only before ``start()``."""
        source = consumer.source
        shard = source.channel if source.sharded else None
        line = self._lines.get(shard)
        if line is None:
            line = self._lines[shard] = _Line(
                self._connection,
                shard,
                name=self.name if shard is None else f"{self.name}:{shard}",
                poll_interval=self._poll_interval,
                stopping=self._stopping,
                subscribed=self._line_ready,
            )
        line.add(consumer)
        self._consumers.append(consumer)

    def start(self) -> None:
        for line in self._lines.values():
            line.thread.start()

    def stop(self) -> None:
        """Ask the readers to stop; they do within about one poll interval."""
        self._stopping.set()

    def join(self, timeout: float) -> bool:
        """Wait up to *timeout* seconds for the readers to end; True if they did."""
        deadline = time.monotonic() + timeout
        for line in self._lines.values():
            if line.thread.ident is not None:  # started
                line.thread.join(max(0.0, deadline - time.monotonic()))
        return not any(line.thread.is_alive() for line in self._lines.values())

    def shutdown_workers(self, timeout: float) -> bool:
        """Let the shared workers go once idle, waiting up to *timeout* seconds for them."""
        return self.pool.shutdown(timeout)

    def _line_ready(self) -> None:
        if all(line.ready.is_set() for line in self._lines.values()):
            self.ready.set()


class _Line:
    """One Pub/Sub connection of a ``ChannelHub`` and the thread that reads it."""

    def __init__(
        self,
        connection: Backend,
        shard: str | None,
        *,
        name: str,
        poll_interval: float,
        stopping: threading.Event,
        subscribed: Callable[[], None],
    ) -> None:
        """*stopping* is the hub's, and *subscribed* tells it this line is up."""
        self._connection = connection
        self._shard = shard  # the sharded channel it reads; None: classic ones
        self.name = name
        self._poll_interval = poll_interval
        self._stopping = stopping
        self._subscribed = subscribed
        self.ready = threading.Event()
        self.error: Exception | None = None
        self._consumers: list[ChannelConsumer] = []
        # Who gets a message, by the channel or pattern it came for; filled
        # before start() and only read afterwards, by the reader thread.
        self._channels: dict[bytes, list[ChannelConsumer]] = {}
        self._patterns: dict[bytes, list[ChannelConsumer]] = {}
        self.thread = threading.Thread(target=self._run, name=self.name, daemon=True)

    def add(self, consumer: ChannelConsumer) -> None:
        routes = self._patterns if consumer.source.pattern else self._channels
        name = consumer.template.subscription.encode()
        routes.setdefault(name, []).append(consumer)
        self._consumers.append(consumer)

    def _run(self) -> None:
        run_logged(self.name, self._loop)

    def _loop(self) -> None:
        backoff = Backoff()
        dropped = False  # Redis closed the last connection while it was up
        drops_told = -_DROPS_TOLD_EVERY  # when that was last logged: time.monotonic()
        drops_untold = 0  # such drops since
        while not self._stopping.is_set():
            subscription = self._connection.subscription(self._shard)
            subscribed = False
            try:
                self._open(subscription)
                if backoff.failures or (dropped and not drops_untold):
                    logger.info("%s is consuming again", self.name)
                self._set_error(None)
                self.ready.set()
                self._subscribed()
                for consumer in self._consumers:
                    consumer.ready.set()
                backoff, dropped, subscribed = Backoff(), False, True
                self._read(subscription)
            except Exception as exc:  # noqa: BLE001 - the reader must outlive any error
                dropped = subscribed and self._dropped_while_up(exc)
                # Told once a minute at most: someone may be doing it on purpose.
                if dropped and time.monotonic() - drops_told < _DROPS_TOLD_EVERY:
                    drops_untold += 1
                elif dropped:
                    logger.warning(
                        "%s: Redis at %s closed its Pub/Sub connection though Redis is up, most likely because a message published to one of its channels was larger than Redis' client-output-buffer-limit for pubsub (32 MB by default), or messages came faster than they were read (or a CLIENT KILL)%s. Subscribing again at once; what was published meanwhile is lost.",
                        self.name,
                        self._connection.address,
                        f"; {drops_untold} more time(s) since the last such line"
                        if drops_untold
                        else "",
                    )
                    drops_told, drops_untold = time.monotonic(), 0
                elif self.error is None:
                    log_failure(self.name, exc)
                self._set_error(exc)
                if not dropped:  # Redis is up: no wait, or the channels stay deaf
                    self._stopping.wait(backoff.delay())
                    backoff = backoff.after_failure()
            finally:
                subscription.close()

    def _dropped_while_up(self, error: Exception) -> bool:
        """Whether Redis closed a subscribed connection while it answers: a kill, not an outage.

        Redis says nothing to a client it drops for its output buffer; a
        PING through the pipe, right after, tells that Redis itself is up.
        """
        if not (
            isinstance(error, RedisConnectionError) and error.reason == "unreachable"
        ):
            return False
        try:
            self._connection.execute(
                Ping(), deadline=time.monotonic() + _UP_CHECK_TIMEOUT
            )
        except RedisRPCError:
            return False
        return True

    def _set_error(self, error: Exception | None) -> None:
        # Each consumer reports it too, as consumers with a thread of their own do.
        self.error = error
        for consumer in self._consumers:
            consumer.error = error

    def _open(self, subscription: Subscription) -> None:
        # Subscribing is a command, which may take socket_timeout on a loaded
        # server, and a little more for each thousand channels; stop() and
        # start_timeout cut the wait short anyway.
        connection = self._connection
        for routes, pattern in ((self._channels, False), (self._patterns, True)):
            if routes:
                subscription.subscribe_many(
                    [name.decode() for name in routes],
                    pattern=pattern,
                    timeout=connection.socket_timeout + len(routes) / 1000,
                    stop=self._stopping,
                    sharded=self._shard is not None,
                )
        # Subscribing proves we may read; this proves, before start()
        # returns, that an ACL lets the handlers reply too.
        if any(not c.subscriber.no_reply for c in self._consumers):
            connection.execute_many([Publish(PERMISSION_PROBE_CHANNEL, b"")])

    def _read(self, subscription: Subscription) -> None:
        while not self._stopping.is_set():
            for pattern, channel, data in subscription.get_messages(
                self._poll_interval
            ):
                if pattern is None:
                    targets = self._channels.get(channel, ())
                else:
                    targets = self._patterns.get(pattern, ())
                for consumer in targets:
                    consumer.deliver(data, channel)
