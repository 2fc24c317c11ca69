"""RedisClusterBroker on a shared 3-master cluster: every transport, on every master.

The server and the caller brokers connect through different nodes, so each
test also proves that commands are routed by slot rather than sent to the
node a broker was pointed at. The tests leave the topology as they found it.
"""

from __future__ import annotations

import queue
from typing import Any

import pytest
from redis.cluster import RedisCluster

from redis_rpc import ListSub, PubSub, RedisClusterBroker, RedisMessage, StreamSub
from redis_rpc.errors import NoSubscriberError, RequestTimeoutError, SetupError
from tests.conftest import (
    LONG_TIMEOUT,
    POLL_INTERVAL,
    PROCESS_TEST_TIMEOUT,
    SHORT_TIMEOUT,
)
from tests.helpers import Callers, wait_for

pytestmark = pytest.mark.timeout(PROCESS_TEST_TIMEOUT)

# Short, so that failed stream entries are retried and dead-lettered quickly.
CLAIM_IDLE_TIME = 0.1
# Short enough to watch a dead consumer's items come back, and over six polls.
RECOVER_AFTER = 0.5
# Requests counted when measuring the cluster bus traffic of replies.
TRAFFIC_REQUESTS = 20
# A request on a channel nobody listens to gives up after this long.
UNHEARD_TIMEOUT = 0.5
TRANSPORTS = ["list", "reliable list", "stream", "channel", "sharded channel"]


@pytest.fixture
def make_cluster_broker(redis_cluster):
    """Build RedisClusterBrokers on the shared cluster, closed after the test."""
    brokers = []

    def make(url=None, **options):
        options.setdefault("poll_interval", POLL_INTERVAL)
        broker = RedisClusterBroker(
            redis_cluster.urls[0] if url is None else url, **options
        )
        brokers.append(broker)
        return broker

    yield make
    for broker in brokers:
        broker.close()


@pytest.fixture
def cluster_raw(redis_cluster):
    """A redis-py cluster client, in bytes mode, for looking behind the brokers."""
    client = RedisCluster.from_url(redis_cluster.urls[0])
    yield client
    client.close()


@pytest.fixture
def pair(redis_cluster, make_cluster_broker):
    """A server broker through the first master and a caller through another master's replica."""
    masters = redis_cluster.masters()
    (replica,) = redis_cluster.replicas_of(masters[1])
    return make_cluster_broker(masters[0].url), make_cluster_broker(replica.url)


def target(transport, name):
    """The subscriber() and request() keywords for *name* over *transport*."""
    return {
        "list": {"list": name},
        "reliable list": {
            "list": ListSub(name, reliable=True, recover_after=RECOVER_AFTER)
        },
        "stream": {"stream": StreamSub(name, group="g")},
        "channel": {"channel": name},
        "sharded channel": {"channel": PubSub(name, sharded=True)},
    }[transport]


def caller_target(transport, name):
    if transport == "sharded channel":
        return {"channel": PubSub(name, sharded=True)}
    return {("channel" if "channel" in transport else transport.split()[-1]): name}


def bus_publish_messages(cluster):
    """Classic PUBLISH messages the nodes have sent each other over the cluster bus."""
    return sum(
        int(node.client.cluster("info").get("cluster_stats_messages_publish_sent", 0))
        for node in cluster.nodes
    )


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_request_reply_on_every_master(redis_cluster, pair, unique_name, transport):
    """A request over each transport is answered, whichever master owns its key."""
    server, caller = pair
    names = [redis_cluster.key_on(m, unique_name) for m in redis_cluster.masters()]
    for name in names:

        @server.subscriber(**target(transport, name))
        def echo(body, name=name):
            return [name, body]

    with server, caller:
        for name in names:
            reply = caller.request(
                "hi", **caller_target(transport, name), timeout=LONG_TIMEOUT
            )
            assert reply.decode() == [name, "hi"]


@pytest.mark.parametrize("form", ["list", "commas"])
def test_several_startup_urls(redis_cluster, make_cluster_broker, unique_name, form):
    """Several startup URLs work, as a list or one string with commas, even when the first is down."""
    masters = redis_cluster.masters()
    # A port nothing listens on: the broker moves on to the next URL.
    dead = "redis://127.0.0.1:1"
    urls = [dead, masters[2].url, masters[1].url]
    broker = make_cluster_broker(urls if form == "list" else " , ".join(urls))
    name = redis_cluster.key_on(masters[0], unique_name)

    @broker.subscriber(list=name)
    def double(n: int) -> int:
        return 2 * n

    with broker:
        assert broker.request(21, list=name, timeout=LONG_TIMEOUT).decode() == 42


