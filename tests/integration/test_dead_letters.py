"""Streams retry failed entries by claiming them, then set them aside in a dead-letter stream."""

from __future__ import annotations

import threading

import pytest

from redis_rpc import StreamSub
from redis_rpc._wire.codec import MAGIC
from redis_rpc.errors import RemoteError
from tests.conftest import LONG_TIMEOUT, SHORT_TIMEOUT
from tests.helpers import wait_for

CLAIM_IDLE_TIME = 0.1  # seconds; small, so that retries come quickly


def dead_letters(raw, stream):
    return [fields for _, fields in raw.xrange(f"{stream}:dead")]


def test_failing_entry_is_retried_then_dead_lettered(make_broker, unique_name, raw):
    """An entry whose handler keeps raising is delivered max_deliveries times, then moved,
    with its frame and the error, to the dead-letter stream, and acknowledged."""
    broker = make_broker()
    calls = []

    @broker.subscriber(
        stream=StreamSub(unique_name, claim_idle_time=CLAIM_IDLE_TIME, max_deliveries=3)
    )
    def handle(body):
        calls.append(body)
        raise KeyError(body)

    with broker:
        broker.publish("order-7", stream=unique_name)
        assert wait_for(lambda: dead_letters(raw, unique_name), LONG_TIMEOUT)
        assert calls == ["order-7"] * 3
    [letter] = dead_letters(raw, unique_name)
    assert letter[b"error"] == b"KeyError: 'order-7'"
    assert letter[b"deliveries"] == b"3"
    assert letter[b"stream"] == unique_name.encode()
    assert letter[b"group"] == b"redis_rpc"
    [(entry_id, entry)] = raw.xrange(unique_name)
    assert letter[b"entry_id"] == entry_id
    assert letter[b"__data__"] == entry[b"__data__"]  # can be replayed as it is
    assert raw.xpending(unique_name, "redis_rpc")["pending"] == 0


def test_entry_that_fails_once_succeeds_on_retry(make_broker, unique_name, raw):
    """A transient failure is retried through a claim, and the retry's success acks the entry."""
    broker = make_broker()
    calls = []
    done = threading.Event()

    @broker.subscriber(stream=StreamSub(unique_name, claim_idle_time=CLAIM_IDLE_TIME))
    def handle(body):
        calls.append(body)
        if len(calls) == 1:
            raise ConnectionError("database restarting")
        done.set()

    with broker:
        broker.publish("x", stream=unique_name)
        assert done.wait(LONG_TIMEOUT)
        assert wait_for(lambda: raw.xpending(unique_name, "redis_rpc")["pending"] == 0)
    assert calls == ["x", "x"]
    assert dead_letters(raw, unique_name) == []


def test_without_claiming_a_failure_is_dead_lettered_at_once(
    make_broker, unique_name, raw
):
    """With claim_idle_time=None nothing would ever retry, so a failed entry moves at once."""
    broker = make_broker()

    @broker.subscriber(stream=StreamSub(unique_name, claim_idle_time=None))
    def handle(body):
        raise ValueError("no")

    with broker:
        broker.publish(1, stream=unique_name)
        assert wait_for(lambda: dead_letters(raw, unique_name))
    [letter] = dead_letters(raw, unique_name)
    assert letter[b"deliveries"] == b"1"
    assert raw.xpending(unique_name, "redis_rpc")["pending"] == 0


def test_unreadable_entry_is_dead_lettered_without_retry(
    make_broker, unique_name, raw, caplog
):
    """A broken frame is never handed to the handler: it is logged once and moved at
    once, and the consumer goes on with the next entry."""
    broker = make_broker()
    bodies = []

    @broker.subscriber(stream=StreamSub(unique_name, claim_idle_time=CLAIM_IDLE_TIME))
    def handle(body):
        bodies.append(body)
        return body

    broken = MAGIC + b"\x00\x01\x00\x00\x00\x12\x00\x00\xff\xff"  # body past the end
    with broker:
        raw.xadd(unique_name, {"__data__": broken})
        assert (
            broker.request("next", stream=unique_name, timeout=SHORT_TIMEOUT).decode()
            == "next"
        )
        assert wait_for(lambda: dead_letters(raw, unique_name))
    assert bodies == ["next"]
    [letter] = dead_letters(raw, unique_name)
    assert letter[b"__data__"] == broken
    assert letter[b"error"].startswith(b"MessageDecodeError: ")
    rejected = [r for r in caplog.records if "rejected" in r.getMessage()]
    assert len(rejected) == 1
    assert "entry " in rejected[0].getMessage()  # says which entry, to find it again


def test_failed_request_from_our_caller_is_answered_and_acked(
    make_broker, unique_name, raw
):
    """When the caller gets an error reply, the entry is acknowledged: retrying it
    would do work nobody waits for."""
    broker = make_broker()
    calls = []

    @broker.subscriber(stream=StreamSub(unique_name, claim_idle_time=CLAIM_IDLE_TIME))
    def handle(body):
        calls.append(body)
        raise RuntimeError("out of stock")

    with broker:
        with pytest.raises(RemoteError, match="out of stock"):
            broker.request("sku", stream=unique_name, timeout=SHORT_TIMEOUT)
        assert wait_for(lambda: raw.xpending(unique_name, "redis_rpc")["pending"] == 0)
    assert calls == ["sku"]
    assert dead_letters(raw, unique_name) == []


def test_claims_skip_entries_deleted_while_pending(make_broker, unique_name, raw):
    """A pending entry deleted from the stream is acknowledged away, not handled, when claimed."""
    raw.xgroup_create(unique_name, "redis_rpc", id="$", mkstream=True)
    raw.xadd(unique_name, {"__data__": b"gone"})
    [[_, [(entry_id, _)]]] = raw.xreadgroup(
        "redis_rpc", "dead-consumer", {unique_name: ">"}
    )
    raw.xdel(unique_name, entry_id)
    broker = make_broker()
    bodies = []

    @broker.subscriber(stream=StreamSub(unique_name, claim_idle_time=CLAIM_IDLE_TIME))
    def handle(body):
        bodies.append(body)
        return body

    with broker:
        assert wait_for(
            lambda: raw.xpending(unique_name, "redis_rpc")["pending"] == 0,
            LONG_TIMEOUT,
        )
        assert (
            broker.request("live", stream=unique_name, timeout=SHORT_TIMEOUT).decode()
            == "live"
        )
    assert bodies == ["live"]
