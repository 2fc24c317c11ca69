"""Redis Sentinel: ``redis+sentinel://`` URLs, and connections that follow the master.

With Sentinel, the URL names the sentinels and a service, never the master
itself: every connection asks a sentinel where the master is as it opens,
through redis-py's ``Sentinel.master_for()`` pool, so reconnecting after a
failover is how a connection finds the new master.

What redis-py leaves to us, and this module adds:

- After a failover, connections that are busy for good (the pipe's, each
  consumer's, each Pub/Sub connection) would stay on the old master until
  it drops them, and a broker would be split between two servers
  meanwhile. So when any connection learns of a new master, every other
  connection still open to the old one is shut down, and each owner
  reconnects through the sentinels; the switch is logged once, here.
- A demoted master answers writes with ``READONLY``. Where we read replies
  ourselves, bypassing redis-py's own check, ``rediscovers()`` tells the
  reader to drop the connection, so that the next one asks the sentinels.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import weakref
from typing import Any
from urllib.parse import unquote, urlsplit

import redis
import redis.connection
import redis.sentinel

logger = logging.getLogger(__name__)

SCHEMES = ("redis+sentinel", "rediss+sentinel")
DEFAULT_PORT = 26379
# Query options meant for the sentinels themselves, not for the master.
SENTINEL_QUERY_OPTIONS = ("sentinel_username", "sentinel_password")
EXAMPLE = "redis+sentinel://host:26379,host2:26379/mymaster/0"


def is_sentinel_url(url: str) -> bool:
    """Whether *url* names sentinels (``redis+sentinel://`` or ``rediss+sentinel://``)."""
    return url.partition("://")[0].lower() in SCHEMES


def parse(
    url: str,
) -> tuple[list[tuple[str, int]], str, dict[str, Any], dict[str, Any]]:
    """The sentinels, the service name, the master's options and the sentinels' own options.

    ``redis+sentinel://[user:password@]host[:port][,host[:port]...]/service[/db][?option=value...]``:
    credentials, the database and query options are those of a
    ``redis://`` URL and apply to the master; ``rediss+sentinel://`` reaches
    the master over TLS. ``sentinel_username`` and ``sentinel_password``
    in the query are the sentinels' own credentials.

    Raises:
        ValueError: The URL is malformed; the message says how.
    """
    scheme, _, rest = url.partition("://")
    scheme = scheme.lower()
    if scheme not in SCHEMES:
        msg = f"a Sentinel URL starts with redis+sentinel:// or rediss+sentinel://, as in {EXAMPLE}"
        raise ValueError(msg)
    try:
        parts = urlsplit(f"sentinel://{rest}")
    except ValueError as exc:
        msg = f"cannot read the sentinels' addresses ({exc}); write them as host:port,host:port, IPv6 addresses in brackets"
        raise ValueError(msg) from exc
    userinfo, _, hosts = parts.netloc.rpartition("@")
    sentinels = [_sentinel_address(item) for item in hosts.split(",")]
    path = [unquote(segment) for segment in parts.path.strip("/").split("/")]
    service = path[0]
    if not service or len(path) > 2:
        msg = f"a Sentinel URL names the service after the sentinels, and then optionally a database number, as in {EXAMPLE}"
        raise ValueError(msg)
    db = path[1] if len(path) == 2 else "0"
    if not db.isdigit():
        msg = f"the database after the service name must be a number, as the 0 in {EXAMPLE}, not {db!r}"
        raise ValueError(msg)
    # The sentinels' own credentials come out of the query before redis-py
    # reads the rest; it reads credentials and query as for any redis:// URL.
    query, own = [], {}
    for pair in filter(None, parts.query.split("&")):
        name, _, value = pair.partition("=")
        if name in SENTINEL_QUERY_OPTIONS:
            own[name.removeprefix("sentinel_")] = unquote(value)
        else:
            query.append(pair)
    master_scheme = "rediss" if scheme == "rediss+sentinel" else "redis"
    credentials = f"{userinfo}@" if userinfo else ""
    options: dict[str, Any] = redis.connection.parse_url(  # type: ignore[no-untyped-call, unused-ignore]  # typed from redis-py 8.2
        f"{master_scheme}://{credentials}sentinel/{db}?{'&'.join(query)}"
    )
    del options["host"]
    if options.pop("connection_class", None) is not None:  # rediss: TLS
        options["ssl"] = True
    return sentinels, service, options, own


def _sentinel_address(item: str) -> tuple[str, int]:
    """(host, port) from ``host``, ``host:port``, ``[v6]`` or ``[v6]:port``.

    Raises:
        ValueError: No host, or a port that is not a number from 1 to 65535.
    """
    if item.startswith("["):
        host, _, port = item[1:].partition("]")
        if port and not port.startswith(":"):
            msg = f"cannot read the sentinel address {item!r}; write host:port, with IPv6 addresses in brackets"
            raise ValueError(msg)
        port = port[1:]
    else:
        host, _, port = item.partition(":")
    host = unquote(host)
    if not host:
        msg = f"a sentinel address has no host ({item!r}); list them as host:port,host:port, as in {EXAMPLE}"
        raise ValueError(msg)
    if not port:
        return host, DEFAULT_PORT
    if not port.isdigit() or not 0 < int(port) < 65536:
        msg = f"the sentinel port in {item!r} must be a number from 1 to 65535"
        raise ValueError(msg)
    return host, int(port)


def client(url: str, options: dict[str, Any]) -> redis.Redis:
    """A client of the master that the sentinels in *url* name; no connection is opened yet.

    *options* are keywords for the master's connections, as for
    ``redis.Redis.from_url()``: the URL's own query options win over them.
    The sentinels are reached with the same ``socket_*`` options.

    Raises:
        ValueError: The URL is malformed.
    """
    sentinels, service, url_options, own = parse(url)
    kwargs = {**options, **url_options}
    tls = kwargs.pop("ssl", False)
    kwargs["connection_class"] = _ManagedSSLConnection if tls else _ManagedConnection
    sentinel_kwargs = {k: v for k, v in kwargs.items() if k.startswith("socket_")}
    manager = _Sentinel(sentinels, sentinel_kwargs={**sentinel_kwargs, **own})
    master: redis.Redis = manager.master_for(service, **kwargs)  # type: ignore[no-untyped-call, unused-ignore]  # typed from redis-py 8.2
    return master


def address(pool: Any) -> str | None:
    """Where *pool* connects, for messages: "service via Sentinel host:port,..."; None without Sentinel.

    Never includes credentials.
    """
    if not isinstance(pool, redis.sentinel.SentinelConnectionPool):
        return None
    return f"{pool.service_name} via Sentinel {pool.sentinel_manager.addresses}"


def close(pool: Any) -> None:
    """Stop watching the sentinels behind *pool*, if any, and close the connections to them. Never raises."""
    if isinstance(pool, redis.sentinel.SentinelConnectionPool):
        manager = pool.sentinel_manager
        if isinstance(manager, _Sentinel):
            manager.stop_watching()
        with contextlib.suppress(redis.exceptions.RedisError, OSError):
            manager.close()


def rediscovers(connection: Any) -> bool:
    """Whether *connection* finds its server through the sentinels when it reconnects.

    A reader that sees ``READONLY`` on such a connection drops it: its
    server was the master and has been demoted, and the next connection
    asks the sentinels for the new one.
    """
    return isinstance(connection, redis.sentinel.SentinelManagedConnection)


def read_reply(connection: Any) -> Any:
    """The next reply on *connection*, a ``READONLY`` refusal raised as it is.

    redis-py's Sentinel-managed connection turns ``READONLY`` into a lost
    connection and drops it, with every reply still due on it. The pipe's
    link instead takes it as the refusal it is (the command was not
    applied), and reconnects through the sentinels once no reply is due.
    """
    if isinstance(connection, redis.sentinel.SentinelManagedConnection):
        return redis.connection.AbstractConnection.read_response(connection)
    return connection.read_response()


def _format(address: tuple[str, int]) -> str:
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class _Sentinel(redis.sentinel.Sentinel):
    """redis-py's ``Sentinel``, telling every connection of its own when the master moved.

    Serves one ``Connection`` (one broker): the switch is logged once per
    broker, by whichever thread learns of it first. Thread-safe.
    """

    def __init__(self, sentinels: list[tuple[str, int]], **kwargs: Any) -> None:
        super().__init__(sentinels, **kwargs)  # type: ignore[no-untyped-call, unused-ignore]  # typed from redis-py 8.2
        self.addresses = ",".join(_format(address) for address in sentinels)
        # Guards _masters; never held for I/O.
        self._lock = threading.Lock()
        self._masters: dict[str, tuple[str, int]] = {}  # the last answer, by service
        # Every connection to a master made for this client, to move after a switch.
        self.connections: weakref.WeakSet[_ManagedConnection] = weakref.WeakSet()
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None
        self._watcher_pid = 0

    def discover_master(self, service_name: str) -> tuple[str, int]:
        self._watch(service_name)
        found = super().discover_master(service_name)  # type: ignore[no-untyped-call, unused-ignore]  # typed from redis-py 8.2
        master = (str(found[0]), int(found[1]))
        with self._lock:
            old = self._masters.get(service_name)
            self._masters[service_name] = master
            moving = [] if old in (None, master) else list(self.connections)
        if old is not None and old != master:
            logger.warning(
                "Redis Sentinel moved the master of %r from %s to %s; reconnecting there",
                service_name,
                _format(old),
                _format(master),
            )
            _shut_down(moving, old)
        return master

    def _watch(self, service_name: str) -> None:
        """Start listening for the sentinels' ``+switch-master``, once per process.

        Connections busy for good would otherwise learn of a failover only
        when the old master drops them, as the sentinels demote it: about
        ten seconds later with Redis 7.0, and never if the old master is cut
        off from the sentinels but not from us.
        """
        with self._lock:
            pid = os.getpid()
            if self._stop.is_set() or self._watcher_pid == pid:
                return
            self._watcher_pid = pid  # a forked child starts its own
            self._watcher = threading.Thread(
                target=self._listen,
                args=(service_name,),
                name=f"redis_rpc:sentinel:{service_name}",
                daemon=True,
            )
        self._watcher.start()

    def stop_watching(self, timeout: float = 2.0) -> None:
        """Stop the ``+switch-master`` listener, waiting up to *timeout* seconds for it."""
        self._stop.set()
        with self._lock:
            watcher = self._watcher if self._watcher_pid == os.getpid() else None
        if watcher is not None and watcher is not threading.current_thread():
            watcher.join(timeout)

    def _listen(self, service_name: str) -> None:
        """Take the sentinels in turn; on a switch of *service_name*, rediscover the master."""
        turn = 0
        while not self._stop.is_set():
            sentinel = self.sentinels[turn % len(self.sentinels)]
            turn += 1
            pubsub = sentinel.pubsub(ignore_subscribe_messages=True)  # type: ignore[no-untyped-call, unused-ignore]  # typed from redis-py 8.2
            try:
                pubsub.subscribe("+switch-master")
                while not self._stop.is_set():
                    message = pubsub.get_message(timeout=_WATCH_POLL)
                    # "<service> <old host> <old port> <new host> <new port>"
                    words = (message or {}).get("data", b"")
                    if (
                        isinstance(words, bytes)
                        and words.split(b" ")[0] == service_name.encode()
                    ):
                        with contextlib.suppress(redis.exceptions.RedisError, OSError):
                            self.discover_master(service_name)
            except (redis.exceptions.RedisError, OSError):
                self._stop.wait(_WATCH_RETRY)  # then the next sentinel
            finally:
                with contextlib.suppress(redis.exceptions.RedisError, OSError):
                    pubsub.close()


# How often the switch listener looks at its stop event, and how long it
# waits before trying the next sentinel after one failed.
_WATCH_POLL = 0.25
_WATCH_RETRY = 1.0


def _shut_down(connections: list[_ManagedConnection], old: tuple[str, int]) -> None:
    """Shut down the sockets of *connections* open to *old*, so that their owners reconnect.

    Only ``shutdown()``, which is safe while another thread uses the
    socket: its owner sees the connection closed and reopens it through
    the sentinels. Closing the socket here could hand its descriptor to
    another socket under that thread. Connections inherited from a parent
    process are left alone: their sockets are the parent's too.
    """
    pid = os.getpid()
    for connection in connections:
        # Any: redis-py leaves a connection's socket untyped.
        sock: Any = connection._sock
        if sock is None or connection.pid != pid:
            continue
        if (connection.host, connection.port) == old:
            with contextlib.suppress(OSError):  # closed meanwhile by its owner
                sock.shutdown(socket.SHUT_RDWR)


class _ManagedConnection(redis.sentinel.SentinelManagedConnection):
    """redis-py's Sentinel-managed connection, known to its ``_Sentinel`` so it can be moved."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)  # type: ignore[no-untyped-call, unused-ignore]  # typed from redis-py 8.2
        manager = self.connection_pool.sentinel_manager
        if isinstance(manager, _Sentinel):
            manager.connections.add(self)


class _ManagedSSLConnection(_ManagedConnection, redis.connection.SSLConnection):
    """The same over TLS."""
