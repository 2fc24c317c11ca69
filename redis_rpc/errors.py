"""Every exception that redis_rpc raises.

The hierarchy, kept current::

    RedisRPCError(Exception)
    ├── SetupError(RedisRPCError, ValueError)             bad subscriber or option declaration
    ├── BrokerStateError(RedisRPCError, RuntimeError)     call not allowed in the current state
    │   └── BrokerClosedError                             publish() or request() after close()
    ├── RedisConnectionError(RedisRPCError)               Redis unreachable; .reason says why, __cause__ is redis-py's error
    ├── RedisCommandError(RedisRPCError)                  Redis refused a command; .reason says why, __cause__ is redis-py's error
    ├── RequestTimeoutError(RedisRPCError, TimeoutError)  no reply in time
    ├── NoSubscriberError(RedisRPCError)                  a request PUBLISHed to nobody
    ├── OverloadedError(RedisRPCError)                    a queue too long, or no time left: shed at once
    ├── SigningKeyError(RedisRPCError)                    the server refused the request: the signing keys differ, or one side has none
    ├── RemoteError(RedisRPCError)                        the handler failed; carries its error as strings
    ├── MessageDecodeError(RedisRPCError, ValueError)     bytes we cannot parse
    ├── MessageTooLargeError(RedisRPCError, ValueError)   a frame over max_message_size
    └── ValidationError(RedisRPCError, ValueError)        a body that does not fit its type

Catch :class:`RedisRPCError` to catch everything this library raises.
``ConnectionReason``, ``CommandReason`` and ``SigningKeyReason`` list the
values of ``reason``;
a ``Redirect`` says where a Redis Cluster sent a command.
Where a builtin exception fits, ours subclass it too, so that existing
``except TimeoutError:`` clauses (the exception FastStream's ``request()``
raises) keep working.

Every exception pickles with its attributes, so that a Celery task or a
``multiprocessing`` worker can raise one to its parent; the chained
redis-py error (``__cause__``) stays behind, as pickle drops causes.
"""

from __future__ import annotations

import typing

import attrs

if typing.TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import Any

__all__ = [
    "BrokerClosedError",
    "BrokerStateError",
    "CommandReason",
    "ConnectionReason",
    "MessageDecodeError",
    "MessageTooLargeError",
    "NoSubscriberError",
    "OverloadedError",
    "Redirect",
    "RedisCommandError",
    "RedisConnectionError",
    "RedisRPCError",
    "RemoteError",
    "RequestTimeoutError",
    "SetupError",
    "SigningKeyError",
    "SigningKeyReason",
    "ValidationError",
]

# Why Redis could not be reached: RedisConnectionError.reason.
ConnectionReason = typing.Literal[
    "unreachable",
    "timeout",
    "authentication",
    "tls",
    "max_clients",
    "pool_exhausted",
    "loading",
    "read_only",
    "cluster_down",
    "moved",
]
# Why Redis refused a command: RedisCommandError.reason.
CommandReason = typing.Literal[
    "permission",
    "out_of_memory",
    "read_only",
    "moved",
    "try_again",
    "cross_slot",
    "busy_group",
    "no_group",
    "unblocked",
    "unknown_command",
    "command",
]
# Which side's signing_key is wrong: SigningKeyError.reason.
SigningKeyReason = typing.Literal[
    "caller_has_no_key", "keys_differ", "server_has_no_key"
]
_CONNECTION_REASONS = frozenset(typing.get_args(ConnectionReason))
_COMMAND_REASONS = frozenset(typing.get_args(CommandReason))
_SIGNING_KEY_REASONS = frozenset(typing.get_args(SigningKeyReason))


def _rebuild(
    cls: type[RedisRPCError], args: tuple[Any, ...], state: dict[str, Any]
) -> RedisRPCError:
    # Our __init__s take keyword-only attributes, which pickle's default
    # (calling the class with .args) would lose: restore them directly.
    error = cls.__new__(cls)
    error.args = args
    error.__dict__.update(state)
    return error


class RedisRPCError(Exception):
    """Base class of every exception raised by redis_rpc."""

    def __reduce__(self) -> tuple[Any, ...]:
        return _rebuild, (type(self), self.args, dict(self.__dict__))


