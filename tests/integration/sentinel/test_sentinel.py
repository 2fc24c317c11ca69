"""A broker on a ``redis+sentinel://`` URL: the master is found through the sentinels."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import redis

from redis_rpc import RedisBroker
from redis_rpc.errors import RedisCommandError
from tests.conftest import POLL_INTERVAL, PROCESS_TEST_TIMEOUT, READY_TIMEOUT
from tests.integration.sentinel.conftest import (
    DOWN_AFTER_MS,
    FAILOVER_TIMEOUT_MS,
    SERVICE,
)

ROOT = Path(__file__).parents[3]


@contextlib.contextmanager
def echo_broker(url, name):
    """A started broker echoing on list, stream and channel *name*-l, -s, -c."""
    broker = RedisBroker(url, poll_interval=POLL_INTERVAL)

    @broker.subscriber(list=f"{name}-l")
    @broker.subscriber(stream=f"{name}-s")
    @broker.subscriber(channel=f"{name}-c")
    def echo(body: bytes) -> bytes:
        return body

    with broker:
        yield broker


def targets(name):
    return [
        {"list": f"{name}-l"},
        {"stream": f"{name}-s"},
        {"channel": f"{name}-c"},
    ]


@pytest.mark.timeout(PROCESS_TEST_TIMEOUT)
def test_requests_over_every_transport_reach_the_master(sentinel_topology, unique_name):
    """Requests over list, stream and channel are answered through a Sentinel URL, and the data lives on the master."""
    _, port = sentinel_topology.sentinel.master()
    with echo_broker(sentinel_topology.url(), unique_name) as broker:
        for target in targets(unique_name):
            assert broker.request(b"hello", **target, timeout=5).body == b"hello"
        assert broker._backend.address == (
            f"{SERVICE} via Sentinel 127.0.0.1:{sentinel_topology.sentinel.port}"
        )
    with contextlib.closing(sentinel_topology.client(port)) as master:
        assert master.exists(f"{unique_name}-s") == 1


@pytest.mark.timeout(PROCESS_TEST_TIMEOUT)
def test_a_dead_sentinel_in_the_list_is_skipped(sentinel_topology, unique_name):
    """The master is found through the next sentinel when the first one listed is not there."""
    with socket.socket() as closed:  # bound but not listening: refused
        closed.bind(("127.0.0.1", 0))
        dead = closed.getsockname()[1]
        url = f"redis+sentinel://127.0.0.1:{dead},127.0.0.1:{sentinel_topology.sentinel.port}/{SERVICE}"
        with echo_broker(url, unique_name) as broker:
            reply = broker.request(b"x", list=f"{unique_name}-l", timeout=5)
            assert reply.body == b"x"
            assert f"127.0.0.1:{dead},127.0.0.1:" in broker._backend.address


@pytest.mark.timeout(PROCESS_TEST_TIMEOUT)
def test_the_database_in_the_url_is_used(sentinel_topology, unique_name):
    """The number after the service name selects the master's database."""
    _, port = sentinel_topology.sentinel.master()
    with RedisBroker(sentinel_topology.url(f"/{SERVICE}/3")) as broker:
        broker.publish(b"x", list=unique_name)
    with (
        contextlib.closing(redis.Redis(port=port, db=3)) as db3,
        contextlib.closing(redis.Redis(port=port, db=0)) as db0,
    ):
        assert (db3.llen(unique_name), db0.llen(unique_name)) == (1, 0)


@pytest.mark.timeout(PROCESS_TEST_TIMEOUT)
def test_an_unknown_service_is_a_clear_connection_error(sentinel_topology):
    """A service the sentinels do not know fails start() with an error naming it, not a bare redis-py one."""
    broker = RedisBroker(
        sentinel_topology.url("/nosuchservice"), poll_interval=POLL_INTERVAL
    )

    @broker.subscriber(list="never")
    def handle(body: bytes) -> None: ...

    with pytest.raises(Exception, match="nosuchservice") as info:
        broker.start()
    broker.close()
    assert type(info.value).__module__.startswith("redis_rpc")


@pytest.mark.timeout(PROCESS_TEST_TIMEOUT)
def test_cli_ping_through_the_sentinels(sentinel_topology):
    """``redis-rpc ping`` answers for a Sentinel URL, naming the service and its sentinels."""
    done = subprocess.run(
        [sys.executable, "-m", "redis_rpc", "ping", sentinel_topology.url()],
        cwd=ROOT,
        env=dict(os.environ),
        capture_output=True,
        text=True,
        timeout=READY_TIMEOUT,
        check=False,
    )
    assert (done.returncode, done.stderr) == (0, "")
    assert done.stdout.startswith("PONG from Redis ")
    assert f"at {SERVICE} via Sentinel 127.0.0.1:" in done.stdout


@pytest.mark.timeout(PROCESS_TEST_TIMEOUT)
def test_a_demoted_master_is_left_for_the_new_one(fresh_topology, unique_name, caplog):
    """A write refused with READONLY by a demoted master fails clearly, and the next one goes to the master the sentinels name."""
    old = fresh_topology.sentinel.master()
    (new_port,) = set(fresh_topology.servers) - {old[1]}
    with RedisBroker(fresh_topology.url(), poll_interval=POLL_INTERVAL) as broker:
        assert broker.publish(b"before", list=unique_name) == 1
        # Swap the roles by hand, without the sentinel: nothing closes the
        # broker's connection to the old master, as a failover would.
        with (
            contextlib.closing(fresh_topology.client(old[1])) as demoted,
            contextlib.closing(fresh_topology.client(new_port)) as promoted,
        ):
            promoted.replicaof("NO", "ONE")
            sentinel = fresh_topology.sentinel.client
            sentinel.sentinel_remove(SERVICE)
            sentinel.sentinel_monitor(SERVICE, "127.0.0.1", new_port, 1)
            sentinel.sentinel_set(SERVICE, "down-after-milliseconds", DOWN_AFTER_MS)
            sentinel.sentinel_set(SERVICE, "failover-timeout", FAILOVER_TIMEOUT_MS)
            demoted.replicaof("127.0.0.1", new_port)
            caplog.set_level(logging.WARNING, logger="redis_rpc")
            with pytest.raises(RedisCommandError) as info:
                broker.publish(b"refused", list=unique_name)
            assert info.value.reason == "read_only"
            assert broker.publish(b"after", list=unique_name) == 2
            items = promoted.lrange(unique_name, 0, -1)
            assert len(items) == 2
            assert items[0].endswith(b"before")
            assert items[1].endswith(b"after")
    switches = [r for r in caplog.records if "moved the master" in r.getMessage()]
    assert len(switches) == 1
    assert f"127.0.0.1:{old[1]} to 127.0.0.1:{new_port}" in switches[0].getMessage()
