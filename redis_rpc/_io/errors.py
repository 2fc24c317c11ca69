"""The one place where redis-py's exceptions become ours.

Each redis-py error is mapped by its type (the first entry of ``ERROR_MAP``
it is an instance of), never by the order of ``except`` clauses, to our
class, a ``reason`` from a closed set and a message that names the cause
and the fix. A plain error reply (``ResponseError``) is told apart by its
error code, the first word Redis puts in it (``BUSYGROUP``, ``NOGROUP``,
``UNBLOCKED``; redis-py strips ``ERR``, so an unknown command is told by
its wording), and an ``AuthenticationError`` by the start of its wording
(a missing password, or one that Redis has none to check against): that is
read here and nowhere else. A cluster redirection
keeps where it points as a field (``RedisCommandError.redirect``). Code
outside this module reads ``reason`` and ``redirect``, never a message.
"""

from __future__ import annotations

import contextlib
import ssl
from typing import TYPE_CHECKING, Any, Literal

import attrs
import redis.exceptions

from redis_rpc.errors import (
    CommandReason,
    ConnectionReason,
    Redirect,
    RedisCommandError,
    RedisConnectionError,
    RedisRPCError,
)

if TYPE_CHECKING:
    from collections.abc import Iterator


@attrs.frozen
class _Unreachable:
    """A kind of redis-py error that means Redis cannot be reached, and how to report it."""

    theirs: type[Exception]
    reason: ConnectionReason
    # A sentence with {address} and {error} (redis-py's message) in it.
    message: str
    ours = RedisConnectionError


@attrs.frozen
class _Refused:
    """A kind of redis-py error that means Redis refused a command, and how to report it."""

    theirs: type[Exception]
    reason: CommandReason
    # A sentence with {address} and {error} (redis-py's message) in it.
    message: str
    ours = RedisCommandError


_Mapping = _Unreachable | _Refused


class _NoMaxClientsError(redis.exceptions.ConnectionError):
    """Stands in for ``MaxClientsReachedError`` with a redis-py that has none, and never raises one."""


# redis-py says so when Redis refuses a client over maxclients (5.1 and newer).
_MaxClients: type[Exception] = getattr(
    redis.exceptions, "MaxClientsReachedError", _NoMaxClientsError
)

# Chosen by type, not by message text: the first entry that the error is an
# instance of wins, so subclasses come before their bases.
ERROR_MAP: tuple[_Mapping, ...] = (
    _Unreachable(
        _MaxClients,
        "max_clients",
        "Redis at {address} refuses new connections: it has as many clients as its maxclients setting allows ({error}); raise maxclients, or close idle clients",
    ),
    _Unreachable(
        redis.exceptions.AuthenticationError,
        "authentication",
        "Redis at {address} refused the credentials ({error}); check the user name and password in the URL or the username= and password= options",
    ),
    _Unreachable(
        redis.exceptions.AuthenticationWrongNumberOfArgsError,
        "authentication",
        "Redis at {address} refused the credentials ({error}); a user name needs Redis 6 or newer and a matching ACL user",
    ),
    _Unreachable(
        redis.exceptions.AuthorizationError,
        "authentication",
        "Redis at {address} refused the connection's credentials ({error}); check the user name and password",
    ),
    _Unreachable(
        redis.exceptions.MaxConnectionsError,
        "pool_exhausted",
        "Every connection to Redis at {address} is in use ({error}); raise the max_connections option, or make fewer calls at once",
    ),
    _Unreachable(
        redis.exceptions.BusyLoadingError,
        "loading",
        "Redis at {address} is loading its data set into memory ({error}); retry in a moment",
    ),
    _Unreachable(
        redis.exceptions.TimeoutError,
        "timeout",
        "Redis at {address} did not answer in time ({error}); it may be overloaded or stalled, or socket_timeout is too short",
    ),
    _Unreachable(
        redis.exceptions.ConnectionError,
        "unreachable",
        "Lost or could not open the connection to Redis at {address} ({error}); check that the server is running and reachable",
    ),
    _Refused(
        redis.exceptions.NoPermissionError,
        "permission",
        "The Redis user may not do this at {address} ({error}); grant the command, key or channel with ACL SETUSER, or connect as another user",
    ),
    _Refused(
        redis.exceptions.OutOfMemoryError,
        "out_of_memory",
        "Redis at {address} is out of memory and refuses writes ({error}); free memory, raise maxmemory, set an eviction policy, or trim streams with maxlen",
    ),
    _Refused(
        redis.exceptions.ReadOnlyError,
        "read_only",
        "Redis at {address} is a read-only replica ({error}); connect to the primary, or, where Sentinel manages it, through a redis+sentinel:// URL, which follows failovers",
    ),
    _Refused(
        redis.exceptions.AskError,  # MovedError is an AskError
        "moved",
        "Redis at {address} is a Redis Cluster node that does not hold this key or channel ({error}); use RedisClusterBroker for a cluster",
    ),
    _Refused(
        redis.exceptions.TryAgainError,
        "try_again",
        "Redis at {address} is moving this key's slot to another node ({error}); retry in a moment",
    ),
    _Unreachable(
        redis.exceptions.ClusterDownError,  # MasterDownError too
        "cluster_down",
        "The Redis Cluster that {address} belongs to cannot serve this key now ({error}); a failover is probably under way, retry in a moment",
    ),
    _Refused(
        redis.exceptions.ClusterCrossSlotError,
        "cross_slot",
        "Redis at {address} refused a command whose keys are in different cluster slots ({error}); give the keys a common hash tag, such as {{orders}}",
    ),
    _Refused(
        redis.exceptions.RedisError,
        "command",
        "Redis at {address} refused a command ({error})",
    ),
    _Unreachable(
        # redis-py's cluster client: no node answered, or a slot has no master.
        redis.exceptions.RedisClusterException,
        "cluster_down",
        "Could not reach {address}, or it cannot serve this key now ({error}); check that the nodes are running and that every slot has a master",
    ),
)


