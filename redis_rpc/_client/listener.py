"""The reply listener: one reply subscription and one thread per broker, for every ``request()``.

Each broker subscribes once, by pattern, to ``<prefix>*`` where the prefix
is random per listener. A request gets its own key and asks for its reply
on ``<prefix><key>``, so replies are routed by the channel they arrive on,
never by correlation id: a handler may replace the correlation id. No
connection and no subscription is opened per request. The listener reads
replies in bulk: one wake-up takes everything one read of the socket held
and completes all those requests, taking the lock twice per batch.

A lost subscription does not fail the requests waiting on it: each asks
its server (``KEEP``) to keep its reply under a key until its deadline as
well as publish it, and once subscribed again the listener fetches the
replies of its pending requests that it has not received. A request fails
on its own deadline, or when the broker closes.

Whoever can publish to a reply channel can answer the request, so the key
is 128 random bits, not a counter: seeing one request does not tell anyone
where the next ones are answered. A request also carries a random nonce
that our servers echo; a reply echoing another one is dropped and the
caller keeps waiting. With a signing key, only a reply signed over that
nonce is taken (see ``_signing``).
"""

from __future__ import annotations

import logging
import os
import threading
import uuid
from typing import TYPE_CHECKING, Any, Protocol

from redis_rpc._backoff import Backoff
from redis_rpc._io.commands import Get
from redis_rpc._latch import Latch
from redis_rpc._wire.cancel import CANCEL_CHANNEL
from redis_rpc._wire.message import REPLY_PREFIX, kept_key
from redis_rpc._wire.signing import check_reply
from redis_rpc.errors import (
    BrokerClosedError,
    BrokerStateError,
    RedisCommandError,
    RedisConnectionError,
    RedisRPCError,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from redis_rpc._io.commands import Command
    from redis_rpc._io.interfaces import Subscription


class Replies(Protocol):
    """Where the listener gets its Pub/Sub connections and its kept replies: a ``Backend``."""

    def subscription(self, shard: str | None = None) -> Subscription:
        """A new Pub/Sub connection, to a sharded channel's master if *shard*."""

    def execute_many(
        self,
        commands: Sequence[Command],
        *,
        atomic: bool = False,
        deadline: float | None = None,
    ) -> list[Any]:
        """Run several commands in one write; return the answers."""


logger = logging.getLogger(__name__)


class Sent:
    """How sending a request went, when its caller waits only for the reply.

    Given to the pipe with the request's command: a failure to send fails
    the request's future, and is kept in ``error`` so that the caller can
    tell it from the reply's own failures. Success needs no word: the
    reply says it. With *unheard*, a ``PUBLISH`` that reached nobody fails
    the future with ``unheard()``: no reply can come. With *overloaded*, a
    push that a full list or stream refused (Redis answered minus the
    number waiting) fails it with ``overloaded(waiting)``.
    """

    __slots__ = (
        "_channel",
        "_listener",
        "_on_count",
        "_overloaded",
        "_unheard",
        "error",
    )

    def __init__(
        self,
        listener: ReplyListener,
        channel: str,
        unheard: Callable[[], RedisRPCError] | None = None,
        overloaded: Callable[[int], RedisRPCError] | None = None,
        *,
        on_count: Callable[[int], None] | None = None,
    ) -> None:
        """*on_count* hears how many subscribers a ``PUBLISH`` reached."""
        self._listener = listener
        self._channel = channel
        self._unheard = unheard
        self._overloaded = overloaded
        self._on_count = on_count
        self.error: RedisRPCError | None = None

    def set_result(self, value: list[object]) -> None:
        for reply in value:
            if isinstance(reply, RedisRPCError):  # Redis refused it: no reply will come
                self.set_error(reply)
            elif reply == 0 and self._unheard is not None:
                self.set_error(self._unheard())
            elif isinstance(reply, int) and reply >= 0 and self._on_count is not None:
                self._on_count(reply)
            elif isinstance(reply, int) and reply < 0 and self._overloaded is not None:
                self.set_error(self._overloaded(-reply))

    def set_error(self, error: RedisRPCError) -> None:
        self.error = error
        self._listener.fail(self._channel, error)


class Sink(Protocol):
    """Where the reply of a request goes: a ``Latch``, or what completes a ``Future``."""

    def set_result(self, value: bytes) -> None:
        """The reply's payload; called once."""

    def set_error(self, error: BaseException) -> None:
        """Why no reply will come; called once."""


class Pending:
    """One pending request, as the listener knows it: its reply channel, nonce, and where its reply goes.

    *collect*, when given, takes every acceptable reply instead of *future*
    taking the first, and says when the last has come. *destination* is
    where the request went, as ``str()`` of it: a signed reply is signed
    over it.
    """

    __slots__ = (
        "channel",
        "collect",
        "correlation_id",
        "destination",
        "future",
        "nonce",
        "recovered",
        "warned",
    )

    def __init__(
        self,
        channel: str,
        nonce: str,
        correlation_id: str,
        sink: Sink | None = None,
        collect: Callable[[bytes], bool] | None = None,
        destination: str = "",
    ) -> None:
        self.channel = channel
        self.future: Sink = Latch() if sink is None else sink
        self.collect = collect
        self.nonce = nonce
        self.correlation_id = correlation_id
        self.destination = destination  # a signed reply is signed over it
        self.warned = False  # a refused reply has been logged already
        # The reply came from its kept key, after the subscription was lost.
        self.recovered = False


class ReplyListener:
    """Completes the futures of pending requests as their replies arrive.

    ``register()``, ``discard()`` and ``stop()`` are safe to call from any
    thread; the subscription belongs to the listener's own thread.
    """

    name = "redis_rpc:replies"  # of its thread, and in start() errors

    def __init__(
        self,
        connection: Replies | None,
        *,
        cluster: bool,
        poll_interval: float,
        signing_key: bytes | None = None,
        on_cancel: Callable[[bytes], None] | None = None,
    ) -> None:
        """*connection* gives the subscriptions; None for one that only ``accept_in_memory()``.

        *cluster*: whether *connection* is a Redis Cluster's. *on_cancel*
        hears the cancel notices (``_wire.cancel``), which the listener
        subscribes to as well, for the broker's handlers.
        """
        self.prefix = f"{REPLY_PREFIX}{uuid.uuid4().hex}."
        # In a cluster, our servers reply here with SPUBLISH (see REPLY_SHARD),
        # and the listener reads it from its slot's master, with the pattern.
        self.shard = ("{" + self.prefix + "}") if cluster else None
        # The shard while it is subscribed, for requests to name; None while
        # the listener makes do without it (its master cannot be reached).
        self.reply_shard: str | None = None
        self.ready = threading.Event()  # set while the reply subscription is confirmed
        self._connection = connection
        self._poll_interval = poll_interval
        self._signing_key = signing_key
        self._on_cancel = on_cancel
        # Guards _accepting and _down, and adding to _pending. Taking from
        # _pending needs no lock: whoever pops a waiter completes it.
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)  # _accepting or _down changed
        self._pending: dict[bytes, Pending] = {}
        # True while subscribed: new requests are taken only then.
        self._accepting = False
        # Why the last attempt to subscribe failed, until one succeeds.
        self._down: Exception | None = None
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        # Replies taken from their kept keys after a lost subscription, in all.
        self.recovered = 0

    @property
    def pending(self) -> int:
        return len(self._pending)

    @property
    def keeps(self) -> bool:
        """Whether requests should ask for their replies to be kept: this listener fetches them after a loss.

        In a cluster, only while the listener's shard is subscribed: the
        kept replies live on its slot, whose master may be gone.
        """
        return self._connection is not None and (
            self.shard is None or self.reply_shard is not None
        )

    @property
    def error(self) -> Exception | None:
        """Why the last attempt to subscribe failed, until one succeeds."""
        return self._down

    def start(self) -> None:
        if self._connection is None:
            msg = (
                "This reply listener takes replies in memory only; it cannot subscribe."
            )
            raise BrokerStateError(msg)
        self._thread.start()

    def wait_ready(self, timeout: float) -> bool:
        """Wait until the reply subscription is up, for at most *timeout* seconds.

        Returns:
            Whether it is up; ``False`` when it is still coming up.

        Raises:
            BrokerClosedError: The listener has been stopped.
            RedisConnectionError: The subscription is down: its last attempt
                to subscribe failed (known at once, without waiting).
        """
        with self._changed:
            up = self._changed.wait_for(
                lambda: (
                    self._accepting or self._down is not None or self._stopping.is_set()
                ),
                timeout,
            )
            if self._accepting:
                return True
            if self._stopping.is_set():
                msg = "Cannot request: the broker has been closed."
                raise BrokerClosedError(msg)
            if not up:
                return False
            cause = self._down
        raise _down_error(
            "Cannot send a request: the reply subscription to Redis is down", cause
        )

    def register(
        self,
        correlation_id: str = "",
        *,
        sink: Sink | None = None,
        collect: Callable[[bytes], bool] | None = None,
        destination: str = "",
    ) -> Pending:
        """Reserve a reply channel and a nonce; *sink* (a new ``Latch`` by default) gets the raw reply payload.

        Only a reply that passes ``check_reply()`` for the nonce and
        *destination* (where the request goes, as ``str()`` of it)
        completes the sink, or goes to *collect* (see ``Pending``).
        *correlation_id* only names the request in log lines.

        Raises:
            BrokerClosedError: The listener has been stopped.
            RedisConnectionError: The reply subscription is down.
        """
        # 128 bits each, from the OS's CSPRNG.
        secret = os.urandom(32).hex()
        waiter = Pending(
            f"{self.prefix}{secret[:32]}",
            secret[32:],
            correlation_id,
            sink,
            collect,
            destination,
        )
        with self._lock:
            if self._accepting:
                self._pending[waiter.channel.encode()] = waiter
                return waiter
            if self._stopping.is_set():
                msg = "Cannot request: the broker has been closed."
                raise BrokerClosedError(msg)
            cause = self._down
        raise _down_error(
            "Cannot request: the reply subscription to Redis is down", cause
        )

    def fail(self, channel: str, error: BaseException) -> None:
        """Fail the request waiting on *channel* with *error*, unless it is answered or gone."""
        waiter = self._pending.pop(channel.encode(), None)
        if waiter is not None:
            waiter.future.set_error(error)

    def discard(self, channel: str) -> None:
        """Forget *channel*; a reply arriving later is dropped."""
        self._pending.pop(channel.encode(), None)

    def stop(self, timeout: float) -> bool:
        """Stop the thread and fail every pending request; True if it ended in time."""
        self._stopping.set()
        self._set_accepting(False)
        for channel in list(self._pending):
            waiter = self._pending.pop(channel, None)
            if waiter is not None:  # one each: callers re-raise it concurrently
                waiter.future.set_error(
                    BrokerClosedError(
                        "The broker was closed while waiting for a reply."
                    )
                )
        if self._thread.is_alive():
            self._thread.join(timeout)
        return not self._thread.is_alive()

    def _set_accepting(self, accepting: bool, down: Exception | None = None) -> None:
        """Open or close registration; *down* says why the subscription is down, for callers arriving meanwhile.

        Closing it leaves the pending requests waiting: their replies are
        fetched once subscribed again.
        """
        with self._lock:
            # Checked under the lock, so that stop() closing registration always wins.
            accepting = accepting and not self._stopping.is_set()
            self._accepting, self._down = accepting, down
            self._changed.notify_all()
        if accepting:
            self.ready.set()
        else:
            self.ready.clear()

    def _run(self) -> None:
        backoff = Backoff()
        lost = False  # replies may have been published while unsubscribed
        while not self._stopping.is_set():
            # After a failure, every other attempt goes without the shard, on
            # any node: should its slot have no master for a while, classic
            # replies still come through.
            shard = self.shard if backoff.failures % 2 == 0 else None
            assert self._connection is not None  # start() checked
            subscription = self._connection.subscription(shard)
            try:
                subscription.subscribe(
                    f"{self.prefix}*", pattern=True, timeout=10 * self._poll_interval
                )
                if shard is not None:
                    subscription.subscribe_many(
                        [shard],
                        pattern=False,
                        sharded=True,
                        timeout=10 * self._poll_interval,
                    )
                if self._on_cancel is not None:
                    subscription.subscribe(
                        CANCEL_CHANNEL, pattern=False, timeout=10 * self._poll_interval
                    )
                self.reply_shard = shard
                if lost:  # subscribed: whatever was missed is kept by now
                    self._recover()
                    lost = False
                if backoff.failures:
                    logger.info("Reply listener is subscribed again")
                self._set_accepting(True)
                backoff = Backoff()
                self._listen(subscription)
            except Exception as exc:  # noqa: BLE001 - the listener must outlive any error
                if not backoff.failures:
                    logger.warning(
                        "Reply listener lost Redis, retrying with backoff: %s", exc
                    )
                lost = True
                self._set_accepting(False, exc)
                self._stopping.wait(backoff.delay())
                backoff = backoff.after_failure()
            finally:
                subscription.close()

    def _recover(self) -> None:
        """Take the replies of the pending requests from their kept keys, where they are.

        Should Redis not answer (in a cluster, the master of the listener's
        slot may be gone), the requests wait for their deadlines.
        """
        assert self._connection is not None  # only a started listener recovers
        waiting = [
            (channel, kept_key(channel.decode())) for channel in list(self._pending)
        ]
        keyed = [(channel, key) for channel, key in waiting if key is not None]
        if not keyed:
            return
        try:
            found = self._connection.execute_many([Get(key) for _, key in keyed])
        except RedisRPCError as exc:  # the requests wait for their deadlines
            logger.warning(
                "Reply listener could not fetch the kept replies of %d pending request(s): %s",
                len(keyed),
                exc,
            )
            return
        recovered = 0
        for (channel, _), payload in zip(keyed, found, strict=True):
            if isinstance(payload, bytes) and self.deliver(
                channel, payload, recovered=True
            ):
                recovered += 1
        self.recovered += recovered
        logger.info(
            "Reply listener recovered %d of %d pending repl%s after a lost subscription",
            recovered,
            len(keyed),
            "y" if len(keyed) == 1 else "ies",
        )

    def accept_in_memory(self) -> None:
        """Take requests without subscribing: ``TestRedisBroker`` hands the replies to ``deliver()``.

        The thread is never started; ``stop()`` works as after ``start()``.
        """
        self._set_accepting(True)

    def deliver(
        self, channel: bytes, payload: bytes, *, recovered: bool = False
    ) -> bool:
        """Complete the request waiting on *channel* with *payload*, if it is acceptable; whether it was."""
        pending = self._pending
        waiter = pending.get(channel)
        if waiter is None:
            logger.debug("Dropped a reply on %r: its request is gone", channel)
        elif not self._acceptable(waiter, payload):
            pass
        elif waiter.collect is not None:  # one of several replies
            if waiter.collect(payload):
                pending.pop(channel, None)
            return True
        # discard() may take it meanwhile: then nobody waits for this reply.
        elif pending.pop(channel, None) is waiter:
            waiter.recovered = recovered
            waiter.future.set_result(payload)
            return True
        return False

    def _listen(self, subscription: Subscription) -> None:
        # One wake-up hands over everything one read of the socket held.
        deliver = self.deliver
        shard = None if self.shard is None else self.shard.encode()
        cancels = CANCEL_CHANNEL.encode()
        while not self._stopping.is_set():
            for pattern, channel, payload in subscription.get_messages(
                self._poll_interval
            ):
                if channel == shard:  # b"<reply channel> <frame>"
                    channel, _, payload = payload.partition(b" ")
                elif pattern is None and channel == cancels:
                    self.heard_cancel(payload)
                    continue
                deliver(channel, payload)

    def heard_cancel(self, payload: bytes) -> None:
        """Hand a cancel notice to the broker's handlers; never raises."""
        if self._on_cancel is None:
            return
        try:
            self._on_cancel(payload)
        except Exception:  # the listener must outlive a bug there
            logger.exception("Could not take a cancel notice")

    def _acceptable(self, waiter: Pending, payload: bytes) -> bool:
        """Whether *payload* is a reply *waiter* may take; a refused one is logged once per request."""
        # Checked outside the lock: a MAC over a large body takes a while.
        try:
            problem = check_reply(
                payload, self._signing_key, waiter.nonce, waiter.destination
            )
        except Exception as exc:  # noqa: BLE001 - wire bytes must not end the subscription
            problem = f"it could not be checked ({exc!r})"
        if problem is None:
            return True
        if not waiter.warned:
            waiter.warned = True
            logger.warning(
                "Dropped a reply to request %r, still waiting for another: %s",
                waiter.correlation_id,
                problem,
            )
        return False


def _down_error(what: str, cause: Exception | None) -> RedisRPCError:
    """A new error saying *what* failed because the reply subscription is down, chained to *cause*.

    A refusal (an ACL that forbids the subscription) stays a refusal.
    """
    if cause is None:
        return RedisConnectionError(f"{what}; retry shortly.")
    text = f"{what}: {str(cause).strip().rstrip('.')}."
    error: RedisRPCError
    if isinstance(cause, RedisCommandError):
        error = RedisCommandError(text, reason=cause.reason)
    elif isinstance(cause, RedisConnectionError):
        error = RedisConnectionError(text, reason=cause.reason)
    else:
        error = RedisConnectionError(text)
    error.__cause__ = cause
    return error
