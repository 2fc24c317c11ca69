"""Causes that retrying cannot cure are named at once: a TLS certificate that does not verify, a missing CA file, Redis' maxclients.

The TLS server is the installed redis-server with a TLS port, its
certificates made by openssl for this test, on loopback.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time

import pytest
import redis

from redis_rpc import RedisBroker
from redis_rpc.errors import RedisConnectionError, SetupError
from redis_rpc.testing import RedisServer
from tests.conftest import LONG_TIMEOUT, POLL_INTERVAL, READY_TIMEOUT

# start() gives up on a permanent cause at once; this long it would retry another.
START_TIMEOUT = LONG_TIMEOUT
# At once, on a busy machine.
PROMPTLY = 3.0


def _openssl(*args, cwd):
    subprocess.run(
        ["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60
    )


def _free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def certificates(tmp_path_factory):
    """A CA and the server certificate it signed, for "localhost" only; and a CA that signed nothing."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not on PATH")
    where = tmp_path_factory.mktemp("tls")
    for ca in ("ca", "other-ca"):
        _openssl(
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-keyout",
            f"{ca}.key",
            "-out",
            f"{ca}.crt",
            "-subj",
            f"/CN={ca}",
            cwd=where,
        )
    _openssl(
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=localhost",
        cwd=where,
    )
    (where / "san.ext").write_text("subjectAltName=DNS:localhost\n")
    _openssl(
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.crt",
        "-days",
        "1",
        "-extfile",
        "san.ext",
        cwd=where,
    )
    return where


@pytest.fixture(scope="module")
def tls_server(redis_server, certificates):
    """The installed redis-server with a TLS port too; skipped when it was built without TLS."""
    port = _free_port()
    server = RedisServer(
        startup_timeout=READY_TIMEOUT,
        extra_args=(
            "--tls-port",
            str(port),
            "--tls-cert-file",
            str(certificates / "server.crt"),
            "--tls-key-file",
            str(certificates / "server.key"),
            "--tls-ca-cert-file",
            str(certificates / "ca.crt"),
            "--tls-auth-clients",
            "no",
        ),
    )
    try:
        server.start()
    except RuntimeError as exc:
        pytest.skip(f"this redis-server cannot serve TLS: {exc}")
    yield port
    server.stop()


def _start(url, unique_name, **options):
    """Start a broker serving a list at *url*; return how long start() took to fail, and the error."""
    broker = RedisBroker(
        url, poll_interval=POLL_INTERVAL, start_timeout=START_TIMEOUT, **options
    )

    @broker.subscriber(list=unique_name)
    def echo(body):
        return body

    started = time.monotonic()
    try:
        with pytest.raises(RedisConnectionError) as info:
            broker.start()
    finally:
        broker.close()
    return time.monotonic() - started, info.value


def test_tls_server_is_reachable_with_the_right_ca(tls_server, certificates):
    """The fixture works: with the CA that signed the server's certificate, a request goes through."""
    broker = RedisBroker(
        f"rediss://localhost:{tls_server}",
        poll_interval=POLL_INTERVAL,
        ssl_ca_certs=str(certificates / "ca.crt"),
    )
    try:
        assert broker.ping(LONG_TIMEOUT)
    finally:
        broker.close()


def test_wrong_ca_is_named_at_once(tls_server, certificates, unique_name):
    """A server certificate signed by another CA than ssl_ca_certs names fails start() at once with reason "tls", not after start_timeout as unreachable."""
    took, error = _start(
        f"rediss://localhost:{tls_server}",
        unique_name,
        ssl_ca_certs=str(certificates / "other-ca.crt"),
    )
    assert error.reason == "tls"
    assert "ssl_ca_certs" in str(error)
    assert took < PROMPTLY, took


def test_tls_host_name_mismatch_is_named_at_once(tls_server, certificates, unique_name):
    """A certificate not valid for the address connected to fails start() at once with reason "tls", saying so."""
    took, error = _start(
        f"rediss://127.0.0.1:{tls_server}",
        unique_name,
        ssl_ca_certs=str(certificates / "ca.crt"),
    )
    assert error.reason == "tls"
    assert "not valid for the host name" in str(error)
    assert took < PROMPTLY, took


def test_missing_ca_file_is_a_setup_error(certificates):
    """A ssl_ca_certs file that does not exist raises SetupError when the broker is built."""
    missing = certificates / "missing.crt"
    with pytest.raises(SetupError, match="ssl_ca_certs"):
        RedisBroker("rediss://localhost:1", ssl_ca_certs=str(missing))


@pytest.fixture
def full_server(redis_server):
    """A redis-server at its maxclients, held by one client of the test's."""
    server = RedisServer(
        startup_timeout=READY_TIMEOUT, extra_args=("--maxclients", "1")
    )
    server.start()
    holder = redis.Redis.from_url(server.url)
    holder.ping()
    yield server
    holder.close()
    server.stop()


def test_maxclients_reached_is_named_at_once(full_server, unique_name):
    """A Redis that has maxclients clients already fails start() at once with reason "max_clients", not after start_timeout as unreachable."""
    took, error = _start(full_server.url, unique_name)
    assert error.reason == "max_clients"
    assert "maxclients" in str(error)
    assert took < PROMPTLY, took
