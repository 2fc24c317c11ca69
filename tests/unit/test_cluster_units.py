"""The pure parts of cluster support: slots, hash tags, companion keys, routing keys, sharded channels."""

from __future__ import annotations

import pytest
import redis.exceptions

from redis_rpc import PubSub, RedisBroker, RedisClusterBroker
from redis_rpc._io.cluster import (
    ClusterBackend,
    _key,
    _redirect,
    _redirected,
    hash_tag,
    slot_of,
)
from redis_rpc._io.commands import (
    LRem,
    Publish,
    RPush,
    XAck,
    XAdd,
    send_command,
    words,
)
from redis_rpc._io.errors import translate
from redis_rpc._io.server import RedisBackend
from redis_rpc._wire.codec import encode_frame
from redis_rpc._wire.message import REPLY_SHARD, RedisMessage, frame_parts
from redis_rpc.errors import (
    Redirect,
    RedisCommandError,
    RedisConnectionError,
    SetupError,
)
from redis_rpc.testing import TestRedisBroker


def _cluster(url="redis://127.0.0.1:1", **options) -> ClusterBackend:
    """A cluster connection that has not connected: none of these tests reaches Redis."""
    return ClusterBackend(
        url, socket_timeout=5.0, health_check_interval=30.0, options=options
    )


class TestSlots:
    @pytest.mark.parametrize(
        ("key", "slot"),
        # Values from the Redis Cluster specification and CLUSTER KEYSLOT.
        [
            ("foo", 12182),
            ("bar", 5061),
            ("{user1000}.following", 3443),
            ("123456789", 12739),
        ],
    )
    def test_slot_as_redis_computes_it(self, key, slot):
        assert slot_of(key) == slot
        assert slot_of(key.encode()) == slot

    @pytest.mark.parametrize(
        ("key", "tag"),
        [
            ("orders", None),
            ("{orders}:dead", "orders"),
            ("a{b}c", "b"),
            ("a{}b", None),  # an empty tag: the whole key is hashed
            ("a{b", None),  # no closing brace
            ("a}b{c}", "c"),  # the first { and the first } after it
            ("{a}{b}", "a"),
        ],
    )
    def test_hash_tag(self, key, tag):
        assert hash_tag(key) == tag


class TestCompanionKeys:
    @pytest.mark.parametrize("key", ["orders", "jobs:in", "{app}.orders", "x{y}z"])
    def test_companions_share_the_slot(self, key):
        connection = _cluster()
        for suffix in (":redis_rpc:processing:c1", ":redis_rpc:consumers", ":dead"):
            companion = connection.companion(key, suffix)
            assert slot_of(companion) == slot_of(key)
            assert companion.endswith(suffix)

    def test_untagged_name_gets_its_own_name_as_tag(self):
        assert _cluster().companion("orders", ":dead") == "{orders}:dead"

    def test_tagged_name_is_kept(self):
        assert _cluster().companion("{app}.orders", ":dead") == "{app}.orders:dead"

    @pytest.mark.parametrize("key", ["a}b", "a{}b", "a{b"])
    def test_braces_without_a_tag_are_refused(self, key):
        with pytest.raises(SetupError, match="hash tag"):
            _cluster().companion(key, ":dead")

    def test_a_single_server_keeps_the_plain_names(self):
        connection = RedisBackend(
            "redis://127.0.0.1:1",
            socket_timeout=5.0,
            health_check_interval=30.0,
            options={},
        )
        assert connection.companion("orders", ":dead") == "orders:dead"
        assert not connection.cluster
        connection.close()


