"""``redis+sentinel://`` URLs: what they name, and clear errors for bad ones (no sockets)."""

from __future__ import annotations

import pytest

from redis_rpc import RedisBroker
from redis_rpc._io.sentinel import is_sentinel_url, parse
from redis_rpc.errors import SetupError


def test_sentinels_service_database_and_credentials_are_read():
    """Sentinels (default port 26379), the service, the database and the master's credentials come from the URL."""
    sentinels, service, options, own = parse(
        "redis+sentinel://us%40r:p%3Ass@a:26380,b,[::1]:26381/mymaster/2"
        "?socket_timeout=3&sentinel_password=s3cret&sentinel_username=watcher"
    )
    assert sentinels == [("a", 26380), ("b", 26379), ("::1", 26381)]
    assert service == "mymaster"
    assert options == {
        "username": "us@r",
        "password": "p:ss",
        "db": 2,
        "socket_timeout": 3.0,
    }
    assert own == {"password": "s3cret", "username": "watcher"}


def test_tls_to_the_master_and_a_default_database():
    """rediss+sentinel:// asks for TLS to the master; without a database number it is 0."""
    _, service, options, _ = parse("rediss+sentinel://a:1/svc")
    assert (service, options) == ("svc", {"db": 0, "ssl": True})
    assert is_sentinel_url("REDISS+SENTINEL://a/svc")
    assert not is_sentinel_url("redis://a:1/0")


def test_the_address_names_service_and_sentinels_but_never_the_password():
    """The broker's address names the service and its sentinels, and no credentials."""
    broker = RedisBroker("redis+sentinel://user:hunter2@h1:1,h2/svc/0")
    try:
        assert broker._backend.address == "svc via Sentinel h1:1,h2:26379"
    finally:
        broker.close()


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("redis+sentinel://h:26379", "names the service"),
        ("redis+sentinel://h:26379/", "names the service"),
        ("redis+sentinel://h:26379/svc/0/extra", "names the service"),
        ("redis+sentinel://h:port/svc", "from 1 to 65535"),
        ("redis+sentinel://h:0/svc", "from 1 to 65535"),
        ("redis+sentinel://h:70000/svc", "from 1 to 65535"),
        ("redis+sentinel://h:1,,h2:2/svc", "has no host"),
        ("redis+sentinel://:26379/svc", "has no host"),
        ("redis+sentinel://h/svc/zero", "must be a number"),
        ("redis+sentinel://h/svc/-1", "must be a number"),
        ("redis+sentinel://[::1/svc", "IPv6"),
        ("redis+sentinel://h/svc?socket_timeout=soon", "socket_timeout"),
    ],
)
def test_a_bad_url_is_a_setup_error(url, message):
    """A malformed Sentinel URL raises SetupError saying what is wrong, before any connection."""
    with pytest.raises(SetupError, match=message) as info:
        RedisBroker(url)
    assert "Redis URL" in str(info.value)