# Plain error replies, by their error code, which redis-py leaves in the text.
_CODES: dict[str, _Refused] = {
    "BUSYGROUP": _Refused(
        redis.exceptions.ResponseError,
        "busy_group",
        "Redis at {address} already has this consumer group ({error})",
    ),
    "NOGROUP": _Refused(
        redis.exceptions.ResponseError,
        "no_group",
        "Redis at {address} has no such stream or consumer group ({error}); it may have been deleted, or Redis restarted empty",
    ),
    "UNBLOCKED": _Refused(
        redis.exceptions.ResponseError,
        "unblocked",
        "Redis at {address} ended a blocking read ({error}); it probably became a replica in a failover",
    ),
}
# redis-py raises AuthenticationError for a wrong password, a missing one
# (NOAUTH) and one Redis does not check alike, without the error code: told
# by the start of its wording, which the message leaves out: Redis' own for
# HELLO is long, and says less than ours.
_NO_PASSWORD_GIVEN = _Unreachable(
    redis.exceptions.AuthenticationError,
    "authentication",
    "Redis at {address} requires a password, and none was given; put it in the URL, as redis://:password@host:port (or redis://user:password@host:port), or pass password=",
)
_NO_PASSWORD_SET = _Unreachable(
    redis.exceptions.AuthenticationError,
    "authentication",
    "Redis at {address} has no password set, yet one was given; leave the password out of the URL, or set one on the server (requirepass)",
)
_AUTH_WORDINGS: tuple[tuple[str, _Unreachable], ...] = (
    ("authentication required", _NO_PASSWORD_GIVEN),  # NOAUTH, to any command
    ("hello must be called with the client already authenticated", _NO_PASSWORD_GIVEN),
    ("auth <password> called without any password configured", _NO_PASSWORD_SET),
    ("client sent auth, but no password is set", _NO_PASSWORD_SET),  # Redis < 6
)
# redis-py strips the ERR code, so an unknown command is told by its wording.
_UNKNOWN_COMMAND = _Refused(
    redis.exceptions.ResponseError,
    "unknown_command",
    "Redis at {address} does not know this command ({error}); it may be older than the command",
)


def _sentence(text: str) -> str:
    """*text* without its closing full stop, to be embedded in a sentence of ours."""
    return text.strip().rstrip(".")


def _redirect(exc: Exception) -> Redirect | None:
    if not isinstance(exc, redis.exceptions.AskError):  # MovedError is an AskError
        return None
    kind: Literal["moved", "ask"] = (
        "moved" if isinstance(exc, redis.exceptions.MovedError) else "ask"
    )
    return Redirect(kind, int(exc.slot_id), str(exc.host), int(exc.port))


