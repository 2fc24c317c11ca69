"""ListSub(prefetch=k): a list consumer reads ahead of its free workers, in order, where the user said so."""

from __future__ import annotations

import threading

import pytest

from redis_rpc import ListSub
from redis_rpc.errors import SetupError
from tests.conftest import LONG_TIMEOUT, SHORT_TIMEOUT
from tests.helpers import wait_for

ITEMS = 20


def test_a_single_worker_takes_several_items_per_read_and_keeps_their_order(
    make_broker, raw, unique_name
):
    """With prefetch=8 and one worker, queued items leave the list in batches and are handled in order."""
    server = make_broker()
    handled: list[int] = []
    release = threading.Event()
    first = threading.Event()

    @server.subscriber(list=ListSub(unique_name, prefetch=8))
    def handle(n: int) -> None:
        if not first.is_set():
            first.set()
            release.wait(LONG_TIMEOUT)  # hold the only worker with the first item
        handled.append(n)

    client = make_broker()
    for n in range(ITEMS):
        client.publish(n, list=unique_name)
    with server:
        assert first.wait(SHORT_TIMEOUT)
        # The first read took up to 8 while the one worker was still free:
        # the list is shorter than without read-ahead (which takes one).
        assert raw.llen(unique_name) <= ITEMS - 2
        release.set()
        assert wait_for(lambda: len(handled) == ITEMS, LONG_TIMEOUT)
    assert handled == list(range(ITEMS))


def test_without_prefetch_a_busy_worker_leaves_items_in_redis(
    make_broker, raw, unique_name
):
    """The default takes no more than the free workers: one item out while the worker is busy."""
    server = make_broker()
    release = threading.Event()
    started = threading.Event()

    @server.subscriber(list=unique_name)
    def handle(n: int) -> None:
        started.set()
        release.wait(LONG_TIMEOUT)

    client = make_broker()
    for n in range(ITEMS):
        client.publish(n, list=unique_name)
    with server:
        try:
            assert started.wait(SHORT_TIMEOUT)
            assert raw.llen(unique_name) == ITEMS - 1
        finally:
            release.set()


def test_prefetch_with_several_workers_never_runs_more_than_max_workers(
    make_broker, unique_name
):
    """Items read ahead wait for a slot: at most max_workers handlers run at once."""
    server = make_broker()
    lock = threading.Lock()
    running = [0]
    most = [0]
    done = threading.Semaphore(0)

    @server.subscriber(list=ListSub(unique_name, prefetch=10), max_workers=2)
    def handle(n: int) -> None:
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        threading.Event().wait(0.01)  # slow enough to go to the workers
        with lock:
            running[0] -= 1
        done.release()

    client = make_broker()
    for n in range(ITEMS):
        client.publish(n, list=unique_name)
    with server:
        for _ in range(ITEMS):
            assert done.acquire(timeout=LONG_TIMEOUT)
    assert most[0] <= 2


def test_prefetch_is_refused_with_reliable_lists():
    """A reliable list moves one item at a time."""
    with pytest.raises(SetupError, match="prefetch"):
        ListSub("x", reliable=True, prefetch=2)
    with pytest.raises(SetupError):
        ListSub("x", prefetch=0)


@pytest.mark.timeout(60)
def test_items_read_ahead_are_all_handled_by_close(make_broker, raw, unique_name):
    """Items taken out ahead of the workers are handled before close() returns, none lost."""
    server = make_broker()
    handled: list[int] = []
    lock = threading.Lock()

    @server.subscriber(list=ListSub(unique_name, prefetch=ITEMS), max_workers=2)
    def handle(n: int) -> None:
        threading.Event().wait(0.02)  # slow enough to go to the workers
        with lock:
            handled.append(n)

    client = make_broker()
    for n in range(ITEMS):
        client.publish(n, list=unique_name)
    server.start()
    assert wait_for(lambda: raw.llen(unique_name) == 0, LONG_TIMEOUT)
    server.close()
    assert sorted(handled) == list(range(ITEMS))
