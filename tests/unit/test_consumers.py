"""Consumers and the reply listener over a fake backend: the loop, its workers, its reader, its replies."""

from __future__ import annotations

import logging
import threading
import time

import pytest

from redis_rpc._client.listener import ReplyListener
from redis_rpc._io.commands import Publish
from redis_rpc._io.interfaces import Beat
from redis_rpc._latch import Latch
from redis_rpc._server.fetch import FetchingConsumer
from redis_rpc._server.handler import Handler
from redis_rpc._server.heartbeat import Heartbeat
from redis_rpc._server.lists import ListSource
from redis_rpc._server.model import Policy, Subscriber
from redis_rpc._server.process import Processor
from redis_rpc._wire.message import ACCEPT_ERRORS, RedisMessage, build_frame, kept_key
from redis_rpc._wire.schemas import ListSub
from redis_rpc.errors import RedisConnectionError
from tests.unit.fakes import FakeAdmin, FakeBackend

WAIT = 5.0  # seconds any one wait may take, on a busy machine
POLL = 0.05  # the consumers' poll interval: a stop is noticed this fast


def _until(predicate, timeout=WAIT):
    deadline = time.monotonic() + timeout
    while not (result := predicate()) and time.monotonic() < deadline:
        time.sleep(0.005)
    return result


def _consumer(backend, handler, *, max_workers=1, name="jobs"):
    subscriber = Subscriber(
        ListSub(name), Handler(handler, logging.getLogger("test")), False, max_workers
    )
    source = ListSource(
        ListSub(name), backend, Heartbeat(backend.admin), name=f"redis_rpc:list:{name}"
    )
    processor = Processor(subscriber, Policy(), source, name=f"redis_rpc:list:{name}")
    return FetchingConsumer(processor, source, backend, poll_interval=POLL)


def _replies(backend):
    """The reply channels published to, through the pipe or carried by a read."""
    sent = [c.channel for c in backend.sent if isinstance(c, Publish)]
    sent += [a[1] for a in backend.carried if a[0] == b"PUBLISH"]
    return [channel for channel in sent if channel.startswith(("reply.", "r."))]


def _request(body, n):
    return build_frame(body, correlation_id=str(n), reply_to=f"reply.{n}")


@pytest.fixture
def running():
    """Start a consumer; stop it, bounded, after the test."""
    started = []

    def start(consumer):
        consumer.start()
        started.append(consumer)
        assert consumer.ready.wait(WAIT)
        return consumer

    yield start
    for consumer in started:
        consumer.stop()
        assert consumer.join_reader(WAIT)
        assert consumer.drain(WAIT)


def test_one_worker_handles_in_order_and_replies(running):
    """With max_workers=1 items are handled in list order on the consumer thread, each answered on its reply_to."""
    backend = FakeBackend()
    seen = []

    def echo(body):
        seen.append(body)
        return body

    consumer = running(_consumer(backend, echo))
    backend.push("jobs", *(_request(n, n) for n in range(5)))
    assert _until(lambda: len(seen) == 5)
    assert seen == [0, 1, 2, 3, 4]
    assert _until(lambda: len(_replies(backend)) == 5)
    assert sorted(_replies(backend)) == [f"reply.{n}" for n in range(5)]
    assert set(backend.readers) == {consumer.name}


def test_the_reader_is_only_ever_used_by_the_consumer_thread(running):
    """However long its handlers take, a consumer's reader is read by its own thread alone, one read at a time."""
    backend = FakeBackend()
    release = threading.Event()

    def handler(body):
        if body == "slow":
            release.wait(WAIT)
        return body

    consumer = running(_consumer(backend, handler, max_workers=3))
    backend.push("jobs", _request("slow", 0), *(_request(n, n) for n in range(1, 20)))
    try:
        assert _until(lambda: consumer.processor.counter.snapshot().handled >= 19)
    finally:
        release.set()
    assert _until(lambda: consumer.processor.counter.snapshot().handled == 20)
    assert set(backend.readers) == {consumer.name}
    assert backend.most_reading == 1


