"""Redis Cluster: the connection interface of ``_redis.Connection``, routed by hash slot.

A cluster splits its keys into 16,384 hash slots, each served by one master.
``ClusterConnection`` keeps, for each master, what ``Connection`` keeps for
its one server: a pipe shared by all threads, and a pool for the consumers'
blocking reads. Each command goes to the master of its key's slot, as
redis-py's ``RedisCluster`` maps them; the management commands (scripts,
consumer groups, heartbeats) go through ``RedisCluster`` itself.

When the map is out of date (a slot moved, a replica took over from a dead
master) Redis answers ``MOVED`` or ``ASK``, or the old master cannot be
reached. A refused command was not applied, so it is sent again to the
right node, at most ``REDIRECTS`` times; a lost connection fails the command
with a clear error and makes the next command refresh the map first.

Keys that one script or transaction touches must share a slot. A list's or
stream's companion keys (processing lists, heartbeats, registries, the
default dead letters) get the list's name as a hash tag: ``{orders}:...``
lives with ``orders``. A transaction that still spans slots, such as moving
an item to a dead-letter list named by the user, runs as separate commands
in order, so that an item is copied before it is removed.

Classic Pub/Sub needs no routing: a cluster delivers every ``PUBLISH`` to the
subscribers of every node. Its answer counts only the subscribers of the node
that took it, though, so it cannot tell that nobody listens: ``fail_fast``
applies to sharded channels only, whose subscribers all sit on one node.
"""

from __future__ import annotations

import functools
import inspect
import logging
import random
import threading
import time
from typing import TYPE_CHECKING, Any

import redis
import redis.cluster
import redis.exceptions
from redis.crc import key_slot

from redis_rpc._engine import Args, Outcome, Pipe, Posted
from redis_rpc._redis import (
    _CLAIM_FROM_DEAD,
    _REQUEUE_IF_DEAD,
    PIPE_FLUSH_TIMEOUT,
    SUBSCRIPTION_OPTIONS,
    Command,
    Connection,
    Owed,
    Publish,
    Reader,
    Subscription,
    _args,
    _check_options,
    _grouped,
    _Link,
    _results,
    _sentence,
    map_errors,
)
from redis_rpc.errors import (
    RedisCommandError,
    RedisConnectionError,
    RedisRPCError,
    SetupError,
)

if TYPE_CHECKING:
    from collections.abc import Sequence

logger = logging.getLogger(__name__)

# How many times a command refused with MOVED, ASK or TRYAGAIN is sent again.
REDIRECTS = 5
# The map is refreshed at most this often after lost connections.
REFRESH_INTERVAL = 0.25
# How long a node that failed a connection is avoided where any node will do.
AVOID = 5.0
# How long to wait before sending again a command that got TRYAGAIN or CLUSTERDOWN.
RETRY_DELAY = 0.05
# The reasons of a refusal that sending the command elsewhere, or later, cures.
_REDIRECTED = frozenset({"moved", "try_again", "cluster_down"})
# Commands whose first argument is the key (or the channel) that routes them.
_KEYED = frozenset({b"PUBLISH", b"SPUBLISH", b"RPUSH", b"XADD", b"XACK", b"LREM"})


def _key(command: Args) -> bytes | str | None:
    """The key (or channel) that routes *command*; None for one that any node takes."""
    name = command[0]
    if name in _KEYED:
        return command[1]  # type: ignore[return-value]
    if name == b"BLMPOP":  # BLMPOP timeout 1 key ...
        return command[3]  # type: ignore[return-value]
    if name in (b"BLPOP", b"BLMOVE"):
        return command[1]  # type: ignore[return-value]
    if name == b"XREADGROUP":
        return command[list(command).index(b"STREAMS") + 1]  # type: ignore[return-value]
    return None


def slot_of(key: bytes | str) -> int:
    return int(key_slot(key.encode() if isinstance(key, str) else key))


def hash_tag(key: str) -> str | None:
    """What Redis hashes of *key* when it has a hash tag (``a{b}c`` -> ``b``), else None."""
    start = key.find("{")
    if start < 0:
        return None
    end = key.find("}", start + 1)
    if end <= start + 1:  # no closing brace, or ``{}``: the whole key is hashed
        return None
    return key[start + 1 : end]


def _suspect(node: _Node) -> bool:
    """Whether *node* failed a connection lately: its pipe is down, or it did within ``AVOID``."""
    return node.pipe.down or time.monotonic() - node.failed_at < AVOID


