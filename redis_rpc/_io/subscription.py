"""``RedisSubscription``: one Pub/Sub connection, read in bulk and checked for silent death."""

from __future__ import annotations

import collections
import contextlib
import inspect
import threading
import time
from typing import TYPE_CHECKING, Any

import redis
import redis.connection
import redis.exceptions

from redis_rpc._io import auth
from redis_rpc._io.errors import map_errors, refused
from redis_rpc._io.parsing import read_buffered, readable
from redis_rpc.errors import RedisCommandError, RedisConnectionError, RedisRPCError

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Mapping, Sequence

    from redis_rpc._io.interfaces import Received


# No CLIENT SETINFO on connecting: in RESP2 redis-py writes it before it
# reads anything, so a Redis that refuses the client (maxclients) shows as
# a broken pipe instead of saying why. Our SUBSCRIBE is read, and says it.
_NO_CLIENT_INFO: dict[str, Any] = (
    {"driver_info": None}
    if "driver_info"
    in inspect.signature(redis.connection.AbstractConnection).parameters
    else {"lib_name": None, "lib_version": None}
)

# What a Pub/Sub connection's options are, whatever the pool's.
SUBSCRIPTION_OPTIONS: dict[str, Any] = {
    **_NO_CLIENT_INFO,
    # Plain arrays for every message, whatever the URL asked for.
    "protocol": 2,
    # Our own PING check applies: redis-py's would expect a bare PONG,
    # which a subscribed connection never sends.
    "health_check_interval": 0,
    # Pushed only over RESP3, and for cluster moves: none here.
    "maint_notifications_config": None,
}


def subscription_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """A Pub/Sub connection's options: the pool's *options*, with ``SUBSCRIPTION_OPTIONS`` over them.

    Given a password alone, RESP2 sends ``AUTH <password>``, which Redis
    refuses when its default user has none, while the pool's RESP3
    handshake (``HELLO 3 AUTH default <password>``) passes: naming the
    default user makes both agree (see ``_io.auth``).
    """
    merged = {**options, **SUBSCRIPTION_OPTIONS}
    if merged.get("password") and not merged.get("username"):
        merged["username"] = "default"
    return merged


# Channels per SUBSCRIBE command: one command for thousands of channels is
# fine for Redis, but smaller ones keep each write and each argument array
# modest; all batches are written before any confirmation is read.
SUBSCRIBE_BATCH = 1000
# Messages one read hands back at most, so that under a flood the reader
# still checks its stop event and its PING deadline now and then.
READ_LIMIT = 1000
# How often a wait for confirmations looks at the caller's stop event.
_STOP_CHECK = 0.05


