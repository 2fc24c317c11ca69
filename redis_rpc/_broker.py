"""``RedisBroker``: declaring subscribers, the lifecycle, and the public calls.

The broker holds policy and state: what was declared, whether it serves,
and what it sends through. The work is done in the layers below it:
``_client`` sends and waits (``Caller``, ``ReplyListener``), ``_server``
serves (``Serving``), ``_io`` talks to Redis, and ``_fork`` deals with
forks. ``TestRedisBroker`` swaps an in-memory connection in (``_memory``).
"""

from __future__ import annotations

import enum
import inspect
import logging
import threading
import time
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

import attrs

from redis_rpc import _context, _fork
from redis_rpc._client.compose import Composer, ReplyStream
from redis_rpc._client.deadlines import Deadlines
from redis_rpc._client.listener import ReplyListener
from redis_rpc._client.request import (
    Ask,
    Caller,
    forgets_locals,
    with_idempotency_key,
)
from redis_rpc._hooks import Health, Stats, SubscriberStats
from redis_rpc._io.cluster import ClusterBackend
from redis_rpc._io.commands import Ping
from redis_rpc._io.server import RedisBackend, check_target
from redis_rpc._publisher import DEFAULT_PUBLISH_TIMEOUT, Publisher, unmocked
from redis_rpc._server.cancel import Cancellations
from redis_rpc._server.fetch import reader_exit_bound
from redis_rpc._server.handler import Handler
from redis_rpc._server.model import Policy, Subscriber
from redis_rpc._server.serving import Serving, start_error, wait_until_up
from redis_rpc._wire.cancel import read_notice
from redis_rpc._wire.convert import make_converter
from redis_rpc._wire.schemas import (
    ListSub,
    PubSub,
    StreamSub,
    destination,
    subscription,
)
from redis_rpc._wire.signing import coerce_key
from redis_rpc.errors import (
    BrokerClosedError,
    BrokerStateError,
    RedisRPCError,
    SetupError,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence
    from concurrent.futures import Future
    from types import TracebackType

    import cattrs

    from redis_rpc._hooks import Hook
    from redis_rpc._io.interfaces import Backend, Connection
    from redis_rpc._publisher import Recorder
    from redis_rpc._server.serving import Part
    from redis_rpc._wire.message import RedisMessage
    from redis_rpc._wire.schemas import Destination

logger = logging.getLogger(__name__)

F = TypeVar("F", bound="Callable[..., Any]")

# Large enough for any sensible RPC payload, small enough that one bad
# message cannot make a process swallow hundreds of megabytes.
DEFAULT_MAX_MESSAGE_SIZE = 8 * 1024 * 1024


class State(enum.Enum):
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
        idempotency_ttl: Seconds the reply of a message sent with an
            ``idempotency_key`` is kept for its duplicates (a day by
            default): within it, the handler runs once per destination and key.
        **options: Passed to ``redis.Redis.from_url()``.

    Raises:
        SetupError: The options contradict each other.
    """

    # What the broker talks to Redis through; RedisClusterBroker's routes by slot.
    _backend_class: ClassVar[type[RedisBackend | ClusterBackend]] = RedisBackend

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
        idempotency_ttl: float = 86_400.0,
        **options: Any,
    ) -> None:
        if max_workers < 1:
            msg = f"max_workers must be at least 1, not {max_workers}."
            raise SetupError(msg)
        if graceful_timeout < 0 or start_timeout <= 0 or health_check_interval <= 0:
            msg = "graceful_timeout must not be negative, and start_timeout and health_check_interval must be positive."
            raise SetupError(msg)
        if max_message_size is not None and max_message_size <= 0:
            msg = f"max_message_size must be positive or None, not {max_message_size}."
            raise SetupError(msg)
        if not idempotency_ttl > 0:
            msg = f"idempotency_ttl must be a positive number of seconds, not {idempotency_ttl}."
            raise SetupError(msg)
        self._max_workers = max_workers
        self._poll_interval = poll_interval
        self._graceful_timeout = graceful_timeout
        self._start_timeout = start_timeout
        self._converter = converter or make_converter()
        self._signing_key = coerce_key(signing_key)
        self._handler_logger = logger or logging.getLogger("redis_rpc.handler")
        check_target(url, options, several=False)
        self._backend: Backend = self._backend_class(
            url,
            socket_timeout=socket_timeout,
            health_check_interval=health_check_interval,
            options=options,
        )
        # Checked after the URL's own query options have been applied.
        if not 0 < poll_interval < self._backend.socket_timeout:
            msg = f"poll_interval ({poll_interval} s) must be positive and below socket_timeout ({self._backend.socket_timeout} s), which blocking reads must not reach."
            raise SetupError(msg)
        self._policy = Policy(
            max_message_size,
            send_tracebacks,
            signing_key=self._signing_key,
            hooks=tuple(hooks),
            cluster=self._backend.cluster,
            idempotency_ttl=idempotency_ttl,
        )
        self._caller = Caller(
            converter=self._converter,
            signing_key=self._signing_key,
            max_message_size=max_message_size,
            start_timeout=start_timeout,
            hooks=hooks,
        )
        # Fails submitted requests at their deadlines: one thread, started by the first.
        self._deadlines = Deadlines()
        self._composer = Composer(self._caller, self._deadlines)
        # Guards _state, _subscribers, _publishers, _connection, _listener, _serving and _recorder.
        self._lock = threading.Lock()
        self._state = State.NEW
        self._subscribers: list[Subscriber] = []
        self._publishers: dict[Callable[..., Any], list[Destination]] = {}
        # What publish() and request() send through: the backend, or
        # TestRedisBroker's in-memory connection.
        self._connection: Connection = self._backend
        self._listener: ReplyListener | None = None  # started by the first request()
        self._serving: Serving | None = None  # created by start()
        self._recorder: Recorder | None = None  # a TestRedisBroker's, during its block
        self._closed = threading.Event()  # set once close() has finished
        # The requests their callers cancelled, for this broker's handlers.
        self._cancellations = Cancellations()
        # The connection and listener set aside while TestRedisBroker serves in memory.
        self._real: tuple[Connection, ReplyListener | None] = (self._backend, None)
        self._started_before_fork = (
            False  # start() ran in a process we were forked from
        )
        self._warned_fork = False  # the parent said once that it forked while serving
        self._process = _fork.ProcessGuard()
        _fork.track(self)

    def __repr__(self) -> str:
        pending = self._listener.pending if self._listener else 0
        consumers = len(self._serving.consumers) if self._serving else 0
        return (
            f"<RedisBroker {self._state.name} consumers={consumers} "
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
            self._backend.companion(source.name, "")

        def register(func: F) -> F:
            if inspect.iscoroutinefunction(func):
                msg = f"Handler {func.__qualname__} is async; redis_rpc calls handlers on threads, so define it with def."
                raise SetupError(msg)
            handler = Handler(func, self._handler_logger, self._converter, template)
            subscriber = Subscriber(source, handler, no_reply, workers)
            with self._lock:
                if self._state is not State.NEW:
                    msg = f"Cannot add a subscriber to {source}: declare subscribers before start()."
                    raise SetupError(msg)
                self._subscribers.append(subscriber)
            unmocked(func)
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
    ) -> Publisher:
        """A publisher to one channel, list or stream, as FastStream's: decorate handlers with it.

        Stacked with ``@broker.subscriber`` in either order, it also sends the results there
        (``RedisResponse(maxlen=n)`` trims a stream); see ``publish()`` and ``mock`` on it.

        Raises:
            SetupError: Not exactly one destination, or it decorates after ``start()``.
        """
        target = destination(channel, list, stream)

        def register(func: F) -> F:
            with self._lock:
                if self._state is not State.NEW:
                    msg = f"Cannot add a publisher to {target}: declare publishers before start()."
                    raise SetupError(msg)
                self._publishers.setdefault(func, []).append(target)
            return func

        return Publisher(target, register, self.publish, lambda: self._recorder)

    # -- lifecycle -----------------------------------------------------------

    def start(self) -> None:
        """Start the reply listener and one consumer per subscriber, and wait until all are up.

        Raises:
            BrokerStateError: The broker was already started or closed.
            RedisConnectionError: Something did not come up within ``start_timeout``.
        """
        with self._lock:
            if self._state is not State.NEW:
                msg = f"Cannot start a broker that is {self._state.name}; create a new one."
                raise BrokerStateError(msg)
            if self._started_before_fork:
                msg = "Cannot start this broker: it was started before this process was forked, and consumers do not survive a fork. Create or start brokers in each child after forking (gunicorn: in post_fork)."
                raise BrokerStateError(msg)
            self._state = State.STARTING
            listener = self._ensure_listener_locked()
            self._serving = self._new_serving(self._subscribers)
            # Started under the lock, so that a concurrent close() finds them running.
            parts: list[Part] = [listener, *self._serving.start()]
        late = wait_until_up(
            parts,
            timeout=self._start_timeout,
            poll_interval=self._poll_interval,
            cluster=self._backend.cluster,
            starting=lambda: self._state is State.STARTING,
        )
        with self._lock:
            started = not late and self._state is State.STARTING
            if started:
                self._state = State.RUNNING
            closed = self._state in (State.CLOSING, State.CLOSED)
        if closed:
            msg = "The broker was closed while it was starting."
            raise BrokerClosedError(msg)
        if not started:
            # Built before close() clears the causes.
            error = start_error(late, self._start_timeout, self._backend.address)
            self.close()
            raise error
        where, what = self._backend.address, self._serving.destinations()
        logger.info("Broker started on Redis at %s, consuming %s", where, what)

    def _new_serving(
        self, subscribers: Sequence[Subscriber], connection: Connection | None = None
    ) -> Serving:
        """The consumers of *subscribers*, each with its ``@broker.publisher`` destinations.

        *connection*: what their processors claim idempotency keys through,
        if not the backend.
        """
        return Serving(
            [
                attrs.evolve(
                    sub, publishers=tuple(self._publishers.get(sub.handler.func, ()))
                )
                for sub in subscribers
            ],
            self._backend,
            self._policy,
            poll_interval=self._poll_interval,
            cancellations=self._cancellations,
            connection=connection,
        )

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
        serving = self._serving
        if serving is not None and _context.in_handler(serving.processors):
            msg = "Cannot close the broker from inside a handler: it would wait for itself. Call App.exit(), or close() from another thread."
            raise BrokerStateError(msg)
        with self._lock:
            first = self._state not in (State.CLOSING, State.CLOSED)
            if first:
                self._state = State.CLOSING
            serving, listener = self._serving, self._listener
        exit_bound = reader_exit_bound(self._poll_interval)
        if not first:  # another thread is closing: wait until it is done
            self._closed.wait(self._graceful_timeout + exit_bound)
            return
        late = serving.stop(self._graceful_timeout) if serving is not None else []
        if late:
            logger.warning(
                "Still running after graceful_timeout (%s s), left behind on daemon threads: %s",
                self._graceful_timeout,
                "; ".join(late),
            )
        if listener is not None and not listener.stop(exit_bound):
            logger.warning("The reply listener did not stop in time")
        if not self._deadlines.stop(exit_bound):
            logger.warning("The deadlines thread did not stop in time")
        self._connection.close()
        with self._lock:
            self._state = State.CLOSED
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

    @forgets_locals
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
        idempotency_key: str | None = None,
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
            idempotency_key: Have the handler run at most once for this key
                on this destination, within the server's
                ``idempotency_ttl``: publishing again with it (after a
                timeout, say) has no second effect.

        Returns:
            What Redis answered: the number of channel subscribers that got it,
            the list's new length, or the stream entry's id.

        Raises:
            BrokerClosedError: The broker has been closed.
            RedisConnectionError: Redis could not be reached, or did not
                answer within *timeout* (``reason`` is then ``"timeout"``);
                ``maybe_applied`` says whether the message may have been
                delivered all the same, which a retry would duplicate.
            OverloadedError: The list or stream holds its ``max_queued``
                waiting messages already; nothing was sent.
            SetupError: Not exactly one of *channel*, *list* and *stream*,
                an empty or overlong *idempotency_key*, or a *timeout* that
                is not a positive, finite number of seconds.
            MessageTooLargeError: The frame is over ``max_message_size``; nothing was sent.
            TypeError: The body or a header is of a type that cannot be sent.
            ValueError: A header is too long for the frame format.
        """
        self._check_open("publish")
        return self._caller.publish(
            self._connection,
            body,
            destination(channel, list, stream),
            with_idempotency_key(headers, idempotency_key),
            correlation_id,
            reply_to,
            maxlen,
            timeout,
        )

    @forgets_locals
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
        idempotency_key: str | None = None,
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
        and the wait goes on. Should the reply subscription drop meanwhile,
        the reply is fetched once it is back: the server keeps it until
        the caller's deadline.

        Args:
            timeout: Seconds to wait for the reply; ``None`` waits forever.
                From inside a handler, never longer than the caller of
                the message being handled waits, and the shorter deadline
                is sent on.
            fail_fast: On a channel, raise ``NoSubscriberError`` at once
                when Redis reports that nobody received the request. Not
                on a Redis Cluster, which counts one node's subscribers
                only: there the request waits for its timeout.
            idempotency_key: Have the handler run at most once for this key
                on this destination, within the server's
                ``idempotency_ttl``: a retry with the same key (after a
                timeout, say) gets the first run's reply, or waits for it.

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
            RedisConnectionError: Redis could not be reached to send the
                request, or the reply subscription was down when it began.
            OverloadedError: The list or stream holds its ``max_queued``
                waiting requests already (nothing was sent), or the server
                found that the handler would not be done in time.
            MessageTooLargeError: The request or its reply is over
                ``max_message_size``.
            MessageDecodeError: The reply is not a readable frame.
            SetupError: Not exactly one of *channel*, *list* and *stream*,
                *headers* names ``reply_to``, which the request sets itself,
                an empty or overlong *idempotency_key*, or a *timeout* that
                is not a positive, finite number of seconds.
            TypeError: The body or a header is of a type that cannot be sent.
            ValueError: A header is too long for the frame format.
        """
        self._check_open("request")
        return self._caller.request(
            self._ask(
                body,
                destination(channel, list, stream),
                with_idempotency_key(headers, idempotency_key),
                correlation_id,
                timeout,
                fail_fast,
            )
        )

    def submit(
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
        idempotency_key: str | None = None,
    ) -> Future[RedisMessage]:
        """Send a request as ``request()`` does, and return at once a ``Future`` of its reply.

        No thread waits for it: the reply listener completes the future, and
        the broker's deadlines thread fails it with ``RequestTimeoutError``
        once *timeout* has passed. ``future.result()`` returns the reply or
        raises what ``request()`` would; ``concurrent.futures.wait()`` and
        ``as_completed()`` take these futures. ``future.cancel()`` before
        the reply stops waiting for it and tells the handler, whose
        ``message.cancelled`` becomes true. Arguments as for ``request()``.

        Raises:
            As ``request()``, for what is known before the request is on
            its way (a closed broker, a bad argument, a frame too large);
            the rest is raised by ``future.result()``.
        """
        self._check_open("submit")
        return self._composer.submit(
            self._ask(
                body,
                destination(channel, list, stream),
                with_idempotency_key(headers, idempotency_key),
                correlation_id,
                timeout,
                fail_fast,
            )
        )

    def gather(
        self,
        body: Any = None,
        channel: str | PubSub | None = None,
        *,
        headers: Mapping[str, str] | None = None,
        correlation_id: str | None = None,
        timeout: float = 30.0,
    ) -> list[RedisMessage]:
        """Publish a request to a channel and return the reply of every subscriber that answered.

        Redis says how many subscribers received the request; ``gather()``
        returns as soon as that many have replied, or at *timeout* with
        the replies that came, in the order they came (none if nobody
        listens). An error reply is returned as a message too: its
        ``remote_error`` is the ``RemoteError`` it reports. Redis counts
        connections: a broker's handlers on one channel share one, so
        two of them in the same broker count once, and the second reply
        may come after ``gather()`` returned. On a Redis Cluster,
        where Redis counts one node's subscribers only, it always waits
        for *timeout*.

        Raises:
            SetupError: *channel* is not a channel, or *timeout* is not positive.
            RedisConnectionError: Redis could not be reached to publish.
            BrokerClosedError: The broker was closed before or while waiting.
        """
        self._check_open("gather")
        target = (
            channel
            if isinstance(channel, (ListSub, StreamSub))
            else destination(channel, None, None)
        )
        return self._composer.gather(
            self._ask(body, target, headers, correlation_id, timeout, fail_fast=False)
        )

    def stream(
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
    ) -> ReplyStream:
        """Send a request to a generator handler and yield its items, one reply each, as they come.

        *timeout* bounds the wait for each item, not the whole stream. An
        exception the handler raises after some items is raised by the
        iterator after them, as ``RemoteError``; a handler that is not a
        generator yields its one reply, so does a FastStream service.
        Leaving the loop early (``break``, or closing the iterator) tells
        the handler, whose ``message.cancelled`` becomes true and which
        then stops between items.

        Raises:
            As ``request()``; ``RequestTimeoutError`` when an item does not
            come within *timeout*.
        """
        self._check_open("stream")
        return self._composer.stream(
            self._ask(
                body,
                destination(channel, list, stream),
                headers,
                correlation_id,
                timeout,
                fail_fast,
            )
        )

    # -- observing -----------------------------------------------------------

    def stats(self) -> Stats:
        """A snapshot of what this broker did: per subscriber, and per destination called.

        Cheap, and safe to call from any thread; the counters run from the
        broker's creation (subscribers' from ``start()``).
        """
        subscribers: dict[str, SubscriberStats] = {}
        serving = self._serving
        for processor in serving.processors if serving is not None else ():
            key = str(processor.subscriber.source)
            if key in subscribers:  # a second handler on the same source
                key = f"{key} ({processor.subscriber.handler.name})"
            subscribers[key] = processor.counter.snapshot()
        return Stats(subscribers=subscribers, destinations=self._caller.stats())

    def ping(self, timeout: float = 1.0) -> Health:
        """Whether Redis answers and every part of the broker is up; never longer than *timeout*.

        The parts: the reply subscription, once a request started it; and
        once ``start()`` ran, every consumer and the shared channel reader.
        A broker that only calls is healthy when Redis answers and its reply
        subscription, if any, is up. Once closed, it says only that.

        Returns:
            A ``Health``, true when nothing is down; its ``problems`` say
            what is down and why, one line each.
        """
        state = self._state
        if state in (State.CLOSING, State.CLOSED):  # nothing else is left to tell
            return Health(healthy=False, problems=(f"broker: {state.name.lower()}",))
        problems: list[str] = []
        try:
            self._connection.execute(Ping(), deadline=time.monotonic() + timeout)
        except RedisRPCError as exc:  # the pipe's words for a timeout fit a command
            stalled = f"no answer to PING within {timeout} s; Redis at {self._backend.address} may be stalled or overloaded"
            timed_out = getattr(exc, "reason", None) == "timeout"
            problems.append(f"redis: {stalled if timed_out else exc}")
        if self._subscribers and state is not State.RUNNING:
            problems.append(f"broker: {state.name.lower()}, not serving yet")
        listener = self._listener
        if listener is not None and not listener.ready.is_set():
            problems.append(
                f"{listener.name}: {listener.error or 'not subscribed yet'}".rstrip(".")
            )
        if self._serving is not None:
            problems += self._serving.problems()
        return Health(healthy=not problems, problems=tuple(problems))

    # -- internals -----------------------------------------------------------

    def _declared(self) -> tuple[str, tuple[Subscriber, ...]]:
        """Where Redis is (never the URL) and the subscribers declared, each with its publishers.

        For describing the service without starting it (``redis-rpc docs gen``).
        """
        with self._lock:
            subscribers = tuple(
                attrs.evolve(
                    sub, publishers=tuple(self._publishers.get(sub.handler.func, ()))
                )
                for sub in self._subscribers
            )
        return self._backend.address, subscribers

    def _ask(
        self,
        body: Any,
        target: Destination,
        headers: Mapping[str, str] | None,
        correlation_id: str | None,
        timeout: float | None,
        fail_fast: bool,
    ) -> Ask:
        """A request of this broker's, through its connection and reply listener, as asked now."""
        serving = self._serving
        return Ask(
            self._connection,
            self._reply_listener,
            body,
            target,
            headers,
            correlation_id,
            timeout,
            fail_fast,
            serving.processors if serving is not None else (),
        )

    def _check_open(self, action: str) -> None:
        if self._state in (State.CLOSING, State.CLOSED):
            msg = f"Cannot {action}: the broker has been closed."
            raise BrokerClosedError(msg)
        self._process.check(action, used=self._used(), reset=self._after_fork)

    def _used(self) -> bool:
        """Whether this broker started threads or opened connections of its own."""
        return (
            self._state is not State.NEW
            or self._listener is not None
            or self._connection.used
        )

    def _reply_listener(self) -> ReplyListener:
        listener = self._listener
        if listener is None:
            with self._lock:
                listener = self._ensure_listener_locked()
        return listener

    def _ensure_listener_locked(self) -> ReplyListener:
        if self._state in (State.CLOSING, State.CLOSED):
            msg = "Cannot request: the broker has been closed."
            raise BrokerClosedError(msg)
        if self._listener is None:
            self._listener = ReplyListener(
                self._backend,
                cluster=self._backend.cluster,
                poll_interval=self._poll_interval,
                signing_key=self._signing_key,
                on_cancel=self._heard_cancel,
            )
            self._listener.start()
        return self._listener

    def _heard_cancel(self, payload: bytes) -> None:
        """A cancel notice came: tell this broker's handlers, if it verifies."""
        reply_to = read_notice(payload, self._signing_key)
        if reply_to is not None:
            self._cancellations.cancel(reply_to)

    def _after_fork(self) -> None:
        """Forget everything of the parent's but the declarations; runs alone in a forked child.

        The parent's threads do not exist here, so a lock one of them held
        stays held for ever, its listener's ``ready`` event stays set, and
        its sockets are shared with the parent: replace them all. redis-py's
        pool notices the new pid and opens fresh connections by itself.
        """
        self._lock = threading.Lock()
        self._process.renew()
        self._listener, self._serving = None, None
        self._deadlines = Deadlines()
        self._composer = Composer(self._caller, self._deadlines)
        self._connection.after_fork()
        closed = self._state in (State.CLOSING, State.CLOSED)
        self._started_before_fork |= self._state in (State.STARTING, State.RUNNING)
        self._state = State.CLOSED if closed else State.NEW
        self._closed = threading.Event()
        if closed:
            self._closed.set()

    def _forked_while_serving(self) -> None:
        """In the parent after a fork: say once that consumers do not follow into children."""
        serving = self._serving
        if self._state is not State.RUNNING or serving is None or self._warned_fork:
            return
        if not serving.consumers:
            return
        self._warned_fork = True
        _fork.warn_serving(self, len(serving.consumers))


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

    _backend_class = ClusterBackend

    def __init__(
        self, url: str | Sequence[str] = "redis://localhost:6379", **options: Any
    ) -> None:
        check_target(url, options, several=True)
        super().__init__(url if isinstance(url, str) else ",".join(url), **options)
