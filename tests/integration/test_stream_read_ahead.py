"""A stream consumer with one worker reads ahead while its handlers are quick: entries stay pending, are handled in order, and a slow handler stops it."""

from __future__ import annotations

import threading

from redis_rpc import StreamSub
from redis_rpc._server.fetch import READ_AHEAD
from tests.conftest import LONG_TIMEOUT, SHORT_TIMEOUT
from tests.helpers import wait_for

ITEMS = 40
GROUP = "g"


def test_quick_handlers_take_several_entries_per_read_in_order(
    make_broker, raw, unique_name
):
    """Queued entries are read up to READ_AHEAD at a time and handled in order; each stays pending until its ack."""
    server = make_broker()
    handled: list[int] = []
    pending_seen: list[int] = []

    @server.subscriber(stream=StreamSub(unique_name, group=GROUP))
    def handle(n: int) -> None:
        pending_seen.append(raw.xpending(unique_name, GROUP)["pending"])
        handled.append(n)

    client = make_broker()
    for n in range(ITEMS):  # queued before the group's first read
        client.publish(n, stream=unique_name)
    with server:
        assert wait_for(lambda: len(handled) == ITEMS, LONG_TIMEOUT)
        assert wait_for(lambda: raw.xpending(unique_name, GROUP)["pending"] == 0)
    assert handled == list(range(ITEMS))
    # Entries read with the one being handled waited, pending, behind it.
    assert max(pending_seen) > 1
    assert max(pending_seen) <= READ_AHEAD


def test_a_slow_handler_takes_one_entry_at_a_time(make_broker, raw, unique_name):
    """Once its handlers are typically slow, a one-worker consumer leaves the rest in the stream."""
    server = make_broker()
    started = threading.Semaphore(0)
    release = threading.Event()

    @server.subscriber(stream=StreamSub(unique_name, group=GROUP))
    def handle(n: int) -> None:
        started.release()
        if n > 0:
            release.wait(LONG_TIMEOUT)
        else:
            release.wait(0.05)  # slow, so that the next read takes one

    with server:
        client = make_broker()
        client.publish(0, stream=unique_name)
        assert started.acquire(timeout=SHORT_TIMEOUT)
        for n in range(1, ITEMS):
            client.publish(n, stream=unique_name)
        try:
            assert started.acquire(timeout=SHORT_TIMEOUT)
            assert raw.xpending(unique_name, GROUP)["pending"] == 1
        finally:
            release.set()
