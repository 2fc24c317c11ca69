"""Waiting helpers for integration tests: polls with deadlines, never bare sleeps."""

from __future__ import annotations

import time
from typing import Any

from redis_rpc import RedisBroker
from redis_rpc.errors import NoSubscriberError, RedisConnectionError
from tests.conftest import LONG_TIMEOUT, SHORT_TIMEOUT


def wait_for(predicate, timeout=SHORT_TIMEOUT, interval=0.01):
    """Poll *predicate* until it is true or *timeout* passes; return its last value."""
    deadline = time.monotonic() + timeout
    while not (result := predicate()) and time.monotonic() < deadline:
        time.sleep(interval)
    return result


def request_eventually(broker: RedisBroker, body: Any, **target: Any) -> Any:
    """Retry a request while the broker recovers from losing Redis; return the decoded reply."""
    deadline = time.monotonic() + LONG_TIMEOUT
    # The listener and consumers back off, so the first tries may fail, and a
    # channel consumer may not have subscribed again yet (NoSubscriberError).
    while True:
        try:
            return broker.request(body, **target, timeout=SHORT_TIMEOUT).decode()
        except (RedisConnectionError, NoSubscriberError, TimeoutError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
