"""A throwaway Redis Cluster on loopback ports, with chaos helpers, for tests and benchmarks.

``ClusterServers`` starts ``masters * (1 + replicas)`` private ``redis-server``
processes (``redis_rpc.testing.RedisServer``) in parallel, joins them into one
cluster with plain redis-py commands (``CLUSTER ADDSLOTSRANGE``, ``MEET`` and
``REPLICATE``: no ``redis-cli`` needed), and returns once every node says
``cluster_state:ok`` and all of them agree on who owns which slot and who
replicates whom. The chaos helpers (``failover()``, ``kill_master()``,
``restart()``, ``migrate_slot()``) return only once the cluster has converged
again, so that a test can assert on the new topology straight away.

Every wait polls with a deadline sized for a busy two-core machine running
three suites at once; nothing here sleeps for a fixed time as a way to wait.

Server options, and why:

- ``--cluster-node-timeout 1000``: a killed master is flagged failing after one
  second and its replica elected about a second later, so a failover test takes
  seconds, not the default's fifteen or more.
- ``--cluster-port``: a free port picked with the client port, since the default
  bus port (client port + 10000) may be taken by another process.
- ``--cluster-replica-validity-factor 0``: a replica may always be promoted, even
  when its link to the master has been down for long on a busy machine.
- ``--cluster-allow-replica-migration no``: the topology stays as the test built
  it; otherwise a master left without slots by ``migrate_slot()`` would turn
  itself into a replica (Redis 7), and replicas could wander to orphaned masters.
- ``--cluster-require-full-coverage`` (``require_full_coverage``, default
  ``no``): with ``no``, while a killed master's slots wait for its replica, only
  the keys of those slots fail and the other masters keep serving, so a test
  under load can tell which requests the failure touched. Pass ``True`` to see
  the stricter production default, where every node answers ``CLUSTERDOWN``
  until the replica takes over.
- ``--repl-diskless-sync-delay 0``: a replica's first sync, and an old master's
  resync after a failover, start at once instead of after 5 s.
- ``--cluster-allow-reads-when-down no`` (the default): a node that sees the
  cluster down refuses reads as well as writes, so a client never reads stale
  data unawares; the library's list and stream reads are writes anyway.
"""

from __future__ import annotations

import os
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import redis

from redis_rpc.testing import RedisServer

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from types import TracebackType

__all__ = ["ClusterNode", "ClusterServers", "TopologyError"]

SLOTS = 16384
HOST = "127.0.0.1"
# How long start() waits for the servers to answer and then for the cluster to
# form. A master refuses to report cluster_state:ok during its first 2 s
# (CLUSTER_WRITABLE_DELAY), so about 2.5 s is the floor; the bound leaves room
# for a machine busy with other suites.
STARTUP_TIMEOUT = 60.0
# How long a chaos helper waits for the cluster to converge again. A kill waits
# for node-timeout (1 s) to flag the master, up to a second of randomised
# election delay, then the gossip: a few seconds when idle.
CONVERGE_TIMEOUT = 60.0
# Redis abandons a manual failover that has not completed in 5 s
# (CLUSTER_MF_TIMEOUT); failover() then asks again.
MANUAL_FAILOVER_RETRY = 6.0
# Keys moved by each MIGRATE call: small enough that a slot being written to
# keeps answering between batches, large enough to move thousands of keys fast.
MIGRATE_BATCH = 100
# Milliseconds MIGRATE may take to reach the target and get its reply.
MIGRATE_TIMEOUT_MS = 10_000
POLL_INTERVAL = 0.02


class TopologyError(RuntimeError):
    """The cluster did not reach the expected state in time, or was asked the impossible."""


