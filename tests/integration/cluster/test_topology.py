"""The cluster test topology itself, checked with redis-py's RedisCluster (not the library).

These tests prove that the fixtures build what they claim, that each chaos
helper leaves the cluster in the state it promises, and pin the Redis 7.0
behaviours the library's cluster support relies on (sharded Pub/Sub and slot
moves, classic PUBLISH's count, blocked clients on a demoted master).
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future

import pytest
import redis
from redis.cluster import RedisCluster

from tests.cluster_topology import TopologyError
from tests.conftest import LONG_TIMEOUT, PROCESS_TEST_TIMEOUT, SHORT_TIMEOUT
from tests.helpers import wait_for

pytestmark = pytest.mark.timeout(PROCESS_TEST_TIMEOUT)

# Writes a test sees succeed after a chaos helper returned, to prove that
# clients carry on against the new topology.
WRITES_AFTER = 50
# Keys put in a slot before it is migrated, so that the migration takes several
# MIGRATE batches while the writer runs.
PREFILLED_KEYS = 2000


@pytest.fixture
def cluster_client(request):
    """Make RedisCluster clients on a cluster; all are closed after the test."""
    clients = []

    def make(cluster):
        client = RedisCluster.from_url(
            cluster.urls[0], decode_responses=True, socket_timeout=LONG_TIMEOUT
        )
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


class Writer:
    """INCRs a counter key (and SETs fresh keys with its hash tag) through a RedisCluster client on a thread.

    Records successes and errors, so a test can check that writes carry on
    after a topology change and that the data ended on the right node.
    """

    def __init__(
        self, client: RedisCluster, counter: str, fresh_prefix: str | None = None
    ):
        self.client = client
        self.counter = counter
        self.fresh_prefix = fresh_prefix
        self.increments = 0
        self.fresh_keys: list[str] = []
        self.errors: list[Exception] = []
        self.multi_key_errors: list[Exception] = []
        self.pair_written = False
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name="test-writer", daemon=True
        )

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc_info):
        self._stop.set()
        self._thread.join(LONG_TIMEOUT)
        assert not self._thread.is_alive(), "the writer thread hung"

    def _run(self) -> None:
        n = 0
        while not self._stop.is_set():
            n += 1
            try:
                self.client.incr(self.counter)
                self.increments += 1
                if self.fresh_prefix is not None:
                    key = f"{self.fresh_prefix}:{n}"
                    self.client.set(key, n)
                    self.fresh_keys.append(key)
            except redis.RedisError as exc:
                self.errors.append(exc)
                time.sleep(0.01)  # a node is down: do not spin while it is replaced
                continue
            if self.fresh_prefix is not None and n % 10 == 0:
                pair = [f"{self.fresh_prefix}:pair-a", f"{self.fresh_prefix}:pair-b"]
                try:
                    self.client.mset(dict.fromkeys(pair, n))
                    self.pair_written = True
                except redis.RedisError as exc:  # TRYAGAIN while the pair is split
                    self.multi_key_errors.append(exc)

    def wait_for_increments(self, count: int) -> None:
        target = self.increments + count
        assert wait_for(lambda: self.increments >= target, timeout=LONG_TIMEOUT), (
            f"writes stalled at {self.increments}; errors: {self.errors[-3:]}"
        )


class TestSharedCluster:
    def test_startup_nodes_are_every_node(self, redis_cluster):
        """The cluster has 3 masters and 6 nodes, each master with exactly one in-sync replica."""
        masters = redis_cluster.masters()
        assert len(masters) == 3
        assert len(redis_cluster.startup_nodes) == 6
        for master in masters:
            (replica,) = redis_cluster.replicas_of(master)
            info = replica.client.info("replication")
            assert info["master_port"] == master.port
            assert info["master_link_status"] == "up"

    def test_keys_land_on_every_master(
        self, redis_cluster, cluster_client, unique_name
    ):
        """Keys written through RedisCluster spread over all masters, where node_for_key() says they are."""
        client = cluster_client(redis_cluster)
        keys = [f"{unique_name}:{n}" for n in range(60)]
        for key in keys:
            client.set(key, key)
        holders: dict[int, list[str]] = {}
        for key in keys:
            node = redis_cluster.node_for_key(key)
            assert node.client.get(key) == key
            assert client.get_node_from_key(key).port == node.port
            holders.setdefault(node.port, []).append(key)
        assert set(holders) == {m.port for m in redis_cluster.masters()}

    def test_classic_publish_counts_only_local_subscribers(
        self, redis_cluster, unique_name
    ):
        """PUBLISH reaches a subscriber on another node, but its reply counts only the receiving node's subscribers."""
        first, second, _ = redis_cluster.masters()
        pubsub = second.client.pubsub()
        try:
            pubsub.subscribe(unique_name)
            assert pubsub.get_message(timeout=SHORT_TIMEOUT)["type"] == "subscribe"
            assert first.client.publish(unique_name, "hello") == 0
            message = pubsub.get_message(timeout=LONG_TIMEOUT)
            assert message is not None
            assert message["data"] == "hello"
            assert second.client.publish(unique_name, "again") == 1
        finally:
            pubsub.close()