def test_failed_items_go_to_default_and_named_dead_letters(
    redis_cluster, pair, cluster_raw, unique_name
):
    """With no caller to tell, failed reliable-list items and stream entries land in
    ``{name}:dead`` on their slot, or in a dead letter named by the user on another slot."""
    server, caller = pair
    m0, m1, m2 = redis_cluster.masters()
    plain_list = redis_cluster.key_on(m0, f"{unique_name}-l")
    named_list = redis_cluster.key_on(m1, f"{unique_name}-l")
    list_letters = redis_cluster.key_on(m2, f"{unique_name}-ldl")
    plain_stream = redis_cluster.key_on(m1, f"{unique_name}-s")
    named_stream = redis_cluster.key_on(m2, f"{unique_name}-s")
    stream_letters = redis_cluster.key_on(m0, f"{unique_name}-sdl")
    sources: list[dict[str, Any]] = [
        {"list": ListSub(plain_list, reliable=True, recover_after=RECOVER_AFTER)},
        {
            "list": ListSub(
                named_list,
                reliable=True,
                recover_after=RECOVER_AFTER,
                dead_letter=list_letters,
            )
        },
        {
            "stream": StreamSub(
                plain_stream, claim_idle_time=CLAIM_IDLE_TIME, max_deliveries=2
            )
        },
        {
            "stream": StreamSub(
                named_stream,
                claim_idle_time=CLAIM_IDLE_TIME,
                max_deliveries=2,
                dead_letter=stream_letters,
            )
        },
    ]
    for source in sources:

        @server.subscriber(**source)
        def fail(body):
            raise RuntimeError(f"boom {body}")

    def stream_letters_of(key):
        return [fields for _, fields in cluster_raw.xrange(key)]

    with server, caller:
        caller.publish("a", list=plain_list)
        caller.publish("b", list=named_list)
        caller.publish("c", stream=plain_stream)
        caller.publish("d", stream=named_stream)
        default_list_letters = "{" + plain_list + "}:dead"
        assert wait_for(lambda: cluster_raw.llen(default_list_letters), LONG_TIMEOUT)
        assert wait_for(lambda: cluster_raw.llen(list_letters), LONG_TIMEOUT)
        default_stream_letters = "{" + plain_stream + "}:dead"
        assert wait_for(lambda: stream_letters_of(default_stream_letters), LONG_TIMEOUT)
        assert wait_for(lambda: stream_letters_of(stream_letters), LONG_TIMEOUT)
        for key, body in [(default_list_letters, "a"), (list_letters, "b")]:
            [letter] = cluster_raw.lrange(key, 0, -1)
            assert RedisMessage.from_payload(letter).decode() == body
        for key, body in [(default_stream_letters, "c"), (stream_letters, "d")]:
            [letter] = stream_letters_of(key)
            assert letter[b"error"] == f"RuntimeError: boom {body}".encode()
            assert RedisMessage.from_payload(letter[b"__data__"]).decode() == body
        for stream in (plain_stream, named_stream):
            assert wait_for(
                lambda stream=stream: (
                    cluster_raw.xpending(stream, "redis_rpc")["pending"] == 0
                )
            )
    assert cluster_raw.llen(plain_list) == cluster_raw.llen(named_list) == 0
    assert not cluster_raw.exists(f"{plain_list}:dead", f"{plain_stream}:dead")


def test_dead_consumers_items_are_recovered(
    redis_cluster, pair, cluster_raw, unique_name
):
    """A reliable list's items left by a dead consumer, on its slot's master, are answered first."""
    server, caller = pair
    name = redis_cluster.key_on(redis_cluster.masters()[2], unique_name)
    processing = "{" + name + "}:redis_rpc:processing:dead"
    consumers = "{" + name + "}:redis_rpc:consumers"
    handled = []

    @server.subscriber(list=ListSub(name, reliable=True, recover_after=RECOVER_AFTER))
    def record(n):
        handled.append(n)
        return n

    with Callers(3) as callers:
        replies = []
        for n in range(3):  # one at a time, so that the list holds them in order
            replies.append(
                callers.submit(caller.request, n, list=name, timeout=LONG_TIMEOUT)
            )
            assert wait_for(lambda n=n: cluster_raw.llen(name) == n + 1)
        # A consumer that took the two oldest and died: no heartbeat key.
        for _ in range(2):
            cluster_raw.lmove(name, processing, "LEFT", "LEFT")
        cluster_raw.sadd(consumers, "dead")
        server.start()
        assert [r.result(LONG_TIMEOUT).decode() for r in replies] == [0, 1, 2]
    assert handled == [0, 1, 2]
    assert cluster_raw.exists(processing) == 0
    assert b"dead" not in cluster_raw.smembers(consumers)


