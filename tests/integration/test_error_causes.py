"""Errors name their real cause: credentials, permissions, pool, memory, replica, lost subscription."""

from __future__ import annotations

import logging
import time
import uuid

import pytest
import redis

from redis_rpc import RedisBroker
from redis_rpc.errors import RedisCommandError, RedisConnectionError
from redis_rpc.testing import RedisServer
from tests.conftest import LONG_TIMEOUT, POLL_INTERVAL, SHORT_TIMEOUT


@pytest.fixture
def acl_user(raw, redis_server):
    """Create an ACL user with the given rules on the session server; deleted afterwards."""
    names = []

    def create(*rules: str) -> str:
        name = f"u-{uuid.uuid4().hex[:12]}"
        raw.acl_setuser(name, enabled=True, passwords=["+pw-" + name], reset=True)
        raw.execute_command("ACL", "SETUSER", name, *rules)
        names.append(name)
        return f"redis://{name}:pw-{name}@127.0.0.1:{redis_server.port}/0"

    yield create
    for name in names:
        raw.acl_deluser(name)


def broker_at(url, **options):
    options.setdefault("poll_interval", POLL_INTERVAL)
    return RedisBroker(url, **options)


def test_wrong_password_says_so(redis_server, unique_name):
    """A wrong password is reported as refused credentials, not as an unreachable server."""
    url = f"redis://nobody:wrong@127.0.0.1:{redis_server.port}/0"
    broker = broker_at(url)
    try:
        with pytest.raises(RedisConnectionError) as info:
            broker.publish("x", list=unique_name)
    finally:
        broker.close()
    assert info.value.reason == "authentication"
    assert "credentials" in str(info.value)
    assert "running and reachable" not in str(info.value)
    assert isinstance(info.value.__cause__, redis.exceptions.AuthenticationError)


def test_start_fails_fast_with_each_parts_cause_on_wrong_password(
    redis_server, unique_name
):
    """start() with a wrong password fails well before start_timeout and names every part with its cause."""
    url = f"redis://nobody:wrong@127.0.0.1:{redis_server.port}/0"
    broker = broker_at(url, start_timeout=LONG_TIMEOUT * 3)

    @broker.subscriber(stream=unique_name)
    def handle(body: str) -> str:
        return body

    begun = time.monotonic()
    with pytest.raises(RedisConnectionError) as info:
        broker.start()
    assert time.monotonic() - begun < LONG_TIMEOUT
    assert info.value.reason == "authentication"
    message = str(info.value)
    assert "redis_rpc:replies" in message
    assert f"redis_rpc:stream:{unique_name}" in message
    assert "credentials" in message
    assert isinstance(info.value.__cause__, RedisConnectionError)
    # The cause first, said once, then the parts it kept down.
    assert message.startswith(
        f"Redis at 127.0.0.1:{redis_server.port} refused the credentials"
    )
    assert message.count("refused the credentials") == 1
    assert "within" not in message
    assert "wrong" not in message


def test_start_refuses_a_user_without_xreadgroup(acl_user, unique_name):
    """An ACL user that may not XREADGROUP fails start() with a permission error naming the consumer."""
    url = acl_user("~*", "&*", "+@all", "-xreadgroup")
    broker = broker_at(url, start_timeout=LONG_TIMEOUT * 3)

    @broker.subscriber(stream=unique_name)
    def handle(body: str) -> str:
        return body

    begun = time.monotonic()
    try:
        with pytest.raises(RedisCommandError) as info:
            broker.start()
    finally:
        broker.close()
    assert time.monotonic() - begun < LONG_TIMEOUT
    assert info.value.reason == "permission"
    assert f"redis_rpc:stream:{unique_name}" in str(info.value)
    assert "xreadgroup" in str(info.value).lower()
    assert "ACL SETUSER" in str(info.value)


def test_start_refuses_a_user_that_cannot_reply(acl_user, unique_name):
    """A consumer whose user may not PUBLISH, so could never reply, fails start() with a permission error."""
    url = acl_user("~*", "&*", "+@all", "-publish")
    broker = broker_at(url, start_timeout=LONG_TIMEOUT * 3)

    @broker.subscriber(list=unique_name)
    def handle(body: str) -> str:
        return body

    try:
        with pytest.raises(RedisCommandError) as info:
            broker.start()
    finally:
        broker.close()
    assert info.value.reason == "permission"
    assert "publish" in str(info.value).lower()


def test_pool_exhaustion_says_so(redis_url, unique_name):
    """With every pooled connection taken, a call says the pool is exhausted and how to fix it."""
    broker = broker_at(redis_url, max_connections=1)
    pool = broker._backend._client.connection_pool
    # Held as a blocking read would hold it (Pub/Sub connections are not pooled).
    held = pool.get_connection()
    try:
        with pytest.raises(RedisConnectionError) as info:
            broker.request("x", list=unique_name, timeout=LONG_TIMEOUT)
    finally:
        pool.release(held)
        broker.close()
    assert info.value.reason == "pool_exhausted"
    assert "max_connections" in str(info.value)
    assert "running and reachable" not in str(info.value)


