"""The only module that calls redis-py: connections, typed wrappers, error mapping.

Everything else in the package speaks in bytes and in our own exceptions;
the casts that redis-py's uneven types need live here.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import threading
import time
from typing import TYPE_CHECKING, Any, TypeAlias, cast

import attrs
import redis
import redis.client
import redis.connection
import redis.exceptions

try:  # what redis-py's hiredis reader returns when a reply is incomplete
    from redis._parsers.hiredis import NOT_ENOUGH_DATA as _NOT_ENOUGH_DATA
except ImportError:  # another redis-py layout: read_response() does it all
    _NOT_ENOUGH_DATA = None

from redis_rpc import _sentinel
from redis_rpc._engine import Args, Outcome, Pipe, Posted
from redis_rpc._schemas import ListSub, PubSub
from redis_rpc.errors import (
    RedisCommandError,
    RedisConnectionError,
    RedisRPCError,
    SetupError,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Sequence

    from redis_rpc._heartbeat import Beat
    from redis_rpc._schemas import Destination

logger = logging.getLogger(__name__)

STREAM_DATA_FIELD = b"__data__"
# How long close() lets the pipe write what callers queued before it stops.
PIPE_FLUSH_TIMEOUT = 2.0


@attrs.frozen
class _Mapping:
    """How one kind of redis-py error is reported: our class, a reason, and advice."""

    theirs: type[Exception]
    ours: type[RedisConnectionError | RedisCommandError]
    reason: str
    # A sentence with {address} and {error} (redis-py's message) in it.
    message: str


# Chosen by type, not by message text: the first entry that the error is an
# instance of wins, so subclasses come before their bases.
ERROR_MAP: tuple[_Mapping, ...] = (
    _Mapping(
        redis.exceptions.AuthenticationError,
        RedisConnectionError,
        "authentication",
        "Redis at {address} refused the credentials ({error}); check the user name and password in the URL or the username= and password= options",
    ),
    _Mapping(
        redis.exceptions.AuthenticationWrongNumberOfArgsError,
        RedisConnectionError,
        "authentication",
        "Redis at {address} refused the credentials ({error}); a user name needs Redis 6 or newer and a matching ACL user",
    ),
    _Mapping(
        redis.exceptions.AuthorizationError,
        RedisConnectionError,
        "authentication",
        "Redis at {address} refused the connection's credentials ({error}); check the user name and password",
    ),
    _Mapping(
        redis.exceptions.MaxConnectionsError,
        RedisConnectionError,
        "pool_exhausted",
        "Every connection to Redis at {address} is in use ({error}); raise the max_connections option, or make fewer calls at once",
    ),
    _Mapping(
        redis.exceptions.BusyLoadingError,
        RedisConnectionError,
        "loading",
        "Redis at {address} is loading its data set into memory ({error}); retry in a moment",
    ),
    _Mapping(
        redis.exceptions.TimeoutError,
        RedisConnectionError,
        "timeout",
        "Redis at {address} did not answer in time ({error}); it may be overloaded or stalled, or socket_timeout is too short",
    ),
    _Mapping(
        redis.exceptions.ConnectionError,
        RedisConnectionError,
        "unreachable",
        "Lost or could not open the connection to Redis at {address} ({error}); check that the server is running and reachable",
    ),
    _Mapping(
        redis.exceptions.NoPermissionError,
        RedisCommandError,
        "permission",
        "The Redis user may not do this at {address} ({error}); grant the command, key or channel with ACL SETUSER, or connect as another user",
    ),
    _Mapping(
        redis.exceptions.OutOfMemoryError,
        RedisCommandError,
        "out_of_memory",
        "Redis at {address} is out of memory and refuses writes ({error}); free memory, raise maxmemory, set an eviction policy, or trim streams with maxlen",
    ),
    _Mapping(
        redis.exceptions.ReadOnlyError,
        RedisCommandError,
        "read_only",
        "Redis at {address} is a read-only replica ({error}); connect to the primary, or, where Sentinel manages it, through a redis+sentinel:// URL, which follows failovers",
    ),
    _Mapping(
        redis.exceptions.AskError,  # MovedError is an AskError
        RedisCommandError,
        "moved",
        "Redis at {address} is a Redis Cluster node that does not hold this key or channel ({error}); use RedisClusterBroker for a cluster",
    ),
    _Mapping(
        redis.exceptions.TryAgainError,
        RedisCommandError,
        "try_again",
        "Redis at {address} is moving this key's slot to another node ({error}); retry in a moment",
    ),
    _Mapping(
        redis.exceptions.ClusterDownError,  # MasterDownError too
        RedisConnectionError,
        "cluster_down",
        "The Redis Cluster that {address} belongs to cannot serve this key now ({error}); a failover is probably under way, retry in a moment",
    ),
    _Mapping(
        redis.exceptions.ClusterCrossSlotError,
        RedisCommandError,
        "cross_slot",
        "Redis at {address} refused a command whose keys are in different cluster slots ({error}); give the keys a common hash tag, such as {{orders}}",
    ),
    _Mapping(
        redis.exceptions.RedisError,
        RedisCommandError,
        "command",
        "Redis at {address} refused a command ({error})",
    ),
    _Mapping(
        # redis-py's cluster client: no node answered, or a slot has no master.
        redis.exceptions.RedisClusterException,
        RedisConnectionError,
        "cluster_down",
        "Could not reach {address}, or it cannot serve this key now ({error}); check that the nodes are running and that every slot has a master",
    ),
)


def _sentence(text: str) -> str:
    """*text* without its closing full stop, to be embedded in a sentence of ours."""
    return text.strip().rstrip(".")


def translate(
    exc: redis.exceptions.RedisError | redis.exceptions.RedisClusterException,
    address: str,
) -> RedisRPCError:
    """Our exception for redis-py's *exc*, its message naming the cause and the fix."""
    # The last two entries match every RedisError and RedisClusterException.
    mapping = next(m for m in ERROR_MAP if isinstance(exc, m.theirs))
    message = mapping.message.format(address=address, error=_sentence(str(exc)))
    return mapping.ours(message + ".", reason=mapping.reason)


