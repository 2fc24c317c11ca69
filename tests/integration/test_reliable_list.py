"""Reliable list mode: in-flight items survive their consumer and are answered."""

from __future__ import annotations

import pytest

from redis_rpc import ListSub, RedisMessage
from redis_rpc.errors import RemoteError, SetupError
from tests.conftest import LONG_TIMEOUT, POLL_INTERVAL, SHORT_TIMEOUT
from tests.helpers import Callers, wait_for

# Short enough for tests to watch a consumer die, long enough (over six polls) to be allowed.
RECOVER_AFTER = 0.5


def keys(name, kind, consumer=""):
    """The key reliable mode uses for list *name*: consumers, processing or alive."""
    return f"{name}:redis_rpc:{kind}" + (f":{consumer}" if consumer else "")


def reliable(name):
    return ListSub(name, reliable=True, recover_after=RECOVER_AFTER)


def test_round_trip_leaves_nothing_in_flight(make_broker, unique_name, raw):
    """A handled item is gone from the processing list, and the consumer's heartbeat is set."""
    broker = make_broker()

    @broker.subscriber(list=reliable(unique_name))
    def echo(msg):
        return msg

    with broker:
        assert broker.request("hi", list=unique_name, timeout=SHORT_TIMEOUT).decode()
        (member,) = raw.smembers(keys(unique_name, "consumers"))
        member = member.decode()
        assert raw.llen(keys(unique_name, "processing", member)) == 0
        ttl = raw.pttl(keys(unique_name, "alive", member))
        assert 0 < ttl <= RECOVER_AFTER * 1000
        assert raw.llen(unique_name) == 0


def test_default_mode_keeps_no_bookkeeping(make_broker, unique_name, raw):
    """Without reliable=True, consuming a list creates no keys beside it."""
    broker = make_broker()

    @broker.subscriber(list=unique_name)
    def echo(msg):
        return msg

    with broker:
        broker.request("hi", list=unique_name, timeout=SHORT_TIMEOUT)
    assert raw.keys(f"{unique_name}*") == []


def test_dead_consumers_items_are_answered_first(make_broker, unique_name, raw):
    """Items left by a consumer without heartbeat go back to the list's head, in order, and are answered."""
    server, client = make_broker(), make_broker()
    handled = []

    @server.subscriber(list=reliable(unique_name))
    def record(msg):
        handled.append(msg)
        return msg

    with Callers(3) as callers:
        replies = []
        for n in range(3):  # one at a time, so that the list holds them in order
            replies.append(
                callers.submit(
                    client.request, n, list=unique_name, timeout=LONG_TIMEOUT
                )
            )
            assert wait_for(lambda n=n: raw.llen(unique_name) == n + 1)
        # A consumer that took the two oldest and died: no heartbeat key.
        dead = keys(unique_name, "processing", "dead")
        for _ in range(2):
            raw.lmove(unique_name, dead, "LEFT", "LEFT")
        raw.sadd(keys(unique_name, "consumers"), "dead")
        server.start()
        assert [r.result(LONG_TIMEOUT).decode() for r in replies] == [0, 1, 2]
    assert handled == [0, 1, 2]
    assert raw.exists(dead) == 0
    assert b"dead" not in raw.smembers(keys(unique_name, "consumers"))


def test_live_consumers_items_are_left_alone(make_broker, unique_name, raw):
    """A consumer whose heartbeat is fresh keeps its in-flight items."""
    broker = make_broker()

    @broker.subscriber(list=reliable(unique_name))
    def echo(msg):
        return msg

    busy = keys(unique_name, "processing", "busy")
    raw.rpush(busy, b"in flight")
    raw.set(keys(unique_name, "alive", "busy"), 1, px=int(LONG_TIMEOUT * 1000))
    raw.sadd(keys(unique_name, "consumers"), "busy")
    with broker:  # start() recovers before its first fetch
        broker.request("x", list=unique_name, timeout=SHORT_TIMEOUT)
    assert raw.lrange(busy, 0, -1) == [b"in flight"]
    assert b"busy" in raw.smembers(keys(unique_name, "consumers"))


def test_failed_item_is_answered_or_dead_lettered(make_broker, unique_name, raw):
    """A handler failure answers our caller with an error and removes the item; with no
    caller to tell, the item moves to the dead-letter list. Nothing stays in flight."""
    server, client = make_broker(), make_broker()

    @server.subscriber(list=reliable(unique_name))
    def fail(msg):
        raise RuntimeError(f"boom {msg}")

    with server:
        with pytest.raises(RemoteError, match="boom job"):
            client.request("job", list=unique_name, timeout=SHORT_TIMEOUT)
        client.publish("chore", list=unique_name)
        assert wait_for(lambda: raw.llen(f"{unique_name}:dead") == 1)
        [letter] = raw.lrange(f"{unique_name}:dead", 0, -1)
        assert RedisMessage.from_payload(letter).decode() == "chore"
        processing = list(raw.scan_iter(f"{unique_name}:redis_rpc:processing:*"))
        assert all(raw.llen(k) == 0 for k in processing)
    assert raw.llen(unique_name) == 0


def test_recover_after_must_outlast_polls(make_broker, unique_name):
    """A recover_after that a live consumer's polls could outrun raises SetupError."""
    broker = make_broker(poll_interval=POLL_INTERVAL)
    with pytest.raises(SetupError, match="recover_after"):
        broker.subscriber(list=ListSub(unique_name, reliable=True, recover_after=0.1))
