"""``RedisBackend``: one Redis server, or the master that Redis Sentinel names; and the checks of what a broker is given to connect with, which the cluster backend shares."""

from __future__ import annotations

import logging
import os
import time
from typing import TYPE_CHECKING, Any

import redis
import redis.sentinel

from redis_rpc._io import sentinel
from redis_rpc._io.admin import RedisAdmin
from redis_rpc._io.commands import grouped, words
from redis_rpc._io.errors import checked, map_errors, results
from redis_rpc._io.link import RedisLink
from redis_rpc._io.pipe import Pipe, Posted
from redis_rpc._io.reader import RedisReader
from redis_rpc._io.subscription import RedisSubscription, subscription_options
from redis_rpc.errors import SetupError

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from redis_rpc._io.commands import Args, Command
    from redis_rpc._io.interfaces import Outcome

logger = logging.getLogger(__name__)

# How long close() lets the pipe write what callers queued before it stops.
PIPE_FLUSH_TIMEOUT = 2.0


class RedisBackend:
    """The connections to one Redis server, in bytes mode.

    Safe to use from any number of threads at once. ``execute()``,
    ``execute_many()``, ``post()`` and ``send()`` share one connection
    through the pipe (see ``_io.pipe``); each consumer's blocking reads
    have a connection of their own (``reader()``); scripts and the rest
    borrow a connection from redis-py's pool for the duration of each call.
    Implements ``_io.interfaces.Backend``.
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
        given = options.get("connection_class")
        if isinstance(given, type) and issubclass(
            given, redis.sentinel.SentinelManagedConnection
        ):
            msg = "connection_class=SentinelManagedConnection needs a pool of the sentinels' own: for a master that Redis Sentinel manages, pass a redis+sentinel://sentinel:26379/service URL instead."
            raise SetupError(msg)
        try:
            if sentinel.is_sentinel_url(url):
                self._client = sentinel.client(url, options)
            else:
                self._client = redis.Redis.from_url(url, **options)
        except (
            TypeError,
            ValueError,
        ) as exc:  # redis-py's messages never repeat the URL
            msg = f"Cannot use that Redis URL or those options: {str(exc).strip().rstrip('.')}."
            raise SetupError(msg) from exc
        # What the pool will really use: the URL's query options override keywords.
        pool = self._client.connection_pool
        kwargs = pool.connection_kwargs
        check_options(pool.connection_class, kwargs)
        if kwargs.get("decode_responses"):
            msg = "decode_responses=True would corrupt binary frames; leave it unset."
            raise SetupError(msg)
        self.socket_timeout: float = kwargs.get("socket_timeout") or float("inf")
        # Never the URL itself: it may carry a password.
        self.address = sentinel.address(pool) or (
            f"{kwargs.get('host', kwargs.get('path', '?'))}:{kwargs.get('port', '')}"
        )
        self.admin = RedisAdmin(
            lambda: self._client, self.address, socket_timeout=self.socket_timeout
        )
        self._pipe = self._new_pipe()

    def _new_pipe(self) -> Pipe:
        pool = self._client.connection_pool
        return Pipe(lambda: RedisLink.open(pool, self.address), address=self.address)

    def _deadline(self, deadline: float | None) -> float:
        # Without one of the caller's, as long as one command may take.
        return time.monotonic() + self.socket_timeout if deadline is None else deadline

    def _post_deadline(self, deadline: float | None) -> float:
        # What nobody waits on (acks) keeps socket_timeout; a reply, its caller's.
        ordinary = time.monotonic() + self.socket_timeout
        return ordinary if deadline is None else max(ordinary, deadline)

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
        (reply,) = self._pipe.submit([words(command)], self._deadline(deadline))
        return checked(reply, self.address)

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
        group = grouped(commands, atomic=atomic)
        replies = self._pipe.submit(group, self._deadline(deadline))
        return results(
            replies, transaction=len(group) > len(commands), address=self.address
        )

    def post(
        self,
        commands: Sequence[Command],
        *,
        atomic: bool = False,
        what: str,
        deadline: float | None = None,
    ) -> None:
        """Send *commands* in one write through the pipe, without waiting for the replies.

        A failure or a refusal is logged, as concerning *what*. They are
        written until *deadline* (``time.monotonic()``), such as the time
        a reply's caller waits until, and at least ``socket_timeout`` from
        now: a reply is bounded by its request's deadline, whatever this
        process went through meanwhile (a stall, say), not by the socket's.

        Raises:
            RedisConnectionError: Not sent: Redis is known to be down, or
                the pipe's queue stayed full until the deadline.
        """
        self.post_args(grouped(commands, atomic=atomic), what=what, deadline=deadline)

    def post_args(
        self, commands: list[Args], *, what: str, deadline: float | None = None
    ) -> None:
        """``post()`` for commands already spelled out as words."""
        self._pipe.post(commands, self._post_deadline(deadline), Posted(what))

    def send(
        self, command: Command, *, deadline: float | None, outcome: Outcome
    ) -> None:
        """Send *command* through the pipe without waiting; *outcome* hears how it went.

        Raises:
            RedisConnectionError: Not sent: Redis is known to be down, or
                the pipe's queue stayed full until *deadline*.
        """
        self._pipe.post([words(command)], self._deadline(deadline), outcome)

    def reader(self) -> RedisReader:
        """A connection for one consumer thread's blocking reads; see ``RedisReader``."""
        route = (self._client.connection_pool, self.address)
        return RedisReader(lambda _command: route)

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
        """Drop the parent's pipe and admin lock in a forked child; the next command opens another pipe."""
        self._pipe.abandon()
        self._pipe = self._new_pipe()
        self.admin.after_fork()

    def ping(self) -> None:
        with map_errors(self.address):
            self._client.ping()

    def server_version(self) -> str:
        """The ``redis_version`` that ``INFO server`` reports, or ``"unknown"``."""
        with map_errors(self.address):
            info = self._client.info("server")
        return str(info.get("redis_version", "unknown"))

    def subscription(self, shard: str | None = None) -> RedisSubscription:
        """A new Pub/Sub connection, to be owned by the calling thread; it connects on first use.

        *shard*: a sharded channel it is for; in a cluster, its slot's master.
        """
        pool = self._client.connection_pool
        connection = pool.connection_class(
            **subscription_options(pool.connection_kwargs)
        )
        return RedisSubscription(
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
            sentinel.close(self._client.connection_pool)


def check_target(url: object, options: Mapping[str, Any], *, several: bool) -> None:
    """Refuse a redis-py client or pool where a URL belongs, with what to pass instead.

    Only a cluster takes *several* URLs.

    Raises:
        SetupError: *url* is not a URL, or *options* hold a connection pool.
    """
    advice = "redis_rpc opens its own connections from a URL: pass redis://host:port for one server, redis+sentinel://sentinel:26379/service for a Sentinel-managed one, or RedisClusterBroker('redis://node:7000') for a Redis Cluster"
    if "connection_pool" in options:
        msg = f"connection_pool is not an option here: {advice}."
        raise SetupError(msg)
    urls = [url] if isinstance(url, str) else url if several else None
    if not (isinstance(urls, (list, tuple)) and all(isinstance(u, str) for u in urls)):
        msg = f"Expected a Redis URL, not {type(url).__name__}: {advice}."
        raise SetupError(msg)


def check_options(connection_class: type[Any], kwargs: dict[str, Any]) -> None:
    """Refuse an option the connections would reject, now rather than on first use.

    redis-py keeps unknown keywords and URL query options until it opens a
    connection, and then fails with a bare ``TypeError``. Building a
    connection object opens no socket, so it is a cheap, exact check.

    Raises:
        SetupError: An option is unknown to the connection class, or the
            class needs options of its own.
    """
    for option in ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile"):
        path = kwargs.get(option)
        if isinstance(path, str) and not os.path.isfile(path):
            msg = f"{option} names no readable file: {path!r} does not exist or is not a file. Fix the path; TLS cannot start without it."
            raise SetupError(msg)
    try:
        connection_class(**kwargs)
    except (KeyError, ValueError) as exc:  # a class that wants options of its own
        msg = f"connection_class={connection_class.__name__} cannot be built from a URL and options ({type(exc).__name__}: {exc}); leave connection_class unset, or use rediss:// or redis+sentinel:// URLs."
        raise SetupError(msg) from exc
    except TypeError as exc:
        hint = (
            " For TLS, use a rediss:// URL."
            if "ssl" in str(exc)
            else " Check its spelling against redis.Redis()."
        )
        msg = f"Unknown Redis option, given as a keyword or in the URL's query ({str(exc).strip().rstrip('.')}).{hint}"
        raise SetupError(msg) from exc