def test_never_takes_more_than_its_free_workers(running):
    """While every worker is busy the consumer leaves the list alone."""
    backend = FakeBackend()
    release = threading.Event()
    running(_consumer(backend, lambda body: release.wait(WAIT), max_workers=2))
    try:
        backend.push("jobs", *(_request(n, n) for n in range(5)))
        assert _until(lambda: len(backend.lists["jobs"]) == 3)
        time.sleep(5 * POLL)  # several polls: the consumer must still not take more
        assert len(backend.lists["jobs"]) == 3
    finally:
        release.set()
    assert _until(lambda: not backend.lists["jobs"])


def test_reply_listener_completes_a_request_waiting_on_its_channel():
    """The listener hands a reply to the request waiting on its channel."""
    backend = FakeBackend()
    listener = ReplyListener(backend, cluster=False, poll_interval=POLL)
    listener.start()
    try:
        assert listener.wait_ready(WAIT)
        latch: Latch[bytes] = Latch()
        pending = listener.register("c1", sink=latch)
        reply = build_frame(
            "hi", correlation_id="c1", headers={"x-redis-rpc-nonce": pending.nonce}
        )
        backend.publish(
            pending.channel.encode(), reply, pattern=listener.prefix.encode()
        )
        assert RedisMessage.from_payload(latch.result(WAIT)).decode() == "hi"
        assert not pending.recovered
    finally:
        assert listener.stop(WAIT)


def test_a_reply_published_while_the_subscription_is_lost_is_recovered():
    """A request outlives its lost reply subscription: once subscribed again, the listener takes its reply from the kept key."""
    backend = FakeBackend()
    listener = ReplyListener(backend, cluster=False, poll_interval=POLL)
    listener.start()
    try:
        assert listener.wait_ready(WAIT)
        latch: Latch[bytes] = Latch()
        pending = listener.register("c2", sink=latch)
        backend.set_down(True)
        assert _until(lambda: not listener.ready.is_set())
        with pytest.raises(RedisConnectionError, match="down"):
            listener.register("late")  # new requests fail at once meanwhile
        # The server answers meanwhile: published to nobody, kept under its key.
        key = kept_key(pending.channel)
        assert key is not None
        backend.keys[key] = build_frame(
            "kept", correlation_id="c2", headers={"x-redis-rpc-nonce": pending.nonce}
        )
        backend.set_down(False)
        payload = latch.result(WAIT)
        assert RedisMessage.from_payload(payload).decode() == "kept"
        assert pending.recovered
        assert listener.recovered == 1
    finally:
        assert listener.stop(WAIT)


def test_error_replies_go_only_to_callers_that_accept_them(running):
    """A failing handler answers a redis_rpc caller with an error reply, and a FastStream caller with nothing."""
    backend = FakeBackend()

    def fail(body):
        raise ValueError(body)

    consumer = running(_consumer(backend, fail))
    ours = build_frame(
        "x", correlation_id="1", reply_to="r.1", headers={ACCEPT_ERRORS: "1"}
    )
    theirs = build_frame("y", correlation_id="2", reply_to="r.2")
    backend.push("jobs", ours, theirs)
    assert _until(lambda: consumer.processor.counter.snapshot().failed == 2)
    assert _until(lambda: _replies(backend) == ["r.1"])
    time.sleep(5 * POLL)  # a few more reads: nothing else is sent
    assert _replies(backend) == ["r.1"]


class _Watch:
    """A watch that never relieves by itself: the test calls ``relieve()`` when it chooses."""

    def __init__(self):
        self.watched = []

    def add(self, consumer):
        self.watched.append(consumer)

    def poke(self):
        pass


