"""Reading replies off a redis-py connection: whether one is there, and what is buffered.

Everything goes through redis-py's own ``can_read()`` and
``read_response()``, which keep hiredis' state consistent (its parser may
hold one reply aside after ``can_read()``). Reading replies straight from
hiredis' reader instead, as an earlier version did, bought at most 1.12x
with one caller (``benchmarks/mechanisms.py``, ``bulk_read``): not worth
the code, nor the care it needs never to take a reply out of order.
"""

from __future__ import annotations

from typing import Any

import redis.exceptions


def readable(connection: Any, timeout: float) -> bool:
    """Whether *connection* has a reply to read, waiting up to *timeout* seconds.

    Raises:
        redis.exceptions.ConnectionError: The connection is closed or broken.
    """
    return bool(connection.can_read(timeout))


def buffered(connection: Any) -> bool:
    """Whether *connection* has a reply to read without waiting."""
    return bool(connection.can_read(0))


def read_buffered(connection: Any, limit: int) -> list[Any]:
    """The replies *connection* holds, at least one and at most *limit*; call after ``readable()``.

    Error replies are raised.
    """
    replies = [connection.read_response()]
    while len(replies) < limit and buffered(connection):
        replies.append(connection.read_response())
    return replies


def reply_or_error(connection: Any) -> object:
    """The next reply on *connection*; an error reply is returned, as redis-py's exception."""
    try:
        return connection.read_response()
    except redis.exceptions.ResponseError as exc:
        return exc
