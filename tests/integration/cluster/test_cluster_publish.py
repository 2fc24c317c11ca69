"""Classic Pub/Sub on a cluster outlives the master of a channel's slot."""

from __future__ import annotations

import pytest

from redis_rpc import RedisClusterBroker
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