@contextlib.contextmanager
def map_errors(address: str) -> Iterator[None]:
    """Translate redis-py's exceptions into ours, chaining the original."""
    try:
        yield
    except (redis.exceptions.RedisError, redis.exceptions.RedisClusterException) as exc:
        raise translate(exc, address) from exc


@attrs.frozen
class Publish:
    channel: str
    data: bytes
    sharded: bool = False  # SPUBLISH


@attrs.frozen
class RPush:
    key: str
    data: bytes


@attrs.frozen
class XAdd:
    stream: str
    data: bytes
    maxlen: int | None = None
    # More fields beside __data__, such as a dead letter's reason.
    extra: tuple[tuple[str, str], ...] = ()


@attrs.frozen
class XAck:
    stream: str
    group: str
    entry_id: bytes


@attrs.frozen
class LRem:
    """Remove one copy of *data* from list *key*: a reliable list's acknowledgement."""

    key: str
    data: bytes


@attrs.frozen
class Ping:
    """``PING``: whether Redis answers."""


Command: TypeAlias = Publish | RPush | XAdd | XAck | LRem | Ping

# Moves every item of a dead consumer's processing list back to the head of
# its source list, oldest first in line, then forgets the consumer; all in one
# atomic step, so that a consumer whose heartbeat returns meanwhile is never
# robbed. KEYS: heartbeat, processing list, source list, registry; ARGV: id.
_REQUEUE_IF_DEAD = """
if redis.call('EXISTS', KEYS[1]) == 1 then return -1 end
local moved = 0
while redis.call('LMOVE', KEYS[2], KEYS[3], 'LEFT', 'LEFT') do moved = moved + 1 end
redis.call('SREM', KEYS[4], ARGV[1])
return moved
"""