# A connection that failed because TLS could not verify the server: the
# certificate is signed by another CA than ssl_ca_certs names, or is not
# valid for the host connected to. Retrying cannot cure either.
_TLS_UNTRUSTED = _Unreachable(
    redis.exceptions.ConnectionError,
    "tls",
    "Redis at {address} presented a TLS certificate that does not verify ({error}); the CA that signed it must be the one ssl_ca_certs names (or one the system trusts)",
)
_TLS_WRONG_HOST = _Unreachable(
    redis.exceptions.ConnectionError,
    "tls",
    "The TLS certificate of Redis at {address} is not valid for the host name or address connected to ({error}); connect by a name the certificate lists",
)
# OpenSSL's X509_V_ERR_HOSTNAME_MISMATCH and X509_V_ERR_IP_ADDRESS_MISMATCH.
_WRONG_HOST_CODES = frozenset((62, 64))


def _tls_cause(exc: Exception) -> ssl.SSLCertVerificationError | None:
    """The certificate verification failure behind a failed connection, if that was it."""
    cause = exc.__cause__ or exc.__context__
    return cause if isinstance(cause, ssl.SSLCertVerificationError) else None


def _classify(exc: Exception) -> _Mapping:
    """How to report *exc*: its entry of ``ERROR_MAP``, or of ``_CODES`` for a plain error reply."""
    # The last two entries match every RedisError and RedisClusterException.
    mapping = next(m for m in ERROR_MAP if isinstance(exc, m.theirs))
    if mapping.reason == "unreachable" and (tls := _tls_cause(exc)) is not None:
        return (
            _TLS_WRONG_HOST if tls.verify_code in _WRONG_HOST_CODES else _TLS_UNTRUSTED
        )
    if type(exc) is redis.exceptions.AuthenticationError:
        text = str(exc).lower()
        return next(
            (m for start, m in _AUTH_WORDINGS if text.startswith(start)), mapping
        )
    if type(exc) is redis.exceptions.ResponseError:
        text = str(exc)
        if text.lower().startswith("unknown command"):
            return _UNKNOWN_COMMAND
        return _CODES.get(text.split(" ", 1)[0], mapping)
    return mapping


def translate(exc: Exception, address: str) -> RedisRPCError:
    """Our exception for redis-py's *exc*, its message naming the cause and the fix.

    The caller chains it (``raise ... from exc``) or sets ``__cause__``.
    """
    return _build(_classify(exc), exc, address, "")


def refused(exc: Exception, address: str, what: str) -> RedisRPCError:
    """Our exception for *exc*, chained to it, saying that *what* failed (such as ``"Cannot subscribe to 'x'"``)."""
    error = _build(_classify(exc), exc, address, what)
    error.__cause__ = exc
    return error


def _build(mapping: _Mapping, exc: Exception, address: str, what: str) -> RedisRPCError:
    advice = mapping.message.format(address=address, error=_sentence(str(exc)))
    message = f"{what}: {advice}." if what else f"{advice}."
    if isinstance(mapping, _Refused):
        return RedisCommandError(
            message, reason=mapping.reason, redirect=_redirect(exc)
        )
    return RedisConnectionError(message, reason=mapping.reason)


def password_not_set(exc: Exception) -> bool:
    """Whether *exc* is Redis refusing a password because it has none set, which means nothing is checked."""
    return _classify(exc) is _NO_PASSWORD_SET


def is_redis_error(exc: BaseException) -> bool:
    """Whether *exc* is one of redis-py's exceptions, which ``translate()`` maps."""
    return isinstance(
        exc, (redis.exceptions.RedisError, redis.exceptions.RedisClusterException)
    )


@contextlib.contextmanager
def map_errors(address: str) -> Iterator[None]:
    """Translate redis-py's exceptions into ours, chaining the original."""
    try:
        yield
    except (redis.exceptions.RedisError, redis.exceptions.RedisClusterException) as exc:
        raise translate(exc, address) from exc


def error_reply(reply: Exception, address: str) -> RedisRPCError:
    """Our exception for an error reply read off a connection, chained to it; to be returned, not raised."""
    error = translate(reply, address)
    error.__cause__ = reply
    return error


def checked(reply: Any, address: str) -> Any:
    """*reply*, unless it is an error reply: then raise it as ours."""
    if isinstance(reply, RedisRPCError):
        raise reply
    if isinstance(reply, redis.exceptions.ResponseError):  # nested, as in EXEC's answer
        raise translate(reply, address) from reply
    return reply


def results(replies: list[object], *, transaction: bool, address: str) -> list[Any]:
    """The results of commands from their *replies* (to ``MULTI`` ... ``EXEC`` for a *transaction*).

    Raises:
        RedisCommandError: The first refusal among them.
    """
    if transaction:
        for reply in replies[:-1]:  # a command refused when queued aborts EXEC
            checked(reply, address)
        return [checked(result, address) for result in checked(replies[-1], address)]
    return [checked(reply, address) for reply in replies]
