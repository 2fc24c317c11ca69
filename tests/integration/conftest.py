"""Fixtures shared by the integration tests."""

from __future__ import annotations

import pytest
import redis


@pytest.fixture
def raw(redis_url):
    """A plain redis-py client on the private server, for looking behind the broker."""
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()
