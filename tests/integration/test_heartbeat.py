"""Heartbeats come from a thread of their own: a long handler does not make its consumer look dead."""

from __future__ import annotations

import threading

from redis_rpc import ListSub
from tests.conftest import LONG_TIMEOUT, SHORT_TIMEOUT
from tests.helpers import wait_for

# Short enough for tests to watch a consumer die, long enough (over six polls) to be allowed.
RECOVER_AFTER = 0.5


def test_long_inline_handler_keeps_its_reliable_list_item(make_broker, unique_name):
    """With max_workers=1, a reliable-list handler running for many recover_after
    periods keeps its item: another consumer does not recover and handle it again."""
    source = ListSub(unique_name, reliable=True, recover_after=RECOVER_AFTER)
    busy, other = make_broker(), make_broker()
    started, release = threading.Event(), threading.Event()
    replies, stolen = [], []

    @busy.subscriber(list=source, max_workers=1)
    def slow(body):
        started.set()
        release.wait(LONG_TIMEOUT)
        return "slow"

    @other.subscriber(list=source)
    def fast(body):
        stolen.append(body)
        return "fast"

    def call():
        replies.append(busy.request("x", list=unique_name, timeout=LONG_TIMEOUT))

    with busy:
        caller = threading.Thread(target=call)
        caller.start()
        assert started.wait(SHORT_TIMEOUT)
        with other:  # it looks for dead consumers on start and every recover_after
            assert not wait_for(lambda: stolen, 6 * RECOVER_AFTER)
            release.set()
            caller.join(LONG_TIMEOUT)
    assert [reply.decode() for reply in replies] == ["slow"]
    assert stolen == []
