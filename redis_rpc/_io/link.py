"""``RedisLink``: the pipe's connection, one of redis-py's pool, held by the writer thread for as long as it works."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

import redis
import redis.exceptions

from redis_rpc._io import auth, parsing, sentinel
from redis_rpc._io.errors import error_reply, map_errors, translate
from redis_rpc.errors import RedisConnectionError

if TYPE_CHECKING:
    from collections.abc import Sequence

    from redis_rpc._io.commands import Args


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

    @classmethod
    def open(cls, pool: redis.ConnectionPool, address: str) -> RedisLink:
        with map_errors(address):
            connection = pool.get_connection()
            auth.check_password(connection, address)
        return cls(pool, connection, address)

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