class TestRouting:
    @pytest.mark.parametrize(
        ("command", "key"),
        [
            (Publish("ch", b"x"), "ch"),
            (Publish("ch", b"x", sharded=True), "ch"),
            (RPush("jobs", b"x"), "jobs"),
            (XAdd("events", b"x", maxlen=10), "events"),
            (XAck("events", "g", b"1-0"), "events"),
            (LRem("{jobs}:p", b"x"), "{jobs}:p"),
        ],
    )
    def test_key_of_each_command(self, command, key):
        assert _key(words(command)) == key

    @pytest.mark.parametrize(
        ("args", "key"),
        [
            ((b"BLPOP", "jobs", 1.0), "jobs"),
            ((b"BLMPOP", 1.0, 1, "jobs", b"LEFT", b"COUNT", 5), "jobs"),
            ((b"BLMOVE", "jobs", "{jobs}:p", b"LEFT", b"LEFT", 1.0), "jobs"),
            (
                (
                    b"XREADGROUP",
                    b"GROUP",
                    "g",
                    "c",
                    b"COUNT",
                    1,
                    b"BLOCK",
                    100,
                    b"STREAMS",
                    "s",
                    b">",
                ),
                "s",
            ),
            ((b"PING",), None),
            ((b"MULTI",), None),
        ],
    )
    def test_key_of_blocking_reads(self, args, key):
        assert _key(args) == key

    def test_sharded_publish_is_spublish(self):
        assert words(Publish("ch", b"x", sharded=True))[0] == b"SPUBLISH"
        assert words(send_command(PubSub("ch", sharded=True), b"x"))[0] == b"SPUBLISH"
        assert words(send_command(PubSub("ch"), b"x"))[0] == b"PUBLISH"

    def test_what_rides_with_a_read_in_a_transaction(self):
        """A transaction rides only on the read key's slot (the node's map is an integration test)."""
        connection = _cluster()
        ack = LRem("{jobs}:redis_rpc:p:c", b"")
        # Classic replies go from any node, acks to the read key's slot.
        assert connection.rides([Publish("reply.1", b""), ack], "jobs", atomic=True)
        assert not connection.rides([RPush("elsewhere", b""), ack], "jobs", atomic=True)
        assert not connection.rides(
            [Publish("shard", b"", sharded=True), ack], "jobs", atomic=True
        )
        assert not connection.rides([Publish("reply.1", b"")], None, atomic=False)


class TestRedirections:
    def _error(self, exc):
        error = translate(exc, "127.0.0.1:7000")
        error.__cause__ = exc
        return error

    def test_moved_ask_tryagain_clusterdown_are_redirections(self):
        for exc in (
            redis.exceptions.MovedError("3999 127.0.0.1:7001"),
            redis.exceptions.AskError("3999 127.0.0.1:7001"),
            redis.exceptions.TryAgainError("TRYAGAIN"),
            redis.exceptions.ClusterDownError("CLUSTERDOWN The cluster is down"),
        ):
            error = self._error(exc)
            assert _redirect([1, error]) is error

    def test_a_failover_unblocking_a_read_is_a_redirection(self):
        error = self._error(
            redis.exceptions.ResponseError(
                "UNBLOCKED force unblock from blocking operation"
            )
        )
        assert error.reason == "unblocked"
        assert _redirected(error)
        assert _redirect([error]) is error

    def test_other_refusals_are_not(self):
        error = self._error(
            redis.exceptions.ResponseError("WRONGTYPE Operation against a key")
        )
        assert _redirect([error, 1, [error]]) is None

    def test_nested_in_exec(self):
        error = self._error(redis.exceptions.MovedError("1 127.0.0.1:7001"))
        assert _redirect([b"OK", [error]]) is error

    def test_moved_names_cluster_broker(self):
        error = translate(redis.exceptions.MovedError("3999 127.0.0.1:7001"), "h:1")
        assert isinstance(error, RedisCommandError)
        assert "RedisClusterBroker" in str(error)

    @pytest.mark.parametrize(
        ("exc", "kind"),
        [
            (redis.exceptions.MovedError("3999 127.0.0.1:7001"), "moved"),
            (redis.exceptions.AskError("3999 127.0.0.1:7001"), "ask"),
        ],
    )
    def test_a_redirection_says_where_as_fields(self, exc, kind):
        """MOVED and ASK carry the slot, host and port as fields, not only in the message."""
        error = translate(exc, "h:1")
        assert isinstance(error, RedisCommandError)
        assert error.reason == "moved"
        assert error.redirect == Redirect(kind, 3999, "127.0.0.1", 7001)

    def test_cluster_client_exception_is_a_connection_error(self):
        error = translate(
            redis.exceptions.RedisClusterException("cannot be connected"), "h:1"
        )
        assert isinstance(error, RedisConnectionError)
        assert error.reason == "cluster_down"


