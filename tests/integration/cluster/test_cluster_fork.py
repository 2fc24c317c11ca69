"""A cluster broker used before os.fork() works in the child on connections of its own."""

from __future__ import annotations

import os
from typing import Any

import pytest

from redis_rpc import RedisClusterBroker
from tests.conftest import POLL_INTERVAL, PROCESS_TEST_TIMEOUT, SHORT_TIMEOUT
from tests.fault.test_fork import run_in_child

# Python 3.12 warns about fork() in a process with threads; forking one is the point.
pytestmark = pytest.mark.filterwarnings(
    "ignore:This process .* is multi-threaded:DeprecationWarning"
)


def _pipes_of(broker):
    """The pipes of each master the broker has sent to."""
    connection: Any = broker._backend
    return {node.pipe for node in connection._nodes.values()}


def pid_echo(body):
    return {"pid": os.getpid(), "body": body}


@pytest.mark.timeout(PROCESS_TEST_TIMEOUT)
def test_child_requests_on_every_master_through_its_own_pipes(
    redis_cluster, unique_name
):
    """After a fork the child routes to every master on new pipes, and the parent's go on."""
    lists = [
        redis_cluster.key_on(master, unique_name) for master in redis_cluster.masters()
    ]
    server = RedisClusterBroker(redis_cluster.urls[0], poll_interval=POLL_INTERVAL)
    for name in lists:
        server.subscriber(list=name)(pid_echo)
    client = RedisClusterBroker(redis_cluster.urls[-1], poll_interval=POLL_INTERVAL)
    with server, client:
        for name in lists:  # every master's pipe is open in the parent
            client.request(0, list=name, timeout=SHORT_TIMEOUT)
        parent_writers = _pipes_of(client)

        def check():
            replies = [
                client.request(1, list=name, timeout=SHORT_TIMEOUT).decode()
                for name in lists
            ]
            writers = _pipes_of(client)
            client.close()
            return {
                "replies": replies,
                "fresh": not writers & parent_writers,
                "count": len(writers),
            }

        child = run_in_child(check)
        assert child["replies"] == [{"pid": os.getpid(), "body": 1}] * len(lists)
        assert child["fresh"]
        assert child["count"] == len(lists)
        for name in lists:  # the parent's pipes were left alone
            assert (
                client.request(2, list=name, timeout=SHORT_TIMEOUT).decode()["body"]
                == 2
            )
