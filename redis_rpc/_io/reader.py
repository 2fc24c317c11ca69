"""``RedisReader``: one consumer thread's connection for its blocking reads (``BLPOP``, ``XREADGROUP``, ...)."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any, Protocol, cast

import redis
import redis.exceptions

from redis_rpc._io.errors import checked, map_errors
from redis_rpc._io.parsing import reply_or_error
from redis_rpc.errors import RedisRPCError

if TYPE_CHECKING:
    from collections.abc import Callable

    from redis_rpc._io.commands import Args
    from redis_rpc._io.interfaces import Owed


class Follow(Protocol):
    """Whether a read that failed should be tried again, after following a cluster's redirection."""

    def again(self, error: RedisRPCError, attempt: int) -> bool:
        """Decide about *error*, the failure of try number *attempt* (from 0); update the map first."""


class RedisReader:
    """One connection of the pool, held by one consumer thread for its blocking reads.

    Each read also carries what the consumer owes Redis: the replies, events
    and acks of the messages it handled since the previous read go out in
    the same write, before the read, so that a busy consumer pays one round
    trip per batch instead of one per message and per read. Not thread-safe:
    only its consumer thread uses it. It connects on first use.

    Implements ``_io.interfaces.Reader``.

    Args:
        route: The pool to take a connection from for a read of
            *command*, and that server's address: one server's, or in a
            cluster the master of the key read.
        follow: Tells whether a failed read is tried again (in a cluster,
            where the key moved); by default none is.
    """

    def __init__(
        self,
        route: Callable[[Args], tuple[redis.ConnectionPool, str]],
        *,
        follow: Follow | None = None,
    ) -> None:
        self._route = route
        self._follow = follow
        self._pool: redis.ConnectionPool | None = None
        self._address = ""
        # Any: redis-py leaves most of a connection's methods untyped.
        self._connection: Any = None

    def blpop(self, key: str, timeout: float, *, owed: Owed) -> bytes | None:
        """Pop the head of list *key*, waiting up to *timeout* seconds for one."""
        reply: Any = self._read((b"BLPOP", key, timeout), owed)
        return None if reply is None else cast("bytes", reply[1])

    def blmpop(
        self, key: str, timeout: float, count: int, *, owed: Owed
    ) -> list[bytes]:
        """Pop up to *count* items from the head of list *key*, waiting up to
        *timeout* seconds for the first (``BLMPOP``, Redis 7.0 or newer)."""
        reply: Any = self._read(
            (b"BLMPOP", timeout, 1, key, b"LEFT", b"COUNT", count), owed
        )
        return [] if reply is None else cast("list[bytes]", reply[1])

    def blmove(
        self, source: str, destination: str, timeout: float, *, owed: Owed
    ) -> bytes | None:
        """Move the head of list *source* to the head of *destination*, waiting up to *timeout* seconds."""
        reply = self._read(
            (b"BLMOVE", source, destination, b"LEFT", b"LEFT", timeout), owed
        )
        return cast("bytes | None", reply)

    def xreadgroup(
        self,
        stream: str,
        group: str,
        consumer: str,
        block: float,
        count: int,
        *,
        owed: Owed,
    ) -> list[tuple[bytes, dict[bytes, bytes]]]:
        """Read up to *count* new entries for *consumer*, waiting up to *block* seconds."""
        reply: Any = self._read(
            (
                b"XREADGROUP",
                b"GROUP",
                group,
                consumer,
                b"COUNT",
                count,
                b"BLOCK",
                max(1, round(block * 1000)),
                b"STREAMS",
                stream,
                b">",
            ),
            owed,
        )
        if not reply:
            return []
        # [[stream, entries]] with RESP2, {stream: entries} with RESP3
        entries = next(iter(reply.values())) if isinstance(reply, dict) else reply[0][1]
        result = []
        for entry_id, fields in entries:
            if isinstance(fields, list):  # RESP2: a flat list of names and values
                fields = dict(zip(fields[::2], fields[1::2], strict=True))
            result.append((cast("bytes", entry_id), fields or {}))
        return result

    def close(self) -> None:
        """Drop the connection; the next read opens another. Never raises."""
        connection, self._connection = self._connection, None
        if connection is not None and self._pool is not None:
            with contextlib.suppress(redis.exceptions.RedisError, OSError):
                connection.disconnect()
                self._pool.release(connection)

    def _read(self, command: Args, owed: Owed) -> object:
        """Write what is *owed*, then *command*, in one write; return the command's reply.

        Raises:
            RedisConnectionError: The connection failed; the owed commands
                may or may not have run, and are logged as such.
            RedisCommandError: Redis refused *command*.
        """
        attempt = 0
        while True:
            try:
                return self._read_once(command, owed)
            except RedisRPCError as exc:
                if self._follow is None or not self._follow.again(exc, attempt):
                    raise
                self.close()  # the next read connects where the map now says
                attempt += 1

    def _read_once(self, command: Args, owed: Owed) -> object:
        owed_args = owed.take()
        try:
            if self._connection is None:
                self._pool, self._address = self._route(command)
                with map_errors(self._address):
                    self._connection = self._pool.get_connection()
            connection = self._connection
            with map_errors(self._address):
                connection.send_packed_command(
                    connection.pack_commands([*owed_args, command]),
                    check_health=False,
                )
                replies = [reply_or_error(connection) for _ in owed_args]
                reply = reply_or_error(connection)
        except RedisRPCError as exc:
            self.close()
            if owed_args:
                owed.failed(owed_args, exc)
            raise
        owed.answered(owed_args, replies)
        return checked(reply, self._address)