@pytest.fixture
def small_server(redis_server):
    """A private server this test may reconfigure."""
    server = RedisServer()
    server.start()
    yield server
    server.stop()


def test_out_of_memory_says_so(small_server, unique_name):
    """A write refused for maxmemory is reported as out of memory, with what to do."""
    client = redis.Redis.from_url(small_server.url)
    client.config_set("maxmemory", 1)
    broker = broker_at(small_server.url)
    try:
        with pytest.raises(RedisCommandError) as info:
            broker.publish("x", list=unique_name)
    finally:
        broker.close()
        client.config_set("maxmemory", 0)
        client.close()
    assert info.value.reason == "out_of_memory"
    assert "maxmemory" in str(info.value)


def test_read_only_replica_says_so(small_server, redis_server, unique_name):
    """A write sent to a replica is reported as such, with the advice to use the primary."""
    client = redis.Redis.from_url(small_server.url)
    client.replicaof("127.0.0.1", redis_server.port)
    broker = broker_at(small_server.url)
    try:
        with pytest.raises(RedisCommandError) as info:
            broker.publish("x", list=unique_name)
    finally:
        broker.close()
        client.replicaof("NO", "ONE")
        client.close()
    assert info.value.reason == "read_only"
    assert "primary" in str(info.value)


def test_lost_reply_subscription_keeps_its_cause(small_server, unique_name):
    """A request refused because the reply subscription is down carries redis' own error as its cause."""
    broker = broker_at(small_server.url)
    try:
        broker.publish("warm", list=unique_name)
        small_server.kill()
        deadline = time.monotonic() + LONG_TIMEOUT
        while True:
            try:
                broker.request("x", list=unique_name, timeout=SHORT_TIMEOUT)
            except RedisConnectionError as exc:
                error = exc
                break
            except TimeoutError:
                assert time.monotonic() < deadline
    finally:
        broker.close()
    assert error.__cause__ is not None
    assert ".." not in str(error)


@pytest.fixture
def server_with_password():
    """A private redis-server whose default user needs the password 'sekrit'."""
    with RedisServer(startup_timeout=LONG_TIMEOUT * 3) as server:
        with redis.Redis(port=server.port) as client:
            client.config_set("requirepass", "sekrit")
        yield server


def test_missing_password_says_to_give_one(server_with_password, unique_name):
    """A server that needs a password, reached without one, fails publish() and start() naming the fix, not Redis' HELLO wording."""
    url = f"redis://127.0.0.1:{server_with_password.port}/0"
    broker = broker_at(url, start_timeout=LONG_TIMEOUT * 3)

    @broker.subscriber(list=unique_name)
    def handle(body: str) -> str:
        return body

    try:
        with pytest.raises(RedisConnectionError) as published:
            broker.publish("x", list=unique_name)
        with pytest.raises(RedisConnectionError) as started:
            broker.start()
    finally:
        broker.close()
    for info in (published, started):
        assert info.value.reason == "authentication"
        message = str(info.value)
        assert message.startswith(
            f"Redis at 127.0.0.1:{server_with_password.port} requires a password,"
            " and none was given; put it in the URL"
        )
        assert "HELLO" not in message
    # One cause for every part, said once.
    assert str(started.value).count("requires a password") == 1


def test_password_to_a_server_without_one_is_warned_about_once(unique_name, caplog):
    """A password that Redis does not check lets the broker serve and answer, with one WARNING saying so."""
    with RedisServer(startup_timeout=LONG_TIMEOUT * 3) as server:
        url = f"redis://:never-checked@127.0.0.1:{server.port}/0"
        broker = broker_at(url)

        @broker.subscriber(channel=unique_name)
        def echo(body: str) -> str:
            return body

        caplog.set_level(logging.WARNING, logger="redis_rpc")
        try:
            broker.start()
            assert (
                broker.request("hi", channel=unique_name, timeout=LONG_TIMEOUT).decode()
                == "hi"
            )
            broker.publish("again", list=unique_name)
        finally:
            broker.close()
        warnings = [
            r.getMessage()
            for r in caplog.records
            if "no password set" in r.getMessage()
        ]
        assert warnings == [
            f"Redis at 127.0.0.1:{server.port} has no password set, yet the URL gives"
            " one: any password is let through. Leave the password out of the URL,"
            " or set one on the server (requirepass)."
        ]
        assert "never-checked" not in caplog.text


def test_the_right_password_is_not_warned_about(
    server_with_password, unique_name, caplog
):
    """A password that Redis checks and accepts brings no warning."""
    url = f"redis://:sekrit@127.0.0.1:{server_with_password.port}/0"
    broker = broker_at(url)

    @broker.subscriber(channel=unique_name)
    def echo(body: str) -> str:
        return body

    caplog.set_level(logging.WARNING, logger="redis_rpc")
    try:
        broker.start()
        assert (
            broker.request("hi", channel=unique_name, timeout=LONG_TIMEOUT).decode()
            == "hi"
        )
    finally:
        broker.close()
    assert "password" not in caplog.text