class SetupError(RedisRPCError, ValueError):
    """A subscriber, publisher or option was declared wrongly."""


class BrokerStateError(RedisRPCError, RuntimeError):
    """The call is not allowed in the broker's current lifecycle state."""


class BrokerClosedError(BrokerStateError):
    """The broker has been closed: it neither sends nor waits any more."""


class RedisConnectionError(RedisRPCError):
    """Redis could not be reached, or the connection to it was lost.

    ``__cause__`` holds redis-py's original exception, when there was one.

    Attributes:
        reason: Why, for code that reacts differently to each cause:
            ``"unreachable"`` (refused, reset, lost), ``"timeout"`` (no
            answer within ``socket_timeout``), ``"authentication"`` (wrong
            user name or password), ``"tls"`` (the server's certificate does
            not verify against ``ssl_ca_certs``, or is not valid for the
            host name), ``"max_clients"`` (Redis has ``maxclients``
            clients already), ``"pool_exhausted"`` (every connection
            of the pool in use), ``"loading"`` (Redis is loading its data),
            ``"read_only"`` (with Sentinel: a failover demoted the master,
            and the connection is opened again through the sentinels),
            ``"cluster_down"`` (a Redis Cluster cannot serve the key now:
            no node answered, or a failover is under way), ``"moved"`` (a
            Redis Cluster moved a sharded channel's slot to another node,
            which a subscription must follow).
        maybe_applied: For ``publish()``, ``request()`` and what handlers
            send (replies, acks): whether Redis may have run the command
            all the same. True when it was written and the connection
            failed, or the call's timeout ran out, before its answer came;
            False when it was never sent, and for other calls. Retrying
            a command that may have been applied may apply it twice (a
            second copy of a message, for instance).
    """

    def __init__(
        self,
        message: str,
        *,
        reason: ConnectionReason = "unreachable",
        maybe_applied: bool = False,
    ) -> None:
        if reason not in _CONNECTION_REASONS:
            msg = f"Unknown reason for a RedisConnectionError: {reason!r}."
            raise ValueError(msg)
        super().__init__(message)
        self.reason: ConnectionReason = reason
        self.maybe_applied = maybe_applied


class RedisCommandError(RedisRPCError):
    """Redis answered a command with an error.

    ``__cause__`` holds redis-py's original exception.

    Attributes:
        reason: Why, for code that reacts differently to each cause:
            ``"permission"`` (the ACL user may not run the command),
            ``"out_of_memory"`` (``maxmemory`` reached), ``"read_only"`` (a
            replica), ``"moved"`` (a Redis Cluster node that does not hold
            the key, or is moving it: ``redirect`` says where it is),
            ``"try_again"`` (the key's cluster slot is being moved),
            ``"cross_slot"`` (keys of one command on different cluster
            slots), ``"busy_group"`` (the stream's consumer group exists
            already), ``"no_group"`` (the stream or its consumer group does
            not exist), ``"unblocked"`` (a blocking read that Redis ended,
            as a cluster failover does), ``"unknown_command"`` (a command
            this Redis version lacks), or ``"command"`` for any other
            refusal.
        redirect: For ``"moved"``, where the Redis Cluster said the key's
            slot is; ``None`` otherwise.
    """

    def __init__(
        self,
        message: str,
        *,
        reason: CommandReason = "command",
        redirect: Redirect | None = None,
    ) -> None:
        if reason not in _COMMAND_REASONS:
            msg = f"Unknown reason for a RedisCommandError: {reason!r}."
            raise ValueError(msg)
        super().__init__(message)
        self.reason: CommandReason = reason
        self.redirect = redirect


@attrs.frozen
class Redirect:
    """Where a Redis Cluster node said a key's slot is: a ``MOVED`` or ``ASK`` refusal.

    Attributes:
        kind: ``"moved"`` (the slot lives there now) or ``"ask"`` (it is
            being moved there: ask once, with ``ASKING``).
        slot: The hash slot.
        host: The node that serves it.
        port: That node's port.
    """

    kind: typing.Literal["moved", "ask"]
    slot: int
    host: str
    port: int


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


