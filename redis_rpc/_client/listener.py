"""The reply listener: one reply subscription and one thread per broker, for every ``request()``.

Each broker subscribes once, by pattern, to ``<prefix>*`` where the prefix
is random per listener. A request gets its own key and asks for its reply
on ``<prefix><key>``, so replies are routed by the channel they arrive on,
never by correlation id: a handler may replace the correlation id. No
connection and no subscription is opened per request. The listener reads
replies in bulk: one wake-up takes everything one read of the socket held
and completes all those requests, taking the lock twice per batch.

Whoever can publish to a reply channel can answer the request, so the key
is 128 random bits, not a counter: seeing one request does not tell anyone
where the next ones are answered. A request also carries a random nonce
that our servers echo; a reply echoing another one is dropped and the
caller keeps waiting. With a signing key, only a reply signed over that
nonce is taken (see ``_signing``).
"""

from __future__ import annotations

import functools
import logging
import os
import threading
import uuid
from typing import TYPE_CHECKING, Protocol

from redis_rpc._backoff import Backoff
from redis_rpc._latch import Latch
from redis_rpc._wire.signing import check_reply
from redis_rpc.errors import (
    BrokerClosedError,
    BrokerStateError,
    RedisCommandError,
    RedisConnectionError,
    RedisRPCError,
)

if TYPE_CHECKING:
    from collections.abc import Callable

    from redis_rpc._io.interfaces import Subscription


class Subscriptions(Protocol):
    """Where the listener gets its Pub/Sub connections: a ``Backend``."""

    def subscription(self, shard: str | None = None) -> Subscription:
        """A new Pub/Sub connection, to a sharded channel's master if *shard*."""


logger = logging.getLogger(__name__)


class _Secrets:
    """Random hex digits from the OS's CSPRNG, read a few kilobytes at a time, per thread.

    ``os.urandom()`` per request is a system call that lets go of the
    interpreter lock, which costs a thread switch when many threads
    request at once. A forked child draws afresh: it must not repeat
    the parent's digits.
    """

    _CHUNK = 4096  # bytes per read of the OS's generator: 64 requests' worth

    def __init__(self) -> None:
        self._local = threading.local()
        self._generation = 0  # bumped in a forked child
        os.register_at_fork(after_in_child=self._forked)

    def _forked(self) -> None:
        self._generation += 1

    def hex(self, digits: int) -> str:
        """*digits* random hex digits, never handed out before."""
        local = self._local
        pool: str = getattr(local, "pool", "")
        if len(pool) < digits or local.generation != self._generation:
            pool = os.urandom(self._CHUNK).hex()
            local.generation = self._generation
        local.pool = pool[digits:]
        return pool[:digits]


_secrets = _Secrets()


class Sent:
    """How sending a request went, when its caller waits only for the reply.

    Given to the pipe with the request's command: a failure to send fails
    the request's future, and is kept in ``error`` so that the caller can
    tell it from the reply's own failures. Success needs no word: the
    reply says it. With *unheard*, a ``PUBLISH`` that reached nobody fails
    the future with ``unheard()``: no reply can come.
    """

    __slots__ = ("_channel", "_listener", "_unheard", "error")

    def __init__(
        self,
        listener: ReplyListener,
        channel: str,
        unheard: Callable[[], RedisRPCError] | None = None,
    ) -> None:
        self._listener = listener
        self._channel = channel
        self._unheard = unheard
        self.error: RedisRPCError | None = None

    def set_result(self, value: list[object]) -> None:
        for reply in value:
            if isinstance(reply, RedisRPCError):  # Redis refused it: no reply will come
                self.set_error(reply)
            elif reply == 0 and self._unheard is not None:
                self.set_error(self._unheard())

    def set_error(self, error: RedisRPCError) -> None:
        self.error = error
        self._listener.fail(self._channel, error)


class _Waiter:
    """One pending request, as the listener knows it; touched only under the listener's lock or on its thread."""

    __slots__ = ("correlation_id", "future", "nonce", "warned")

    def __init__(self, nonce: str, correlation_id: str) -> None:
        self.future: Latch[bytes] = Latch()
        self.nonce = nonce
        self.correlation_id = correlation_id
        self.warned = False  # a refused reply has been logged already