# Claims up to ARGV[4] entries pending for a dead consumer, or deletes the
# consumer once it has none left; all in one atomic step, so that a consumer
# whose heartbeat returns meanwhile is never robbed, and two live consumers
# never claim the same entry. KEYS: stream, heartbeat, registry; ARGV: group,
# dead consumer, claiming consumer, count. Returns nil when the consumer is
# alive, else {{id, {field, value, ...}, deliveries}, ...}.
_CLAIM_FROM_DEAD = """
if redis.call('EXISTS', KEYS[2]) == 1 then return false end
local pending = redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', tonumber(ARGV[4]), ARGV[2])
if #pending == 0 then
  redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], ARGV[2])
  redis.call('SREM', KEYS[3], ARGV[2])
  return {}
end
local ids, deliveries = {}, {}
for i, entry in ipairs(pending) do
  ids[i] = entry[1]
  deliveries[entry[1]] = entry[4] + 1  -- XCLAIM counts this delivery too
end
local claimed = {}
for _, entry in ipairs(redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[3], 0, unpack(ids))) do
  if entry and entry[2] then
    claimed[#claimed + 1] = {entry[1], entry[2], deliveries[entry[1]]}
    deliveries[entry[1]] = nil
  end
end
-- Left over: entries deleted from the stream meanwhile, which nothing can handle.
for id in pairs(deliveries) do redis.call('XACK', KEYS[1], ARGV[1], id) end
return claimed
"""


def send_command(
    destination: Destination, data: bytes, maxlen: int | None = None
) -> Command:
    """The command that delivers *data* to *destination*.

    *maxlen* trims a stream destination, overriding the ``StreamSub``'s own.
    """
    if isinstance(destination, PubSub):
        return Publish(destination.channel, data, sharded=destination.sharded)
    if isinstance(destination, ListSub):
        return RPush(destination.list, data)
    return XAdd(
        destination.stream, data, maxlen if maxlen is not None else destination.maxlen
    )


