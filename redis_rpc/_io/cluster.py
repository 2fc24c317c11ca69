"""``ClusterBackend``: a Redis Cluster, each command routed to the master of its hash slot.

A cluster splits its keys into 16,384 hash slots, each served by one master.
``ClusterBackend`` keeps, for each master, what ``RedisBackend`` keeps for
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

from redis_rpc._io.admin import RedisAdmin
from redis_rpc._io.commands import Publish, grouped, words
from redis_rpc._io.errors import map_errors, results
from redis_rpc._io.link import RedisLink
from redis_rpc._io.pipe import Pipe, Posted
from redis_rpc._io.reader import RedisReader
from redis_rpc._io.server import PIPE_FLUSH_TIMEOUT, check_options
from redis_rpc._io.subscription import RedisSubscription, subscription_options
from redis_rpc.errors import (
    RedisCommandError,
    RedisConnectionError,
    RedisRPCError,
    SetupError,
)

if TYPE_CHECKING:
    from collections.abc import Sequence

    from redis_rpc._io.commands import Args, Command
    from redis_rpc._io.interfaces import Outcome
    from redis_rpc.errors import Redirect

logger = logging.getLogger(__name__)

# How many times a command refused with MOVED, ASK or TRYAGAIN is sent again.
REDIRECTS = 5
# The map is refreshed at most this often after lost connections.
REFRESH_INTERVAL = 0.25
# How long a node that failed a connection is avoided where any node will do.
AVOID = 5.0
# How long to wait before sending again a command that got TRYAGAIN or CLUSTERDOWN.
RETRY_DELAY = 0.05
# Commands whose first argument is the key (or the channel) that routes them.
_KEYED = frozenset(
    {b"PUBLISH", b"SPUBLISH", b"RPUSH", b"XADD", b"XACK", b"LREM", b"SET", b"GET"}
)


def _key(command: Args) -> bytes | str | None:
    """The key (or channel) that routes *command*; None for one that any node takes."""
    name = command[0]
    if name in _KEYED or name in (b"BLPOP", b"BLMOVE"):
        key = command[1]
    elif name in (b"BLMPOP", b"EVAL"):  # BLMPOP timeout 1 key, EVAL script 1 key
        key = command[3]
    elif name == b"XREADGROUP":
        key = command[list(command).index(b"STREAMS") + 1]
    else:
        return None
    return key if isinstance(key, (bytes, str)) else None


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


def _redirected(error: object) -> bool:
    """Whether *error* is a refusal that another node, or a moment, would cure.

    A master that a failover demotes ends its blocked reads with
    ``UNBLOCKED``: a plain error reply, but a change of the map.
    """
    if isinstance(error, RedisCommandError):
        return error.reason in ("moved", "try_again", "unblocked")
    return isinstance(error, RedisConnectionError) and error.reason == "cluster_down"


def _redirect(replies: Sequence[object]) -> RedisRPCError | None:
    """The first refusal in *replies* that another node, or a moment, would cure."""
    for reply in replies:
        for item in reply if isinstance(reply, list) else (reply,):
            if isinstance(item, RedisRPCError) and _redirected(item):
                return item
    return None


def _moved(error: RedisRPCError) -> Redirect | None:
    """Where a ``MOVED`` refusal says the slot is now; None for other errors."""
    redirect = getattr(error, "redirect", None)
    return redirect if redirect is not None and redirect.kind == "moved" else None


def _asked(error: RedisRPCError) -> Redirect | None:
    """Where an ``ASK`` refusal sends one command; None for other errors."""
    redirect = getattr(error, "redirect", None)
    return redirect if redirect is not None and redirect.kind == "ask" else None


class _Node:
    """What the connection keeps for one master: its pool and its pipe."""

    def __init__(self, pool: redis.ConnectionPool, host: str, port: int) -> None:
        self.pool = pool
        self.host, self.port = host, port
        self.address = address = f"{host}:{port}"
        self.failed_at = float("-inf")  # when a connection to it last failed
        self.pipe = Pipe(
            lambda: RedisLink.open(pool, address),
            address=address,
            name=f"redis_rpc:writer:{address}",
        )


class ClusterBackend:
    """The connections to a Redis Cluster, in bytes mode; see the module's docstring.

    Safe to use from any number of threads at once. Implements
    ``_io.interfaces.Backend``.

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
            msg = f"Cannot use that Redis URL or those options: {str(exc).strip().rstrip('.')}."
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
        check_options(connection_class, {**self._node_kwargs, "host": "x", "port": 1})
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
        self.admin = RedisAdmin(
            self._cluster_client, self.address, socket_timeout=self.socket_timeout
        )

    # -- the cluster and its map

    def _cluster_client(self) -> redis.cluster.RedisCluster:
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

    def _deadline(self, deadline: float | None) -> float:
        # Without one of the caller's, as long as one command may take.
        return time.monotonic() + self.socket_timeout if deadline is None else deadline

    def _lost(self) -> None:
        """A node could not be reached: refresh the map before the next command is routed."""
        with self._lock:
            self._stale = True

    def refresh(self) -> None:
        """Ask the nodes for the slot map again, at most every ``REFRESH_INTERVAL`` seconds."""
        rc = self._cluster_client()
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
        moved = _moved(error)
        if moved is not None:
            self._moved(moved)
        elif isinstance(error, RedisConnectionError) or (
            isinstance(error, RedisCommandError) and error.reason == "unblocked"
        ):
            time.sleep(RETRY_DELAY)  # CLUSTERDOWN, or a failover under way
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
        primaries = self._cluster_client().get_primaries()  # type: ignore[no-untyped-call, unused-ignore]  # typed from redis-py 8.2
        nodes = [self._node(n.host, n.port) for n in primaries]
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
        manager = self._cluster_client().nodes_manager
        try:
            node = manager.get_node_from_slot(slot)
        except redis.exceptions.RedisClusterException:
            self.refresh()
            with map_errors(self.address):
                node = manager.get_node_from_slot(slot)
        found = self._by_slot[slot] = self._node(node.host, node.port)
        return found

    def _moved(self, redirect: Redirect) -> None:
        """Take the new owner of a slot from a ``MOVED`` refusal."""
        refusal = f"{redirect.slot} {redirect.host}:{redirect.port}"
        self._cluster_client().nodes_manager.move_slot(
            redis.exceptions.MovedError(refusal)
        )
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
        asked = _asked(error)
        return None if asked is None else self._node(asked.host, asked.port)

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
        """As ``RedisBackend.execute_many()``; commands on several slots run one by one, in order."""
        deadline = self._deadline(deadline)
        group = grouped(commands, atomic=atomic)
        slots = {slot_of(k) for k in map(_key, group) if k is not None}
        if len(slots) > 1:
            return [
                result
                for command in commands
                for result in self.execute_many([command], deadline=deadline)
            ]
        replies = self._submit(group, deadline)
        return results(
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
        self,
        commands: Sequence[Command],
        *,
        atomic: bool = False,
        what: str,
        deadline: float | None = None,
    ) -> None:
        """As ``RedisBackend.post()``; a transaction over several slots runs one by one, in order.

        That happens on the calling thread, which waits for each command:
        copying an item to a dead-letter list on another node must be done
        before the item is removed.
        """
        groups: dict[int | None, list[Command]] = {}
        for command in commands:
            key = _key(words(command))
            groups.setdefault(None if key is None else slot_of(key), []).append(command)
        if atomic and len(groups) > 1:
            try:
                for command in commands:
                    self.execute(command)
            except RedisRPCError as exc:
                Posted(what).set_error(exc)
            return
        for group in groups.values():
            self.post_args(grouped(group, atomic=atomic), what=what, deadline=deadline)

    def post_args(
        self, commands: list[Args], *, what: str, deadline: float | None = None
    ) -> None:
        # What nobody waits on (acks) keeps socket_timeout; a reply, its caller's.
        ordinary = time.monotonic() + self.socket_timeout
        until = ordinary if deadline is None else max(ordinary, deadline)
        self._post(commands, until, Posted(what), attempts=0)

    def send(
        self, command: Command, *, deadline: float | None, outcome: Outcome
    ) -> None:
        self._post([words(command)], self._deadline(deadline), outcome, attempts=0)

    def _post(
        self,
        commands: list[Args],
        deadline: float,
        outcome: Outcome,
        *,
        attempts: int,
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
                    group,
                    deadline,
                    _Rerouted(self, group, deadline, outcome, attempts),
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
            routed = _key(words(command))
            if routed is None:
                return False
            if transaction:
                if slot_of(routed) != slot:
                    return False
            elif self._master(routed) is not self._master(key):
                return False
        return True

    def settle(self, commands: list[Args], replies: list[object], what: str) -> None:
        """As ``RedisBackend.settle()``, but commands refused with a redirection are sent again."""
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

    def reader(self) -> RedisReader:
        """A consumer's blocking reads, on the master of the key it reads; it follows the key when it moves."""
        return RedisReader(self._read_route, follow=_Follow(self))

    def _read_route(self, command: Args) -> tuple[redis.ConnectionPool, str]:
        node = self._master(_key(command))
        return node.pool, node.address

    def subscription(self, shard: str | None = None) -> RedisSubscription:
        """A Pub/Sub connection to the master of sharded channel *shard*'s slot.

        Without *shard*, to any master: a cluster spreads classic Pub/Sub
        messages to all nodes.
        """
        return self._subscription(self._master(shard))

    def _subscription(self, node: _Node) -> RedisSubscription:
        connection = self._connection_class(
            host=node.host,
            port=node.port,
            **subscription_options(self._node_kwargs),
        )
        return RedisSubscription(
            connection,
            node.address,
            health_check_interval=self._health_check_interval,
            socket_timeout=self.socket_timeout,
            lost=functools.partial(self._failed, node),
        )

    def ping(self) -> None:
        with map_errors(self.address):
            self._cluster_client().ping(
                target_nodes=redis.cluster.RedisCluster.PRIMARIES
            )

    def server_version(self) -> str:
        with map_errors(self.address):
            info: Any = self._cluster_client().info(
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
            self._rc = None
        self.admin.after_fork()
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

    Implements ``_io.interfaces.Outcome``; *outcome* hears the final replies, or the error.
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
        connection: ClusterBackend,
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
            moved = _moved(error)
            if moved is not None:
                connection._moved(moved)
            else:  # no waiting on a writer thread: the next command refreshes the map
                connection._lost()
            connection._post(
                unit, self._deadline, self._outcome, attempts=self._attempts + 1
            )
        except RedisRPCError as exc:
            self._outcome.set_error(exc)

    def set_error(self, error: RedisRPCError) -> None:
        connection = self._connection
        if isinstance(error, RedisConnectionError) and error.reason in (
            "unreachable",
            "timeout",
        ):
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


class _Follow:
    """Tells a cluster reader to read again where a redirection, or a failover, moved its key.

    Implements ``_io.reader.Follow``.
    """

    def __init__(self, connection: ClusterBackend) -> None:
        self._connection = connection

    def again(self, error: RedisRPCError, attempt: int) -> bool:
        last = attempt >= REDIRECTS - 1
        if isinstance(error, RedisConnectionError):  # the read closed the connection
            self._connection._lost()
            if error.reason != "cluster_down" or last:
                return False
            time.sleep(RETRY_DELAY)
            return True
        if not _redirected(error) or last:
            return False
        self._connection._follow(error)
        return True