def _units(commands: list[Args]) -> list[list[Args]]:
    """*commands* cut into what must go together: each command, or a ``MULTI`` ... ``EXEC``."""
    units: list[list[Args]] = []
    transaction: list[Args] | None = None
    for command in commands:
        if transaction is not None:
            transaction.append(command)
            if command[0] == b"EXEC":
                units.append(transaction)
                transaction = None
        elif command[0] == b"MULTI":
            transaction = [command]
        else:
            units.append([command])
    if transaction is not None:  # never written so: keep it whole
        units.append(transaction)
    return units


def _reason(error: RedisRPCError) -> str:
    """*error*'s reason; ``cluster_down`` for a blocked read that a failover cut short."""
    # A master that a failover demotes answers its blocked reads with
    # "UNBLOCKED force unblock ...": a plain error reply, but a map change.
    if str(error.__cause__).startswith("UNBLOCKED"):
        return "cluster_down"
    return str(getattr(error, "reason", ""))


def _redirect(replies: Sequence[object]) -> RedisRPCError | None:
    """The first refusal in *replies* that another node, or a moment, would cure."""
    for reply in replies:
        for item in reply if isinstance(reply, list) else (reply,):
            if isinstance(item, RedisRPCError) and _reason(item) in _REDIRECTED:
                return item
    return None


class _Node:
    """What the connection keeps for one master: its pool and its pipe."""

    def __init__(self, pool: redis.ConnectionPool, host: str, port: int) -> None:
        self.pool = pool
        self.host, self.port = host, port
        self.address = address = f"{host}:{port}"
        self.failed_at = float("-inf")  # when a connection to it last failed
        self.pipe = Pipe(
            lambda: _Link.open(pool, address),
            address=address,
            name=f"redis_rpc:writer:{address}",
        )


