"""Shared fixtures: a private redis-server per session, unique names, thread-leak checks."""

from __future__ import annotations

import os
import shutil
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from redis_rpc import RedisBroker
from redis_rpc.testing import RedisServer

# How long tests wait for something that should happen at once, and for
# something slow (a poll interval or two). Never a bare sleep.
SHORT_TIMEOUT = 2.0
LONG_TIMEOUT = 10.0
# How long a freshly started process (a Python interpreter importing redis_rpc,
# or a redis-server) may take to say it is ready. Starting one costs far more
# CPU than anything else a test waits for, so on a machine busy with other
# suites it is the first wait to run out: a bound of its own, and a generous one.
READY_TIMEOUT = 30.0
# pytest-timeout limit for a test that starts processes: room for its
# readiness waits on top of the 30 s default.
PROCESS_TEST_TIMEOUT = 120
# Test brokers poll fast, so that close() returns quickly.
POLL_INTERVAL = 0.05

_INTEGRATION = Path(__file__).parent / "integration"
_FAULT = Path(__file__).parent / "fault"


def _rank(item: pytest.Item) -> int:
    """0 for unit tests, 1 for integration tests, 2 for fault tests."""
    parents = Path(item.fspath).parents
    if _FAULT in parents:
        return 2
    return 1 if _INTEGRATION in parents else 0


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        rank = _rank(item)
        if rank >= 1:  # fault tests use real servers too, so are also integration tests
            item.add_marker(pytest.mark.integration)
        if rank == 2:
            item.add_marker(pytest.mark.fault)
    # The fast tests first, the ones that kill, restart and fork processes last,
    # so that a quick failure shows at once. The sort is stable: within a rank,
    # files and tests keep pytest's order.
    items.sort(key=_rank)


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """A private redis-server for the whole session, on a free loopback port."""
    if shutil.which("redis-server") is None:
        if os.environ.get("CI"):
            pytest.fail(
                "redis-server is not on PATH, and CI must not skip integration tests."
            )
        pytest.skip("redis-server is not on PATH")
    server = RedisServer(startup_timeout=READY_TIMEOUT)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    return redis_server.url


@pytest.fixture
def unique_name() -> str:
    """A key, channel or stream name no other test uses."""
    return f"t-{uuid.uuid4().hex}"


@pytest.fixture
def make_broker(redis_url: str) -> Iterator[type[RedisBroker]]:
    """Build brokers on the private server that are closed after the test."""
    brokers: list[RedisBroker] = []

    def make(**options: object) -> RedisBroker:
        options.setdefault("poll_interval", POLL_INTERVAL)
        broker = RedisBroker(redis_url, **options)  # type: ignore[arg-type]
        brokers.append(broker)
        return broker

    yield make  # type: ignore[misc]
    for broker in brokers:
        broker.close()


def _our_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name.startswith("redis_rpc:")}


@pytest.fixture(autouse=True)
def no_thread_leaks(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fail an integration test that leaves a redis_rpc thread running."""
    before = _our_threads()
    yield
    if "integration" not in request.keywords:
        return
    deadline = time.monotonic() + SHORT_TIMEOUT
    for thread in _our_threads() - before:
        thread.join(max(0.0, deadline - time.monotonic()))
    leaked = sorted(t.name for t in _our_threads() - before)
    assert not leaked, f"threads left running: {leaked}"
