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
# Test brokers poll fast, so that close() returns quickly.
POLL_INTERVAL = 0.05

_INTEGRATION = Path(__file__).parent / "integration"
_FAULT = Path(__file__).parent / "fault"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        parents = Path(item.fspath).parents
        if _INTEGRATION in parents:
            item.add_marker(pytest.mark.integration)
        if _FAULT in parents:  # real servers too, so also integration tests
            item.add_marker(pytest.mark.integration)
            item.add_marker(pytest.mark.fault)


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """A private redis-server for the whole session, on a free loopback port."""
    if shutil.which("redis-server") is None:
        if os.environ.get("CI"):
            pytest.fail(
                "redis-server is not on PATH, and CI must not skip integration tests."
            )
        pytest.skip("redis-server is not on PATH")
    server = RedisServer()
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