class ClusterConnection(Connection):
    """The connections to a Redis Cluster, in bytes mode; see the module's docstring.

    Args:
        url: A ``redis://`` or ``rediss://`` URL of any node, or several
            such URLs (a sequence, or one string with commas between them):
            the first one that answers tells where the others are.
    """

    cluster = True

    def __init__(
        self,
        url: str | Sequence[str],
        *,
        socket_timeout: float,
        health_check_interval: float,
        options: dict[str, Any],
    ) -> None:
        self._health_check_interval = health_check_interval
        urls = [u.strip() for u in (url.split(",") if isinstance(url, str) else url)]
        urls = [u if "://" in u else f"redis://{u}" for u in urls if u]
        if not urls:
            msg = "RedisClusterBroker needs the URL of at least one node."
            raise SetupError(msg)
        options = {
            "socket_connect_timeout": 5.0,
            **options,
            "socket_timeout": socket_timeout,
        }
        try:
            parsed = [redis.connection.parse_url(u) for u in urls]  # type: ignore[no-untyped-call]
        except (TypeError, ValueError) as exc:
            msg = f"Cannot use that Redis URL or those options: {_sentence(str(exc))}."
            raise SetupError(msg) from exc
        if any(p.get("db") for p in parsed):
            msg = "A Redis Cluster has database 0 only; leave the database number out of the URL."
            raise SetupError(msg)
        kwargs: dict[str, Any] = {**parsed[0], **options}
        kwargs.pop("db", None)
        connection_class = kwargs.pop("connection_class", redis.Connection)
        if kwargs.get("decode_responses"):
            msg = "decode_responses=True would corrupt binary frames; leave it unset."
            raise SetupError(msg)
        known = set(redis.cluster.REDIS_ALLOWED_KEYS) | set(
            inspect.signature(redis.cluster.RedisCluster.__init__).parameters
        )
        unknown = sorted(set(kwargs) - known)
        if unknown:  # RedisCluster would drop them without a word
            msg = f"Unknown Redis option, given as a keyword or in the URL's query ({', '.join(unknown)}). Check its spelling against redis.cluster.RedisCluster()."
            raise SetupError(msg)
        # What each node's connections get: RedisCluster drops the rest.
        self._node_kwargs = redis.cluster.cleanup_kwargs(**kwargs)  # type: ignore[no-untyped-call]
        self._node_kwargs.pop("host", None)
        self._node_kwargs.pop("port", None)
        self._connection_class = connection_class
        _check_options(connection_class, {**self._node_kwargs, "host": "x", "port": 1})
        self._cluster_kwargs = {
            **kwargs,
            "startup_nodes": [
                redis.cluster.ClusterNode(  # type: ignore[no-untyped-call]
                    p.get("host", "localhost"), p.get("port", 6379)
                )
                for p in parsed
            ],
        }
        if connection_class is redis.SSLConnection:
            self._cluster_kwargs["ssl"] = True
        self._cluster_kwargs.pop("host", None)
        self._cluster_kwargs.pop("port", None)
        self.socket_timeout: float = kwargs.get("socket_timeout") or float("inf")
        first = parsed[0]
        self.address = (
            f"the cluster of {first.get('host', 'localhost')}:{first.get('port', 6379)}"
        )
        # Guards setting _rc, and _nodes.
        self._lock = threading.Lock()
        self._rc: redis.cluster.RedisCluster | None = None
        self._nodes: dict[str, _Node] = {}
        # The node of each slot routed to so far, until the map changes.
        self._by_slot: dict[int, _Node] = {}
        self._stale = False  # a connection was lost: refresh the map before routing
        self._refreshed = 0.0  # time.monotonic() of the last refresh
        self._refreshing = threading.Lock()
        self._scripts: dict[str, Any] = {}

    # -- the cluster and its map

    @property
    def _client(self) -> redis.cluster.RedisCluster:  # type: ignore[override]
        """redis-py's cluster client, created on first use: creating it asks the nodes for the map."""
        rc = self._rc  # set once: read without the lock
        if rc is not None:
            return rc
        with map_errors(self.address):
            rc = redis.cluster.RedisCluster(**self._cluster_kwargs)
        with self._lock:
            if self._rc is None:
                self._rc = rc
                return rc
        rc.close()
        return self._rc

    @property
    def _requeue_if_dead(self) -> Any:  # type: ignore[override]
        return self._script("requeue")

    @property
    def _claim_from_dead(self) -> Any:  # type: ignore[override]
        return self._script("claim")

    def _script(self, name: str) -> Any:
        """A script registered with the cluster client, which runs it on its keys' master."""
        script = self._scripts.get(name)
        if script is None:
            body = _REQUEUE_IF_DEAD if name == "requeue" else _CLAIM_FROM_DEAD
            script = self._scripts[name] = self._client.register_script(body)
        return script

    def _lost(self) -> None:
        """A node could not be reached: refresh the map before the next command is routed."""
        with self._lock:
            self._stale = True

    def refresh(self) -> None:
        """Ask the nodes for the slot map again, at most every ``REFRESH_INTERVAL`` seconds."""
        rc = self._client
        with self._refreshing:
            if time.monotonic() - self._refreshed < REFRESH_INTERVAL:
                return
            with self._lock:
                self._stale = False
            try:
                with map_errors(self.address):
                    rc.nodes_manager.initialize()
                self._by_slot.clear()
            except RedisRPCError:
                self._lost()
                raise
            finally:
                self._refreshed = time.monotonic()

    def _follow(self, error: RedisRPCError) -> None:
        """Update the map after *error*, a refusal that ``_redirect()`` picked."""
        cause = error.__cause__
        if isinstance(cause, redis.exceptions.MovedError):
            self._moved(cause)
        elif _reason(error) == "cluster_down":
            time.sleep(RETRY_DELAY)
            self.refresh()
        else:  # TRYAGAIN, or ASK for a blocking read: the slot is moving
            time.sleep(RETRY_DELAY)

    def _route(self, group: list[Args]) -> _Node:
        r"""The master for *group* (commands on one slot), or a live one for classic ``PUBLISH``\ es.

        A classic ``PUBLISH`` goes to its channel's master, as redis-py sends
        it, but any node spreads it to the whole cluster: while that master
        cannot be reached, another takes it.
        """
        node = self._master(next((k for k in map(_key, group) if k is not None), None))
        if _suspect(node) and all(args[0] == b"PUBLISH" for args in group):
            return self._any_master()
        return node

    def _any_master(self) -> _Node:
        """A master picked at random, among those not known to have failed if there are any."""
        nodes = [self._node(n.host, n.port) for n in self._client.get_primaries()]  # type: ignore[no-untyped-call]
        alive = [node for node in nodes if not _suspect(node)]
        return random.choice(alive or nodes)  # noqa: S311 - spreading load, not a secret

    def _failed(self, node: _Node) -> None:
        """A connection to *node* failed: avoid it where any node will do, and refresh the map."""
        node.failed_at = time.monotonic()
        self._lost()

    def _master(self, key: bytes | str | None) -> _Node:
        """The master for *key*, by the map; any master for None."""
        if self._stale:  # a bool, read without the lock: a refresh sees it soon enough
            self.refresh()
        if key is None:
            return self._any_master()
        slot = slot_of(key)
        # Most commands go to a slot seen before: no lookup in redis-py's map.
        found = self._by_slot.get(slot)
        if found is not None:
            return found
        manager = self._client.nodes_manager
        try:
            node = manager.get_node_from_slot(slot)
        except redis.exceptions.RedisClusterException:
            self.refresh()
            with map_errors(self.address):
                node = manager.get_node_from_slot(slot)
        found = self._by_slot[slot] = self._node(node.host, node.port)
        return found

    def _moved(self, error: redis.exceptions.MovedError) -> None:
        """Take the new owner of a slot from a ``MOVED`` refusal."""
        self._client.nodes_manager.move_slot(error)
        self._by_slot.clear()

    def _node(self, host: str, port: int) -> _Node:
        name = f"{host}:{port}"
        with self._lock:
            node = self._nodes.get(name)
            if node is None:
                pool = redis.ConnectionPool(
                    connection_class=self._connection_class,
                    host=host,
                    port=port,
                    **self._node_kwargs,
                )
                node = self._nodes[name] = _Node(pool, host, port)
        return node

    def _asked(self, error: RedisRPCError) -> _Node | None:
        """The node an ``ASK`` refusal sends a command to, once; None for other refusals."""
        cause = error.__cause__
        if isinstance(cause, redis.exceptions.AskError) and not isinstance(
            cause, redis.exceptions.MovedError
        ):
            return self._node(cause.host, cause.port)
        return None

    # -- commands

    def execute(self, command: Command, *, deadline: float | None = None) -> Any:
        (reply,) = self.execute_many([command], deadline=deadline)
        return reply

    def execute_many(
        self,
        commands: Sequence[Command],
        *,
        atomic: bool = False,
        deadline: float | None = None,
    ) -> list[Any]:
        """As ``Connection.execute_many()``; commands on several slots run one by one, in order."""
        deadline = self._deadline(deadline)
        group = _grouped(commands, atomic=atomic)
        slots = {slot_of(k) for k in map(_key, group) if k is not None}
        if len(slots) > 1:
            return [
                result
                for command in commands
                for result in self.execute_many([command], deadline=deadline)
            ]
        replies = self._submit(group, deadline)
        return _results(
            replies, transaction=len(group) > len(commands), address=self.address
        )

    def _submit(self, group: list[Args], deadline: float) -> list[object]:
        """Send *group* (one slot) to its node, following redirections; return the replies."""
        node = self._route(group)
        asking: Args = ()
        for _ in range(REDIRECTS):
            try:
                replies = node.pipe.submit(
                    [asking, *group] if asking else group, deadline
                )
            except RedisConnectionError:
                self._lost()
                raise
            if asking:
                replies = replies[1:]
            error = _redirect(replies)
            if error is None or time.monotonic() >= deadline:
                return replies
            asked = self._asked(error)
            if asked is not None:
                node, asking = asked, (b"ASKING",)
            else:
                self._follow(error)
                node, asking = self._route(group), ()
        return replies

    def post(
        self, commands: Sequence[Command], *, atomic: bool = False, what: str
    ) -> None:
        """As ``Connection.post()``; a transaction over several slots runs one by one, in order.

        That happens on the calling thread, which waits for each command:
        copying an item to a dead-letter list on another node must be done
        before the item is removed.
        """
        groups: dict[int | None, list[Command]] = {}
        for command in commands:
            key = _key(_args(command))
            groups.setdefault(None if key is None else slot_of(key), []).append(command)
        if atomic and len(groups) > 1:
            try:
                for command in commands:
                    self.execute(command)
            except RedisRPCError as exc:
                Posted(what).set_error(exc)
            return
        for group in groups.values():
            self.post_args(_grouped(group, atomic=atomic), what=what)

    def post_args(self, commands: list[Args], *, what: str) -> None:
        self._post(commands, self._deadline(None), Posted(what), attempts=0)

    def send(
        self, command: Command, *, deadline: float | None, outcome: Outcome
    ) -> None:
        self._post([_args(command)], self._deadline(deadline), outcome, attempts=0)

    def _post(
        self, commands: list[Args], deadline: float, outcome: Outcome, *, attempts: int
    ) -> None:
        """Post *commands* to their masters, one write per master; *outcome* hears each write's replies."""
        units = _units(commands)
        if len(units) == 1:
            by_node = {self._route(commands): commands}
        else:  # what a consumer owed, say: replies, acks and events for several nodes
            by_node = {}
            for unit in units:
                by_node.setdefault(self._route(unit), []).extend(unit)
        for node, group in by_node.items():
            try:
                node.pipe.post(
                    group, deadline, _Rerouted(self, group, deadline, outcome, attempts)
                )
            except RedisConnectionError:
                self._lost()
                raise

    def _post_asking(
        self,
        node: _Node,
        group: list[Args],
        deadline: float,
        outcome: Outcome,
        attempts: int,
    ) -> None:
        node.pipe.post(
            [(b"ASKING",), *group],
            deadline,
            _Rerouted(self, group, deadline, outcome, attempts, asking=True),
        )

    def rides(
        self, commands: Sequence[Command], key: str | None, *, atomic: bool
    ) -> bool:
        """Only what *key*'s master serves (in a transaction, *key*'s slot), and classic ``PUBLISH``.

        Any node spreads a classic ``PUBLISH``. A command that the map sends
        to *key*'s master may still meet ``MOVED`` there, if the read's
        connection is older than the map: ``settle()`` sends it on.
        """
        if key is None:
            return False
        slot = slot_of(key)
        transaction = atomic and len(commands) > 1  # one slot, or CROSSSLOT
        for command in commands:
            if isinstance(command, Publish) and not command.sharded:
                continue
            routed = _key(_args(command))
            if routed is None:
                return False
            if transaction:
                if slot_of(routed) != slot:
                    return False
            elif self._master(routed) is not self._master(key):
                return False
        return True

    def settle(self, commands: list[Args], replies: list[object], what: str) -> None:
        """As ``Connection.settle()``, but commands refused with a redirection are sent again."""
        _Rerouted(self, commands, self._deadline(None), Posted(what), 0).set_result(
            replies
        )

    def companion(self, key: str, suffix: str) -> str:
        """``{key}`` + *suffix*, or *key* + *suffix* when *key* has a hash tag: on *key*'s slot.

        Raises:
            SetupError: *key* has braces but no hash tag, so no name can be
                built on its slot.
        """
        if hash_tag(key) is not None:
            return key + suffix
        if "{" in key or "}" in key:
            msg = f"In a Redis Cluster, {key!r} needs a hash tag (a name in braces, such as '{{orders}}.in') so that its companion keys can live on its slot."
            raise SetupError(msg)
        return "{" + key + "}" + suffix

    # -- consumers and subscriptions

    def reader(self) -> Reader:
        return _ClusterReader(self)

    def subscription(self, shard: str | None = None) -> Subscription:
        """A Pub/Sub connection to the master of sharded channel *shard*'s slot.

        Without *shard*, to any master: a cluster spreads classic Pub/Sub
        messages to all nodes.
        """
        return self._subscription(self._master(shard))

    def _subscription(self, node: _Node) -> Subscription:
        connection = self._connection_class(
            host=node.host,
            port=node.port,
            **{**self._node_kwargs, **SUBSCRIPTION_OPTIONS},
        )
        return Subscription(
            connection,
            node.address,
            health_check_interval=self._health_check_interval,
            socket_timeout=self.socket_timeout,
            lost=functools.partial(self._failed, node),
        )

    def ping(self) -> None:
        with map_errors(self.address):
            self._client.ping(target_nodes=redis.cluster.RedisCluster.PRIMARIES)

    def server_version(self) -> str:
        with map_errors(self.address):
            info: Any = self._client.info(
                "server", target_nodes=redis.cluster.RedisCluster.RANDOM
            )
        if isinstance(info, dict) and "redis_version" not in info:
            info = next(iter(info.values()), {})
        return str(info.get("redis_version", "unknown"))

    @property
    def used(self) -> bool:
        return any(node.pipe.used for node in list(self._nodes.values()))

    def after_fork(self) -> None:
        with self._lock:
            nodes, self._nodes = list(self._nodes.values()), {}
            self._by_slot = {}
            self._scripts = {}
            self._rc = None
        for node in nodes:
            node.pipe.abandon()

    def close(self) -> None:
        with self._lock:
            nodes = list(self._nodes.values())
            rc, self._rc = self._rc, None
        for node in nodes:
            if not node.pipe.close(PIPE_FLUSH_TIMEOUT):
                logger.warning(
                    "The Redis writer thread for %s did not stop in time", node.address
                )
            node.pool.disconnect(inuse_connections=False)
        if rc is not None:
            rc.close()