class ClusterNode:
    """One ``redis-server`` of the cluster: its process, its node id and a client to it.

    The node's role is not stored: ask ``ClusterServers`` (``masters()``,
    ``replicas_of()``), which reads the live topology. Not thread-safe beyond
    what ``redis.Redis`` is (the client may be shared between threads).
    """

    def __init__(self, server: RedisServer, bus_port: int) -> None:
        self.server = server
        self.bus_port = bus_port
        self.node_id = ""
        self._client: redis.Redis | None = None

    @property
    def port(self) -> int:
        return self.server.port

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}"

    @property
    def running(self) -> bool:
        return self.server._process is not None

    @property
    def client(self) -> redis.Redis:
        """A plain (not cluster-aware) client to this node only, with decoded replies."""
        if self._client is None:
            self._client = redis.Redis(
                host=HOST, port=self.port, decode_responses=True, socket_timeout=10
            )
        return self._client

    def close_client(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<ClusterNode {HOST}:{self.port} {self.node_id[:8]} {state}>"


# One node's view of one node of the cluster, from CLUSTER NODES: what every
# node must agree on (PFAIL, ping times and link states are left out, as they
# differ from node to node by nature).
_NodeView = tuple[str, int, str, str, tuple[tuple[int, int], ...], bool]


class ClusterServers:
    """A Redis Cluster of private ``redis-server`` processes on free loopback ports.

    ``with ClusterServers() as cluster:`` starts 3 masters with one replica
    each, and stops every process when the block ends, also on failure. Not
    thread-safe: one owner (a fixture or a test) calls its methods; the nodes'
    servers meanwhile serve any number of clients.

    Args:
        masters: How many masters share the 16384 slots, in even ranges.
        replicas: How many replicas each master gets (0 allowed; ``failover()``
            and ``kill_master()`` need at least 1).
        node_timeout_ms: ``cluster-node-timeout``: how long a node may be
            unreachable before it is flagged failing.
        require_full_coverage: ``cluster-require-full-coverage``; see the
            module docstring.
        startup_timeout: Seconds ``start()`` waits for the cluster to form.
        converge_timeout: Seconds each chaos helper waits for the cluster to
            converge.
        extra_args: More ``redis-server`` options for every node.
    """

    def __init__(
        self,
        masters: int = 3,
        replicas: int = 1,
        *,
        node_timeout_ms: int = 1000,
        require_full_coverage: bool = False,
        startup_timeout: float = STARTUP_TIMEOUT,
        converge_timeout: float = CONVERGE_TIMEOUT,
        extra_args: Sequence[str] = (),
    ) -> None:
        if masters < 1 or replicas < 0:
            msg = f"Need at least one master and no negative replicas, not {masters} and {replicas}."
            raise ValueError(msg)
        self.master_count = masters
        self.replica_count = replicas
        self.node_timeout_ms = node_timeout_ms
        self.require_full_coverage = require_full_coverage
        self.startup_timeout = startup_timeout
        self.converge_timeout = converge_timeout
        self.extra_args = tuple(extra_args)
        self.nodes: list[ClusterNode] = []
        # Seconds the last start() took, for tests and benchmarks to report.
        self.startup_seconds = 0.0

    # -- lifecycle ---------------------------------------------------------

    def start(self) -> None:
        """Start every server in parallel, form the cluster and wait until it is ok.

        Raises:
            TopologyError: The cluster did not form within ``startup_timeout``.
            RuntimeError: A server did not start.
        """
        began = time.monotonic()
        deadline = began + self.startup_timeout
        total = self.master_count * (1 + self.replica_count)
        ports = _free_ports(2 * total)  # a client port and a bus port for each
        self.nodes = []
        for n in range(total):
            server = RedisServer(
                startup_timeout=self.startup_timeout,
                extra_args=self._server_args(bus_port=ports[total + n]),
            )
            server.port = ports[n]
            self.nodes.append(ClusterNode(server, ports[total + n]))
        try:
            # Each start() polls PING on its own: in parallel, the servers'
            # start-up costs overlap instead of adding up.
            with ThreadPoolExecutor(total, thread_name_prefix="cluster-start") as pool:
                for future in [pool.submit(n.server.start) for n in self.nodes]:
                    future.result(timeout=self.startup_timeout)
            self._form(deadline)
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - began

    def stop(self) -> None:
        """Stop every server and delete its files; safe to call more than once."""
        for node in self.nodes:
            node.close_client()
        if not self.nodes:
            return
        # In parallel, as each stop() waits for its process to exit; every
        # server is stopped before the first error, if any, is raised.
        with ThreadPoolExecutor(
            len(self.nodes), thread_name_prefix="cluster-stop"
        ) as pool:
            futures = [pool.submit(node.server.stop) for node in self.nodes]
        errors = [exc for future in futures if (exc := future.exception(timeout=0))]
        if errors:
            raise errors[0]

    def __enter__(self) -> ClusterServers:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        running = sum(node.running for node in self.nodes)
        return f"<ClusterServers masters={self.master_count} replicas={self.replica_count} running={running}/{len(self.nodes)}>"

    # -- what tests ask ----------------------------------------------------

    @property
    def urls(self) -> list[str]:
        """``redis://127.0.0.1:port`` of every node, for ``RedisCluster(startup_nodes=...)`` or a URL."""
        return [node.url for node in self.nodes]

    @property
    def startup_nodes(self) -> list[str]:
        return self.urls

    def masters(self) -> list[ClusterNode]:
        """The running masters that own slots, in the order of their first slot."""
        owners = {owner: low for low, _high, owner in reversed(self.slot_ranges())}
        return sorted(
            (self._by_id(node_id) for node_id in owners),
            key=lambda node: owners[node.node_id],
        )

    def replicas_of(self, master: ClusterNode) -> list[ClusterNode]:
        """The running replicas of *master*, as the live topology says."""
        views = self._view(self._any_running())
        return [
            self._by_id(node_id)
            for node_id, _port, role, master_id, _slots, failed in views
            if role == "replica" and master_id == master.node_id and not failed
            if self._by_id(node_id).running
        ]

    def slot_ranges(self) -> list[tuple[int, int, str]]:
        """``(first, last, owner's node id)`` for every range of slots, as a running node sees it."""
        ranges = [
            (low, high, node_id)
            for node_id, _port, role, _m, slots, _f in self._view(self._any_running())
            if role == "master"
            for low, high in slots
        ]
        return sorted(ranges)

    def owner_of_slot(self, slot: int) -> ClusterNode:
        for low, high, node_id in self.slot_ranges():
            if low <= slot <= high:
                return self._by_id(node_id)
        msg = f"No node owns slot {slot}."
        raise TopologyError(msg)

    def keyslot(self, key: str) -> int:
        return int(
            self._any_running().client.execute_command("CLUSTER", "KEYSLOT", key)
        )

    def node_for_key(self, key: str) -> ClusterNode:
        """The master that owns *key*'s slot (by ``CLUSTER KEYSLOT``, so hash tags count)."""
        return self.owner_of_slot(self.keyslot(key))

    def key_on(self, master: ClusterNode, prefix: str = "k") -> str:
        """A key, starting with *prefix*, whose slot *master* owns."""
        for n in range(100_000):
            key = f"{prefix}:{n}"
            if self.node_for_key(key).node_id == master.node_id:
                return key
        msg = f"No key with prefix {prefix!r} lands on {master!r}."
        raise TopologyError(msg)

    # -- chaos ---------------------------------------------------------------

    def failover(self, master: ClusterNode) -> ClusterNode:
        """Promote a replica of *master* with a graceful ``CLUSTER FAILOVER``; return the new master.

        Returns once the roles have swapped in every node's view (the old master
        replicating the new one) and the cluster has converged.

        Raises:
            TopologyError: *master* has no replica, or the failover did not
                complete within ``converge_timeout``.
        """
        replica = self._first_replica(master)
        slots = self._slots_of(master)
        deadline = time.monotonic() + self.converge_timeout
        while True:
            replica.client.execute_command("CLUSTER", "FAILOVER")
            # The command only starts the failover; Redis gives up on it after
            # 5 s (for instance when the master is too busy to pause in time).
            retry_at = min(deadline, time.monotonic() + MANUAL_FAILOVER_RETRY)
            if _poll(lambda: self._role_of(replica) == "master", retry_at):
                break
            if time.monotonic() >= deadline:
                msg = f"{replica!r} was not promoted within {self.converge_timeout} s."
                raise TopologyError(msg)
        self._converge(
            deadline,
            lambda views: (
                all(_owner(views, slot) == replica.node_id for slot in _firsts(slots))
                and _master_of(views, master.node_id) == replica.node_id
            ),
            f"failover of {master!r} to {replica!r}",
        )
        return replica

    def kill_master(self, master: ClusterNode) -> ClusterNode:
        """SIGKILL *master* and wait until one of its replicas is promoted; return the new master.

        Returns once every running node sees the killed node as failed and the
        promoted replica as the owner of its slots. ``restart()`` brings it back.

        Raises:
            TopologyError: *master* has no replica, or none was promoted within
                ``converge_timeout``.
        """
        candidates = {node.node_id for node in self.replicas_of(master)}
        if not candidates:
            msg = f"{master!r} has no replica to promote."
            raise TopologyError(msg)
        slots = self._slots_of(master)
        master.server.kill()
        master.close_client()
        deadline = time.monotonic() + self.converge_timeout
        promoted: list[str] = []

        def done(views: list[_NodeView]) -> bool:
            owners = {_owner(views, slot) or "" for slot in _firsts(slots)}
            if len(owners) != 1 or not owners <= candidates:
                return False
            promoted[:] = owners
            return _failed(views, master.node_id)

        self._converge(deadline, done, f"promotion of a replica of {master!r}")
        return self._by_id(promoted[0])

    def restart(self, node: ClusterNode) -> None:
        """Bring a killed node back on its port, with its ``nodes.conf``, and wait until it rejoins.

        A master killed by ``kill_master()`` comes back as a replica of the
        replica that replaced it.

        Raises:
            TopologyError: The node did not rejoin within ``converge_timeout``.
        """
        if node.running:
            msg = f"{node!r} is running."
            raise TopologyError(msg)
        node.server.start()
        deadline = time.monotonic() + self.converge_timeout
        self._converge(
            deadline,
            lambda views: not _failed(views, node.node_id),
            f"rejoining of {node!r}",
        )

    def migrate_slot(self, slot: int, to_master: ClusterNode) -> int:
        """Move *slot*, and every key in it, to *to_master*; return how many keys moved.

        The resharding steps of the Redis Cluster specification, so that it may
        run while clients use the slot: they get ``ASK`` for keys already moved
        (or new), ``TRYAGAIN`` for multi-key commands whose keys are split
        between the nodes, and ``MOVED`` once it is done.

        Raises:
            TopologyError: *to_master* is not a master, or the cluster did not
                converge within ``converge_timeout``.
            redis.ResponseError: A step was refused (for instance a key that
                exists on both nodes, which would mean a bug in the steps).
        """
        deadline = time.monotonic() + self.converge_timeout
        source = self.owner_of_slot(slot)
        if self._role_of(to_master) != "master":
            msg = f"{to_master!r} is not a master."
            raise TopologyError(msg)
        if source.node_id == to_master.node_id:
            return 0
        target = to_master
        # Importing first: once the source says MIGRATING it sends ASK for
        # missing keys, which the target must then accept.
        target.client.execute_command(
            "CLUSTER", "SETSLOT", slot, "IMPORTING", source.node_id
        )
        source.client.execute_command(
            "CLUSTER", "SETSLOT", slot, "MIGRATING", target.node_id
        )
        moved = 0
        # The source creates no new key in a migrating slot (it answers ASK),
        # so this loop ends even while clients write.
        while keys := source.client.execute_command(
            "CLUSTER", "GETKEYSINSLOT", slot, MIGRATE_BATCH
        ):
            source.client.execute_command(
                "MIGRATE", HOST, target.port, "", 0, MIGRATE_TIMEOUT_MS, "KEYS", *keys
            )
            moved += len(keys)
        # Target first, then the source, then the other masters: the order the
        # specification gives, so that no node redirects to a node that does
        # not yet know it owns the slot.
        others = [
            m
            for m in self.masters()
            if m.node_id not in {source.node_id, target.node_id}
        ]
        for node in [target, source, *others]:
            node.client.execute_command(
                "CLUSTER", "SETSLOT", slot, "NODE", target.node_id
            )
        self._converge(
            deadline,
            lambda views: _owner(views, slot) == target.node_id,
            f"migration of slot {slot} to {target!r}",
        )
        return moved

    def migrate_key(self, key: str, to_master: ClusterNode) -> int:
        """``migrate_slot()`` for the slot of *key*."""
        return self.migrate_slot(self.keyslot(key), to_master)

    def wait_converged(self, timeout: float | None = None) -> None:
        """Wait until every running node says ``cluster_state:ok`` and all agree on the topology.

        Raises:
            TopologyError: They did not within *timeout* (``converge_timeout``).
        """
        deadline = time.monotonic() + (
            self.converge_timeout if timeout is None else timeout
        )
        self._converge(deadline, lambda views: True, "convergence")

    # -- internals -----------------------------------------------------------

    def _server_args(self, bus_port: int) -> tuple[str, ...]:
        return (
            "--cluster-enabled", "yes",
            "--cluster-port", str(bus_port),
            # Relative to the server's own --dir, so that a restarted node finds
            # its identity and epoch again.
            "--cluster-config-file", "nodes.conf",
            "--cluster-node-timeout", str(self.node_timeout_ms),
            "--cluster-replica-validity-factor", "0",
            "--cluster-allow-replica-migration", "no",
            "--cluster-require-full-coverage", "yes" if self.require_full_coverage else "no",
            "--cluster-allow-reads-when-down", "no",
            "--appendonly", "no",
            # A replica's full sync starts at once, not after the default 5 s
            # wait for more replicas to share the transfer.
            "--repl-diskless-sync-delay", "0",
            *self.extra_args,
        )  # fmt: skip

    def _form(self, deadline: float) -> None:
        for node in self.nodes:
            node.node_id = node.client.execute_command("CLUSTER", "MYID")
        masters = self.nodes[: self.master_count]
        replicas = self.nodes[self.master_count :]
        bounds = [SLOTS * n // self.master_count for n in range(self.master_count + 1)]
        for n, master in enumerate(masters):
            master.client.execute_command(
                "CLUSTER", "ADDSLOTSRANGE", bounds[n], bounds[n + 1] - 1
            )
            # Distinct epochs from the start, as redis-cli does, so that the
            # nodes need not resolve epoch collisions first.
            master.client.execute_command("CLUSTER", "SET-CONFIG-EPOCH", n + 1)
        # Every node meets every other: a full mesh at once, rather than waiting
        # for gossip to spread the news from one node.
        for node in self.nodes:
            for other in self.nodes:
                if other is not node:
                    node.client.execute_command(
                        "CLUSTER", "MEET", HOST, other.port, other.bus_port
                    )
        ids = {node.node_id for node in self.nodes}

        def everyone_known() -> bool:
            return all(
                {view[0] for view in self._view(node)} == ids for node in self.nodes
            )

        if not _poll(everyone_known, deadline):
            msg = f"The nodes did not all meet within {self.startup_timeout} s."
            raise TopologyError(msg)
        for n, replica in enumerate(replicas):
            master = masters[n % self.master_count]
            replica.client.execute_command("CLUSTER", "REPLICATE", master.node_id)
        self._converge(
            deadline,
            lambda views: (
                sum(view[2] == "master" and bool(view[4]) for view in views)
                == self.master_count
            ),
            "formation",
        )

    def _converge(
        self, deadline: float, expected: Callable[[list[_NodeView]], bool], what: str
    ) -> None:
        """Poll until the cluster is converged and *expected* holds of the agreed view."""
        last: list[str] = []

        def check() -> bool:
            problem = self._problem()
            if problem is None:
                views = self._view(self._any_running())
                if expected(views):
                    return True
                problem = "not in the expected state yet"
            last[:] = [problem]
            return False

        if not _poll(check, deadline):
            msg = f"The cluster did not converge ({what}): {last[0] if last else 'no answer'}."
            raise TopologyError(msg)

    def _problem(self) -> str | None:
        """Why the cluster has not converged, or None once it has."""
        running = [node for node in self.nodes if node.running]
        try:
            views = {node.port: self._view(node) for node in running}
            slots = {node.port: _slot_map(node) for node in running}
            for node in running:
                info = node.client.execute_command("CLUSTER", "INFO")
                if "cluster_state:ok" not in info:
                    return f"{node!r} says the cluster is not ok"
                if _role(views[node.port], node.node_id) == "replica":
                    replication = node.client.info("replication")
                    if replication.get("master_link_status") != "up":
                        return f"{node!r} is not in sync with its master"
                if self._migrating(node):
                    return f"{node!r} has a slot importing or migrating"
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            return f"a node did not answer: {exc}"
        first = running[0]
        for node in running[1:]:
            if views[node.port] != views[first.port]:
                return f"{node!r} and {first!r} see different topologies"
            if slots[node.port] != slots[first.port]:
                return f"{node!r} and {first!r} see different CLUSTER SLOTS"
        for node in running:
            if _failed(views[first.port], node.node_id):
                return f"{node!r} is running but flagged failed"
        return None

    def _view(self, node: ClusterNode) -> list[_NodeView]:
        text = node.client.execute_command("CLUSTER", "NODES")
        views: list[_NodeView] = []
        for line in text.splitlines():
            fields = line.split()
            node_id, address, flags, master_id = (
                fields[0],
                fields[1],
                fields[2],
                fields[3],
            )
            flag_set = set(flags.split(","))
            if "handshake" in flag_set or "noaddr" in flag_set:
                continue
            port = int(address.split("@")[0].rsplit(":", 1)[1])
            role = "master" if "master" in flag_set else "replica"
            ranges = []
            for entry in fields[8:]:
                if entry.startswith("["):  # an importing or migrating slot
                    continue
                low, _, high = entry.partition("-")
                ranges.append((int(low), int(high or low)))
            views.append(
                (
                    node_id,
                    port,
                    role,
                    master_id,
                    tuple(sorted(ranges)),
                    "fail" in flag_set,
                )
            )
        return sorted(views)

    def _migrating(self, node: ClusterNode) -> bool:
        text = node.client.execute_command("CLUSTER", "NODES")
        return any(
            "myself" in line.split()[2] and "[" in line for line in text.splitlines()
        )

    def _role_of(self, node: ClusterNode) -> str:
        return _role(self._view(node), node.node_id)

    def _slots_of(self, master: ClusterNode) -> list[tuple[int, int]]:
        slots = [
            (low, high)
            for low, high, owner in self.slot_ranges()
            if owner == master.node_id
        ]
        if not slots:
            msg = f"{master!r} owns no slot."
            raise TopologyError(msg)
        return slots

    def _first_replica(self, master: ClusterNode) -> ClusterNode:
        replicas = self.replicas_of(master)
        if not replicas:
            msg = f"{master!r} has no running replica."
            raise TopologyError(msg)
        return replicas[0]

    def _any_running(self) -> ClusterNode:
        for node in self.nodes:
            if node.running:
                return node
        msg = "No node of the cluster is running."
        raise TopologyError(msg)

    def _by_id(self, node_id: str) -> ClusterNode:
        for node in self.nodes:
            if node.node_id == node_id:
                return node
        msg = f"No node has id {node_id}."
        raise TopologyError(msg)


def _owner(views: list[_NodeView], slot: int) -> str | None:
    for node_id, _port, role, _m, slots, _f in views:
        if role == "master" and any(low <= slot <= high for low, high in slots):
            return node_id
    return None


def _role(views: list[_NodeView], node_id: str) -> str:
    for view in views:
        if view[0] == node_id:
            return view[2]
    msg = f"Node {node_id} is not in the view."
    raise TopologyError(msg)


def _master_of(views: list[_NodeView], node_id: str) -> str | None:
    for view in views:
        if view[0] == node_id:
            return view[3] if view[2] == "replica" else None
    return None


def _failed(views: list[_NodeView], node_id: str) -> bool:
    return any(view[0] == node_id and view[5] for view in views)


def _firsts(slots: list[tuple[int, int]]) -> list[int]:
    """A slot of each range: enough to tell who owns the range after a failover."""
    return [low for low, _high in slots]


def _slot_map(node: ClusterNode) -> list[Any]:
    """CLUSTER SLOTS with each range's replicas in a fixed order, to compare nodes' answers."""
    reply = node.client.execute_command("CLUSTER", "SLOTS")
    normal = []
    for entry in reply:
        low, high, master, *replicas = entry
        normal.append(
            (low, high, _as_tuple(master), sorted(_as_tuple(r) for r in replicas))
        )
    return sorted(normal)


def _as_tuple(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_as_tuple(item) for item in value)
    return value


def _poll(predicate: Callable[[], bool], deadline: float) -> bool:
    """Call *predicate* until it is true or *deadline* (a ``time.monotonic()``) passes."""
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(POLL_INTERVAL)


def _free_ports(count: int) -> list[int]:
    """*count* distinct free loopback ports: all sockets are held open until all are picked."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sockets.append(sock)
            sock.bind((HOST, 0))
        return [int(sock.getsockname()[1]) for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def main() -> None:
    """Start a cluster, print its startup time and URLs, and stop it: a smoke test by hand."""
    masters = int(os.environ.get("MASTERS", "3"))
    replicas = int(os.environ.get("REPLICAS", "1"))
    with ClusterServers(masters, replicas) as cluster:
        print(f"started in {cluster.startup_seconds:.2f} s: {cluster.urls}")  # noqa: T201


if __name__ == "__main__":
    main()