def test_a_relieved_thread_never_reads_again_even_if_its_handler_returns_meanwhile(
    monkeypatch,
):
    """The stuck handler returns while relieve() is half done: the old thread still never reads, and one thread reads at a time."""
    backend = FakeBackend()
    entered, release = threading.Event(), threading.Event()

    def handler(body):
        if body == "stuck":
            entered.set()
            release.wait(WAIT)
        return body

    watch = _Watch()
    subscriber = Subscriber(
        ListSub("jobs"), Handler(handler, logging.getLogger("test")), False, 3
    )
    source = ListSource(
        ListSub("jobs"), backend, Heartbeat(backend.admin), name="redis_rpc:list:jobs"
    )
    processor = Processor(subscriber, Policy(), source, name="redis_rpc:list:jobs")
    consumer = FetchingConsumer(
        processor, source, backend, poll_interval=POLL, watch=watch
    )
    assert watch.watched == [consumer]
    consumer.start()
    try:
        assert consumer.ready.wait(WAIT)
        stuck_thread = consumer._fetcher
        backend.push("jobs", _request("stuck", 0))
        assert entered.wait(WAIT)
        since = consumer.inline_since
        assert since  # the handler runs inline, on the fetching thread
        reads = len(backend.readers)
        successor = consumer._successor

        def half_done():
            # relieve() holds the role lock here and has not named a
            # successor yet: let the stuck handler return now, and give
            # its thread every chance to read again.
            release.set()
            again = _until(lambda: len(backend.readers) > reads, timeout=0.5)
            assert not again, "the relieved thread read again"
            return successor()

        monkeypatch.setattr(consumer, "_successor", half_done)
        consumer.relieve(since)
        stuck_thread.join(WAIT)
        assert not stuck_thread.is_alive()
        assert consumer._fetcher.name == "redis_rpc:list:jobs#2"
        backend.push("jobs", *(_request(n, n) for n in range(1, 10)))
        assert _until(lambda: processor.counter.snapshot().handled == 10)
        assert backend.most_reading == 1
        assert set(backend.readers) == {"redis_rpc:list:jobs", "redis_rpc:list:jobs#2"}
        assert backend.readers.index("redis_rpc:list:jobs#2") == reads  # the next read
    finally:
        release.set()
        consumer.stop()
        assert consumer.join_reader(WAIT)
        assert consumer.drain(WAIT)


def test_an_overrunning_inline_handler_is_relieved_by_the_watch(running):
    """With a real watch, a handler stuck inline no longer holds up fetching: other messages are answered meanwhile."""
    from redis_rpc._server.watch import Watch

    backend = FakeBackend()
    release = threading.Event()
    watch = Watch()

    def handler(body):
        if body == "stuck":
            release.wait(WAIT)
        return body

    subscriber = Subscriber(
        ListSub("jobs"), Handler(handler, logging.getLogger("test")), False, 2
    )
    source = ListSource(
        ListSub("jobs"), backend, Heartbeat(backend.admin), name="redis_rpc:list:jobs"
    )
    processor = Processor(subscriber, Policy(), source, name="redis_rpc:list:jobs")
    consumer = running(
        FetchingConsumer(processor, source, backend, poll_interval=POLL, watch=watch)
    )
    try:
        backend.push("jobs", _request("stuck", 0))
        assert _until(lambda: consumer.inline_since != 0.0)
        backend.push("jobs", *(_request(n, n) for n in range(1, 4)))
        assert _until(lambda: processor.counter.snapshot().handled == 3)
        assert consumer._fetcher.name.startswith("redis_rpc:list:jobs#")
    finally:
        release.set()
        assert watch.stop(WAIT)


def test_heartbeat_failure_is_a_warning_and_its_recovery_info(caplog):
    """A heartbeat that cannot be refreshed says so once at WARNING, and once at INFO when it can again."""

    class FlakyAdmin(FakeAdmin):
        failures = 0

        def heartbeat(self, beats):
            if self.failures:
                self.failures -= 1
                raise RedisConnectionError("Redis is away.", reason="unreachable")
            super().heartbeat(beats)

    caplog.set_level(logging.INFO, logger="redis_rpc")
    admin = FlakyAdmin()
    heartbeat = Heartbeat(admin)
    heartbeat.register("owner", Beat("alive", 0.03, "registry", "member"))
    admin.failures = 2
    try:
        assert _until(lambda: "refreshed again" in caplog.text)
    finally:
        assert heartbeat.stop(WAIT)
    assert [
        (r.levelno, r.getMessage().split(";")[0])
        for r in caplog.records
        if r.name == "redis_rpc._server.heartbeat"
    ] == [
        (logging.WARNING, "Could not refresh the heartbeat of 1 consumer(s)"),
        (logging.INFO, "Heartbeats are refreshed again"),
    ]