class Connection:
    """The connections to one Redis server, in bytes mode.

    Safe to use from any number of threads at once. ``execute()``,
    ``execute_many()``, ``post()`` and ``send()`` share one connection
    through the pipe (see ``_engine``); each consumer's blocking reads
    have a connection of their own (``reader()``); scripts and the rest
    borrow a connection from redis-py's pool for the duration of each call.
    """

    def __init__(
        self,
        url: str,
        *,
        socket_timeout: float,
        health_check_interval: float,
        options: dict[str, Any],
    ) -> None:
        self._health_check_interval = health_check_interval
        options = {
            "socket_connect_timeout": 5.0,
            **options,
            "socket_timeout": socket_timeout,
        }
        try:
            if _sentinel.is_sentinel_url(url):
                self._client = _sentinel.client(url, options)
            else:
                self._client = redis.Redis.from_url(url, **options)
        except (
            TypeError,
            ValueError,
        ) as exc:  # redis-py's messages never repeat the URL
            msg = f"Cannot use that Redis URL or those options: {_sentence(str(exc))}."
            raise SetupError(msg) from exc
        # What the pool will really use: the URL's query options override keywords.
        pool = self._client.connection_pool
        kwargs = pool.connection_kwargs
        _check_options(pool.connection_class, kwargs)
        if kwargs.get("decode_responses"):
            msg = "decode_responses=True would corrupt binary frames; leave it unset."
            raise SetupError(msg)
        self.socket_timeout: float = kwargs.get("socket_timeout") or float("inf")
        # Never the URL itself: it may carry a password.
        self.address = _sentinel.address(pool) or (
            f"{kwargs.get('host', kwargs.get('path', '?'))}:{kwargs.get('port', '')}"
        )
        self._requeue_if_dead = self._client.register_script(_REQUEUE_IF_DEAD)
        self._claim_from_dead = self._client.register_script(_CLAIM_FROM_DEAD)
        self._pipe = self._new_pipe()

    def _new_pipe(self) -> Pipe:
        pool = self._client.connection_pool
        return Pipe(lambda: _Link.open(pool, self.address), address=self.address)

    def _deadline(self, deadline: float | None) -> float:
        # Without one of the caller's, as long as one command may take.
        return time.monotonic() + self.socket_timeout if deadline is None else deadline

    def execute(self, command: Command, *, deadline: float | None = None) -> Any:
        """Run one command through the pipe; return what Redis answered.

        Args:
            deadline: A ``time.monotonic()`` time to give up by; by default
                ``socket_timeout`` from now.

        Raises:
            RedisConnectionError: Not done by *deadline*, or the connection
                failed; ``maybe_applied`` says whether it may have run.
            RedisCommandError: Redis refused the command.
        """
        (reply,) = self._pipe.submit([_args(command)], self._deadline(deadline))
        return _checked(reply, self.address)

    def execute_many(
        self,
        commands: Sequence[Command],
        *,
        atomic: bool = False,
        deadline: float | None = None,
    ) -> list[Any]:
        """Run several commands in one write through the pipe; in a ``MULTI`` when *atomic*.

        Raises:
            RedisConnectionError: As for ``execute()``.
            RedisCommandError: Redis refused one of the commands (the
                first refusal is raised; without *atomic*, the others ran).
        """
        group = _grouped(commands, atomic=atomic)
        replies = self._pipe.submit(group, self._deadline(deadline))
        return _results(
            replies, transaction=len(group) > len(commands), address=self.address
        )

    def post(
        self, commands: Sequence[Command], *, atomic: bool = False, what: str
    ) -> None:
        """Send *commands* in one write through the pipe, without waiting for the replies.

        A failure or a refusal is logged, as concerning *what*.

        Raises:
            RedisConnectionError: Not sent: Redis is known to be down, or
                the pipe's queue stayed full for ``socket_timeout``.
        """
        self.post_args(_grouped(commands, atomic=atomic), what=what)

    def post_args(self, commands: list[Args], *, what: str) -> None:
        """``post()`` for commands already spelled out as words."""
        self._pipe.post(commands, self._deadline(None), Posted(what))

    def send(
        self, command: Command, *, deadline: float | None, outcome: Outcome
    ) -> None:
        """Send *command* through the pipe without waiting; *outcome* hears how it went.

        Raises:
            RedisConnectionError: Not sent: Redis is known to be down, or
                the pipe's queue stayed full until *deadline*.
        """
        self._pipe.post([_args(command)], self._deadline(deadline), outcome)

    def reader(self) -> Reader:
        """A connection for one consumer thread's blocking reads; see ``Reader``."""
        return Reader(self._client.connection_pool, self.address)

    # Whether this is a Redis Cluster, whose keys live on several nodes.
    cluster = False

    def companion(self, key: str, suffix: str) -> str:
        """The name of a key that goes with *key* (a list's processing list, a stream's dead letters)."""
        return key + suffix

    def rides(
        self, commands: Sequence[Command], key: str | None, *, atomic: bool
    ) -> bool:
        """Whether *commands* may go with a consumer's next blocking read on *key*."""
        return True

    def settle(self, commands: list[Args], replies: list[object], what: str) -> None:
        """Check the *replies* to *commands* sent for *what* without waiting: log a failure."""
        Posted(what).set_result(replies)

    @property
    def used(self) -> bool:
        """Whether this connection opened a socket or started a thread of ours."""
        return self._pipe.used

    def after_fork(self) -> None:
        """Drop the parent's pipe in a forked child; the next command opens another."""
        self._pipe.abandon()
        self._pipe = self._new_pipe()

    def ping(self) -> None:
        with map_errors(self.address):
            self._client.ping()

    def server_version(self) -> str:
        """The ``redis_version`` that ``INFO server`` reports, or ``"unknown"``."""
        with map_errors(self.address):
            info = self._client.info("server")
        return str(info.get("redis_version", "unknown"))

    def heartbeat(self, beats: Sequence[Beat]) -> None:
        """Refresh every heartbeat key in *beats*, and list each consumer in its registry."""
        with map_errors(self.address):
            pipe = self._client.pipeline(transaction=False)
            for beat in beats:
                pipe.set(beat.alive, 1, px=max(1, round(beat.ttl * 1000)))
                pipe.sadd(beat.registry, beat.member)
            pipe.execute()

    def members(self, key: str) -> list[str]:
        """The members of set *key*, decoded."""
        with map_errors(self.address):
            found = cast("set[bytes]", self._client.smembers(key))
        return sorted(m.decode(errors="replace") for m in found)

    def requeue_if_dead(
        self, *, alive: str, processing: str, source: str, registry: str, member: str
    ) -> int | None:
        """Unless key *alive* exists, move list *processing* back to the head of *source*.

        Returns:
            How many items moved, or None when *member* is alive.
        """
        with map_errors(self.address):
            moved = int(
                self._requeue_if_dead(
                    keys=[alive, processing, source, registry], args=[member]
                )
            )
        return None if moved < 0 else moved

    def server_time_ms(self) -> int:
        """The Redis server's clock, in milliseconds since the epoch: the time stream ids count."""
        with map_errors(self.address):
            seconds, microseconds = self._client.time()
        return seconds * 1000 + microseconds // 1000

    def create_group(self, stream: str, group: str, start: bytes) -> bool:
        """Create consumer *group* on *stream* (and the stream), to read the entries after *start*.

        Returns:
            False if the group exists already; it is left as it is.
        """
        try:
            with map_errors(self.address):
                self._client.xgroup_create(stream, group, id=start, mkstream=True)
        except RedisCommandError as exc:
            if "BUSYGROUP" not in str(exc.__cause__):
                raise
            return False
        return True

    def consumer_idle_times(self, stream: str, group: str) -> dict[str, float]:
        """Each consumer of *group* and the seconds since it last read or claimed."""
        with map_errors(self.address):
            consumers: Any = self._client.xinfo_consumers(stream, group)
        return {
            cast("bytes", c["name"]).decode(errors="replace"): int(c["idle"]) / 1000
            for c in consumers
        }

    def claim_from_dead(
        self,
        *,
        stream: str,
        group: str,
        consumer: str,
        dead: str,
        alive: str,
        registry: str,
        count: int,
    ) -> list[tuple[bytes, dict[bytes, bytes], int]] | None:
        """Unless key *alive* exists, claim for *consumer* up to *count* entries pending for *dead*.

        When *dead* has no pending entry left it is deleted from the group
        and from set *registry* instead.

        Returns:
            None when *dead* is alive after all; otherwise the claimed
            entries, each with its fields and how many times it has been
            delivered, this time included (empty once *dead* is deleted).
        """
        with map_errors(self.address):
            answer: Any = self._claim_from_dead(
                keys=[stream, alive, registry], args=[group, dead, consumer, count]
            )
        if answer is None:
            return None
        return [
            (
                cast("bytes", entry_id),
                dict(zip(fields[::2], fields[1::2], strict=True)),
                int(deliveries),
            )
            for entry_id, fields, deliveries in answer
        ]

    def xautoclaim(
        self, stream: str, group: str, consumer: str, min_idle: float, start: bytes
    ) -> tuple[bytes, tuple[bytes, dict[bytes, bytes] | None] | None]:
        """Claim for *consumer* the first entry from *start* on pending for *min_idle* seconds.

        Returns the cursor to continue from (``b"0-0"`` after the last
        pending entry) and the claimed entry, if any; its fields are
        ``None`` when it was deleted from the stream meanwhile.
        """
        with map_errors(self.address):
            answer: Any = self._client.xautoclaim(
                stream,
                group,
                consumer,
                min_idle_time=max(0, round(min_idle * 1000)),
                start_id=start,
                count=1,
            )
        cursor, entries = answer[0], answer[1]
        if not entries:
            return cursor, None
        entry_id, fields = entries[0]
        return cursor, (cast("bytes", entry_id), fields or None)

    def deliveries(self, stream: str, group: str, entry_id: bytes) -> int:
        """How many times *entry_id* has been delivered in *group*; 0 if it is not pending."""
        with map_errors(self.address):
            pending: Any = self._client.xpending_range(
                stream, group, min=entry_id, max=entry_id, count=1
            )
        return int(pending[0]["times_delivered"]) if pending else 0

    def subscription(self, shard: str | None = None) -> Subscription:
        """A new Pub/Sub connection, to be owned by the calling thread; it connects on first use.

        *shard*: a sharded channel it is for; in a cluster, its slot's master.
        """
        pool = self._client.connection_pool
        connection = pool.connection_class(
            **{**pool.connection_kwargs, **SUBSCRIPTION_OPTIONS}
        )
        return Subscription(
            connection,
            self.address,
            health_check_interval=self._health_check_interval,
            socket_timeout=self.socket_timeout,
        )

    def close(self) -> None:
        """Write what the pipe holds and close it, then close the idle connections.

        A connection still borrowed by an overrunning handler is left to
        that thread rather than cut under it.
        """
        if not self._pipe.close(PIPE_FLUSH_TIMEOUT):
            logger.warning("The Redis writer thread did not stop in time")
        try:
            with map_errors(self.address):
                self._client.connection_pool.disconnect(inuse_connections=False)
        finally:
            _sentinel.close(self._client.connection_pool)


