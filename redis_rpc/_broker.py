"""``RedisBroker``: lifecycle, ``subscriber()``, ``publisher()``, ``publish()``, ``request()``.

The broker holds policy; ``_redis`` does the I/O, the consumers consume and
the reply listener waits for replies.
"""

from __future__ import annotations

import enum
import fnmatch
import inspect
import logging
import os
import threading
import time
import weakref
from concurrent.futures import TimeoutError as FutureTimeoutError
from typing import TYPE_CHECKING, Any, TypeVar

import attrs

from redis_rpc._channel import ChannelConsumer, ChannelHub
from redis_rpc._cluster import ClusterConnection
from redis_rpc._consumer import (
    Consumer,
    Policy,
    Subscriber,
    Watch,
    current_handling,
    in_handler,
    reader_exit_bound,
    stop_all,
)
from redis_rpc._convert import make_converter
from redis_rpc._handler import Handler
from redis_rpc._heartbeat import Heartbeat
from redis_rpc._hooks import (
    MAX_COUNTED_DESTINATIONS,
    OTHER_DESTINATIONS,
    DestinationCounter,
    Event,
    Health,
    Stats,
    SubscriberStats,
    around,
    outcome_of,
)
from redis_rpc._list import ListConsumer
from redis_rpc._message import (
    ACCEPT_ERRORS,
    DEADLINE,
    NONCE,
    REPLY_SHARD,
    REPLY_TO,
    RedisMessage,
    check_size,
    frame_parts,
    new_correlation_id,
)
from redis_rpc._redis import Connection, Ping, Publish, send_command
from redis_rpc._request import ReplyListener, Sent
from redis_rpc._schemas import ListSub, PubSub, StreamSub, destination, subscription
from redis_rpc._signing import coerce_key, signed_frame
from redis_rpc._stream import StreamConsumer
from redis_rpc.errors import (
    BrokerClosedError,
    BrokerStateError,
    NoSubscriberError,
    RedisCommandError,
    RedisConnectionError,
    RedisRPCError,
    RemoteError,
    RequestTimeoutError,
    SetupError,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence
    from types import TracebackType

    import cattrs

    from redis_rpc._hooks import Hook
    from redis_rpc._schemas import Destination

logger = logging.getLogger(__name__)

F = TypeVar("F", bound="Callable[..., Any]")

# Large enough for any sensible RPC payload, small enough that one bad
# message cannot make a process swallow hundreds of megabytes.
DEFAULT_MAX_MESSAGE_SIZE = 8 * 1024 * 1024
# As long as socket_timeout's default: what a publish() took at most before
# it had a timeout of its own.
DEFAULT_PUBLISH_TIMEOUT = 10.0

# Channel subscribers get a ChannelConsumer fed by the broker's ChannelHub.
_CONSUMERS: dict[type[Destination], type[Consumer]] = {
    ListSub: ListConsumer,
    StreamSub: StreamConsumer,
}


# Every broker of this process, so that a forked child can reset them all.
_brokers: weakref.WeakSet[RedisBroker] = weakref.WeakSet()


def _reset_after_fork() -> None:
    # Runs in a forked child before anything else: the child has one thread.
    for broker in list(_brokers):
        broker._after_fork()


def _warn_after_fork() -> None:
    # Runs in the parent: a started broker's consumers stay here, not in the child.
    for broker in list(_brokers):
        broker._forked_while_running()


os.register_at_fork(after_in_child=_reset_after_fork, after_in_parent=_warn_after_fork)

# Taken only in a child forked without the hooks above, by the first threads
# to use a broker there; never held in a process that forks.
_hookless_fork_lock = threading.Lock()


class _State(enum.Enum):
    NEW = "NEW"  # subscribers may be declared; publish() and request() already work
    STARTING = "STARTING"  # start() is bringing consumers up
    RUNNING = "RUNNING"  # consumers and the reply listener are up
    CLOSING = "CLOSING"  # close() is draining; publish() and request() are refused
    CLOSED = "CLOSED"  # nothing of ours is left running


class RedisBroker:
    """A blocking RPC client and server over one Redis server.

    One broker serves a whole process: it is safe to share between any
    number of threads, which may all call ``publish()`` and ``request()``
    at once. Declare subscribers before ``start()``.

    A broker survives ``os.fork()``: in the child it opens its own
    connections and reply listener when first used. Consumers never cross a
    fork: a broker started before the fork cannot be started in the child
    (create or start brokers after forking, as in gunicorn's ``post_fork``).

    Args:
        url: A redis-py URL, such as ``"redis://localhost:6379/0"``.
        max_workers: Default number of handler threads per subscriber.
            With 1, the handler runs on the consumer thread, in order.
        poll_interval: Seconds each blocking read waits before checking
            whether to stop; bounds how long ``close()`` takes to stop reading.
        graceful_timeout: Seconds ``close()`` waits for in-flight handlers.
        start_timeout: Seconds ``start()`` waits for every consumer to come up.
        socket_timeout: Seconds a Redis command may take; must exceed
            *poll_interval*, which blocking reads wait for.
        health_check_interval: Seconds of silence after which a Pub/Sub
            connection sends a ``PING``; no answer within *socket_timeout*
            means the connection is dead, and it is opened again.
        max_message_size: The longest frame, in bytes, this broker sends or
            handles (8 MiB by default; ``None`` for no limit). A longer
            request or reply fails before it is sent; a longer incoming
            message is not handled.
        converter: The ``cattrs.Converter`` that structures typed bodies and
            unstructures attrs instances, dataclasses and datetimes; see
            ``make_converter()``. Each broker builds its own by default.
        send_tracebacks: Put the handler's traceback in error replies. Off by
            default: a traceback tells callers about the server's code.
        signing_key: A secret shared by every redis_rpc peer of a service
            (bytes, or a str taken as UTF-8; at least 16 bytes, such as
            ``secrets.token_bytes(32)``). Requests, events and replies are
            then signed with HMAC-SHA256, and any that are unsigned or
            signed with another key are dropped and logged: handlers never
            see them and callers keep waiting. FastStream peers, which do
            not sign, then cannot talk to this broker. ``None`` (the
            default) signs nothing and accepts everything.
        logger: The logger handed to handler parameters annotated ``Logger``.
        hooks: Callables run around every publish, request and process:
            each takes an ``Event`` and returns a context manager (see
            ``redis_rpc.Event``). Tracing and metrics integrations are hooks.
        **options: Passed to ``redis.Redis.from_url()``.

    Raises:
        SetupError: The options contradict each other.
    """

    # What the broker talks to Redis through; RedisClusterBroker's routes by slot.
    _connection_class: type[Connection] = Connection

    def __init__(
        self,
        url: str = "redis://localhost:6379",
        *,
        max_workers: int = 1,
        poll_interval: float = 1.0,
        graceful_timeout: float = 15.0,
        start_timeout: float = 10.0,
        socket_timeout: float = 10.0,
        health_check_interval: float = 30.0,
        max_message_size: int | None = DEFAULT_MAX_MESSAGE_SIZE,
        converter: cattrs.Converter | None = None,
        send_tracebacks: bool = False,
        logger: logging.Logger | None = None,
        signing_key: bytes | str | None = None,
        hooks: Sequence[Hook] = (),
        **options: Any,
    ) -> None:
        if max_workers < 1:
            msg = f"max_workers must be at least 1, not {max_workers}."
            raise SetupError(msg)
        if graceful_timeout < 0 or start_timeout <= 0 or health_check_interval <= 0:
            msg = "graceful_timeout must not be negative, and start_timeout and health_check_interval must be positive."
            raise SetupError(msg)
        self._max_workers = max_workers
        self._poll_interval = poll_interval
        self._graceful_timeout = graceful_timeout
        self._start_timeout = start_timeout
        if max_message_size is not None and max_message_size <= 0:
            msg = f"max_message_size must be positive or None, not {max_message_size}."
            raise SetupError(msg)
        self._max_message_size = max_message_size
        self._converter = converter or make_converter()
        self._signing_key = coerce_key(signing_key)
        self._hooks = tuple(hooks)
        self._policy = Policy(
            max_message_size,
            send_tracebacks,
            signing_key=self._signing_key,
            hooks=self._hooks,
        )
        # What publish() and request() did, by destination; see stats().
        self._destinations: dict[str, DestinationCounter] = {}
        self._handler_logger = logger or logging.getLogger("redis_rpc.handler")
        _check_target(url, options, several=self._connection_class.cluster)
        self._connection = self._connection_class(
            url,
            socket_timeout=socket_timeout,
            health_check_interval=health_check_interval,
            options=options,
        )
        # Checked after the URL's own query options have been applied.
        if not 0 < poll_interval < self._connection.socket_timeout:
            msg = f"poll_interval ({poll_interval} s) must be positive and below socket_timeout ({self._connection.socket_timeout} s), which blocking reads must not reach."
            raise SetupError(msg)
        # Guards _state, _subscribers, _publishers, _consumers, _listener, _heartbeat and _watch.
        self._lock = threading.Lock()
        self._state = _State.NEW
        self._subscribers: list[Subscriber] = []
        self._publishers: dict[Callable[..., Any], list[Destination]] = {}
        self._consumers: list[Consumer] = []
        self._listener: ReplyListener | None = None
        self._heartbeat: Heartbeat | None = None  # created by start()
        self._watch: Watch | None = None  # created by start()
        self._hub: ChannelHub | None = (
            None  # created by start(), for channel subscribers
        )
        self._closed = threading.Event()  # set once close() has finished
        # The connection and listener set aside while TestRedisBroker serves in memory.
        self._real: tuple[Connection, ReplyListener | None] = (self._connection, None)
        self._started_before_fork = (
            False  # start() ran in a process we were forked from
        )
        # The process whose threads and connections these are; another pid
        # means a fork that skipped os.register_at_fork() (uWSGI without
        # py-call-osafterfork), after which none of them works.
        self._pid = os.getpid()
        self._warned_fork = False  # the parent said once that it forked while serving
        _brokers.add(self)

    def __repr__(self) -> str:
        pending = self._listener.pending if self._listener else 0
        return (
            f"<RedisBroker {self._state.name} consumers={len(self._consumers)} "
            f"pending_requests={pending}>"
        )

    # -- declaring -----------------------------------------------------------

    def subscriber(
        self,
        channel: str | PubSub | None = None,
        *,
        list: str | ListSub | None = None,
        stream: str | StreamSub | None = None,
        no_reply: bool = False,
        max_workers: int | None = None,
    ) -> Callable[[F], F]:
        """Register the decorated function as the handler of one channel, list or stream.

        The handler's first parameter receives the body, structured into
        its annotation (an attrs class, a dataclass, ``list[int]``, ...)
        when it has one; parameters annotated ``Logger`` or ``RedisMessage``
        receive a logger and the message. A channel may be a template,
        ``"logs.{level}"``: it is subscribed as the pattern ``logs.*``, and
        a parameter ``level: str = Path()`` receives the part of the
        channel a message arrived on that stands in the place of
        ``{level}``. Its return value (or a
        ``Response``) is published to the request's ``reply_to`` channel,
        unless *no_reply* is set. A body that does not fit, or a handler that
        raises, gets an error reply when the caller is a redis_rpc broker;
        a FastStream caller gets no reply, as from FastStream. The function
        itself is returned unchanged.

        Raises:
            SetupError: Not exactly one source, a bad signature, a malformed
                channel template or a path parameter it does not name, in a
                cluster a stream or reliable list named with braces but no
                hash tag, or called after ``start()``.
        """
        source = destination(channel, list, stream, fresh=True)
        template = subscription(source)
        workers = self._max_workers if max_workers is None else max_workers
        if workers < 1:
            msg = f"max_workers must be at least 1, not {workers}."
            raise SetupError(msg)
        # One poll may last two poll intervals, and heartbeats come every third
        # of recover_after: below this, a live consumer could look dead.
        if (
            isinstance(source, ListSub)
            and source.reliable
            and source.recover_after <= 6 * self._poll_interval
        ):
            msg = f"{source}: recover_after ({source.recover_after} s) must exceed six poll intervals ({6 * self._poll_interval} s), or live consumers would look dead."
            raise SetupError(msg)
        if isinstance(source, StreamSub) or (
            isinstance(source, ListSub) and source.reliable
        ):
            # In a cluster, refuses a name whose companion keys (heartbeats,
            # processing lists) cannot share its slot: a bad name now, not
            # a consumer that retries until start() times out.
            self._connection.companion(source.name, "")

        def register(func: F) -> F:
            if inspect.iscoroutinefunction(func):
                msg = f"Handler {func.__qualname__} is async; redis_rpc calls handlers on threads, so define it with def."
                raise SetupError(msg)
            handler = Handler(func, self._handler_logger, self._converter, template)
            subscriber = Subscriber(source, handler, no_reply, workers)
            with self._lock:
                if self._state is not _State.NEW:
                    msg = f"Cannot add a subscriber to {source}: declare subscribers before start()."
                    raise SetupError(msg)
                self._subscribers.append(subscriber)
            return func

        return register

    def serve_health(self, channel: str, *, timeout: float = 1.0) -> None:
        """Answer health checks on *channel*: each request gets what ``ping(timeout)`` found.

        For probes that cannot call into the process, such as
        ``redis-rpc health URL CHANNEL`` in a Kubernetes readiness probe:
        they need nothing but the Redis access a caller has. The reply is
        ``{"healthy": bool, "problems": [str, ...]}``. Give each process
        a channel of its own (its host name in it, say) to probe it alone.

        Raises:
            SetupError: As ``subscriber()``: called after ``start()``, or a bad name.
        """

        def health(_body: object = None) -> dict[str, Any]:
            found = self.ping(timeout)
            return {"healthy": found.healthy, "problems": list(found.problems)}

        health.__name__ = health.__qualname__ = "health"
        # Its own worker, so that a backlog elsewhere does not fail the probe.
        self.subscriber(channel, max_workers=1)(health)

    def publisher(
        self,
        channel: str | PubSub | None = None,
        *,
        list: str | ListSub | None = None,
        stream: str | StreamSub | None = None,
    ) -> Callable[[F], F]:
        """Also publish the decorated handler's results to one channel, list or stream.

        Stack it with ``@broker.subscriber``, in either order. A returned
        ``RedisResponse(maxlen=n)`` trims a stream destination.

        Raises:
            SetupError: Not exactly one destination, or called after ``start()``.
        """
        target = destination(channel, list, stream)

        def register(func: F) -> F:
            with self._lock:
                if self._state is not _State.NEW:
                    msg = f"Cannot add a publisher to {target}: declare publishers before start()."
                    raise SetupError(msg)
                self._publishers.setdefault(func, []).append(target)
            return func

        return register

    # -- lifecycle -----------------------------------------------------------

    def start(self) -> None:
        """Start the reply listener and one consumer per subscriber, and wait until all are up.

        Raises:
            BrokerStateError: The broker was already started or closed.
            RedisConnectionError: Something did not come up within ``start_timeout``.
        """
        with self._lock:
            if self._state is not _State.NEW:
                msg = f"Cannot start a broker that is {self._state.name}; create a new one."
                raise BrokerStateError(msg)
            if self._started_before_fork:
                msg = "Cannot start this broker: it was started before this process was forked, and consumers do not survive a fork. Create or start brokers in each child after forking (gunicorn: in post_fork)."
                raise BrokerStateError(msg)
            self._state = _State.STARTING
            listener = self._ensure_listener_locked()
            self._heartbeat = Heartbeat(self._connection)
            self._watch = Watch()
            self._consumers, self._hub = self._create_consumers_locked()
            # Started under the lock, so that a concurrent close() finds them running.
            for consumer in self._consumers:
                consumer.start()
            parts: list[ReplyListener | ChannelHub | Consumer] = [listener]
            if self._hub is not None:
                self._hub.start()
                parts.append(self._hub)  # ready once every channel is subscribed
            parts += [c for c in self._consumers if not isinstance(c, ChannelConsumer)]
        deadline = time.monotonic() + self._start_timeout
        while late := [part for part in parts if not part.ready.is_set()]:
            remaining = deadline - time.monotonic()
            # Retrying cannot cure it; wait only until every late part has
            # said why, so that the error names each cause.
            hopeless = all(part.error is not None for part in late) and any(
                _permanent(part.error, cluster=self._connection.cluster)
                for part in late
            )
            if hopeless or remaining <= 0 or self._state is not _State.STARTING:
                break
            # Short waits, so that a close() from another thread is noticed.
            late[0].ready.wait(min(remaining, self._poll_interval))
        with self._lock:
            started = not late and self._state is _State.STARTING
            if started:
                self._state = _State.RUNNING
            closed = self._state in (_State.CLOSING, _State.CLOSED)
        if closed:
            msg = "The broker was closed while it was starting."
            raise BrokerClosedError(msg)
        if not started:
            error = self._start_error(late)  # before close() clears the causes
            self.close()
            raise error
        logger.info("Broker started with %d consumer(s)", len(self._consumers))

    def _create_consumers_locked(self) -> tuple[list[Consumer], ChannelHub | None]:
        """One consumer per subscriber, and the hub that reads for the channel ones, if any."""
        assert self._heartbeat is not None
        channel_subscribers = [
            sub for sub in self._subscribers if isinstance(sub.source, PubSub)
        ]
        hub = (
            ChannelHub(
                self._connection,
                poll_interval=self._poll_interval,
                max_workers=sum(sub.max_workers for sub in channel_subscribers),
            )
            if channel_subscribers
            else None
        )
        consumers: list[Consumer] = []
        for sub in self._subscribers:
            subscriber = _with_publishers(sub, self._publishers)
            if isinstance(sub.source, PubSub):
                assert hub is not None
                consumers.append(
                    ChannelConsumer(
                        subscriber,
                        self._connection,
                        poll_interval=self._poll_interval,
                        hub=hub,
                        policy=self._policy,
                    )
                )
            else:
                consumers.append(
                    _CONSUMERS[type(sub.source)](
                        subscriber,
                        self._connection,
                        poll_interval=self._poll_interval,
                        policy=self._policy,
                        heartbeat=self._heartbeat,
                        watch=self._watch,
                    )
                )
        return consumers, hub

    def _start_error(
        self, late: list[ReplyListener | ChannelHub | Consumer]
    ) -> RedisRPCError:
        """Why start() failed: each part that did not come up, with its own cause."""
        causes = "; ".join(
            f"{part.name}: {part.error}".rstrip(".")
            if part.error is not None
            else f"{part.name}: not up yet"
            for part in late
        )
        first = next(
            (
                part.error
                for part in late
                if isinstance(part.error, (RedisConnectionError, RedisCommandError))
            ),
            None,
        )
        if first is None:
            msg = f"Could not start within {self._start_timeout} s ({causes}); is Redis reachable at {self._connection.address}?"
            return RedisConnectionError(msg, reason="timeout")
        msg = f"Could not start within {self._start_timeout} s: {causes}."
        error = type(first)(msg, reason=first.reason)
        error.__cause__ = first
        return error

    def close(self) -> None:
        """Stop consuming, let in-flight handlers finish, fail pending requests, disconnect.

        Idempotent, and safe to call from any thread but a handler's (use
        ``App.exit()`` there). Waits up to ``graceful_timeout`` seconds for
        handlers, and returns within that plus about two poll intervals
        whatever the handlers do. When it returns, no thread of the broker
        is running, except handlers that overran ``graceful_timeout``: they
        are named in a warning and left on daemon threads, which do not
        keep the process from exiting.

        Raises:
            BrokerStateError: Called from inside a handler of this broker.
        """
        if in_handler(self._consumers):
            msg = "Cannot close the broker from inside a handler: it would wait for itself. Call App.exit(), or close() from another thread."
            raise BrokerStateError(msg)
        with self._lock:
            first = self._state not in (_State.CLOSING, _State.CLOSED)
            if first:
                self._state = _State.CLOSING
            consumers, listener = list(self._consumers), self._listener
            heartbeat, hub, watch = self._heartbeat, self._hub, self._watch
        if not first:  # another thread is closing: wait until it is done
            self._closed.wait(
                self._graceful_timeout + reader_exit_bound(self._poll_interval)
            )
            return
        drain_deadline = time.monotonic() + self._graceful_timeout
        if hub is not None:
            hub.stop()  # no more deliveries; each consumer then drops what it queued
        late = stop_all(consumers, self._graceful_timeout)
        # After the consumers: a handler stuck while they stop still gets relieved.
        if watch is not None and not watch.stop(reader_exit_bound(self._poll_interval)):
            logger.warning("The watch thread did not stop in time")
        if hub is not None:
            if not hub.join(reader_exit_bound(self._poll_interval)):
                logger.warning("The channel reader did not stop in time")
            # Idle workers end at once; those still in a handler are named below.
            hub.shutdown_workers(
                0.0 if late else max(0.0, drain_deadline - time.monotonic())
            )
        if late:
            logger.warning(
                "Still running after graceful_timeout (%s s), left behind on daemon threads: %s",
                self._graceful_timeout,
                "; ".join(late),
            )
        if listener is not None and not listener.stop(
            reader_exit_bound(self._poll_interval)
        ):
            logger.warning("The reply listener did not stop in time")
        # After the consumers: a handler still running must keep its messages.
        if heartbeat is not None and not heartbeat.stop(
            reader_exit_bound(self._poll_interval)
        ):
            logger.warning("The heartbeat thread did not stop in time")
        self._connection.close()
        with self._lock:
            self._state = _State.CLOSED
        self._closed.set()
        logger.info("Broker closed")

    def __enter__(self) -> RedisBroker:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- sending -------------------------------------------------------------

    def publish(
        self,
        body: Any = None,
        channel: str | PubSub | None = None,
        *,
        list: str | ListSub | None = None,
        stream: str | StreamSub | None = None,
        headers: Mapping[str, str] | None = None,
        correlation_id: str | None = None,
        reply_to: str = "",
        maxlen: int | None = None,
        timeout: float | None = DEFAULT_PUBLISH_TIMEOUT,
    ) -> int | str:
        """Send *body* to one channel, list or stream without waiting for a reply.

        Safe to call from any number of threads at once. A body that is not
        ``None``, ``bytes`` or ``str`` is sent as JSON, unstructured by the
        broker's converter (attrs instances, dataclasses, datetimes, ...).

        Args:
            reply_to: A channel for the handler's result.
            maxlen: Trim a stream destination to about this many entries.
            timeout: Seconds to wait for Redis to take the message (10 by
                default); ``None`` waits up to ``socket_timeout``. A message
                not yet written when it runs out is never sent.

        Returns:
            What Redis answered: the number of channel subscribers that got it,
            the list's new length, or the stream entry's id.

        Raises:
            BrokerClosedError: The broker has been closed.
            RedisConnectionError: Redis could not be reached, or did not
                answer within *timeout* (``reason`` is then ``"timeout"``);
                ``maybe_applied`` says whether the message may have been
                delivered all the same, which a retry would duplicate.
            SetupError: Not exactly one of *channel*, *list* and *stream*.
            MessageTooLargeError: The frame is over ``max_message_size``; nothing was sent.
            TypeError: The body or a header is of a type that cannot be sent.
            ValueError: A header is too long for the frame format.
        """
        self._check_open("publish")
        target = destination(channel, list, stream)
        counter = self._destination_counter(target)
        if not self._hooks:
            result = self._publish(
                body, target, headers, correlation_id, reply_to, maxlen, timeout
            )
            counter.published()
            return result
        # Picked here rather than in _publish(), so that hooks see it.
        correlation_id = correlation_id or new_correlation_id()
        event = Event("publish", str(target), dict(headers or {}), correlation_id)
        result = around(
            self._hooks,
            event,
            lambda: self._publish(
                body, target, event.headers, correlation_id, reply_to, maxlen, timeout
            ),
        )
        counter.published()
        return result

    def _publish(
        self,
        body: Any,
        target: Destination,
        headers: Mapping[str, str] | None,
        correlation_id: str | None,
        reply_to: str,
        maxlen: int | None,
        timeout: float | None,
    ) -> int | str:
        deadline = None if timeout is None else time.monotonic() + timeout
        frame = signed_frame(
            *frame_parts(
                body,
                correlation_id=correlation_id or new_correlation_id(),
                reply_to=reply_to,
                headers=headers,
                converter=self._converter,
            ),
            self._signing_key,
        )
        check_size(frame, self._max_message_size, "The message")
        result = self._connection.execute(
            send_command(target, frame, maxlen), deadline=deadline
        )
        return result.decode() if isinstance(result, bytes) else int(result)

    def request(
        self,
        body: Any = None,
        channel: str | PubSub | None = None,
        *,
        list: str | ListSub | None = None,
        stream: str | StreamSub | None = None,
        headers: Mapping[str, str] | None = None,
        correlation_id: str | None = None,
        timeout: float | None = 30.0,
        fail_fast: bool = True,
    ) -> RedisMessage:
        """Send *body* to one channel, list or stream and block until the reply arrives.

        Safe to call from any number of threads at once. The reply always
        comes back over Pub/Sub, whatever carried the request. The body is
        encoded as by ``publish()``; ``request(...).decode(Item)`` structures
        the reply. The request tells the server when the caller will stop
        waiting, so that a server with a backlog skips it after that, and
        that the caller understands error replies. The reply channel is
        random, and a reply that echoes another request's nonce (or, with a
        ``signing_key``, one that does not verify) is dropped and logged,
        and the wait goes on.

        Args:
            timeout: Seconds to wait for the reply; ``None`` waits forever.
                From inside a handler, never longer than the caller of
                the message being handled waits, and the shorter deadline
                is sent on.
            fail_fast: On a channel, raise ``NoSubscriberError`` at once
                when Redis reports that nobody received the request. Not
                on a Redis Cluster, which counts one node's subscribers
                only: there the request waits for its timeout.

        Returns:
            The reply, as a ``RedisMessage``.

        Raises:
            RemoteError: The handler raised, or the request did not fit its
                parameter type (``type_name`` is then ``"ValidationError"``).
            NoSubscriberError: Nobody subscribes to the channel (see *fail_fast*).
            RequestTimeoutError: No reply within *timeout* (also a ``TimeoutError``),
                or, from a handler, its caller's deadline has already passed.
            BrokerStateError: Called from a handler to that handler's own
                single-worker subscriber, which could not answer in time.
            BrokerClosedError: The broker was closed before or while waiting.
            RedisConnectionError: Redis could not be reached, or the reply
                subscription was lost while waiting.
            MessageTooLargeError: The request or its reply is over
                ``max_message_size``.
            MessageDecodeError: The reply is not a readable frame.
            SetupError: Not exactly one of *channel*, *list* and *stream*, or
                *headers* names ``reply_to``, which the request sets itself.
            TypeError: The body or a header is of a type that cannot be sent.
            ValueError: A header is too long for the frame format.
        """
        self._check_open("request")
        target = destination(channel, list, stream)
        counter = self._destination_counter(target)
        if not self._hooks:
            started = time.monotonic()
            try:
                reply = self._request(
                    body, target, headers, correlation_id, timeout, fail_fast
                )
            except BaseException as exc:
                counter.requested(outcome_of(exc), time.monotonic() - started)
                raise
            counter.requested("ok", time.monotonic() - started)
            return reply
        correlation_id = correlation_id or new_correlation_id()  # for the hooks to see
        event = Event("request", str(target), dict(headers or {}), correlation_id)

        def call() -> RedisMessage:
            event.message = self._request(
                body, target, event.headers, correlation_id, timeout, fail_fast
            )
            return event.message

        try:
            return around(self._hooks, event, call)
        finally:
            counter.requested(event.outcome, event.duration)

    def _request(
        self,
        body: Any,
        target: Destination,
        headers: Mapping[str, str] | None,
        correlation_id: str | None,
        timeout: float | None,
        fail_fast: bool,
    ) -> RedisMessage:
        timeout = self._nested_timeout(target, timeout)
        if headers and REPLY_TO in headers:
            msg = "request() chooses the reply channel itself; to send the result elsewhere, use publish(reply_to=...)."
            raise SetupError(msg)
        correlation_id = correlation_id or new_correlation_id()
        deadline = None if timeout is None else time.monotonic() + timeout
        ours = {ACCEPT_ERRORS: "1"}
        if timeout is not None:  # the server's clock: Unix time, to the millisecond
            ours[DEADLINE] = f"{time.time() + timeout:.3f}"
        listener = self._reply_listener()

        def timed_out(msg: str) -> RequestTimeoutError:
            return RequestTimeoutError(
                msg,
                destination=str(target),
                correlation_id=correlation_id,
                timeout=timeout or 0.0,
            )

        if not listener.wait_ready(self._start_timeout if timeout is None else timeout):
            msg = f"The reply subscription was not up within {timeout} s; no request was sent to {target}."
            raise timed_out(msg)
        reply_to, ours[NONCE], future = listener.register(correlation_id)
        if listener.reply_shard is not None:
            ours[REPLY_SHARD] = listener.reply_shard
        try:
            frame = signed_frame(
                *frame_parts(
                    body,
                    correlation_id=correlation_id,
                    reply_to=reply_to,
                    headers={**headers, **ours} if headers else ours,
                    converter=self._converter,
                ),
                self._signing_key,
            )
            check_size(frame, self._max_message_size, "The request")
            command = send_command(target, frame)

            def unheard() -> NoSubscriberError:
                msg = f"Nobody subscribes to {target}, so the request was not delivered; start a consumer (or pass fail_fast=False to wait anyway)."
                return NoSubscriberError(msg, destination=str(target))

            # On a channel, Redis' answer says whether anybody got it.
            # In a cluster, Redis counts the subscribers of one node only.
            counted = (
                fail_fast
                and isinstance(command, Publish)
                and (command.sharded or not self._connection.cluster)
            )
            sent = Sent(listener, reply_to, unheard if counted else None)
            try:
                try:  # a failure to send fails the future, and is in sent.error
                    self._connection.send(command, deadline=deadline, outcome=sent)
                except RedisConnectionError as exc:
                    sent.error = exc
                    raise
                payload = future.result(
                    None if deadline is None else max(0.0, deadline - time.monotonic())
                )
            except RedisConnectionError as exc:
                # Only a failure to send; a lost reply subscription stays as it is.
                if deadline is None or exc.reason != "timeout" or exc is not sent.error:
                    raise
                outcome = (
                    "may have been delivered" if exc.maybe_applied else "was not sent"
                )
                msg = f"Redis did not take the request to {target} within {timeout} s, so it {outcome} (correlation_id={correlation_id!r}); Redis may be stalled or overloaded."
                raise timed_out(msg) from exc
        except FutureTimeoutError:
            msg = f"No reply from {target} within {timeout} s (correlation_id={correlation_id!r}); is a consumer running?"
            raise timed_out(msg) from None
        finally:
            listener.discard(reply_to)
        check_size(payload, self._max_message_size, "The reply")
        reply = RedisMessage.from_payload(payload, self._converter)
        error = reply.error_details()
        if error is not None:
            raise RemoteError(
                **error, destination=str(target), correlation_id=correlation_id
            )
        return reply

    def _nested_timeout(
        self, target: Destination, timeout: float | None
    ) -> float | None:
        """The timeout of a request made from inside a handler: never past its caller's deadline.

        Raises:
            BrokerStateError: The request goes to the calling handler's own
                subscriber, whose only worker is the calling thread.
            RequestTimeoutError: The message being handled has expired.
        """
        handling = current_handling()
        if handling is None:
            return timeout
        consumer, message = handling
        source = consumer.subscriber.source
        if (
            consumer in self._consumers
            and consumer.subscriber.max_workers == 1
            and type(source) is type(target)
            and (
                _reaches(source, target.name)
                if isinstance(source, PubSub)
                else source.name == target.name
            )
        ):
            msg = f"Cannot request {target} from inside its own handler: its only worker is the calling thread, so this process could not answer before the timeout. Call the function directly, or give that subscriber max_workers=2 or more."
            raise BrokerStateError(msg)
        if message.deadline is None:
            return timeout
        remaining = message.deadline - time.time()
        if remaining <= 0:
            msg = f"No time left to request {target}: the caller of the message being handled (correlation_id={message.correlation_id[:100]!r}) stopped waiting {-remaining:.3f} s ago."
            raise RequestTimeoutError(
                msg,
                destination=str(target),
                correlation_id=message.correlation_id,
                timeout=0.0 if timeout is None else timeout,
            )
        return remaining if timeout is None else min(timeout, remaining)

    def stats(self) -> Stats:
        """A snapshot of what this broker did: per subscriber, and per destination called.

        Cheap, and safe to call from any thread; the counters run from the
        broker's creation (subscribers' from ``start()``).
        """
        subscribers: dict[str, SubscriberStats] = {}
        for consumer in list(self._consumers):
            key = str(consumer.subscriber.source)
            if key in subscribers:  # a second handler on the same source
                key = f"{key} ({consumer.subscriber.handler.name})"
            subscribers[key] = consumer.counter.snapshot()
        destinations = {
            key: counter.snapshot() for key, counter in list(self._destinations.items())
        }
        return Stats(subscribers=subscribers, destinations=destinations)

    def ping(self, timeout: float = 1.0) -> Health:
        """Whether Redis answers and every part of the broker is up; never longer than *timeout*.

        The parts: the reply subscription, once a request started it; and
        once ``start()`` ran, every consumer and the shared channel reader.
        A broker that only calls is healthy when Redis answers and its reply
        subscription, if any, is up.

        Returns:
            A ``Health``, true when nothing is down; its ``problems`` say
            what is down and why, one line each.
        """
        problems: list[str] = []
        deadline = time.monotonic() + timeout
        try:
            self._connection.execute(Ping(), deadline=deadline)
        except RedisRPCError as exc:
            problems.append(f"redis: {exc}")
        state = self._state
        if state in (_State.CLOSING, _State.CLOSED):
            problems.append(f"broker: {state.name.lower()}")
        elif self._subscribers and state is not _State.RUNNING:
            problems.append(f"broker: {state.name.lower()}, not serving yet")
        listener = self._listener
        if listener is not None and not listener.ready.is_set():
            problems.append(
                f"{listener.name}: {listener.error or 'not subscribed yet'}".rstrip(".")
            )
        parts: list[Consumer | ChannelHub] = [
            c for c in self._consumers if not isinstance(c, ChannelConsumer)
        ]
        if self._hub is not None:
            parts.append(self._hub)
        for part in parts:
            if part.error is not None:
                problems.append(f"{part.name}: {part.error}".rstrip("."))
            elif not part.ready.is_set():
                problems.append(f"{part.name}: not up yet")
        return Health(healthy=not problems, problems=tuple(problems))

    def _destination_counter(self, target: Destination) -> DestinationCounter:
        key = str(target)
        counter = self._destinations.get(key)
        if counter is None:
            if len(self._destinations) >= MAX_COUNTED_DESTINATIONS:
                key = OTHER_DESTINATIONS  # so many names: count the rest together
            counter = self._destinations.setdefault(key, DestinationCounter())
        return counter

    def _check_open(self, action: str) -> None:
        if self._state in (_State.CLOSING, _State.CLOSED):
            msg = f"Cannot {action}: the broker has been closed."
            raise BrokerClosedError(msg)
        if self._pid != os.getpid():
            self._adopt_hookless_fork(action)

    def _adopt_hookless_fork(self, action: str) -> None:
        """In a child forked without Python's fork hooks: start afresh, unless the parent used us.

        uWSGI forks that way by default. A broker that the parent never
        used holds nothing of the parent's, so the child resets it as the
        fork hooks would have; one that started threads or opened
        connections cannot follow, because those stay the parent's.

        Raises:
            BrokerStateError: The parent used this broker before the fork.
        """
        with _hookless_fork_lock:
            if self._pid == os.getpid():  # another thread of the child did it
                return
            if (
                self._state is _State.NEW
                and self._listener is None
                and not self._connection.used
            ):
                self._after_fork()
                return
        msg = (
            f"Cannot {action}: this process (pid {os.getpid()}) was forked from"
            f" pid {self._pid} without running Python's fork hooks, after the"
            " broker had started threads or opened connections there, so they"
            " are still the parent's, and replies would go to the parent. uWSGI"
            " forks this way unless told otherwise: set py-call-osafterfork = true"
            " (or lazy-apps = true), or create the broker after the fork, or do"
            " not use it before."
        )
        raise BrokerStateError(msg)

    def _forked_while_running(self) -> None:
        """In the parent after a fork: say once that consumers do not follow into children."""
        if (
            self._state is not _State.RUNNING
            or not self._consumers
            or self._warned_fork
        ):
            return
        self._warned_fork = True
        logger.warning(
            "This process forked while %r was serving: its %d consumer(s) keep running"
            " in this process only, and the child cannot start it. Start serving"
            " brokers in each child after the fork instead (gunicorn: post_fork; "
            "uWSGI: lazy-apps).",
            self,
            len(self._consumers),
        )

    def _reply_listener(self) -> ReplyListener:
        listener = self._listener
        if listener is None:
            with self._lock:
                listener = self._ensure_listener_locked()
        return listener

    def _ensure_listener_locked(self) -> ReplyListener:
        if self._state in (_State.CLOSING, _State.CLOSED):
            msg = "Cannot request: the broker has been closed."
            raise BrokerClosedError(msg)
        if self._listener is None:
            self._listener = ReplyListener(
                self._connection,
                poll_interval=self._poll_interval,
                signing_key=self._signing_key,
            )
            self._listener.start()
        return self._listener

    # -- in memory, for TestRedisBroker ---------------------------------------

    def _serve_in_memory(
        self, connection: Connection
    ) -> tuple[ReplyListener, list[Consumer]]:
        """Swap in *connection* and serve through it, with consumers that are never started.

        The broker counts as ``RUNNING`` until ``_stop_serving_in_memory()``:
        ``request()`` and ``publish()`` run as ever, but on *connection*.
        Returned for *connection* to hand messages to: a reply listener
        without a subscription, and the consumers built as ``start()``
        builds them. Nothing here starts a thread or opens a socket.

        Raises:
            BrokerStateError: The broker is not ``NEW``: started, closed,
                or already serving in memory.
        """
        with self._lock:
            if self._state is not _State.NEW:
                msg = f"Cannot test a broker that is {self._state.name}: hand TestRedisBroker a broker that was never started."
                raise BrokerStateError(msg)
            self._real = self._connection, self._listener
            self._connection = connection
            self._listener = listener = ReplyListener(
                connection,
                poll_interval=self._poll_interval,
                signing_key=self._signing_key,
            )
            listener.accept_in_memory()
            self._heartbeat, self._watch = Heartbeat(connection), Watch()
            self._consumers, self._hub = self._create_consumers_locked()
            self._state = _State.RUNNING
            return listener, list(self._consumers)

    def _stop_serving_in_memory(self) -> None:
        """Undo ``_serve_in_memory()``: ``NEW`` again, on the real connection, unless closed meanwhile."""
        with self._lock:
            listener = self._listener
            self._connection, self._listener = self._real
            self._consumers, self._hub = [], None
            self._heartbeat = self._watch = None
            closed = self._state is not _State.RUNNING
            if not closed:
                self._state = _State.NEW
        if listener is not None:
            listener.stop(0.0)  # fails a request still waiting in another thread
        if closed:  # close() ran in memory: what was set aside is closed too
            real_listener = self._real[1]
            if real_listener is not None and not real_listener.stop(
                reader_exit_bound(self._poll_interval)
            ):
                logger.warning("The reply listener did not stop in time")
            self._connection.close()

    def _after_fork(self) -> None:
        """Forget everything of the parent's but the declarations; runs alone in a forked child.

        The parent's threads do not exist here, so a lock one of them held
        stays held for ever, its listener's ``ready`` event stays set, and
        its sockets are shared with the parent: replace them all. redis-py's
        pool notices the new pid and opens fresh connections by itself.
        """
        self._lock = threading.Lock()
        self._pid = os.getpid()
        self._consumers, self._listener, self._hub = [], None, None
        self._watch = None
        self._connection.after_fork()
        closed = self._state in (_State.CLOSING, _State.CLOSED)
        self._started_before_fork |= self._state in (_State.STARTING, _State.RUNNING)
        self._state = _State.CLOSED if closed else _State.NEW
        self._closed = threading.Event()
        if closed:
            self._closed.set()


def _permanent(error: Exception | None, *, cluster: bool) -> bool:
    """Whether *error* will not go away by retrying: start() need not wait it out.

    ``MOVED`` is for good when a single-server broker talks to a cluster
    node; a cluster broker follows it.
    """
    permanent = (
        ("authentication", "permission")
        if cluster
        else ("authentication", "permission", "moved")
    )
    return getattr(error, "reason", None) in permanent


def _with_publishers(
    subscriber: Subscriber, publishers: Mapping[Callable[..., Any], list[Destination]]
) -> Subscriber:
    return attrs.evolve(
        subscriber, publishers=tuple(publishers.get(subscriber.handler.func, ()))
    )


def _reaches(source: PubSub, channel: str) -> bool:
    """Whether a message published to *channel* reaches a subscriber of *source*."""
    template = subscription(source)
    assert template is not None  # a channel always has one
    if template.names:
        return bool(template.values(channel))
    if source.pattern:
        return fnmatch.fnmatchcase(channel, template.subscription)
    return channel == template.subscription


def _check_target(url: object, options: Mapping[str, Any], *, several: bool) -> None:
    """Refuse a redis-py client or pool where a URL belongs, with what to pass instead.

    Only a cluster takes *several* URLs.

    Raises:
        SetupError: *url* is not a URL, or *options* hold a connection pool.
    """
    advice = "redis_rpc opens its own connections from a URL: pass redis://host:port for one server, redis+sentinel://sentinel:26379/service for a Sentinel-managed one, or RedisClusterBroker('redis://node:7000') for a Redis Cluster"
    if "connection_pool" in options:
        msg = f"connection_pool is not an option here: {advice}."
        raise SetupError(msg)
    urls = [url] if isinstance(url, str) else url if several else None
    if not (isinstance(urls, (list, tuple)) and all(isinstance(u, str) for u in urls)):
        msg = f"Expected a Redis URL, not {type(url).__name__}: {advice}."
        raise SetupError(msg)


class RedisClusterBroker(RedisBroker):
    """A ``RedisBroker`` for a Redis Cluster: the same API, routed by hash slot.

    Lists and streams live on the master of their key's slot, and each
    command goes there; when a slot moves or a replica takes over from a
    dead master, commands and consumers follow by themselves. Channels use
    classic Pub/Sub, which a cluster spreads to every node, so FastStream
    peers on the same cluster talk to this broker as to any other.

    Differences from ``RedisBroker``: the companion keys of a list or stream
    (and its default dead letters) are named ``{name}:...``, so that they
    share its slot; a transaction spanning slots (a dead letter named by
    you on another slot) runs as separate commands, in order; and
    ``request(fail_fast=True)`` on a classic channel does not raise
    ``NoSubscriberError``, since a cluster counts only one node's
    subscribers.

    Args:
        url: The URL of any node (``redis://host:7000``), or several, as a
            sequence or separated by commas: the first that answers tells
            where the others are. Database 0 only.
        **options: As for ``RedisBroker``.
    """

    _connection_class = ClusterConnection

    def __init__(
        self, url: str | Sequence[str] = "redis://localhost:6379", **options: Any
    ) -> None:
        super().__init__(url, **options)  # type: ignore[arg-type]
