"""Fixtures for Sentinel tests: a master, its replica and a sentinel, on free loopback ports."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest
import redis

from redis_rpc.testing import RedisServer
from tests.conftest import READY_TIMEOUT

SERVICE = "mymaster"
# A master silent for this long is down for the sentinel: fast, for the tests.
DOWN_AFTER_MS = 1000
# How long the sentinel gives one failover before trying again.
FAILOVER_TIMEOUT_MS = 3000


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class SentinelProcess:
    """One ``redis-server --sentinel`` process, with its own writable config file."""

    def __init__(self, master_port: int, *, quorum: int = 1) -> None:
        self.port = free_port()
        self._dir = tempfile.TemporaryDirectory(prefix="redis_rpc-sentinel-")
        config = Path(self._dir.name) / "sentinel.conf"
        config.write_text(
            f"port {self.port}\n"
            "bind 127.0.0.1\n"
            f"dir {self._dir.name}\n"
            f"sentinel monitor {SERVICE} 127.0.0.1 {master_port} {quorum}\n"
            f"sentinel down-after-milliseconds {SERVICE} {DOWN_AFTER_MS}\n"
            f"sentinel failover-timeout {SERVICE} {FAILOVER_TIMEOUT_MS}\n"
        )
        executable = shutil.which("redis-server")
        assert executable is not None
        self._process: subprocess.Popen[bytes] | None = subprocess.Popen(
            [executable, str(config), "--sentinel"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.client = redis.Redis(port=self.port, socket_timeout=5.0)
        deadline = time.monotonic() + READY_TIMEOUT
        while not _answers(self.client):
            if self._process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                msg = f"The sentinel on port {self.port} did not come up."
                raise RuntimeError(msg)
            time.sleep(0.02)  # polling a child process we cannot wait on otherwise

    def master(self) -> tuple[str, int]:
        """Where this sentinel says the master is."""
        found: Any = self.client.sentinel_get_master_addr_by_name(SERVICE)
        return found[0].decode(), int(found[1])

    def stop(self) -> None:
        self.client.close()
        if self._process is not None:
            self._process.send_signal(signal.SIGTERM)
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait(timeout=10)
            self._process = None
        self._dir.cleanup()


def _answers(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False


@attrs.define
class Topology:
    """A master, a replica of it, and a sentinel watching them."""

    servers: dict[int, RedisServer]  # by port
    sentinel: SentinelProcess

    def url(self, path: str = f"/{SERVICE}/0", scheme: str = "redis+sentinel") -> str:
        return f"{scheme}://127.0.0.1:{self.sentinel.port}{path}"

    def client(self, port: int) -> redis.Redis:
        """A plain client of one server, to be closed by the caller."""
        return redis.Redis(port=port, socket_timeout=5.0)

    def role(self, port: int) -> str:
        with contextlib.closing(self.client(port)) as client:
            return str(client.info("replication")["role"])

    def replica_ready(self) -> bool:
        """Whether the sentinel knows a replica it could promote."""
        try:
            replicas = self.sentinel.client.sentinel_slaves(SERVICE)
        except redis.RedisError:
            return False
        return any(
            r["flags"] == "slave"
            and r.get("master-link-status") == "ok"
            and int(r.get("info-refresh", 10**9)) < 5000
            for r in replicas
        )


def _wait(predicate, what: str) -> None:
    deadline = time.monotonic() + READY_TIMEOUT
    while not predicate():
        if time.monotonic() > deadline:
            msg = f"Timed out waiting until {what}."
            raise RuntimeError(msg)
        time.sleep(0.05)


@contextlib.contextmanager
def topology() -> Iterator[Topology]:
    """Start a master, a replica and a sentinel; stop them all however the block ends."""
    if shutil.which("redis-server") is None:
        if os.environ.get("CI"):
            pytest.fail("redis-server is not on PATH, and CI must not skip these.")
        pytest.skip("redis-server is not on PATH")
    started: list[RedisServer | SentinelProcess] = []
    try:
        master = RedisServer(startup_timeout=READY_TIMEOUT)
        started.append(master)
        master.start()
        replica = RedisServer(
            startup_timeout=READY_TIMEOUT,
            extra_args=("--replicaof", "127.0.0.1", str(master.port)),
        )
        started.append(replica)
        replica.start()
        result = Topology({master.port: master, replica.port: replica}, None)  # type: ignore[arg-type]
        # Started once the replica is attached, so that the sentinel's first
        # look at the master finds it, rather than its next one in 10 s.
        _wait(
            lambda: (
                result.role(replica.port) == "slave" and _link_up(result, replica.port)
            ),
            "the replica is in sync",
        )
        result.sentinel = SentinelProcess(master.port)
        started.append(result.sentinel)
        _wait(result.replica_ready, "the sentinel knows the replica")
        yield result
    finally:
        for process in reversed(
            started
        ):  # the sentinel first: no failover on the way out
            process.stop()


def _link_up(result: Topology, port: int) -> bool:
    with contextlib.closing(result.client(port)) as client:
        return client.info("replication").get("master_link_status") == "up"


@pytest.fixture(scope="module")
def sentinel_topology() -> Iterator[Topology]:
    """A topology shared by a module's tests, which must leave the roles as they are."""
    with topology() as started:
        yield started


@pytest.fixture
def fresh_topology() -> Iterator[Topology]:
    """A topology of its own, for a test that fails the master over."""
    with topology() as started:
        yield started
