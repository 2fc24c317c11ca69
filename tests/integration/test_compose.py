"""Calls that compose: submit() futures, gather() from every subscriber, stream() of a generator handler."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from concurrent.futures import as_completed, wait
from pathlib import Path

import faststream.redis
import pytest

from redis_rpc import RedisMessage
from redis_rpc.errors import (
    BrokerClosedError,
    NoSubscriberError,
    RemoteError,
    RequestTimeoutError,
    SetupError,
)
from tests.conftest import LONG_TIMEOUT, READY_TIMEOUT, SHORT_TIMEOUT
from tests.helpers import OutputLines, wait_for
from tests.integration.test_interop_faststream import run_async

ROOT = Path(__file__).resolve().parents[2]


class TestSubmit:
    def test_one_thread_keeps_forty_requests_in_flight_on_eight_workers(
        self, make_broker, unique_name
    ):
        """40 submit()s return before any handler finishes, and eight handlers run at once.

        (benchmarks/compose.py times the same: 40 calls of 0.2 s on 8 workers.)
        """
        submitted = threading.Event()
        eight = threading.Barrier(8, timeout=LONG_TIMEOUT)
        server = make_broker()

        @server.subscriber(list=unique_name, max_workers=8)
        def work(n: int) -> int:
            assert submitted.wait(LONG_TIMEOUT)  # no reply before the last submit()
            eight.wait()  # eight handlers running together, else BrokenBarrierError
            return n * 2

        client = make_broker()
        with server, client:
            futures = [
                client.submit(n, list=unique_name, timeout=LONG_TIMEOUT)
                for n in range(40)
            ]
            assert not any(future.done() for future in futures)
            submitted.set()
            done, _ = wait(futures, timeout=LONG_TIMEOUT)
            assert len(done) == 40
            assert [f.result().decode() for f in futures] == [2 * n for n in range(40)]
            assert [f.result().decode() for f in as_completed(futures, 1.0)]

    def test_a_cancelled_future_tells_the_handler_and_stops_waiting(
        self, make_broker, unique_name
    ):
        """future.cancel() before the reply sets the handler's msg.cancelled; the reply is dropped."""
        entered, cancelled = threading.Event(), threading.Event()
        server = make_broker()

        @server.subscriber(list=unique_name)
        def long(body: str, msg: RedisMessage) -> str:
            entered.set()
            if msg.cancelled.wait(LONG_TIMEOUT):
                cancelled.set()
            return body

        client = make_broker()
        with server, client:
            future = client.submit("x", list=unique_name, timeout=LONG_TIMEOUT)
            assert entered.wait(LONG_TIMEOUT)
            assert future.cancel()
            assert cancelled.wait(SHORT_TIMEOUT)
            assert client._listener is not None
            assert wait_for(lambda: client._listener.pending == 0)
            stats = client.stats().destinations[f"list:{unique_name}"]
            assert stats.failed == {"cancelled": 1}

    def test_a_future_raises_what_request_would(self, make_broker, unique_name):
        """A handler's exception is the future's RemoteError; no reply by the timeout, its RequestTimeoutError."""
        server = make_broker()

        @server.subscriber(list=unique_name)
        def fail(body: str) -> None:
            raise ValueError(body)

        client = make_broker()
        with server, client:
            failed = client.submit("bad", list=unique_name, timeout=LONG_TIMEOUT)
            silent = client.submit("x", list=f"{unique_name}:nobody", timeout=0.2)
            with pytest.raises(RemoteError) as caught:
                failed.result(LONG_TIMEOUT)
            assert caught.value.type_name == "ValueError"
            with pytest.raises(RequestTimeoutError):
                silent.result(LONG_TIMEOUT)
            nobody = client.submit("x", f"{unique_name}:none", timeout=LONG_TIMEOUT)
            assert isinstance(nobody.exception(LONG_TIMEOUT), NoSubscriberError)

    def test_closing_the_broker_fails_the_futures_still_waiting(
        self, make_broker, unique_name
    ):
        """close() completes every pending future with BrokerClosedError; none is left hanging."""
        client = make_broker()
        futures = [
            client.submit(n, list=unique_name, timeout=LONG_TIMEOUT) for n in range(3)
        ]
        client.close()
        for future in futures:
            assert isinstance(future.exception(SHORT_TIMEOUT), BrokerClosedError)
        with pytest.raises(BrokerClosedError):
            client.submit("x", list=unique_name)

    def test_a_reply_faster_than_submit_itself_is_not_lost(
        self, make_broker, unique_name
    ):
        """Many quick calls: every future completes, whatever the order of reply and return."""
        server = make_broker()

        @server.subscriber(unique_name, max_workers=4)
        def echo(n: int) -> int:
            return n

        client = make_broker()
        with server, client:
            futures = [
                client.submit(n, unique_name, timeout=LONG_TIMEOUT) for n in range(300)
            ]
            done, _ = wait(futures, timeout=LONG_TIMEOUT)
            assert len(done) == 300
            assert sorted(f.result().decode() for f in futures) == list(range(300))


