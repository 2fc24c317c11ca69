"""Fixtures for fault tests: a redis-server of their own, and server processes."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import pytest
import redis

from redis_rpc.testing import RedisServer
from tests.conftest import LONG_TIMEOUT, READY_TIMEOUT
from tests.helpers import OutputLines

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def own_server(redis_server):
    """A redis-server for this test alone, which it may kill and restart on the same port.

    Depends on redis_server only for its check that redis-server exists.
    """
    server = RedisServer(startup_timeout=READY_TIMEOUT)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def raw(own_server):
    """A plain redis-py client, for looking behind the broker; it reconnects after restarts."""
    client = redis.Redis.from_url(own_server.url)
    yield client
    client.close()


class ServerProcess:
    """A running ``tests.fault.server``; a daemon thread collects what it prints."""

    def __init__(self, url: str, mode: str, name: str) -> None:
        self.popen = subprocess.Popen(
            [sys.executable, "-m", "tests.fault.server", url, mode, name],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            text=True,
        )
        self._lines = OutputLines(self.popen.stdout, f"tests.fault.server {mode}")  # type: ignore[arg-type]

    def read_line(self, timeout: float = READY_TIMEOUT) -> str:
        """The next line the process printed, waiting at most *timeout* seconds.

        The default is sized for the slowest wait, the process starting up on
        a busy machine; it only matters when the test is failing anyway.
        """
        return self._lines.next(timeout)

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
        self.popen.wait(LONG_TIMEOUT)
        self._lines.close()  # the reader sees the end of output once the process is gone


@pytest.fixture
def start_process(own_server):
    """Start ``tests.fault.server`` processes; kill any left at the end."""
    processes: list[ServerProcess] = []

    def start(mode: str, name: str) -> ServerProcess:
        process = ServerProcess(own_server.url, mode, name)
        processes.append(process)
        return process

    yield start
    for process in processes:
        process.stop()


def our_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name.startswith("redis_rpc:")}
