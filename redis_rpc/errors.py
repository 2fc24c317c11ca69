"""Every exception that redis_rpc raises.

The hierarchy, kept current::

    RedisRPCError(Exception)
    ├── SetupError(RedisRPCError, ValueError)             bad subscriber or option declaration
    ├── BrokerStateError(RedisRPCError, RuntimeError)     call not allowed in the current state
    │   └── BrokerClosedError                             publish() or request() after close()
    ├── RedisConnectionError(RedisRPCError)               Redis unreachable; __cause__ is redis-py's error
    ├── RedisCommandError(RedisRPCError)                  Redis refused a command; __cause__ is redis-py's error
    ├── RequestTimeoutError(RedisRPCError, TimeoutError)  no reply in time
    └── MessageDecodeError(RedisRPCError, ValueError)     bytes we cannot parse

Catch :class:`RedisRPCError` to catch everything this library raises.
Where a builtin exception fits, ours subclass it too, so that existing
``except TimeoutError:`` clauses (the exception FastStream's ``request()``
raises) keep working.
"""

from __future__ import annotations

__all__ = [
    "BrokerClosedError",
    "BrokerStateError",
    "MessageDecodeError",
    "RedisCommandError",
    "RedisConnectionError",
    "RedisRPCError",
    "RequestTimeoutError",
    "SetupError",
]


class RedisRPCError(Exception):
    """Base class of every exception raised by redis_rpc."""


class SetupError(RedisRPCError, ValueError):
    """A subscriber, publisher or option was declared wrongly."""


class BrokerStateError(RedisRPCError, RuntimeError):
    """The call is not allowed in the broker's current lifecycle state."""


class BrokerClosedError(BrokerStateError):
    """The broker has been closed: it neither sends nor waits any more."""


class RedisConnectionError(RedisRPCError):
    """Redis could not be reached, or the connection to it was lost.

    ``__cause__`` holds redis-py's original exception.
    """


class RedisCommandError(RedisRPCError):
    """Redis answered a command with an error.

    ``__cause__`` holds redis-py's original exception.
    """


class RequestTimeoutError(RedisRPCError, TimeoutError):
    """No reply arrived before the request's timeout.

    Attributes:
        destination: Where the request was sent, such as ``"list:orders"``.
        correlation_id: The request's correlation id.
        timeout: The timeout that ran out, in seconds.
    """

    def __init__(
        self, message: str, *, destination: str, correlation_id: str, timeout: float
    ) -> None:
        super().__init__(message)
        self.destination = destination
        self.correlation_id = correlation_id
        self.timeout = timeout


class MessageDecodeError(RedisRPCError, ValueError):
    """Bytes read from Redis could not be parsed as a message or body."""