def test_fail_fast_on_channels(redis_cluster, pair, unique_name):
    """fail_fast never raises on a classic channel, whose subscribers may sit on any
    node, and raises on a sharded channel that nobody subscribes to."""
    server, caller = pair
    masters = redis_cluster.masters()
    # One channel on each master's slot: the caller publishes each through
    # that master, and the server's one subscription sits on a single node,
    # so at least two channels are published where nobody subscribes.
    served = [redis_cluster.key_on(m, f"{unique_name}-served") for m in masters]
    unheard = redis_cluster.key_on(masters[2], f"{unique_name}-unheard")
    for name in served:

        @server.subscriber(name)
        def echo(body):
            return body

    def local_subscribers(master, channel):
        [(_, count)] = master.client.pubsub_numsub(channel)
        return count

    with server, caller:
        elsewhere = [
            name
            for master, name in zip(masters, served, strict=True)
            if local_subscribers(master, name) == 0
        ]
        assert len(elsewhere) >= 2
        for name in served:
            reply = caller.request(name, name, fail_fast=True, timeout=LONG_TIMEOUT)
            assert reply.decode() == name
        with pytest.raises(RequestTimeoutError):
            caller.request("x", unheard, fail_fast=True, timeout=UNHEARD_TIMEOUT)
        with pytest.raises(NoSubscriberError):
            caller.request(
                "x", PubSub(unheard, sharded=True), fail_fast=True, timeout=LONG_TIMEOUT
            )


def test_ping_is_healthy(pair, redis_cluster, unique_name):
    """ping() is healthy for a serving broker and for a caller with its reply subscription."""
    server, caller = pair
    name = redis_cluster.key_on(redis_cluster.masters()[1], unique_name)

    @server.subscriber(stream=name)
    def echo(body):
        return body

    with server, caller:
        caller.request("x", stream=name, timeout=LONG_TIMEOUT)
        for broker in (server, caller):
            health = broker.ping(timeout=SHORT_TIMEOUT)
            assert health, health.problems


def test_publish_reaches_every_transport(redis_cluster, pair, unique_name):
    """publish() delivers to a list, a stream, a classic and a sharded channel on any master."""
    server, caller = pair
    received: queue.Queue[tuple[str, str]] = queue.Queue()
    sent = []
    for n, master in enumerate(redis_cluster.masters()):
        for transport in ("list", "stream", "channel", "sharded channel"):
            name = redis_cluster.key_on(master, f"{unique_name}-{n}")
            name = f"{name}-{transport.replace(' ', '-')}"
            sent.append((transport, name))

            @server.subscriber(**target(transport, name), no_reply=True)
            def record(body, name=name):
                received.put((name, body))

    with server, caller:
        for transport, name in sent:
            caller.publish(name, **caller_target(transport, name))
        got = [received.get(timeout=LONG_TIMEOUT) for _ in sent]
    assert sorted(got) == sorted((name, name) for _, name in sent)


def test_database_in_url_is_refused(redis_cluster):
    """A database number in the URL is refused: a cluster has database 0 only."""
    with pytest.raises(SetupError, match="database"):
        RedisClusterBroker(redis_cluster.urls[0] + "/1")


def test_decode_responses_is_refused(redis_cluster):
    """decode_responses=True is refused, as it would corrupt binary frames."""
    with pytest.raises(SetupError, match="decode_responses"):
        RedisClusterBroker(redis_cluster.urls[0], decode_responses=True)


@pytest.mark.parametrize(
    "source",
    [{"list": ListSub("a}b", reliable=True)}, {"stream": "a{}b"}],
    ids=["reliable list", "stream"],
)
def test_braces_without_hash_tag_are_refused(make_cluster_broker, source):
    """A reliable list or stream named with braces but no hash tag, which cannot keep
    its companion keys on its slot, is refused when it is declared."""
    broker = make_cluster_broker()
    with pytest.raises(SetupError, match="needs a hash tag"):
        broker.subscriber(**source)


@pytest.mark.parametrize("transport", ["list", "channel"])
def test_replies_are_not_broadcast(redis_cluster, pair, unique_name, transport):
    """Between redis_rpc peers, replies go to the caller's sharded reply channel,
    which the cluster bus does not spread to every node as it does a classic PUBLISH."""
    server, caller = pair
    name = redis_cluster.key_on(redis_cluster.masters()[0], unique_name)

    @server.subscriber(**{transport: name})
    def echo(body):
        return body

    def traffic():
        """Bus PUBLISH messages per request, over TRAFFIC_REQUESTS requests."""
        before = bus_publish_messages(redis_cluster)
        for n in range(TRAFFIC_REQUESTS):
            reply = caller.request(n, **{transport: name}, timeout=LONG_TIMEOUT)
            assert reply.decode() == n
        return (bus_publish_messages(redis_cluster) - before) / TRAFFIC_REQUESTS

    with server, caller:
        sharded = traffic()
        caller._listener.reply_shard = None  # requests no longer name the reply shard
        broadcast = traffic()
    others = len(redis_cluster.nodes) - 1
    # A classic PUBLISH goes from the node that took it to every other node.
    requests = others if transport == "channel" else 0
    assert sharded == requests
    assert broadcast == requests + others