def _check_options(connection_class: type[Any], kwargs: dict[str, Any]) -> None:
    """Refuse an option the connections would reject, now rather than on first use.

    redis-py keeps unknown keywords and URL query options until it opens a
    connection, and then fails with a bare ``TypeError``. Building a
    connection object opens no socket, so it is a cheap, exact check.

    Raises:
        SetupError: An option is unknown to the connection class.
    """
    try:
        connection_class(**kwargs)
    except TypeError as exc:
        hint = (
            " For TLS, use a rediss:// URL."
            if "ssl" in str(exc)
            else " Check its spelling against redis.Redis()."
        )
        msg = f"Unknown Redis option, given as a keyword or in the URL's query ({_sentence(str(exc))}).{hint}"
        raise SetupError(msg) from exc


def _args(command: Command) -> Args:
    """The words of *command*, as Redis reads them."""
    if isinstance(command, Publish):
        return (
            b"SPUBLISH" if command.sharded else b"PUBLISH",
            command.channel,
            command.data,
        )
    if isinstance(command, RPush):
        return (b"RPUSH", command.key, command.data)
    if isinstance(command, XAdd):
        trim: Args = () if command.maxlen is None else (b"MAXLEN", b"~", command.maxlen)
        fields = [word for pair in command.extra for word in pair]
        return (
            b"XADD",
            command.stream,
            *trim,
            b"*",
            STREAM_DATA_FIELD,
            command.data,
            *fields,
        )
    if isinstance(command, Ping):
        return (b"PING",)
    if isinstance(command, LRem):
        # Counted from the tail, where the oldest in-flight items are.
        return (b"LREM", command.key, -1, command.data)
    return (b"XACK", command.stream, command.group, command.entry_id)