class GatherServer:
    """A ``tests.integration.gather_server`` process answering after *delay* seconds."""

    def __init__(self, redis_url: str, channel: str, delay: float) -> None:
        self.popen = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.integration.gather_server",
                redis_url,
                channel,
                str(delay),
            ],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.lines = OutputLines(self.popen.stdout, "gather_server")  # type: ignore[arg-type]

    def wait_ready(self) -> None:
        assert self.lines.next(READY_TIMEOUT) == "ready"

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(LONG_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.popen.kill()
        self.popen.wait(LONG_TIMEOUT)
        self.lines.close()


@pytest.fixture
def gather_servers(redis_url, unique_name):
    """Start gather servers with the given delays on unique_name; stop them all at the end."""
    started: list[GatherServer] = []

    def start(*delays: float) -> list[GatherServer]:
        servers = [GatherServer(redis_url, unique_name, d) for d in delays]
        started.extend(servers)
        for server in servers:
            server.wait_ready()
        return servers

    yield start
    for server in started:
        server.stop()


@pytest.mark.timeout(60)
class TestGather:
    def test_a_slow_subscriber_is_left_out_at_the_timeout(
        self, make_broker, gather_servers, unique_name
    ):
        """Four processes, one slow: the three quick replies come back at the 1.5 s timeout."""
        servers = gather_servers(0, 0, 0, 20)
        client = make_broker()
        started = time.monotonic()
        replies = client.gather("hi", unique_name, timeout=1.5)
        elapsed = time.monotonic() - started
        assert elapsed >= 1.5  # it waited for the fourth
        pids = {reply.decode()["pid"] for reply in replies}
        assert pids == {server.popen.pid for server in servers[:3]}
        assert all(reply.decode()["body"] == "hi" for reply in replies)

    def test_returns_as_soon_as_every_subscriber_answered(
        self, make_broker, gather_servers, unique_name
    ):
        """Four quick processes: four replies, long before the timeout."""
        servers = gather_servers(0, 0, 0, 0)
        client = make_broker()
        started = time.monotonic()
        replies = client.gather("hi", unique_name, timeout=LONG_TIMEOUT)
        assert time.monotonic() - started < LONG_TIMEOUT
        assert {r.decode()["pid"] for r in replies} == {s.popen.pid for s in servers}

    def test_an_error_reply_is_returned_with_the_others(self, make_broker, unique_name):
        """One subscriber raising does not fail the gather: its reply carries the RemoteError."""
        server, other = make_broker(), make_broker()

        @server.subscriber(unique_name)
        def good(body: str) -> str:
            return body

        @other.subscriber(unique_name)
        def bad(body: str) -> str:
            raise KeyError(body)

        client = make_broker()
        with server, other, client:
            replies = client.gather("x", unique_name, timeout=LONG_TIMEOUT)
        errors = [r.remote_error for r in replies if r.remote_error is not None]
        assert len(replies) == 2
        assert [e.type_name for e in errors] == ["KeyError"]
        assert [r.decode() for r in replies if r.remote_error is None] == ["x"]

    def test_nobody_subscribed_is_an_empty_list_at_once(self, make_broker, unique_name):
        """A channel nobody listens on gives no replies, without waiting for the timeout."""
        client = make_broker()
        assert client.gather("x", unique_name, timeout=LONG_TIMEOUT) == []

    def test_only_a_channel_and_a_positive_timeout(self, make_broker, unique_name):
        """gather() refuses a list or stream, and a timeout it could never reach."""
        client = make_broker()
        from redis_rpc import ListSub

        with pytest.raises(SetupError, match="Use request"):
            client.gather("x", ListSub(unique_name), timeout=1.0)
        with pytest.raises(SetupError, match="positive timeout"):
            client.gather("x", unique_name, timeout=0)


class TestStream:
    def test_items_arrive_in_order_each_as_soon_as_it_is_produced(
        self, make_broker, unique_name
    ):
        """Five items, in order; the handler makes each only after the caller got the last."""
        got = [threading.Event() for _ in range(5)]
        server = make_broker()

        @server.subscriber(list=unique_name)
        def count(n: int):
            for i in range(n):
                if i:  # the caller must have had item i - 1 already
                    assert got[i - 1].wait(LONG_TIMEOUT)
                yield {"i": i}

        client = make_broker()
        with server, client:
            items = []
            for reply in client.stream(5, list=unique_name, timeout=LONG_TIMEOUT):
                items.append(reply.decode()["i"])
                got[items[-1]].set()
        assert items == [0, 1, 2, 3, 4]

    @pytest.mark.parametrize("transport", ["list", "stream", "channel"])
    def test_an_exception_after_three_items_is_raised_after_them(
        self, make_broker, unique_name, transport
    ):
        """The caller gets three items, then the handler's exception as RemoteError."""
        server = make_broker()
        target = (
            {"channel": unique_name}
            if transport == "channel"
            else {transport: unique_name}
        )

        @server.subscriber(**target)
        def three(body: str):
            yield from ("a", "b", "c")
            raise RuntimeError("no fourth")

        client = make_broker()
        items = []

        def read() -> None:
            for reply in client.stream("x", **target, timeout=LONG_TIMEOUT):
                items.append(reply.decode())

        with server, client, pytest.raises(RemoteError) as caught:
            read()
        assert items == ["a", "b", "c"]
        assert caught.value.type_name == "RuntimeError"
        assert "no fourth" in caught.value.remote_message

    def test_closing_the_iterator_cancels_the_handler(self, make_broker, unique_name):
        """A caller that stops after one item sets msg.cancelled; the generator is closed."""
        cancelled, closed = threading.Event(), threading.Event()
        server = make_broker()

        @server.subscriber(list=unique_name)
        def endless(body: str, msg: RedisMessage):
            try:
                for i in range(1_000_000):
                    yield i
                    if msg.cancelled.wait(0.01):
                        cancelled.set()
                        return
            finally:
                closed.set()

        client = make_broker()
        with server, client:
            items = client.stream("x", list=unique_name, timeout=LONG_TIMEOUT)
            assert next(items).decode() == 0
            items.close()
            assert cancelled.wait(SHORT_TIMEOUT)
            assert closed.wait(SHORT_TIMEOUT)
            assert wait_for(lambda: client._listener.pending == 0)

    def test_the_timeout_bounds_the_wait_for_each_item(self, make_broker, unique_name):
        """An item that does not come within the timeout raises RequestTimeoutError, after the ones that came."""
        release = threading.Event()
        server = make_broker()

        @server.subscriber(list=unique_name)
        def stuck(body: str):
            yield 1
            release.wait(LONG_TIMEOUT)
            yield 2

        client = make_broker()
        with server, client:
            items = client.stream("x", list=unique_name, timeout=0.5)
            assert next(items).decode() == 1
            with pytest.raises(RequestTimeoutError, match="No item 1"):
                next(items)
            release.set()

    def test_a_plain_handler_streams_its_one_reply(self, make_broker, unique_name):
        """stream() to a handler that returns a value yields that value, once."""
        server = make_broker()

        @server.subscriber(list=unique_name)
        def plain(body: str) -> str:
            return body.upper()

        client = make_broker()
        with server, client:
            replies = list(client.stream("x", list=unique_name, timeout=LONG_TIMEOUT))
        assert [r.decode() for r in replies] == ["X"]

    def test_request_gets_every_item_as_one_list(self, make_broker, unique_name):
        """request() to a generator handler gets one reply: the list of its items."""
        server = make_broker()

        @server.subscriber(list=unique_name)
        def count(n: int):
            yield from range(n)

        client = make_broker()
        with server, client:
            reply = client.request(4, list=unique_name, timeout=LONG_TIMEOUT)
        assert reply.decode() == [0, 1, 2, 3]

    def test_a_faststream_caller_gets_every_item_as_one_list(
        self, make_broker, redis_url, unique_name
    ):
        """FastStream's request() to a generator handler gets the list of its items."""
        server = make_broker()

        @server.subscriber(list=unique_name)
        def count(n: int):
            yield from range(n)

        server.start()

        async def call() -> object:
            async with faststream.redis.RedisBroker(redis_url) as client:
                response = await client.request(
                    3, list=unique_name, timeout=LONG_TIMEOUT
                )
                return await response.decode()

        try:
            assert run_async(call()) == [0, 1, 2]
        finally:
            server.close()

    def test_nobody_on_the_channel_raises_at_once(self, make_broker, unique_name):
        """stream() to a channel nobody listens on raises NoSubscriberError, as request() does."""
        client = make_broker()
        with pytest.raises(NoSubscriberError):
            next(client.stream("x", unique_name, timeout=LONG_TIMEOUT))


def test_submit_gather_and_stream_mix_on_one_listener(make_broker, unique_name):
    """The three share the one reply listener: a gather and a stream while futures wait."""
    server = make_broker()

    @server.subscriber(unique_name, max_workers=4)
    def handle(n: int):
        return n

    @server.subscriber(list=unique_name)
    def items(n: int):
        yield from range(n)

    client = make_broker()
    with server, client:
        futures = [
            client.submit(n, unique_name, timeout=LONG_TIMEOUT) for n in range(10)
        ]
        assert [
            r.decode() for r in client.gather(7, unique_name, timeout=LONG_TIMEOUT)
        ] == [7]
        assert [r.decode() for r in client.stream(3, list=unique_name)] == [0, 1, 2]
        done, _ = wait(futures, timeout=LONG_TIMEOUT)
        assert sorted(f.result().decode() for f in done) == list(range(10))