class ReplyListener:
    """Completes the futures of pending requests as their replies arrive.

    ``register()``, ``discard()`` and ``stop()`` are safe to call from any
    thread; the subscription belongs to the listener's own thread.
    """

    name = "redis_rpc:replies"  # of its thread, and in start() errors

    def __init__(
        self,
        connection: Subscriptions | None,
        *,
        cluster: bool,
        poll_interval: float,
        signing_key: bytes | None = None,
    ) -> None:
        """*connection* gives the subscriptions; None for one that only ``accept_in_memory()``.

        *cluster*: whether *connection* is a Redis Cluster's.
        """
        self.prefix = f"redis_rpc.reply.{uuid.uuid4().hex}."
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
        # Guards _accepting and _down, and adding to _pending. Taking from
        # _pending needs no lock: whoever pops a waiter completes it.
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)  # _accepting or _down changed
        self._pending: dict[bytes, _Waiter] = {}
        # True while subscribed: a request registered then is failed if the
        # subscription drops, never left waiting for a reply that cannot come.
        self._accepting = False
        # Why the last attempt to subscribe failed, until one succeeds.
        self._down: Exception | None = None
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)

    @property
    def pending(self) -> int:
        return len(self._pending)

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

    def register(self, correlation_id: str = "") -> tuple[str, str, Latch[bytes]]:
        """Reserve a reply channel and a nonce; the future gets the raw reply payload.

        Only a reply that passes ``check_reply()`` for the nonce completes
        the future. *correlation_id* only names the request in log lines.

        Returns:
            The reply channel, the nonce to send in the request, and the future.

        Raises:
            BrokerClosedError: The listener has been stopped.
            RedisConnectionError: The reply subscription is down.
        """
        # 128 bits each, from the OS's CSPRNG.
        secret = _secrets.hex(64)
        channel, waiter = (
            f"{self.prefix}{secret[:32]}",
            _Waiter(secret[32:], correlation_id),
        )
        with self._lock:
            if self._accepting:
                self._pending[channel.encode()] = waiter
                return channel, waiter.nonce, waiter.future
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
        self._set_accepting(
            False,
            lambda: BrokerClosedError(
                "The broker was closed while waiting for a reply."
            ),
        )
        if self._thread.is_alive():
            self._thread.join(timeout)
        return not self._thread.is_alive()

    def _set_accepting(
        self,
        accepting: bool,
        error: Callable[[], Exception] = BrokerClosedError,
        down: Exception | None = None,
    ) -> None:
        """Open or close registration; closing fails every pending request with a new *error()*.

        *down* says why the subscription is down, for callers arriving meanwhile.
        """
        with self._lock:
            # Checked under the lock, so that stop() closing registration always wins.
            accepting = accepting and not self._stopping.is_set()
            self._accepting, self._down = accepting, down
            # Nothing is added from here on while not accepting.
            channels = list(self._pending)
            self._changed.notify_all()
        if accepting:
            self.ready.set()
        else:
            self.ready.clear()
        for channel in channels:
            waiter = self._pending.pop(channel, None)
            if waiter is not None:  # one each: callers re-raise it concurrently
                waiter.future.set_error(error())

    def _run(self) -> None:
        backoff = Backoff()
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
                self.reply_shard = shard
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
                # Replies sent while we are away are lost: tell their callers now.
                self._set_accepting(
                    False,
                    functools.partial(
                        _down_error, "Lost the reply subscription while waiting", exc
                    ),
                    exc,
                )
                self._stopping.wait(backoff.delay())
                backoff = backoff.after_failure()
            finally:
                subscription.close()

    def accept_in_memory(self) -> None:
        """Take requests without subscribing: ``TestRedisBroker`` hands the replies to ``deliver()``.

        The thread is never started; ``stop()`` works as after ``start()``.
        """
        self._set_accepting(True)

    def deliver(self, channel: bytes, payload: bytes) -> None:
        """Complete the request waiting on *channel* with *payload*, if it is acceptable."""
        pending = self._pending
        waiter = pending.get(channel)
        if waiter is None:
            logger.debug("Dropped a reply on %r: its request is gone", channel)
        # discard() may take it meanwhile: then nobody waits for this reply.
        elif self._acceptable(waiter, payload) and (
            pending.pop(channel, None) is waiter
        ):
            waiter.future.set_result(payload)

    def _listen(self, subscription: Subscription) -> None:
        # One wake-up hands over everything one read of the socket held.
        deliver = self.deliver
        shard = None if self.shard is None else self.shard.encode()
        while not self._stopping.is_set():
            for _, channel, payload in subscription.get_messages(self._poll_interval):
                if channel == shard:  # b"<reply channel> <frame>"
                    channel, _, payload = payload.partition(b" ")
                deliver(channel, payload)

    def _acceptable(self, waiter: _Waiter, payload: bytes) -> bool:
        """Whether *payload* is a reply *waiter* may take; a refused one is logged once per request."""
        # Checked outside the lock: a MAC over a large body takes a while.
        try:
            problem = check_reply(payload, self._signing_key, waiter.nonce)
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
