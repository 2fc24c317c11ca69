"""Load shedding: a full list or stream refuses at once, and so does a server that could not answer in time."""

from __future__ import annotations

import threading
import time

import pytest

from redis_rpc import ListSub, StreamSub
from redis_rpc.errors import OverloadedError
from tests.conftest import LONG_TIMEOUT, SHORT_TIMEOUT
from tests.helpers import Callers, wait_for

QUEUED = 3


@pytest.mark.parametrize("transport", ["list", "stream"])
def test_a_full_queue_refuses_at_once_while_the_queued_are_served(
    make_broker, raw, unique_name, transport
):
    """With max_queued requests waiting, the next request fails with OverloadedError at once; those queued are answered."""
    kind = ListSub if transport == "list" else StreamSub
    target = {transport: kind(unique_name, max_queued=QUEUED)}
    entered, release = threading.Event(), threading.Event()
    server = make_broker()

    @server.subscriber(**target)
    def handle(body: int) -> int:
        entered.set()
        release.wait(LONG_TIMEOUT)
        return body

    client = make_broker()
    with server, client, Callers(QUEUED + 1) as callers:
        busy = callers.submit(client.request, 0, **target, timeout=LONG_TIMEOUT)
        assert entered.wait(LONG_TIMEOUT)  # the handler holds the first one
        queued = [
            callers.submit(client.request, n, **target, timeout=LONG_TIMEOUT)
            for n in range(1, QUEUED + 1)
        ]
        waiting = (
            (lambda: raw.llen(unique_name))
            if transport == "list"
            else (lambda: raw.xinfo_groups(unique_name)[0]["lag"])
        )
        assert wait_for(lambda: waiting() == QUEUED)
        started = time.monotonic()
        with pytest.raises(OverloadedError) as info:
            client.request(99, **target, timeout=LONG_TIMEOUT)
        assert time.monotonic() - started < 0.5
        assert info.value.queued == QUEUED
        assert info.value.retry_after is not None
        with pytest.raises(OverloadedError):
            client.publish(98, **target)
        release.set()
        assert busy.result(LONG_TIMEOUT).decode() == 0
        assert [q.result(LONG_TIMEOUT).decode() for q in queued] == [1, 2, 3]
    assert client.stats().destinations[f"{transport}:{unique_name}"].failed == {
        "overloaded": 1
    }


def test_a_server_sheds_a_request_it_could_not_answer_in_time(make_broker, unique_name):
    """A request whose caller stops waiting before the handler's typical run time is refused at once, with that time as the hint."""
    target = {"list": ListSub(unique_name, max_queued=100)}
    server = make_broker()

    @server.subscriber(**target)
    def slow(body: str) -> str:
        time.sleep(0.3)
        return body

    client = make_broker()
    with server, client:
        assert (
            client.request("first", **target, timeout=LONG_TIMEOUT).decode() == "first"
        )
        started = time.monotonic()
        with pytest.raises(OverloadedError) as info:
            client.request("hurried", **target, timeout=0.15)
        assert time.monotonic() - started < 0.15
        assert info.value.retry_after == pytest.approx(0.3, abs=0.2)
        counts = server.stats().subscribers[f"list:{unique_name}"]
        assert (counts.handled, counts.shed) == (1, 1)
        # Time enough: served.
        assert (
            client.request("patient", **target, timeout=SHORT_TIMEOUT).decode()
            == "patient"
        )


def test_a_queue_without_max_queued_never_refuses(make_broker, raw, unique_name):
    """Without max_queued, requests queue however long the list is."""
    client = make_broker()
    raw.rpush(unique_name, *[b"x"] * 50)
    with client:
        assert client.publish("more", list=unique_name) == 51
