"""The consume loop shared by all transports: start, stop, backpressure, replies.

One consumer thread per subscriber fetches messages and hands each to the
subscriber's handler, inline when ``max_workers == 1`` (which keeps order)
or on a ``WorkerPool`` of daemon threads otherwise. A slot from a bounded semaphore is
taken *before* each fetch and given back when the handler is done, so a
consumer never takes out of Redis more than its workers can start on. Under
a backlog, one fetch takes several messages, one per free worker: the batch
doubles while fetches come back full, and falls back to one when they do not.
"""

from __future__ import annotations

import abc
import collections
import functools
import logging
import threading
import time
import traceback
import types
from typing import TYPE_CHECKING, Any

import attrs

from redis_rpc._backoff import Backoff
from redis_rpc._executor import WorkerPool
from redis_rpc._hooks import Event, SubscriberCounter, around
from redis_rpc._message import (
    NONCE,
    RedisMessage,
    RedisResponse,
    Response,
    check_size,
    error_frame_parts,
    frame_parts,
)
from redis_rpc._redis import Command, Owed, Publish, Reader, RPush, XAdd, send_command
from redis_rpc._schemas import PubSub
from redis_rpc._signing import check_request, signed_frame
from redis_rpc.errors import (
    MessageDecodeError,
    MessageTooLargeError,
    RedisRPCError,
    ValidationError,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence

    from redis_rpc._handler import Handler
    from redis_rpc._heartbeat import Heartbeat
    from redis_rpc._hooks import Hook
    from redis_rpc._redis import Connection
    from redis_rpc._schemas import Destination

logger = logging.getLogger(__name__)

# The first fetch waits at most this long: it proves that Redis lets us
# read (an ACL may not), and start() waits for it.
_FIRST_FETCH_TIMEOUT = 0.01

PERMISSION_PROBE_CHANNEL = "redis_rpc.reply.permission-check"
# What hooks add to a reply when there are none, or when none added anything.
_NO_HEADERS: Mapping[str, str] = types.MappingProxyType({})


class _Local(threading.local):
    """What the calling thread is busy with, each attribute with its default."""

    consumer: Consumer | None = None  # whose handler the thread is running
    message: RedisMessage | None = None  # on what
    # How the message being handled went, for the counters: set by _process().
    outcome = "rejected"
    dead = False  # moved to a dead-letter list or stream
    seconds = 0.0  # spent in the handler


_local = _Local()

# A subscriber whose handlers typically return within this many seconds has
# them run on the consumer thread itself, batch by batch, with no hand-off
# to a worker (which costs more than such a handler).
_INLINE_BELOW = 0.001
# Weight of the newest handler time in the running average.
_TYPICAL_WEIGHT = 0.05


def in_handler(consumers: Sequence[Consumer]) -> bool:
    """True when called from inside a handler of one of *consumers*."""
    return getattr(_local, "consumer", None) in consumers


def current_handling() -> tuple[Consumer, RedisMessage] | None:
    """The consumer whose handler this thread is running, and its message; None outside handlers."""
    consumer = getattr(_local, "consumer", None)
    message = getattr(_local, "message", None)
    return None if consumer is None or message is None else (consumer, message)


def run_logged(name: str, loop: Callable[[], None]) -> None:
    """Run a thread's *loop*, logging its death, which only a bug can cause, as critical."""
    try:
        loop()
    except BaseException:
        logger.critical("%s died", name, exc_info=True)
        raise


def log_failure(name: str, error: Exception) -> None:
    """Say that the loop of *name* failed and retries: once per outage, not per retry.

    Our own errors (Redis went away, refused a command) are warnings; any
    other is a bug somewhere and is logged as an error with its traceback.
    """
    level = logging.WARNING if isinstance(error, RedisRPCError) else logging.ERROR
    logger.log(
        level,
        "%s failed, retrying with backoff: %s",
        name,
        error,
        exc_info=level == logging.ERROR,
    )


def reader_exit_bound(poll_interval: float) -> float:
    """How long a reader thread may take to notice a stop: a slot wait, a fetch, a margin."""
    return 2 * poll_interval + 0.5


@attrs.frozen
class Subscriber:
    """A handler registered for one source, as declared by ``@broker.subscriber``."""

    source: Destination
    handler: Handler
    no_reply: bool
    max_workers: int
    publishers: tuple[Destination, ...] = ()


@attrs.frozen
class Policy:
    """What the broker decides for all its consumers."""

    max_message_size: int | None = None
    send_tracebacks: bool = False
    # Incoming requests and events must be signed with it, and all we send is.
    signing_key: bytes | None = attrs.field(default=None, kw_only=True, repr=False)
    # Run around every handler call; see _hooks.
    hooks: tuple[Hook, ...] = attrs.field(default=(), kw_only=True)


DEFAULT_POLICY = Policy()


@attrs.frozen
class Delivery:
    """One message taken out of Redis, and how to acknowledge it, if at all.

    Attributes:
        payload: The message as stored.
        ack: The command that settles it once it is done with, if any.
        where: Where to find it again in a log line, such as ``"entry 1-0"``.
        deliveries: How many times it has been handed to a consumer, this one included.
        path: The values of the channel template's placeholders, if any
            (see ``RedisMessage.path``).
    """

    payload: bytes
    ack: Command | None = None
    where: str = ""
    deliveries: int = 1
    path: Mapping[str, str] | None = None
    # Whether it holds one of the consumer's slots: one taken ahead of the
    # free workers (ListSub(prefetch=...)) takes one before it starts.
    slot: bool = True


class Consumer(abc.ABC):
    """Runs one subscriber: a named thread fetching from Redis, plus its workers.

    ``start()``, ``stop()``, ``join_reader()`` and ``drain()`` may be called
    from any thread; the fetch methods run only on the consumer's own thread.
    """

    def __init__(
        self,
        subscriber: Subscriber,
        connection: Connection,
        *,
        poll_interval: float,
        policy: Policy = DEFAULT_POLICY,
        heartbeat: Heartbeat | None = None,
        watch: Watch | None = None,
    ) -> None:
        self.subscriber = subscriber
        # Shows other processes that this consumer is alive, where that matters.
        self._heartbeat = heartbeat
        self._policy = policy
        self.name = f"redis_rpc:{subscriber.source}"
        # Set once the source is open and a first fetch came back: Redis
        # lets us read it.
        self.ready = threading.Event()
        # Why the consumer is not consuming, while it is not; read by start().
        self.error: Exception | None = None
        self._connection = connection
        self._poll_interval = poll_interval
        self._stopping = threading.Event()
        self._batch = 1  # how many messages the next fetch may take
        # How many a fetch may take whatever the free workers (ListSub(prefetch=)).
        self._prefetch: int = getattr(subscriber.source, "prefetch", 1)
        workers = subscriber.max_workers
        self._slots = threading.BoundedSemaphore(workers)
        self._pool = WorkerPool(workers, self.name) if workers > 1 else None
        # What each handler thread is busy with, by thread id, for the
        # warning about handlers that overrun close(). Each thread writes
        # only its own key.
        self._busy: dict[int, str] = {}
        # Messages fetched in the batch being handled inline, not started yet.
        self._spare: collections.deque[Delivery] = collections.deque()
        # When the inline handler now running started (time.monotonic()); 0.0 when none is.
        self.inline_since = 0.0
        # A running average of the handlers' wall time, in seconds.
        self._typical = 0.0
        self._watch = watch
        self.counter = SubscriberCounter()  # read by broker.stats()
        if watch is not None and workers > 1:
            watch.add(self)
        # Guards _thread, the fetching thread, which relieve() replaces.
        self._role_lock = threading.Lock()
        self._is_open = False
        self._backoff = Backoff()
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        # The blocking reads' own connection, which also carries what the
        # handlers produced since the previous read; opened by _reads().
        self._reader: Reader | None = None
        source = subscriber.source
        self._owed = Owed(
            connection,
            f"the replies or acks of {self.name}",
            key=None if isinstance(source, PubSub) else source.name,
        )

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Ask the loop to stop taking messages; it does within one poll interval."""
        self._stopping.set()

    @property
    def exit_bound(self) -> float:
        """How long the consume loop may take to notice ``stop()``."""
        return reader_exit_bound(self._poll_interval)

    def join_reader(self, timeout: float) -> bool:
        """Wait up to *timeout* seconds for the consume loop to end; True if it did."""
        deadline = time.monotonic() + timeout
        while True:
            thread = self._thread
            if thread.ident is not None:  # started
                thread.join(max(0.0, deadline - time.monotonic()))
            if thread is self._thread:  # not relieved meanwhile
                return not thread.is_alive()

    def relieve(self, since: float) -> None:
        """Take the fetching away from a consumer thread stuck in an inline handler since *since*.

        Called by the ``Watch``. The messages of its batch that were waiting
        go to the workers, and a new consumer thread fetches on; the stuck
        one ends once its handler returns. Nothing happens if that handler
        has returned meanwhile.
        """
        with self._role_lock:
            if self.inline_since != since:
                return
            self.inline_since = 0.0
            waiting, ahead = 0, []
            while self._spare:
                try:
                    delivery = self._spare.popleft()
                except IndexError:  # the consumer thread took it after all
                    break
                if (
                    not delivery.slot
                ):  # read ahead: the successor starts it once a slot is free
                    ahead.append(delivery)
                    continue
                assert self._pool is not None  # only pooled consumers are watched
                self._pool.submit(functools.partial(self._handle, delivery))
                waiting += 1
            self._spare.extendleft(reversed(ahead))
            if not self._stopping.is_set():
                self._thread = threading.Thread(
                    target=self._run, name=self.name, daemon=True
                )
                self._thread.start()
        logger.debug(
            "%s: a handler has run inline for %.3f s; a new thread fetches, %d waiting message(s) went to workers",
            self.name,
            time.monotonic() - since,
            waiting,
        )

    def drain(self, timeout: float) -> bool:
        """Wait up to *timeout* seconds for in-flight handlers, then let the workers go.

        Call after ``join_reader()``: a message the loop popped must still
        reach a worker, so the workers are shut down only once it ended.

        Returns:
            Whether every handler finished in time. Those that did not keep
            running on daemon threads, which do not keep the process alive.
        """
        deadline = time.monotonic() + timeout
        taken = 0
        # Holding every slot means no handler is running any more.
        while taken < self.subscriber.max_workers and self._slots.acquire(
            timeout=max(0.0, deadline - time.monotonic())
        ):
            taken += 1
        finished = taken == self.subscriber.max_workers and not self._thread.is_alive()
        if self._pool is not None and not self._thread.is_alive():
            # Idle workers end at once; busy ones are not waited for.
            self._pool.shutdown(timeout=0.0 if not finished else timeout)
        return finished

    def busy(self) -> list[str]:
        """What the handlers still running are busy with, one line each."""
        return list(self._busy.values())

    # -- the consumer thread -------------------------------------------------

    @abc.abstractmethod
    def _open(self) -> None:
        """Subscribe, create the group, or check the connection."""

    @abc.abstractmethod
    def _fetch(self, timeout: float, count: int) -> list[Delivery]:
        """Take at most *count* messages, waiting up to *timeout* seconds for the first."""

    def _close(self) -> None:
        """Release what ``_open()`` took, and send what is owed; must not raise."""
        self._owed.flush()
        if self._reader is not None:
            self._reader.close()

    def _reads(self) -> Reader:
        """The connection for this consumer's blocking reads."""
        if self._reader is None:
            self._reader = self._connection.reader()
        return self._reader

    def _probes(self) -> list[Command]:
        """Harmless commands that the consumer will need to run later: replies, acks.

        The first fetch proves that we may read; these prove, before
        ``start()`` returns, that an ACL lets us answer and settle too.
        """
        if self.subscriber.no_reply:
            return []
        # Replies go to channels under this prefix; nobody listens on this one.
        return [Publish(PERMISSION_PROBE_CHANNEL, b"")]

    def _check_permissions(self) -> None:
        probes = self._probes()
        if probes:
            self._connection.execute_many(probes)

    def _run(self) -> None:
        run_logged(self.name, self._loop)

    def _fetching(self) -> bool:
        """Whether the calling thread is the one that fetches (and was not relieved)."""
        return self._thread is threading.current_thread()

    def _loop(self) -> None:
        try:
            while not self._stopping.is_set() and self._fetching():
                try:
                    if not self._is_open:
                        self._open()
                        self._check_permissions()
                        self._is_open = True
                    self._step()
                    if not self._fetching():  # relieved: the successor goes on
                        return
                    if (
                        self.error is not None
                    ):  # only a fetch that worked proves recovery
                        if self._backoff.failures:
                            logger.warning("%s is consuming again", self.name)
                        self.error, self._backoff = None, Backoff()
                except Exception as exc:  # noqa: BLE001 - the loop must outlive any error
                    if self.error is None:
                        log_failure(self.name, exc)
                    self.error = exc
                    self._close()
                    self._is_open = False
                    self._stopping.wait(self._backoff.delay())
                    self._backoff = self._backoff.after_failure()
        finally:
            # A relieved thread leaves the connection to its successor.
            if self._fetching():
                self._close()

    def _step(self) -> None:
        if self._spare:  # left by a relieved thread: before anything new
            self._handle_spare()
            return
        if not self._slots.acquire(timeout=self._poll_interval):
            return  # every worker is busy: leave the message in Redis
        if self._stopping.is_set():  # stop() came while we waited for a worker
            self._slots.release()
            return
        taken = 1  # slots held: one message may be fetched per slot, never more
        while taken < self._batch and self._slots.acquire(blocking=False):
            taken += 1
        # Until the first fetch came back, start() is waiting: keep it short.
        timeout = self._poll_interval if self.ready.is_set() else _FIRST_FETCH_TIMEOUT
        # A list may read ahead of its free workers, where the user said so.
        count = max(taken, self._prefetch)
        try:
            deliveries = self._fetch(timeout, count)
        except BaseException:
            for _ in range(taken):
                self._slots.release()
            raise
        finally:
            self._owed.flush()  # in case the fetch did not read: a claim, an error
        self._owed.reopen()  # what the handlers send goes with the next read
        self.ready.set()
        for _ in range(taken - len(deliveries)):
            self._slots.release()
        if len(deliveries) > taken:  # the ones read ahead take a slot when they start
            deliveries[taken:] = [
                attrs.evolve(delivery, slot=False) for delivery in deliveries[taken:]
            ]
        full = len(deliveries) >= taken
        self._batch = min(2 * taken, self.subscriber.max_workers) if full else 1
        if self._pool is not None and self._typical >= _INLINE_BELOW:
            for delivery in deliveries:
                if (
                    not delivery.slot
                ):  # read ahead: a worker starts it once a slot is free
                    self._slots.acquire()
                self._pool.submit(functools.partial(self._handle, delivery))
            return
        # Handled here, one after the other: the next fetch carries their
        # replies. Should a handler overrun, the watch relieves this thread.
        self._spare.extend(deliveries)
        self._handle_spare()

    def _handle_spare(self) -> None:
        """Handle the messages of the batch on this thread, in order, until done or relieved.

        A message read ahead of the free workers waits for a slot here: a
        handler holding one always finishes (``close()`` bounds how long
        it is waited for), and no message is handed on without one.
        """
        while self._fetching():
            try:
                delivery = self._spare.popleft()
            except IndexError:
                break
            if not delivery.slot:  # read ahead: wait for a worker of our own
                self._slots.acquire()
            if self._watch is not None and self._pool is not None:
                self.inline_since = time.monotonic()
                self._watch.poke()
            self._handle(delivery)
            if self._fetching():  # else it is the successor's to set
                self.inline_since = 0.0

    # -- failure policy, per transport --------------------------------------

    def _can_retry(self, delivery: Delivery) -> bool:
        """Whether leaving a failed message unsettled gets it delivered again."""
        return False

    def _dead_letter_key(self) -> str:
        """The dead-letter list or stream; by default, in a cluster, on the source's slot."""
        source = self.subscriber.source
        default = f"{source.name}:dead"
        if getattr(source, "dead_letter", default) == default:
            return self._connection.companion(source.name, ":dead")
        return str(getattr(source, "dead_letter", default))

    def _dead_letter(self, delivery: Delivery, error: BaseException) -> list[Command]:
        """The commands that set aside a message that will never succeed."""
        return [] if delivery.ack is None else [delivery.ack]

    # -- any worker ----------------------------------------------------------

    def _handle(self, delivery: Delivery) -> None:
        """Handle one message and send what it produces. Never raises."""
        _local.consumer = self
        _local.outcome, _local.dead, _local.seconds = "rejected", False, 0.0
        self.counter.started()
        started = time.monotonic()
        try:
            commands, atomic = self._process(delivery)
            self._typical += (
                time.monotonic() - started - self._typical
            ) * _TYPICAL_WEIGHT
            if commands:  # nobody waits: a failure is logged
                self._owed.send(commands, atomic=atomic)
        except RedisRPCError as exc:  # Redis went away: the consume loop says so too
            logger.warning("%s could not send the reply or ack: %s", self.name, exc)
        except Exception:
            logger.exception("%s could not send the reply or ack", self.name)
        finally:
            self.counter.finished(
                _local.outcome, dead=_local.dead, seconds=_local.seconds
            )
            _local.consumer = _local.message = None
            self._busy.pop(threading.get_ident(), None)
            self._slots.release()

    def process_inline(self, delivery: Delivery) -> tuple[list[Command], bool]:
        """Run the handler on *delivery* on the calling thread and return what to send; for ``TestRedisBroker``.

        The thread counts as this consumer's while the handler runs, as in
        ``_handle()``, so that ``request()`` from the handler sees its
        deadline. What the thread was handling before is restored after,
        so calls nest: a handler's own ``request()``, handled in memory,
        runs another handler inside it. Nothing is sent and no slot is taken.
        """
        outer = current_handling()
        _local.consumer = self
        _local.outcome, _local.dead, _local.seconds = "rejected", False, 0.0
        self.counter.started()
        try:
            return self._process(delivery)
        finally:
            self.counter.finished(
                _local.outcome, dead=_local.dead, seconds=_local.seconds
            )
            _local.consumer, _local.message = outer or (None, None)

    def _process(self, delivery: Delivery) -> tuple[list[Command], bool]:
        """Run the handler on *delivery*; return what to send, and whether atomically."""
        settle = [] if delivery.ack is None else [delivery.ack]
        handler = self.subscriber.handler
        try:  # the size comes first: an oversized payload is never parsed
            message = RedisMessage.from_payload(
                delivery.payload,
                handler.converter,
                max_size=self._policy.max_message_size,
                path=delivery.path,
            )
        except MessageTooLargeError as exc:
            message = RedisMessage.from_frame_headers(delivery.payload)
            self._log_rejected(delivery, message, exc)
            # With a key, an unverified reply_to gets nothing: it may not be the sender's.
            reply = [] if self._policy.signing_key else self._error_reply(message, exc)
            return reply + self._set_aside(delivery, exc), True
        except Exception as exc:  # noqa: BLE001 - unreadable, so no reply_to to answer on
            self._log_rejected(delivery, None, exc)
            return self._set_aside(delivery, exc), True
        logger.debug("%s received %r", self.name, message)
        key = self._policy.signing_key
        if key is not None and (problem := check_request(delivery.payload, key)):
            # No reply: its reply_to is as untrusted as the rest of it.
            logger.warning(
                "%s refused %s (correlation_id=%r): %s",
                self.name,
                delivery.where or "a message",
                message.correlation_id,
                problem,
            )
            _local.outcome = "refused"
            return settle, False
        if message.deadline is not None and message.deadline < time.time():
            logger.warning(
                "%s skipped %s (correlation_id=%r): its caller stopped waiting %.3f s ago",
                self.name,
                delivery.where or "a request",
                message.correlation_id,
                time.time() - message.deadline,
            )
            _local.outcome = "expired"
            return settle, False
        try:
            args, kwargs = handler.arguments(message)
        except (MessageDecodeError, MessageTooLargeError, ValidationError) as exc:
            self._log_rejected(delivery, message, exc)
            return self._error_reply(message, exc) + self._set_aside(
                delivery, exc
            ), True
        _local.message = message  # for request() from inside the handler
        self._busy[threading.get_ident()] = (
            f"handler {handler.name} on {delivery.where or self.subscriber.source}"
            f" (correlation_id={message.correlation_id[:100]!r}, since {time.strftime('%H:%M:%S')})"
        )
        began = time.monotonic()
        reply_headers: dict[str, str] = {}
        try:
            if self._policy.hooks:
                event = Event(
                    "process",
                    str(self.subscriber.source),
                    dict(message.headers),
                    message.correlation_id,
                    message,
                    reply_headers=reply_headers,
                )
                result = around(
                    self._policy.hooks, event, lambda: handler.func(*args, **kwargs)
                )
            else:
                result = handler.func(*args, **kwargs)
            _local.outcome, _local.seconds = "handled", time.monotonic() - began
            return self._outgoing(message, result, reply_headers) + settle, False
        except BaseException as exc:  # even SystemExit must not end the thread
            if _local.outcome != "handled":  # the handler raised, not _outgoing()
                _local.seconds = time.monotonic() - began
            _local.outcome = "failed"
            logger.exception(
                "Handler %s failed on %s from %s (correlation_id=%r, delivery %d)",
                handler.name,
                delivery.where or "a message",
                self.subscriber.source,
                message.correlation_id,
                delivery.deliveries,
            )
            reply = self._error_reply(message, exc)
            if reply:  # the caller has its answer: retrying would help nobody
                return reply + settle, False
            if self._can_retry(delivery):
                return [], False  # left unsettled, to be delivered again
            return self._set_aside(delivery, exc), True

    def _set_aside(self, delivery: Delivery, error: BaseException) -> list[Command]:
        """``_dead_letter()``, counting the message as dead-lettered when it is moved."""
        commands = self._dead_letter(delivery, error)
        _local.dead = any(isinstance(c, (RPush, XAdd)) for c in commands)
        return commands

    def _log_rejected(
        self, delivery: Delivery, message: RedisMessage | None, error: Exception
    ) -> None:
        logger.warning(
            "%s rejected %s (correlation_id=%r, %d bytes, starting %r): %s",
            self.name,
            delivery.where or "a message",
            "" if message is None else message.correlation_id,
            len(delivery.payload),
            delivery.payload[:32],
            error,
        )

    def _error_reply(
        self, message: RedisMessage, error: BaseException
    ) -> list[Command]:
        """An error reply, if the caller understands one; FastStream callers get none."""
        if (
            not (message.reply_to and message.accepts_errors)
            or self.subscriber.no_reply
        ):
            return []
        limit = self._policy.max_message_size
        tb = traceback.format_exc() if self._policy.send_tracebacks else None
        for brief in (False, True):  # say less rather than nothing, but never too much
            try:
                frame = signed_frame(
                    *error_frame_parts(
                        error,
                        correlation_id=message.correlation_id,
                        traceback=None if brief else tb,
                        brief=brief,
                    ),
                    self._policy.signing_key,
                    reply_to_nonce=message.nonce or None,
                )
            except (TypeError, ValueError):  # a header the frame format cannot hold
                continue
            if limit is None or len(frame) <= limit:
                return [self._reply(message, frame)]
        logger.warning(
            "%s could not fit an error reply to %r within max_message_size",
            self.name,
            message.correlation_id[:100],
        )
        return []

    def _outgoing(
        self,
        message: RedisMessage,
        result: Any,
        extra_headers: Mapping[str, str] = _NO_HEADERS,
    ) -> list[Command]:
        """The reply and the results for publishers; *extra_headers* are the hooks'."""
        reply = bool(message.reply_to) and not self.subscriber.no_reply
        if not (reply or self.subscriber.publishers):
            return []
        response = result if isinstance(result, Response) else Response(result)
        maxlen = response.maxlen if isinstance(response, RedisResponse) else None
        key = self._policy.signing_key
        commands: list[Command] = []
        if self.subscriber.publishers:  # new events: no nonce, signed as events
            event = signed_frame(
                *self._result_parts(message, response, extra_headers), key
            )
            check_size(event, self._policy.max_message_size, "The handler's result")
            commands += (
                send_command(dest, event, maxlen) for dest in self.subscriber.publishers
            )
        if reply:  # echoes the request's nonce, and is signed over it
            data, headers = self._result_parts(message, response, extra_headers)
            if message.nonce:
                headers[NONCE] = message.nonce
            # Without a nonce nobody waits in request(): the result of a
            # publish(reply_to=...) is an event for that channel's subscribers.
            frame = signed_frame(
                data,
                headers,
                key,
                # Without a key, a user header named like the signature stays.
                reply_to_nonce=(message.nonce or None) if key is not None else None,
            )
            check_size(frame, self._policy.max_message_size, "The handler's result")
            commands.append(self._reply(message, frame))
        return commands

    def _reply(self, message: RedisMessage, frame: bytes) -> Publish:
        """The command that sends *frame* back to *message*'s caller.

        In a cluster, a redis_rpc caller's sharded reply channel gets it,
        prefixed by the reply channel, which says who waits for it.
        """
        if message.reply_shard and self._connection.cluster:
            data = message.reply_to.encode() + b" " + frame
            return Publish(message.reply_shard, data, sharded=True)
        return Publish(message.reply_to, frame)

    def _result_parts(
        self,
        message: RedisMessage,
        response: Response,
        extra_headers: Mapping[str, str],
    ) -> tuple[bytes, dict[str, str]]:
        return frame_parts(
            response.body,
            correlation_id=response.correlation_id or message.correlation_id,
            headers={**extra_headers, **response.headers}
            if extra_headers
            else response.headers,
            converter=self.subscriber.handler.converter,
        )


class Watch:
    """Relieves consumer threads stuck in an inline handler; one thread per broker.

    A consumer with several workers runs typically quick handlers on its own
    thread (see ``Consumer._step``). Should one of them take longer than
    ``TICK``, the rest of its batch would wait, and nothing would be
    fetched meanwhile: the watch then hands that rest to the workers and
    the fetching to a new thread, within one to two ticks. Its thread runs
    only while some consumer is handling inline, waking every ``TICK``.
    """

    # Seconds an inline handler may run before its consumer is relieved:
    # several times the interpreter's switch interval (5 ms), so that a quick
    # handler that merely waited for the interpreter lock is left alone.
    TICK = 0.02
    _IDLE_CHECK = 1.0  # seconds between checks for stop() while nothing runs inline

    def __init__(self) -> None:
        self._consumers: list[Consumer] = []
        self._busy = threading.Event()  # some consumer may be handling inline
        self._stopping = threading.Event()
        self._lock = threading.Lock()  # guards _thread
        self._thread: threading.Thread | None = None

    def add(self, consumer: Consumer) -> None:
        """Watch *consumer* too; only before its thread starts."""
        self._consumers.append(consumer)

    def poke(self) -> None:
        """Say that a consumer is handling inline: the watch looks until none is."""
        if self._busy.is_set():
            return
        with self._lock:
            if self._thread is None and not self._stopping.is_set():
                self._thread = threading.Thread(
                    target=self._run, name="redis_rpc:watch", daemon=True
                )
                self._thread.start()
        self._busy.set()

    def stop(self, timeout: float) -> bool:
        """Stop watching; True if the thread ended within *timeout* seconds."""
        self._stopping.set()
        self._busy.set()
        with self._lock:
            thread = self._thread
        if thread is not None:
            thread.join(timeout)
        return thread is None or not thread.is_alive()

    def _run(self) -> None:
        while not self._stopping.is_set():
            if not self._busy.wait(self._IDLE_CHECK):
                continue
            self._stopping.wait(self.TICK)
            if not self._look():
                self._busy.clear()
                if self._look():  # one began between the look and the clear
                    self._busy.set()

    def _look(self) -> bool:
        """Relieve the consumers stuck for a tick; whether any handles inline."""
        now, inline = time.monotonic(), False
        for consumer in self._consumers:
            since = consumer.inline_since
            if since:
                inline = True
                if now - since >= self.TICK:
                    try:
                        consumer.relieve(since)
                    except Exception:  # the watch must outlive any error
                        logger.exception("Could not relieve %s", consumer.name)
        return inline


def stop_all(consumers: Sequence[Consumer], timeout: float) -> list[str]:
    """Stop *consumers* together and wait up to *timeout* seconds for their handlers.

    Each loop gets at least ``reader_exit_bound()`` to return from the fetch
    it is in, however short *timeout* is, so the whole wait is bounded by
    the longer of the two, whatever the handlers do.

    Returns:
        One line for each handler still running, naming it and its message.
    """
    for consumer in consumers:
        consumer.stop()
    start = time.monotonic()
    deadline = start + timeout
    reader_deadline = start + max(
        [timeout] + [consumer.exit_bound for consumer in consumers]
    )
    for consumer in consumers:
        consumer.join_reader(max(0.0, reader_deadline - time.monotonic()))
    late: list[str] = []
    for consumer in consumers:
        if not consumer.drain(max(0.0, deadline - time.monotonic())):
            late += consumer.busy() or [f"{consumer.name} (its consume loop)"]
    return late