def readable(connection: Any, timeout: float) -> bool:
    """Whether *connection* has something to read, waiting up to *timeout* seconds.

    redis-py's ``can_read()`` with hiredis polls the socket, then polls and
    peeks again to tell a closed socket from a readable one, before the
    read itself: each of those system calls lets go of the interpreter lock,
    which with many threads costs a thread switch. Here one ``recv`` does
    it all: the bytes go into the parser, and a closed socket raises there.
    redis-py's own way is kept for the pure-Python parser, which does the same.

    Raises:
        redis.exceptions.ConnectionError: The connection is closed or broken.
    """
    parser: Any = getattr(connection, "_parser", None)
    reader = getattr(parser, "_reader", None)
    if reader is None or not hasattr(reader, "has_data"):
        return bool(connection.can_read(timeout))
    if reader.has_data():
        return True
    try:
        return bool(parser.read_from_socket(timeout=timeout, raise_on_timeout=False))
    except OSError as exc:  # a reset: redis-py lets it through from here
        msg = f"Error while reading from socket: {exc}"
        raise redis.exceptions.ConnectionError(msg) from exc


def read_buffered(connection: Any, limit: int) -> list[Any]:
    """The replies *connection* holds, at least one and at most *limit*; call after ``readable()``.

    With hiredis, complete replies are taken straight from its reader, with
    none of ``read_response()``'s per-reply bookkeeping; a partial one is
    waited for. Error replies are raised.
    """
    reader = getattr(getattr(connection, "_parser", None), "_reader", None)
    if reader is None or _NOT_ENOUGH_DATA is None:
        replies = [connection.read_response()]
        while len(replies) < limit and buffered(connection):
            replies.append(connection.read_response())
        return replies
    replies = []
    while len(replies) < limit:
        reply = reader.gets()
        if reply is _NOT_ENOUGH_DATA:
            if replies:
                break
            reply = (
                connection.read_response()
            )  # only part of one is in: wait for the rest
        if isinstance(reply, Exception):
            raise reply
        replies.append(reply)
    return replies


def buffered(connection: Any) -> bool:
    """Whether *connection* holds unread bytes already: no system call with hiredis."""
    reader = getattr(getattr(connection, "_parser", None), "_reader", None)
    if reader is None or not hasattr(reader, "has_data"):
        return bool(connection.can_read(0))
    return bool(reader.has_data())


