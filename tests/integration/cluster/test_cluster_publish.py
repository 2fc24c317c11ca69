"""Classic Pub/Sub on a cluster outlives the master of a channel's slot."""

from __future__ import annotations

import pytest

from redis_rpc import RedisClusterBroker
from redis_rpc._io.cluster import ClusterBackend, slot_of
from redis_rpc._io.commands import Publish, RPush
from redis_rpc.errors import RedisRPCError
from tests.conftest import LONG_TIMEOUT, POLL_INTERVAL, PROCESS_TEST_TIMEOUT
from tests.helpers import wait_for


@pytest.mark.timeout(PROCESS_TEST_TIMEOUT)
def test_a_dead_master_without_a_replica_silences_neither_its_channels_nor_its_reply_shard(
    make_cluster, unique_name
):
    """Any node spreads a classic PUBLISH, and the reply listener makes do without its shard while the shard's master is gone."""
    cluster = make_cluster(masters=3, replicas=0)
    client = RedisClusterBroker(cluster.urls[0], poll_interval=POLL_INTERVAL)
    with client:  # starts the reply listener, and its shard
        listener = client._listener
        assert listener is not None
        assert listener.shard is not None
        # The master that holds both the caller's reply shard and the channel.
        doomed = cluster.node_for_key(listener.shard)
        others = [m for m in cluster.masters() if m.node_id != doomed.node_id]
        channel = cluster.key_on(doomed, unique_name)
        server = RedisClusterBroker(others[0].url, poll_interval=POLL_INTERVAL)

        @server.subscriber(channel=channel)
        def echo(body: str) -> str:
            return body

        with server:
            assert (
                client.request("before", channel=channel, timeout=LONG_TIMEOUT).body
                == b"before"
            )
            doomed.server.kill()  # no replica takes over: its slots stay without a master

            def answered() -> bool:
                try:
                    reply = client.request("after", channel=channel, timeout=1.0)
                except RedisRPCError:
                    return False  # the dead master's connections, or resubscribing
                return reply.body == b"after"

            assert wait_for(answered, timeout=LONG_TIMEOUT * 2, interval=0.1)
            assert all(answered() for _ in range(5))
            assert listener.reply_shard is None  # classic replies meanwhile


def test_what_rides_with_a_read_is_what_its_master_serves(redis_cluster, unique_name):
    """Replies and acks ride with a consumer's read when the read key's master serves them; a transaction needs the same slot."""
    first, second, _ = redis_cluster.masters()
    read = redis_cluster.key_on(first, f"{unique_name}-read")
    same_node = redis_cluster.key_on(first, f"{unique_name}-other")
    assert slot_of(same_node) != slot_of(read)
    elsewhere = redis_cluster.key_on(second, unique_name)
    connection = ClusterBackend(
        redis_cluster.urls[0],
        socket_timeout=5.0,
        health_check_interval=30.0,
        options={},
    )
    try:
        assert connection.rides([RPush(same_node, b"")], read, atomic=False)
        assert (
            connection.rides(
                [RPush(same_node, b""), Publish(elsewhere, b"", sharded=True)],
                read,
                atomic=False,
            )
            is False
        )
        assert not connection.rides([RPush(elsewhere, b"")], read, atomic=False)
        # A transaction over two slots of one node would be refused (CROSSSLOT).
        assert not connection.rides(
            [RPush(same_node, b""), RPush(read, b"")], read, atomic=True
        )
        assert connection.rides(
            [RPush(f"{{{read}}}:dead", b""), RPush(read, b"")], read, atomic=True
        )
    finally:
        connection.close()
