"""What a cluster connection posts reaches each key's master once, also when a command must be sent again."""

from __future__ import annotations

import time

import redis.cluster

from redis_rpc._io.cluster import ClusterBackend
from redis_rpc._io.commands import RPush, grouped, words
from tests.conftest import SHORT_TIMEOUT
from tests.helpers import wait_for


def _connection(cluster) -> ClusterBackend:
    return ClusterBackend(
        cluster.urls[0], socket_timeout=5.0, health_check_interval=30.0, options={}
    )


def _lengths(cluster, keys):
    client = redis.cluster.RedisCluster.from_url(cluster.urls[0])
    try:
        return [client.llen(key) for key in keys]
    finally:
        client.close()


def test_posted_commands_for_several_masters_go_to_each(redis_cluster, unique_name):
    """A consumer's owed commands span masters: each goes to its own, a transaction whole."""
    first, second, third = redis_cluster.masters()
    a = redis_cluster.key_on(first, unique_name)
    b = redis_cluster.key_on(second, unique_name)
    c = redis_cluster.key_on(third, unique_name)
    commands = [
        words(RPush(a, b"1")),
        words(RPush(b, b"1")),
        *grouped([RPush(c, b"1"), RPush(f"{{{c}}}:x", b"1")], atomic=True),
    ]
    connection = _connection(redis_cluster)
    try:
        connection.post_args(commands, what="a test's commands")
        keys = [a, b, c, f"{{{c}}}:x"]
        assert wait_for(lambda: _lengths(redis_cluster, keys) == [1, 1, 1, 1])
    finally:
        connection.close()


def test_only_the_refused_command_is_sent_again(redis_cluster, unique_name, caplog):
    """Of replies that ran on one node, a MOVED one is resent to its master; the others are not run twice."""
    first, second, _ = redis_cluster.masters()
    here = redis_cluster.key_on(first, unique_name)
    moved = redis_cluster.key_on(second, unique_name)
    commands = [words(RPush(here, b"1")), words(RPush(moved, b"1"))]
    connection = _connection(redis_cluster)
    try:
        # Both sent to the first master, as a read's connection there would carry them.
        node = connection._node("127.0.0.1", first.port)
        replies = node.pipe.submit(commands, time.monotonic() + SHORT_TIMEOUT)
        assert replies[0] == 1
        assert getattr(replies[1], "reason", None) == "moved"
        connection.settle(commands, replies, "a test's commands")
        assert wait_for(lambda: _lengths(redis_cluster, [here, moved]) == [1, 1])
        # Each pipe writes in order: once a PING through both has come back,
        # a second copy sent before it would have landed.
        for master in (first, second):
            pipe = connection._node("127.0.0.1", master.port).pipe
            pipe.submit([(b"PING",)], time.monotonic() + SHORT_TIMEOUT)
        assert _lengths(redis_cluster, [here, moved]) == [1, 1]
        assert "refused" not in caplog.text
    finally:
        connection.close()
