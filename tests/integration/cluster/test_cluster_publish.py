"""Classic Pub/Sub on a cluster outlives the master of a channel's slot."""

from __future__ import annotations

import pytest

from redis_rpc import RedisClusterBroker
from redis_rpc._cluster import ClusterConnection, slot_of
from redis_rpc._redis import Publish, RPush
from redis_rpc.errors import RedisRPCError
from tests.conftest import LONG_TIMEOUT, POLL_INTERVAL, PROCESS_TEST_TIMEOUT
from tests.helpers import wait_for


@pytest.mark.timeout(PROCESS_TEST_TIMEOUT)
def test_channel_requests_go_through_another_master_while_the_slots_master_is_dead(
    make_cluster, unique_name
):
    """Any node spreads a classic PUBLISH, so a dead master with no replica does not silence its channels."""
    cluster = make_cluster(masters=3, replicas=0)
    doomed, *others = cluster.masters()
    channel = cluster.key_on(doomed, unique_name)
    server = RedisClusterBroker(others[0].url, poll_interval=POLL_INTERVAL)

    @server.subscriber(channel=channel)
    def echo(body: str) -> str:
        return body

    client = RedisClusterBroker(others[1].url, poll_interval=POLL_INTERVAL)
    with server, client:
        assert (
            client.request("before", channel=channel, timeout=LONG_TIMEOUT).body
            == b"before"
        )
        doomed.server.kill()  # no replica takes over: the slot stays without a master

        def answered() -> bool:
            try:
                return (
                    client.request("after", channel=channel, timeout=1.0).body
                    == b"after"
                )
            except RedisRPCError:
                return (
                    False  # the dead master's connection, or the server resubscribing
                )

        # The server's subscription moves off the dead node if it was there,
        # and the caller publishes through a live master.
        assert wait_for(answered, timeout=LONG_TIMEOUT * 2, interval=0.1)
        assert all(answered() for _ in range(5))


def test_what_rides_with_a_read_is_what_its_master_serves(redis_cluster, unique_name):
    """Replies and acks ride with a consumer's read when the read key's master serves them; a transaction needs the same slot."""
    first, second, _ = redis_cluster.masters()
    read = redis_cluster.key_on(first, f"{unique_name}-read")
    same_node = redis_cluster.key_on(first, f"{unique_name}-other")
    assert slot_of(same_node) != slot_of(read)
    elsewhere = redis_cluster.key_on(second, unique_name)
    connection = ClusterConnection(
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