class TestClusterBrokerSetup:
    def test_builds_without_connecting(self):
        RedisClusterBroker("redis://127.0.0.1:1,127.0.0.1:2").close()
        RedisClusterBroker(["redis://127.0.0.1:1", "redis://127.0.0.1:2"]).close()

    def test_database_is_refused(self):
        with pytest.raises(SetupError, match="database 0"):
            RedisClusterBroker("redis://127.0.0.1:1/2")

    def test_decode_responses_is_refused(self):
        with pytest.raises(SetupError, match="decode_responses"):
            RedisClusterBroker("redis://127.0.0.1:1", decode_responses=True)

    def test_unknown_option_is_refused(self):
        with pytest.raises(SetupError, match="Unknown Redis option"):
            RedisClusterBroker("redis://127.0.0.1:1", no_such_option=1)

    def test_no_url_is_refused(self):
        with pytest.raises(SetupError, match="at least one node"):
            RedisClusterBroker([])

    def test_address_never_shows_the_password(self):
        connection = _cluster("redis://user:s3cret@127.0.0.1:1")
        assert "s3cret" not in connection.address
        assert "127.0.0.1:1" in connection.address


class TestShardedChannels:
    def test_sharded_is_never_a_pattern(self):
        assert not PubSub("a*", sharded=True).pattern
        with pytest.raises(SetupError, match="sharded"):
            PubSub("a*", pattern=True, sharded=True)

    def test_braces_are_a_hash_tag_not_a_placeholder(self):
        broker = RedisClusterBroker("redis://127.0.0.1:1")

        @broker.subscriber(channel=PubSub("{orders}.done", sharded=True))
        def handle(body: str) -> str:
            return body.upper()

        with TestRedisBroker(broker) as br:
            assert (
                br.request("x", channel=PubSub("{orders}.done", sharded=True)).body
                == b"X"
            )
            # A classic channel of the same name is another channel.
            with pytest.raises(Exception, match="Nobody subscribes"):
                br.request("x", channel="{orders}.done", timeout=0.5)

    def test_str_says_sharded(self):
        assert str(PubSub("a", sharded=True)) == "sharded channel:a"


class TestReplyShardHeader:
    def test_header_is_read_into_reply_shard_and_not_left_to_the_user(self):
        data, headers = frame_parts(
            "x",
            correlation_id="c",
            reply_to="r",
            headers={REPLY_SHARD: "{s}", "user": "1"},
        )
        message = RedisMessage.from_payload(_encode(data, headers))
        assert message.reply_shard == "{s}"
        assert REPLY_SHARD not in message.headers
        assert message.headers["user"] == "1"


def _encode(data, headers):
    return encode_frame(data, headers)


class TestTargets:
    """What users pass instead of a URL gets a clear error that says what to pass."""

    def test_a_connection_pool_is_refused(self):
        pool = redis.ConnectionPool(host="127.0.0.1", port=1)
        with pytest.raises(SetupError, match="connection_pool is not an option"):
            RedisBroker("redis://127.0.0.1:1", connection_pool=pool)

    @pytest.mark.parametrize(
        "target", [redis.Redis(port=1), ["redis://127.0.0.1:1"], 7]
    )
    def test_a_client_or_a_list_is_refused_by_a_single_server_broker(self, target):
        with pytest.raises(
            SetupError, match=r"Expected a Redis URL.*RedisClusterBroker"
        ):
            RedisBroker(target)

    def test_a_client_is_refused_by_the_cluster_broker(self):
        with pytest.raises(SetupError, match="Expected a Redis URL"):
            RedisClusterBroker(redis.Redis(port=1))  # type: ignore[arg-type]
