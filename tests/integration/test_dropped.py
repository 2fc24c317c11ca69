"""Channel messages dropped by a subscriber that fell behind are counted, in stats() and by the Prometheus hook."""

from __future__ import annotations

import threading

import pytest
from prometheus_client import CollectorRegistry

from redis_rpc._server import channels
from redis_rpc.prometheus import PrometheusHook
from tests.conftest import LONG_TIMEOUT
from tests.helpers import wait_for

# Small, so that a flood of a few dozen messages overflows it.
QUEUE_LIMIT = 10
FLOOD = 50


@pytest.fixture
def small_queues(monkeypatch):
    monkeypatch.setattr(channels, "QUEUE_LIMIT", QUEUE_LIMIT)


def test_overflow_drops_are_counted_in_stats_and_prometheus(
    small_queues, make_broker, raw, unique_name
):
    """A flood on a channel whose handler is stuck counts every message dropped, in stats() and in faststream_received_messages_dropped_total."""
    registry = CollectorRegistry()
    broker = make_broker(hooks=[PrometheusHook(registry)])
    release = threading.Event()
    started = threading.Event()

    @broker.subscriber(unique_name)
    def stuck(body):
        started.set()
        release.wait(LONG_TIMEOUT)

    with broker:
        raw.publish(unique_name, b"first")
        assert started.wait(LONG_TIMEOUT)
        for n in range(FLOOD):
            raw.publish(unique_name, str(n).encode())
        expected = FLOOD - QUEUE_LIMIT  # the first is in the handler, ten wait

        def dropped():
            return broker.stats().subscribers[f"channel:{unique_name}"].dropped

        assert wait_for(lambda: dropped() == expected, LONG_TIMEOUT), dropped()
        release.set()
        assert wait_for(
            lambda: (
                broker.stats().subscribers[f"channel:{unique_name}"].handled
                == 1 + QUEUE_LIMIT
            ),
            LONG_TIMEOUT,
        )
    stats = broker.stats().subscribers[f"channel:{unique_name}"]
    assert (stats.received, stats.dropped) == (1 + QUEUE_LIMIT, expected)
    assert registry.get_sample_value(
        "faststream_received_messages_dropped_total",
        {"app_name": "faststream", "broker": "redis", "handler": unique_name},
    ) == float(expected)