def _checked(reply: Any, address: str) -> Any:
    """*reply*, unless it is an error reply: then raise it as ours."""
    if isinstance(reply, RedisRPCError):
        raise reply
    if isinstance(reply, redis.exceptions.ResponseError):  # nested, as in EXEC's answer
        raise translate(reply, address) from reply
    return reply


class _Link:
    """One connection of redis-py's pool, held by the pipe's writer thread for as long as it works.

    Implements ``_engine.Link``. Taken from the pool once, not per call, so
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
    def open(cls, pool: redis.ConnectionPool, address: str) -> _Link:
        with map_errors(address):
            connection = pool.get_connection()
        return cls(pool, connection, address)

    def check(self) -> None:
        connection = self._connection
        try:
            # Anything to read before we wrote is a close or a stray reply.
            stale = readable(connection, 0.0)
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
            return readable(self._connection, max(0.0, timeout))
        except redis.exceptions.RedisError as exc:
            raise translate(exc, self._address) from exc

    def ready(self) -> bool:
        try:
            return buffered(self._connection)
        except (redis.exceptions.RedisError, OSError):
            return False  # the next read() says what went wrong

    def read(self) -> object:
        # With hiredis, a reply already received comes straight from its reader.
        reader = getattr(getattr(self._connection, "_parser", None), "_reader", None)
        if reader is not None and _NOT_ENOUGH_DATA is not None:
            reply = reader.gets()
            if reply is not _NOT_ENOUGH_DATA:
                self._due -= 1
                if isinstance(reply, redis.exceptions.ResponseError):
                    # redis-py's read_response() would notice this itself.
                    if isinstance(
                        reply, redis.exceptions.ReadOnlyError
                    ) and _sentinel.rediscovers(self._connection):
                        self._demoted = True
                    error = translate(reply, self._address)
                    error.__cause__ = reply
                    return error
                if not isinstance(reply, Exception):
                    return reply
                # Anything else hiredis hands back is a broken connection.
                msg = f"Redis at {self._address} sent an unreadable reply: {reply}"
                raise RedisConnectionError(msg, reason="unreachable") from reply
        try:
            reply = self._connection.read_response()
        except redis.exceptions.ResponseError as exc:
            # The connection is fine: only this command was refused.
            self._due -= 1
            error = translate(exc, self._address)
            error.__cause__ = exc
            return error
        except redis.exceptions.RedisError as exc:
            raise translate(exc, self._address) from exc
        self._due -= 1
        return reply

    def close(self) -> None:
        with contextlib.suppress(redis.exceptions.RedisError, OSError):
            self._connection.disconnect()
            self._pool.release(self._connection)


class Reader:
    """One connection of the pool, held by one consumer thread for its blocking reads.

    Each read also carries what the consumer owes Redis: the replies, events
    and acks of the messages it handled since the previous read go out in
    the same write, before the read, so that a busy consumer pays one round
    trip per batch instead of one per message and per read. Not thread-safe:
    only its consumer thread uses it. It connects on first use.
    """

    def __init__(self, pool: redis.ConnectionPool, address: str) -> None:
        self._pool = pool
        self._address = address
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
        if connection is not None:
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
        owed_args = owed.take()
        try:
            if self._connection is None:
                self._connection = self._connect(command)
            connection = self._connection
            with map_errors(self._address):
                connection.send_packed_command(
                    connection.pack_commands([*owed_args, command]),
                    check_health=False,
                )
                replies = [_reply(connection) for _ in owed_args]
                reply = _reply(connection)
        except RedisRPCError as exc:
            self.close()
            if owed_args:
                owed.failed(exc)
            raise
        owed.answered(owed_args, replies)
        return _checked(reply, self._address)

    def _connect(self, command: Args) -> Any:
        """A connection of the pool for reading *command*, which is about to be sent."""
        with map_errors(self._address):
            return self._pool.get_connection()


class Owed:
    """What a consumer owes Redis (replies, events, acks), until its next read carries it.

    Workers add to it while the consumer is between reads; otherwise they
    send on their own through the pipe, so that nothing waits behind a
    blocking read. Thread-safe.
    """

    def __init__(
        self, connection: Connection, what: str, key: str | None = None
    ) -> None:
        """*key*: the list or stream read; in a cluster, what its master does not serve does not ride."""
        self._connection = connection
        self._what = what
        self._key = key
        self._lock = threading.Lock()
        self._commands: list[Args] = []
        self._open = False  # whether the consumer will read again soon

    def send(self, commands: Sequence[Command], *, atomic: bool) -> None:
        """Have *commands* sent: with the next read if one is coming, or now.

        Raises:
            RedisConnectionError: As ``Connection.post()``.
        """
        if self._connection.rides(commands, self._key, atomic=atomic):
            with self._lock:
                if self._open:
                    self._commands += _grouped(commands, atomic=atomic)
                    return
        self._connection.post(commands, atomic=atomic, what=self._what)

    def reopen(self) -> None:
        """The consumer is back from a read: collect again until the next one."""
        with self._lock:
            self._open = True

    def take(self) -> list[Args]:
        """What the next read is to carry; until ``reopen()``, workers send on their own."""
        with self._lock:
            self._open = False
            commands, self._commands = self._commands, []
        return commands

    def flush(self) -> None:
        """Send what is collected through the pipe, and collect no more until ``reopen()``."""
        commands = self.take()
        if commands:
            try:
                self._connection.post_args(commands, what=self._what)
            except RedisRPCError as exc:
                self.failed(exc)

    def answered(self, commands: list[Args], replies: list[object]) -> None:
        self._connection.settle(commands, replies, self._what)

    def failed(self, error: RedisRPCError) -> None:
        Posted(self._what).set_error(error)


def _grouped(commands: Sequence[Command], *, atomic: bool) -> list[Args]:
    """The words of *commands*, in a ``MULTI``/``EXEC`` group when *atomic*."""
    group = [_args(command) for command in commands]
    if atomic and len(group) > 1:
        group = [(b"MULTI",), *group, (b"EXEC",)]
    return group


def _results(replies: list[object], *, transaction: bool, address: str) -> list[Any]:
    """The results of commands from their *replies* (to ``MULTI`` ... ``EXEC`` for a *transaction*).

    Raises:
        RedisCommandError: The first refusal among them.
    """
    if transaction:
        for reply in replies[:-1]:  # a command refused when queued aborts EXEC
            _checked(reply, address)
        results = _checked(replies[-1], address)
        return [_checked(result, address) for result in results]
    return [_checked(reply, address) for reply in replies]


def _reply(connection: Any) -> object:
    """The next reply on *connection*; an error reply is returned, as redis-py's exception."""
    try:
        return connection.read_response()
    except redis.exceptions.ResponseError as exc:
        return exc


