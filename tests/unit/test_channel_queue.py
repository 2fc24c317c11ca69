"""A channel subscriber's own queue: order, its worker limit, and dropping the oldest when full."""

from __future__ import annotations

import logging

import pytest

from redis_rpc._server import channels as _channel
from redis_rpc._server.channels import ChannelConsumer, ChannelHub
from redis_rpc._server.handler import Handler
from redis_rpc._server.model import Policy, Subscriber
from redis_rpc._server.process import Processor
from redis_rpc._wire.message import build_frame
from redis_rpc._wire.schemas import PubSub
from tests.unit.fakes import FakeBackend


class FakePool:
    """Keeps submitted turns, to be run by the test when it chooses."""

    def __init__(self):
        self.turns = []

    def submit(self, work):
        self.turns.append(work)

    def run_all(self):
        while self.turns:
            self.turns.pop(0)()


@pytest.fixture
def make_consumer():
    # no_reply: nothing is sent.
    connection = FakeBackend()
    hub = ChannelHub(connection, poll_interval=0.1, max_workers=1)
    hub.pool = FakePool()  # type: ignore[assignment]

    def make(max_workers=1):
        seen: list[object] = []
        handler = Handler(seen.append, logging.getLogger("test"))
        subscriber = Subscriber(PubSub("c"), handler, True, max_workers)
        processor = Processor(subscriber, Policy(), name="redis_rpc:channel:c")
        consumer = ChannelConsumer(processor, connection, poll_interval=0.1, hub=hub)
        return consumer, hub.pool, seen

    return make


def frame(n):
    return build_frame(n, correlation_id=str(n))


def test_one_turn_at_a_time_keeps_order(make_consumer):
    """With max_workers=1 only one turn is on the pool at a time, and it handles messages in arrival order."""
    consumer, pool, seen = make_consumer()
    for n in range(5):
        consumer.deliver(frame(n))
    assert len(pool.turns) == 1
    pool.run_all()
    assert seen == [0, 1, 2, 3, 4]


def test_turns_never_exceed_max_workers(make_consumer):
    """A subscriber with max_workers=3 has at most three turns on the shared pool."""
    consumer, pool, seen = make_consumer(max_workers=3)
    for n in range(10):
        consumer.deliver(frame(n))
    assert len(pool.turns) == 3
    pool.run_all()
    assert sorted(seen) == list(range(10))


def test_full_queue_drops_oldest_and_warns_once_per_episode(
    make_consumer, monkeypatch, caplog
):
    """A full queue drops its oldest messages with one warning, and says once when it caught up."""
    monkeypatch.setattr(_channel, "QUEUE_LIMIT", 3)
    caplog.set_level(logging.INFO, logger="redis_rpc")
    consumer, pool, seen = make_consumer()
    for n in range(10):
        consumer.deliver(frame(n))
    behind = [r for r in caplog.records if "falling behind" in r.getMessage()]
    assert len(behind) == 1
    pool.run_all()
    assert seen == [7, 8, 9]
    assert [
        (r.levelno, r.getMessage())
        for r in caplog.records
        if "caught up" in r.getMessage()
    ] == [(logging.INFO, "redis_rpc:channel:c caught up after dropping 7 message(s)")]
    assert behind[0].levelno == logging.WARNING


def test_queue_bounded_in_bytes(make_consumer, monkeypatch):
    """Queued bytes are bounded too, but the newest message is always kept."""
    monkeypatch.setattr(_channel, "QUEUE_BYTES", 1)
    consumer, pool, seen = make_consumer()
    for n in range(4):
        consumer.deliver(frame(n))
    pool.run_all()
    assert seen == [3]


def test_stop_drops_queued_messages(make_consumer):
    """After stop() queued messages are dropped and new ones refused."""
    consumer, pool, seen = make_consumer()
    consumer.deliver(frame(1))
    consumer.stop()
    consumer.deliver(frame(2))
    pool.run_all()
    assert seen == []
    assert consumer.drain(0.1)