class TestChaos:
    def test_failover_swaps_roles_without_losing_writes(
        self, fresh_cluster, cluster_client, unique_name
    ):
        """After failover() the replica owns the slots, the old master replicates it, and every acknowledged write is there."""
        master = fresh_cluster.masters()[0]
        (replica,) = fresh_cluster.replicas_of(master)
        counter = fresh_cluster.key_on(master, unique_name)
        with Writer(cluster_client(fresh_cluster), counter) as writer:
            writer.wait_for_increments(WRITES_AFTER)
            promoted = fresh_cluster.failover(master)
            writer.wait_for_increments(WRITES_AFTER)
        assert promoted.node_id == replica.node_id
        assert fresh_cluster.node_for_key(counter).node_id == replica.node_id
        assert [r.node_id for r in fresh_cluster.replicas_of(replica)] == [
            master.node_id
        ]
        # A graceful failover waits for the replica to catch up: nothing acknowledged is lost.
        value = int(replica.client.get(counter))
        assert writer.increments <= value <= writer.increments + len(writer.errors)

    def test_kill_master_promotes_its_replica_and_restart_rejoins_as_replica(
        self, fresh_cluster, cluster_client, unique_name
    ):
        """kill_master() returns the promoted replica, and restart() brings the old master back as its replica."""
        master = fresh_cluster.masters()[1]
        (replica,) = fresh_cluster.replicas_of(master)
        counter = fresh_cluster.key_on(master, unique_name)
        with Writer(cluster_client(fresh_cluster), counter) as writer:
            writer.wait_for_increments(WRITES_AFTER)
            promoted = fresh_cluster.kill_master(master)
            assert promoted.node_id == replica.node_id
            assert fresh_cluster.node_for_key(counter).node_id == replica.node_id
            writer.wait_for_increments(WRITES_AFTER)
            fresh_cluster.restart(master)
            writer.wait_for_increments(WRITES_AFTER)
        assert master.running
        assert [r.node_id for r in fresh_cluster.replicas_of(replica)] == [
            master.node_id
        ]
        assert len(fresh_cluster.masters()) == 3

    def test_migrate_slot_under_writes(
        self, fresh_cluster, cluster_client, unique_name
    ):
        """migrate_slot() moves every key of a slot being written to, while single-key writes keep succeeding."""
        tag = f"{{{unique_name}}}"
        slot = fresh_cluster.keyslot(tag)
        source = fresh_cluster.owner_of_slot(slot)
        target = next(m for m in fresh_cluster.masters() if m.node_id != source.node_id)
        pipe = source.client.pipeline(transaction=False)
        for n in range(PREFILLED_KEYS):
            pipe.set(f"{tag}:old:{n}", n)
        pipe.execute()
        counter = f"{tag}:counter"
        with Writer(cluster_client(fresh_cluster), counter, f"{tag}:new") as writer:
            writer.wait_for_increments(WRITES_AFTER)
            moved = fresh_cluster.migrate_slot(slot, target)
            writer.wait_for_increments(WRITES_AFTER)
        assert moved >= PREFILLED_KEYS
        assert writer.errors == []  # ASK and MOVED are followed, never surfaced
        assert fresh_cluster.owner_of_slot(slot).node_id == target.node_id
        assert source.client.execute_command("CLUSTER", "COUNTKEYSINSLOT", slot) == 0
        pair = 2 if writer.pair_written else 0
        expected = PREFILLED_KEYS + 1 + len(writer.fresh_keys) + pair
        assert (
            target.client.execute_command("CLUSTER", "COUNTKEYSINSLOT", slot)
            == expected
        )
        assert int(target.client.get(counter)) == writer.increments

    def test_sharded_subscriber_is_unsubscribed_when_its_slot_moves(
        self, fresh_cluster, unique_name
    ):
        """An SSUBSCRIBE connection to the slot's owner receives sunsubscribe when the slot migrates away."""
        slot = fresh_cluster.keyslot(unique_name)
        source = fresh_cluster.owner_of_slot(slot)
        target = next(m for m in fresh_cluster.masters() if m.node_id != source.node_id)
        pubsub = source.client.pubsub()
        try:
            pubsub.ssubscribe(unique_name)
            confirmed = pubsub.get_message(timeout=SHORT_TIMEOUT)
            assert confirmed["type"] == "ssubscribe"
            fresh_cluster.migrate_slot(slot, target)
            message = pubsub.get_message(timeout=LONG_TIMEOUT)
            assert message is not None
            assert message["type"] == "sunsubscribe"
            assert message["channel"] == unique_name
        finally:
            pubsub.close()