class _Rerouted:
    """The outcome of posted commands: those refused with a redirection are posted again.

    Implements ``_engine.Outcome``; *outcome* hears the final replies, or the error.
    """

    __slots__ = (
        "_asking",
        "_attempts",
        "_commands",
        "_connection",
        "_deadline",
        "_outcome",
    )

    def __init__(
        self,
        connection: ClusterConnection,
        commands: list[Args],
        deadline: float,
        outcome: Outcome,
        attempts: int,
        *,
        asking: bool = False,
    ) -> None:
        self._connection = connection
        self._commands = commands
        self._deadline = deadline
        self._outcome = outcome
        self._attempts = attempts
        self._asking = asking

    def set_result(self, value: list[object]) -> None:
        if self._asking:
            value = value[1:]
        if self._attempts >= REDIRECTS or time.monotonic() >= self._deadline:
            self._outcome.set_result(value)
            return
        # Each command, or transaction, on its own: only the refused ones
        # are sent again, so that none that ran runs twice.
        done: list[object] = []
        again: list[tuple[list[Args], RedisRPCError]] = []
        start = 0
        for unit in _units(self._commands):
            replies = value[start : start + len(unit)]
            start += len(unit)
            error = _redirect(replies)
            if error is None:
                done += replies
            else:
                again.append((unit, error))
        if not again:
            self._outcome.set_result(value)
            return
        # Several commands: the outcome is a Posted, which takes replies in parts.
        if done:
            self._outcome.set_result(done)
        for unit, error in again:
            self._again(unit, error)

    def _again(self, unit: list[Args], error: RedisRPCError) -> None:
        """Send *unit* again where *error*, a redirection, says."""
        connection = self._connection
        try:
            asked = connection._asked(error)
            if asked is not None:
                connection._post_asking(
                    asked, unit, self._deadline, self._outcome, self._attempts + 1
                )
                return
            if isinstance(error.__cause__, redis.exceptions.MovedError):
                connection._moved(error.__cause__)
            else:  # no waiting on a writer thread: the next command refreshes the map
                connection._lost()
            connection._post(
                unit, self._deadline, self._outcome, attempts=self._attempts + 1
            )
        except RedisRPCError as exc:
            self._outcome.set_error(exc)

    def set_error(self, error: RedisRPCError) -> None:
        connection = self._connection
        if _reason(error) in ("unreachable", "timeout"):
            connection._lost()
        # Never sent: a classic PUBLISH goes as well through another node.
        if (
            not getattr(error, "maybe_applied", True)
            and all(args[0] == b"PUBLISH" for args in self._commands)
            and self._attempts < REDIRECTS
            and time.monotonic() < self._deadline
        ):
            try:
                connection._post(
                    self._commands,
                    self._deadline,
                    self._outcome,
                    attempts=self._attempts + 1,
                )
            except RedisRPCError as exc:
                self._outcome.set_error(exc)
            return
        self._outcome.set_error(error)


class _ClusterReader(Reader):
    """A consumer's blocking reads, on the master of the key it reads; it follows the key when it moves."""

    def __init__(self, connection: ClusterConnection) -> None:
        super().__init__(None, connection.address)  # type: ignore[arg-type]
        self._cluster = connection

    def _connect(self, command: Args) -> Any:
        key = _key(command)
        node = self._cluster._master(key)
        self._pool, self._address = node.pool, node.address
        return super()._connect(command)

    def _read(self, command: Args, owed: Owed) -> object:
        for attempt in range(REDIRECTS):
            try:
                return super()._read(command, owed)
            except RedisCommandError as exc:
                if _reason(exc) not in _REDIRECTED or attempt == REDIRECTS - 1:
                    raise
                self.close()  # the next read connects to the new owner
                self._cluster._follow(exc)
            except RedisConnectionError as exc:  # the read closed the connection
                self._cluster._lost()
                if exc.reason != "cluster_down" or attempt == REDIRECTS - 1:
                    raise
                time.sleep(RETRY_DELAY)
        raise AssertionError("unreachable")  # pragma: no cover