class RedisSubscription:
    """One Pub/Sub connection, read in bulk and checked for silent death.

    It is a bare redis-py connection in RESP2 after ``SUBSCRIBE`` or
    ``PSUBSCRIBE``: every message is a plain array, and one read of the
    socket (64 KiB) yields as many messages as it holds, parsed by hiredis
    when it is installed, instead of one ``PubSub.get_message()`` call and
    one poll per message. It never reconnects by itself: after any error
    it is closed and its owner opens a new one, which subscribes afresh.

    A connection that a NAT or firewall dropped without a reset looks idle
    for ever: reads just time out. So after *health_check_interval* seconds
    without hearing from Redis it sends a ``PING``, and a missing answer
    after *socket_timeout* more seconds counts as a lost connection.

    Not thread-safe: the thread that creates it must be the only one to use
    and close it. Implements ``_io.interfaces.Subscription``.
    """

    def __init__(
        self,
        connection: redis.connection.AbstractConnection,
        address: str,
        *,
        health_check_interval: float,
        socket_timeout: float,
        lost: Callable[[], object] | None = None,
    ) -> None:
        """*lost* is called when the connection fails, or Redis says a channel is elsewhere."""
        self._conn = connection
        self._lost = lost
        self._address = address
        self._health_check_interval = health_check_interval
        self._socket_timeout = socket_timeout
        self._last_heard = time.monotonic()
        self._ping_sent: float | None = None  # when the unanswered PING went out
        # Messages read while waiting for confirmations, not handed on yet.
        self._early: collections.deque[Received] = collections.deque()
        # After an error redis-py would silently reconnect on the next read,
        # without the subscriptions: never use the connection again.
        self._broken = False

    def subscribe(self, channel: str, *, pattern: bool, timeout: float) -> None:
        """Subscribe to *channel* and wait until Redis confirms it.

        Raises:
            RedisConnectionError: Redis did not confirm within *timeout* seconds.
            RedisCommandError: Redis refused, for instance an ACL forbids the channel.
        """
        self.subscribe_many([channel], pattern=pattern, timeout=timeout)

    def subscribe_many(
        self,
        channels: Sequence[str],
        *,
        pattern: bool,
        timeout: float,
        stop: threading.Event | None = None,
        sharded: bool = False,
    ) -> None:
        """Subscribe to all *channels* (patterns if *pattern*, sharded channels if *sharded*) and wait until Redis confirms each.

        The commands are written in batches of ``SUBSCRIBE_BATCH`` channels
        before any confirmation is read. Messages arriving meanwhile are
        kept for ``get_messages()``.

        Raises:
            RedisConnectionError: Redis did not confirm them all within
                *timeout* seconds, or *stop* was set meanwhile.
            RedisCommandError: Redis refused, for instance an ACL forbids a channel.
        """
        names = list(dict.fromkeys(channels))
        command, kind = (
            ("PSUBSCRIBE", b"psubscribe")
            if pattern
            else ("SSUBSCRIBE", b"ssubscribe")
            if sharded
            else ("SUBSCRIBE", b"subscribe")
        )
        waiting = {name.encode() for name in names}
        confirmed = 0
        deadline = time.monotonic() + timeout
        with self._guard():
            self._conn.connect()  # type: ignore[no-untyped-call]
            # Before the first SUBSCRIBE to this server: nothing is subscribed yet.
            auth.check_password(self._conn, self._address)
            for start in range(0, len(names), SUBSCRIBE_BATCH):
                batch = names[start : start + SUBSCRIBE_BATCH]
                self._conn.send_command(command, *batch, check_health=False)  # type: ignore[no-untyped-call]
            while waiting and (remaining := deadline - time.monotonic()) > 0:
                if stop is not None and stop.is_set():
                    break
                if not self._conn.can_read(min(remaining, _STOP_CHECK)):
                    continue
                try:
                    reply = self._conn.read_response()
                except redis.exceptions.ResponseError as exc:
                    # Redis answers a refused command once, in order, and
                    # every channel of the batches before it was confirmed.
                    first = confirmed - confirmed % SUBSCRIBE_BATCH
                    raise self._refused(
                        exc, names[first : first + SUBSCRIBE_BATCH]
                    ) from exc
                self._last_heard = time.monotonic()
                if reply[0] == kind:
                    confirmed += 1
                    waiting.discard(reply[1])
                else:
                    self._keep(reply, self._early)
        if waiting:
            example = next(iter(waiting)).decode(errors="replace")
            what = (
                f"{example!r}"
                if len(names) == 1
                else f"{len(waiting)} of {len(names)} channels, such as {example!r},"
            )
            msg = f"Redis at {self._address} did not confirm the subscription to {what} within {timeout} s."
            raise RedisConnectionError(msg, reason="timeout")

    def get_messages(self, timeout: float, limit: int = READ_LIMIT) -> list[Received]:
        """Wait up to *timeout* seconds for published messages; return up to *limit* of them.

        Everything already received is returned without another wait, so
        one call usually hands back all that one read of the socket held.

        Raises:
            RedisConnectionError: The connection failed, or Redis did not answer a PING.
        """
        found: list[Received] = []
        while self._early and len(found) < limit:
            found.append(self._early.popleft())
        if found:
            return found
        heard = False
        with self._guard():
            if readable(self._conn, timeout):
                heard = True
                for reply in read_buffered(self._conn, limit):
                    self._keep(reply, found)
        now = time.monotonic()
        if heard:
            self._last_heard, self._ping_sent = now, None
        elif self._ping_sent is not None:
            if now - self._ping_sent > self._socket_timeout:
                msg = f"Redis at {self._address} did not answer a PING on a Pub/Sub connection within {self._socket_timeout} s."
                raise RedisConnectionError(msg, reason="timeout")
        elif now - self._last_heard > self._health_check_interval:
            with self._guard():
                self._conn.send_command("PING", check_health=False)  # type: ignore[no-untyped-call]
            self._ping_sent = now
        return found

    def get_message(self, timeout: float) -> tuple[bytes, bytes] | None:
        """Wait up to *timeout* seconds for one published message; return (channel, data).

        Raises:
            RedisConnectionError: The connection failed, or Redis did not answer a PING.
        """
        found = self.get_messages(timeout, limit=1)
        return (found[0][1], found[0][2]) if found else None

    def close(self) -> None:
        self._broken = True
        with contextlib.suppress(redis.exceptions.RedisError, OSError):
            self._conn.disconnect()  # type: ignore[no-untyped-call]

    @contextlib.contextmanager
    def _guard(self) -> Iterator[None]:
        """Map redis-py's errors to ours, and retire the connection after any error."""
        if self._broken:
            msg = f"The Pub/Sub connection to Redis at {self._address} failed before; open a new one."
            raise RedisConnectionError(msg, reason="unreachable")
        try:
            with map_errors(self._address):
                yield
        except BaseException as exc:
            self._broken = True
            # A refused SSUBSCRIBE (MOVED) says that the slot map is out of
            # date, as a lost connection may: either way, read it again.
            if self._lost is not None and (
                isinstance(exc, RedisConnectionError)
                or (isinstance(exc, RedisCommandError) and exc.reason == "moved")
            ):
                self._lost()
            raise

    def _refused(
        self, error: redis.exceptions.ResponseError, batch: Sequence[str]
    ) -> RedisRPCError:
        """Our error for a refused ``SUBSCRIBE``, naming the channels it was for.

        Redis 7.0 does not say which channel an ACL forbids; the batch is
        the closest we can tell.
        """
        what = (
            repr(batch[0])
            if len(batch) == 1
            else f"one of {len(batch)} channels from {batch[0]!r} to {batch[-1]!r}"
        )
        return refused(error, self._address, f"Cannot subscribe to {what}")

    def _keep(
        self, reply: Any, into: list[Received] | collections.deque[Received]
    ) -> None:
        """Add *reply* to *into* if it is a published message; drop confirmations and PONGs.

        Raises:
            RedisConnectionError: Redis dropped a sharded channel, whose slot
                moved to another node: subscribe again, there.
        """
        kind = reply[0]
        if kind in (b"message", b"smessage"):
            into.append((None, reply[1], reply[2]))
        elif kind == b"pmessage":
            into.append((reply[1], reply[2], reply[3]))
        elif kind == b"sunsubscribe":
            name = reply[1].decode(errors="replace")
            msg = f"Redis at {self._address} no longer serves sharded channel {name!r}: its slot moved to another node."
            raise RedisConnectionError(msg, reason="moved")
