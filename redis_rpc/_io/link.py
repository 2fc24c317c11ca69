"""``RedisLink``: the pipe's connection, one of redis-py's pool, held by the writer thread for as long as it works."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

import redis
import redis.exceptions

from redis_rpc._io import auth, parsing, sentinel
from redis_rpc._io.errors import error_reply, map_errors, translate
from redis_rpc.errors import MessageTooLargeError, RedisConnectionError

if TYPE_CHECKING:
    from collections.abc import Sequence

    from redis_rpc._io.commands import Args


# The longest argument Redis takes by default (its proto-max-bulk-len); a
# longer one makes it drop the connection, failing whatever else was on it.
REDIS_MAX_ARGUMENT = 512 * 1024 * 1024


class RedisLink:
    """One connection of redis-py's pool, held by the pipe's writer thread for as long as it works.

    Implements ``_io.pipe.Link``. Taken from the pool once, not per call, so
    that ``max_connections`` and the pool's options (TLS, credentials,
    database, protocol) apply to it too.
    """

    def __init__(
        self, pool: redis.ConnectionPool, connection: redis.Connection, address: str
    ) -> None:
        self._pool = pool
        # Any: redis-py leaves most of a connection's methods untyped.
        self._connection: Any = connection
        self._address = address
        # Replies written for and not read yet.
        self._due = 0
        # The server answered READONLY over a Sentinel-managed connection:
        # a failover demoted it, and the connection is to be reopened
        # through the sentinels as soon as no reply is due on it.
        self._demoted = False
        # The longest argument this server takes; see oversized().
        self.max_argument = REDIS_MAX_ARGUMENT

    @classmethod
    def open(cls, pool: redis.ConnectionPool, address: str) -> RedisLink:
        with map_errors(address):
            connection = pool.get_connection()
            auth.check_password(connection, address)
        link = cls(pool, connection, address)
        try:
            link._learn_limit()
        except BaseException:
            link.close()
            raise
        return link

    def _learn_limit(self) -> None:
        """Ask the server for its proto-max-bulk-len, once per connection: one round trip.

        An ACL or a managed service may forbid ``CONFIG``: Redis' default
        is assumed then.
        """
        connection = self._connection
        try:
            with map_errors(self._address):
                connection.send_command(
                    "CONFIG", "GET", "proto-max-bulk-len", check_health=False
                )
                reply = connection.read_response()
        except RedisConnectionError:
            raise
        except Exception:  # noqa: BLE001 - refused (NOPERM, unknown command): the default holds
            self.max_argument = REDIS_MAX_ARGUMENT
            return
        try:  # [b"proto-max-bulk-len", b"536870912"], or a map in RESP3
            values = list(reply.values()) if isinstance(reply, dict) else reply[1::2]
            self.max_argument = int(values[0])
        except (IndexError, TypeError, ValueError):
            self.max_argument = REDIS_MAX_ARGUMENT

    def oversized(self, commands: Sequence[Args]) -> MessageTooLargeError | None:
        """Why Redis would drop the connection on *commands* rather than run them, or ``None``.

        Redis closes a connection that sends an argument longer than its
        ``proto-max-bulk-len``, and with it every command written on it
        and not yet answered: refused here, only these fail, as not sent.
        """
        limit = self.max_argument
        for command in commands:
            for arg in command:
                if isinstance(arg, (bytes, str)) and len(arg) > limit:
                    name = (
                        command[0].decode()
                        if isinstance(command[0], bytes)
                        else command[0]
                    )
                    msg = f"Redis at {self._address} takes no argument longer than {limit} bytes (its proto-max-bulk-len; 512 MB by default), and this {name} has one of {len(arg)} bytes; it was not sent. Send less, or raise proto-max-bulk-len in Redis."
                    return MessageTooLargeError(msg)
        return None

    def check(self) -> None:
        connection = self._connection
        try:
            # Anything to read before we wrote is a close or a stray reply.
            stale = parsing.readable(connection, 0.0)
        except (redis.exceptions.RedisError, OSError):
            stale = True
        if stale or self._demoted:
            self._reopen()

    def _reopen(self) -> None:
        """Connect again; through the sentinels, with Sentinel."""
        with map_errors(self._address):
            self._connection.disconnect()
            self._connection.connect()
        self._due, self._demoted = 0, False
        self._learn_limit()

    def send(self, commands: Sequence[Args]) -> None:
        connection = self._connection
        if self._demoted:
            if self._due:  # replies still due: the pipe fails those calls
                msg = f"Redis at {self._address} was demoted to a replica by a failover; reconnecting through the sentinels"
                raise RedisConnectionError(msg, reason="read_only")
            self._reopen()
        with map_errors(self._address):
            connection.send_packed_command(
                connection.pack_commands(commands), check_health=False
            )
        self._due += len(commands)

    def wait(self, timeout: float) -> bool:
        try:
            return parsing.readable(self._connection, max(0.0, timeout))
        except redis.exceptions.RedisError as exc:
            raise translate(exc, self._address) from exc

    def ready(self) -> bool:
        try:
            return parsing.buffered(self._connection)
        except (redis.exceptions.RedisError, OSError):
            return False  # the next read() says what went wrong

    def read(self) -> object:
        try:
            reply = sentinel.read_reply(self._connection)
        except redis.exceptions.ResponseError as exc:
            # The connection is fine: only this command was refused.
            self._due -= 1
            if isinstance(exc, redis.exceptions.ReadOnlyError) and sentinel.rediscovers(
                self._connection
            ):
                self._demoted = True  # a failover demoted the master: reconnect soon
            return error_reply(exc, self._address)
        except redis.exceptions.RedisError as exc:
            raise translate(exc, self._address) from exc
        self._due -= 1
        return reply

    def close(self) -> None:
        with contextlib.suppress(redis.exceptions.RedisError, OSError):
            self._connection.disconnect()
            self._pool.release(self._connection)