class TestBlockedClients:
    """What a client blocked in BLPOP receives when the topology changes under it."""

    def test_blocked_client_on_demoted_master_gets_unblocked_error(
        self, fresh_cluster, unique_name
    ):
        """A BLPOP on a master demoted by a failover fails with UNBLOCKED, not MOVED, and idle connections stay open."""
        master = fresh_cluster.masters()[0]
        key = fresh_cluster.key_on(master, unique_name)
        blocked = redis.Redis(port=master.port, socket_timeout=LONG_TIMEOUT)
        idle = redis.Redis(port=master.port, socket_timeout=LONG_TIMEOUT)
        try:
            idle_id = idle.client_id()
            outcome = _block_in_background(blocked, key)
            fresh_cluster.failover(master)
            error = outcome.result(LONG_TIMEOUT)
            assert isinstance(error, redis.ResponseError)
            assert not isinstance(error, redis.exceptions.MovedError)
            assert str(error).startswith("UNBLOCKED")
            with pytest.raises(redis.exceptions.MovedError):
                idle.set(key, 1)
            assert idle.client_id() == idle_id  # the same connection: not dropped
        finally:
            blocked.close()
            idle.close()

    def test_blocked_client_on_migrated_slot_gets_moved(
        self, fresh_cluster, unique_name
    ):
        """A BLPOP on a key whose slot migrates away fails with MOVED to the new owner."""
        slot = fresh_cluster.keyslot(unique_name)
        source = fresh_cluster.owner_of_slot(slot)
        target = next(m for m in fresh_cluster.masters() if m.node_id != source.node_id)
        blocked = redis.Redis(port=source.port, socket_timeout=LONG_TIMEOUT)
        try:
            outcome = _block_in_background(blocked, unique_name)
            fresh_cluster.migrate_slot(slot, target)
            error = outcome.result(LONG_TIMEOUT)
            assert isinstance(error, redis.exceptions.MovedError)
            assert error.port == target.port
        finally:
            blocked.close()


def _block_in_background(client: redis.Redis, key: str):
    """Start a BLPOP on *key* on a thread, once it is seen blocked; its future holds the error it ends with."""
    outcome: Future[BaseException | None] = Future()

    def run() -> None:
        try:
            client.blpop([key], timeout=LONG_TIMEOUT)
        except redis.RedisError as exc:
            outcome.set_result(exc)
        else:
            outcome.set_result(None)

    threading.Thread(target=run, name="test-blpop", daemon=True).start()
    watcher = redis.Redis(port=client.connection_pool.connection_kwargs["port"])
    try:
        assert wait_for(
            lambda: watcher.info("clients")["blocked_clients"] >= 1,
            timeout=LONG_TIMEOUT,
        )
    finally:
        watcher.close()
    return outcome


def test_cluster_without_replicas_refuses_failover(make_cluster):
    """make_cluster(replicas=0) builds masters only, and failover() says why it cannot run."""
    cluster = make_cluster(masters=2, replicas=0)
    assert len(cluster.nodes) == 2
    master = cluster.masters()[0]
    assert cluster.replicas_of(master) == []
    with pytest.raises(TopologyError, match="no running replica"):
        cluster.failover(master)