# What a Pub/Sub connection's options are, whatever the pool's.
SUBSCRIPTION_OPTIONS: dict[str, Any] = {
    # Plain arrays for every message, whatever the URL asked for.
    "protocol": 2,
    # Our own PING check applies: redis-py's would expect a bare PONG,
    # which a subscribed connection never sends.
    "health_check_interval": 0,
    # Pushed only over RESP3, and for cluster moves: none here.
    "maint_notifications_config": None,
}

# What a Pub/Sub connection hands on: (pattern or None, channel, data).
Received: TypeAlias = tuple[bytes | None, bytes, bytes]

# Channels per SUBSCRIBE command: one command for thousands of channels is
# fine for Redis, but smaller ones keep each write and each argument array
# modest; all batches are written before any confirmation is read.
SUBSCRIBE_BATCH = 1000
# Messages one read hands back at most, so that under a flood the reader
# still checks its stop event and its PING deadline now and then.
READ_LIMIT = 1000
# How often a wait for confirmations looks at the caller's stop event.
_STOP_CHECK = 0.05


class Subscription:
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
    and close it.
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
                or getattr(exc, "reason", None) == "moved"
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
        mapping = next(m for m in ERROR_MAP if isinstance(error, m.theirs))
        what = (
            repr(batch[0])
            if len(batch) == 1
            else f"one of {len(batch)} channels from {batch[0]!r} to {batch[-1]!r}"
        )
        advice = mapping.message.format(
            address=self._address, error=_sentence(str(error))
        )
        return mapping.ours(
            f"Cannot subscribe to {what}: {advice}.", reason=mapping.reason
        )

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