class MessageTooLargeError(RedisRPCError, ValueError):
    """A frame is longer than the broker's ``max_message_size``.

    Raised before an oversized frame is sent; an oversized frame that
    arrives is not handled.
    """


class ValidationError(RedisRPCError, ValueError):
    """A body does not fit the type it is structured into.

    Attributes:
        errors: One line per failure, each naming where it is, such as
            ``"invalid value for type, expected int @ $.price"``.
    """

    def __init__(self, message: str, *, errors: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.errors = tuple(errors)


class NoSubscriberError(RedisRPCError):
    """A request was published to a channel that nobody subscribes to.

    Redis said so at once (``PUBLISH`` returned 0), so the request was not
    delivered and waiting for its reply would be in vain.

    Attributes:
        destination: The channel, such as ``"channel:orders"``.
    """

    def __init__(self, message: str, *, destination: str) -> None:
        super().__init__(message)
        self.destination = destination


class OverloadedError(RedisRPCError):
    """A request or message was refused at once rather than left to wait in vain: load shedding.

    Raised by ``request()`` and ``publish()`` when the list or stream holds
    its ``max_queued`` waiting requests already (nothing was sent), and by
    ``request()`` when the server found that the caller would stop waiting
    before the handler's typical run time was over (the handler did not
    run).

    Attributes:
        destination: Where it was sent, such as ``"list:orders"``.
        queued: How many were waiting when it was refused, if known.
        retry_after: Seconds after which a retry may succeed, a hint.
    """

    def __init__(
        self,
        message: str,
        *,
        destination: str,
        queued: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.destination = destination
        self.queued = queued
        self.retry_after = retry_after


class SigningKeyError(RedisRPCError):
    """The server refused a request without running its handler: the signing keys do not match.

    A server that cannot take a request for its signature answers so, and
    the caller raises this at once instead of waiting out its timeout. The
    answer is not signed (it could not be, so that the caller verifies it)
    and says only which side is at fault, nothing of either key. Someone
    who can read a request can therefore also make it fail with this
    error; they could not make it succeed.

    Attributes:
        reason: ``"caller_has_no_key"`` (the server takes signed requests
            only, and this one was not signed), ``"keys_differ"`` (the
            signature did not verify with the server's key), or
            ``"server_has_no_key"`` (the request was signed, and the server
            could neither check it nor sign its reply).
        destination: Where the request was sent, such as ``"list:orders"``.
        correlation_id: The request's correlation id.
    """

    def __init__(
        self,
        message: str,
        *,
        reason: SigningKeyReason,
        destination: str = "",
        correlation_id: str = "",
    ) -> None:
        if reason not in _SIGNING_KEY_REASONS:
            msg = f"Unknown reason for a SigningKeyError: {reason!r}."
            raise ValueError(msg)
        super().__init__(message)
        self.reason: SigningKeyReason = reason
        self.destination = destination
        self.correlation_id = correlation_id


class RemoteError(RedisRPCError):
    """The handler that took a request failed, and its server said so.

    The remote exception is described by strings only: no class named by
    data from the wire is ever looked up or instantiated.

    Attributes:
        type_name: The remote exception's class name, such as ``"KeyError"``,
            or ``"ValidationError"`` when the request did not fit the
            handler's parameter type.
        remote_message: The remote exception's message.
        errors: For a validation failure, one line per failing field.
        traceback: The remote traceback, when the server sends tracebacks.
        destination: Where the request was sent, such as ``"list:orders"``.
        correlation_id: The request's correlation id.
    """

    def __init__(
        self,
        *,
        type_name: str,
        remote_message: str,
        errors: Sequence[str] = (),
        traceback: str | None = None,
        destination: str = "",
        correlation_id: str = "",
    ) -> None:
        super().__init__(
            f"The handler of {destination or 'the request'} raised {type_name}: {remote_message}"
        )
        self.type_name = type_name
        self.remote_message = remote_message
        self.errors = tuple(errors)
        self.traceback = traceback
        self.destination = destination
        self.correlation_id = correlation_id
