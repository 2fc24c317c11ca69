"""TestRedisBroker: a broker's handlers run in memory, with no Redis, no socket and no thread."""

from __future__ import annotations

import logging
import socket
import threading
import time

import attrs
import pytest

from redis_rpc import (
    ListSub,
    Path,
    PubSub,
    RedisBroker,
    RedisMessage,
    RedisResponse,
    RemoteError,
    Response,
    StreamSub,
)
from redis_rpc._wire.glob import glob
from redis_rpc.errors import (
    BrokerClosedError,
    BrokerStateError,
    MessageTooLargeError,
    NoSubscriberError,
    RequestTimeoutError,
    SetupError,
)
from redis_rpc.testing import TestRedisBroker

# Nothing listens on port 1; the socket guard below proves nothing tries.
CLOSED_URL = "redis://127.0.0.1:1/0"
KEY = b"k" * 32
# A request that is not answered fails at once: far sooner than its timeout.
AT_ONCE = 1.0


@attrs.frozen
class Item:
    name: str
    qty: int


@pytest.fixture(autouse=True)
def no_sockets_no_threads(monkeypatch):
    """Fail any attempt to connect anywhere, and any thread left or started."""

    def refuse(*args, **kwargs):
        raise AssertionError("TestRedisBroker opened a connection")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    before = set(threading.enumerate())
    yield
    assert set(threading.enumerate()) == before


@pytest.fixture
def broker():
    return RedisBroker(CLOSED_URL)


def _declare(broker: RedisBroker) -> None:
    @broker.subscriber("total")
    def total(item: Item) -> int:
        return item.qty * 2

    @broker.subscriber(list="boom")
    def boom(body: str) -> None:
        raise KeyError(body)

    @broker.subscriber(stream="headers")
    def headers(body: str, message: RedisMessage) -> Response:
        return Response(
            {"got": body, "sent": dict(message.headers)},
            headers={"x-seen": "yes"},
            correlation_id="from-handler",
        )


class TestReplies:
    def test_typed_body_round_trip(self, broker):
        """A body is structured into the handler's type, and the reply decodes back."""
        _declare(broker)
        with TestRedisBroker(broker) as br:
            reply = br.request(Item("pen", 3), "total")
        assert reply.decode() == 6
        assert reply.decode(int) == 6
        assert reply.content_type == "application/json"

    def test_validation_error_is_remote_error(self, broker):
        """A body that does not fit the handler's type raises RemoteError naming ValidationError."""
        _declare(broker)
        with TestRedisBroker(broker) as br, pytest.raises(RemoteError) as caught:
            br.request({"name": "pen", "qty": "many"}, "total", correlation_id="c-1")
        assert caught.value.type_name == "ValidationError"
        assert caught.value.errors
        assert "qty" in caught.value.errors[0]
        assert caught.value.destination == "channel:total"
        assert caught.value.correlation_id == "c-1"

    def test_rejected_body_is_logged_as_a_short_printable_excerpt(self, broker, caplog):
        """A body that does not fit is logged with the start of the body, escaped and cut short, not with frame bytes."""

        @broker.subscriber(list="numbers")
        def double(n: int) -> int:
            return 2 * n

        body = "not a number, café " + "x" * 100
        with TestRedisBroker(broker) as br, caplog.at_level(logging.WARNING):
            br.publish(body, list="numbers")
        (line,) = [
            r.getMessage() for r in caplog.records if "rejected" in r.getMessage()
        ]
        assert "body 'not a number, caf\\xe9 xxxxxxxxxxxxxxxx'...):" in line
        assert "BIN" not in line

    def test_handler_exception_is_remote_error(self, broker, caplog):
        """A handler that raises gives the caller RemoteError, and is logged as by the real broker."""
        _declare(broker)
        with TestRedisBroker(broker) as br, pytest.raises(RemoteError) as caught:
            br.request("lost", list="boom")
        assert (caught.value.type_name, caught.value.remote_message) == (
            "KeyError",
            "'lost'",
        )
        assert caught.value.traceback is None
        assert "Handler" in caplog.text
        assert "boom" in caplog.text

    def test_tracebacks_when_the_broker_sends_them(self):
        """send_tracebacks=True puts the handler's traceback in the RemoteError."""
        broker = RedisBroker(CLOSED_URL, send_tracebacks=True)
        _declare(broker)
        with TestRedisBroker(broker) as br, pytest.raises(RemoteError) as caught:
            br.request("lost", list="boom")
        assert "KeyError" in (caught.value.traceback or "")

    def test_response_headers_and_correlation_id(self, broker):
        """A returned Response sets the reply's headers and correlation id; user headers reach the handler."""
        _declare(broker)
        with TestRedisBroker(broker) as br:
            reply = br.request(
                "hi", stream="headers", headers={"x-user": "ada"}, correlation_id="c-2"
            )
        assert reply.decode() == {"got": "hi", "sent": {"x-user": "ada"}}
        assert reply.headers == {"x-seen": "yes"}
        assert reply.correlation_id == "from-handler"

    def test_reply_keeps_request_correlation_id(self, broker):
        """Without a Response, the reply carries the request's correlation id."""
        _declare(broker)
        with TestRedisBroker(broker) as br:
            reply = br.request(Item("pen", 1), "total", correlation_id="c-3")
        assert reply.correlation_id == "c-3"

    def test_signed_broker(self):
        """With a signing_key, requests and replies are signed and verified in memory too."""
        broker = RedisBroker(CLOSED_URL, signing_key=KEY)
        _declare(broker)
        with TestRedisBroker(broker) as br:
            assert br.request(Item("pen", 4), "total").decode() == 8
            with pytest.raises(RemoteError):
                br.request("x", list="boom")

    def test_request_too_large(self):
        """max_message_size is checked before anything is handled."""
        broker = RedisBroker(CLOSED_URL, max_message_size=1000)
        _declare(broker)
        with TestRedisBroker(broker) as br:
            with pytest.raises(MessageTooLargeError):
                br.request(Item("x" * 1000, 1), "total")
            assert br.request(Item("x", 1), "total").decode() == 2


class TestRouting:
    def test_publisher_chain(self, broker):
        """@publisher results reach their subscribers in memory, over lists and streams."""
        seen = []

        @broker.subscriber("orders")
        @broker.publisher(list="shipping")
        def order(item: Item) -> Item:
            return attrs.evolve(item, qty=item.qty + 1)

        @broker.subscriber(list="shipping")
        @broker.publisher(stream="audit")
        def ship(item: Item) -> RedisResponse:
            return RedisResponse(f"shipped {item.name}", maxlen=10)

        @broker.subscriber(stream="audit")
        def audit(line: str) -> None:
            seen.append(line)

        with TestRedisBroker(broker) as br:
            reply = br.request(Item("pen", 1), "orders")
            assert reply.decode() == {"name": "pen", "qty": 2}
            assert seen == ["shipped pen"]
            ship.mock.assert_called_once_with({"name": "pen", "qty": 2})

    def test_publish_reply_to(self, broker):
        """publish(reply_to=...) sends the handler's result to that channel's subscribers."""
        seen = []

        @broker.subscriber("double")
        def double(n: int) -> int:
            return 2 * n

        @broker.subscriber("results")
        def results(n: int) -> None:
            seen.append(n)

        with TestRedisBroker(broker) as br:
            br.publish(21, "double", reply_to="results")
        assert seen == [42]

    def test_pattern_channel(self, broker):
        """A pattern subscriber answers requests to every channel it matches."""

        @broker.subscriber(PubSub("logs.*"))
        def log(line: str, message: RedisMessage) -> str:
            return f"{line}!"

        with TestRedisBroker(broker) as br:
            assert br.request("disk full", "logs.error").decode() == "disk full!"
            with pytest.raises(NoSubscriberError):
                br.request("x", "metrics.cpu")

    def test_path_parameters(self, broker):
        """A channel template routes as its pattern, and Path() parameters get their values."""

        @broker.subscriber("logs.{service}.{level}")
        def log(
            line: str, svc: str = Path("service"), level: str = Path()
        ) -> list[str]:
            return [line, svc, level]

        with TestRedisBroker(broker) as br:
            reply = br.request("full", "logs.disk.error")
            assert reply.decode() == ["full", "disk", "error"]
            log.mock.assert_called_once_with("full")

    def test_path_value_that_does_not_fit(self, broker):
        """A path value that does not fit its type fails validation, as on Redis."""

        @broker.subscriber("shard.{n}")
        def shard(body: str, n: int = Path()) -> int:
            return n

        with TestRedisBroker(broker) as br:
            assert br.request("x", "shard.7").decode() == 7
            with pytest.raises(RemoteError) as caught:
                br.request("x", "shard.seven")
        assert caught.value.type_name == "ValidationError"

    def test_escaped_glob_characters(self, broker):
        """Glob characters in a template's fixed text match only themselves."""

        @broker.subscriber("what?.{topic}")
        def what(body: str, topic: str = Path()) -> str:
            return topic

        with TestRedisBroker(broker) as br:
            assert br.request("x", "what?.news").decode() == "news"
            with pytest.raises(NoSubscriberError):
                br.request("x", "whatX.news")

    def test_publish_counts_subscriptions(self, broker):
        """publish() to a channel answers how many subscriptions got it, as Redis does."""
        calls = []

        @broker.subscriber("news.sport")
        def exact(body: str) -> None:
            calls.append(("exact", body))

        @broker.subscriber("news.*")
        def pattern(body: str) -> None:
            calls.append(("pattern", body))

        with TestRedisBroker(broker) as br:
            assert br.publish("goal", "news.sport") == 2
            assert br.publish("rain", "news.weather") == 1
            assert br.publish("x", "other") == 0
        assert sorted(calls) == [
            ("exact", "goal"),
            ("pattern", "goal"),
            ("pattern", "rain"),
        ]

    def test_list_goes_to_one_subscriber(self, broker):
        """An item pushed to a list is handled once, however many subscribers the list has."""
        calls = []

        @broker.subscriber(list="jobs")
        def first(body: int) -> None:
            calls.append(("first", body))

        @broker.subscriber(list="jobs")
        def second(body: int) -> None:
            calls.append(("second", body))

        with TestRedisBroker(broker) as br:
            assert br.publish(1, list="jobs") == 1
        assert len(calls) == 1

    def test_stream_goes_to_each_group_once(self, broker):
        """A stream entry reaches one subscriber per consumer group."""
        calls = []
        for group, tag in (("g1", "a"), ("g1", "b"), ("g2", "c")):

            @broker.subscriber(stream=StreamSub("events", group=group))
            def handle(body: str, tag: str = tag) -> None:
                calls.append(tag)

        with TestRedisBroker(broker) as br:
            entry_id = br.publish("e", stream="events")
        assert calls == ["a", "c"]
        assert isinstance(entry_id, str)
        assert entry_id.partition("-")[0].isdigit()

    def test_unconsumed_list_grows(self, broker):
        """Items pushed to a list nobody consumes stay counted, as RPUSH's answer shows."""
        with TestRedisBroker(broker) as br:
            assert [br.publish(n, list="nobody") for n in range(3)] == [1, 2, 3]

    def test_stream_dead_letter_reaches_its_subscriber(self, broker):
        """A stream entry that fails its last delivery is dead-lettered to a subscriber of that stream."""
        dead = []

        @broker.subscriber(stream=StreamSub("work", max_deliveries=1))
        def work(body: str) -> None:
            raise ValueError(body)

        @broker.subscriber(stream="work:dead")
        def grave(body: str) -> None:
            dead.append(body)

        with TestRedisBroker(broker) as br:
            br.publish("bad", stream="work")
        assert dead == ["bad"]

    def test_publish_handler_error_is_logged_not_raised(self, broker, caplog):
        """A handler failing on a published event is logged, as by the real broker."""

        @broker.subscriber("events")
        def fail(body: str) -> None:
            raise RuntimeError("bad event")

        with caplog.at_level(logging.ERROR), TestRedisBroker(broker) as br:
            assert br.publish("e", "events") == 1
        assert "bad event" in caplog.text


class TestUnanswered:
    def test_channel_without_subscriber(self, broker):
        """A request to a channel nobody subscribes to raises NoSubscriberError at once."""
        with TestRedisBroker(broker) as br, pytest.raises(NoSubscriberError) as caught:
            br.request("x", "nobody", timeout=30)
        assert caught.value.destination == "channel:nobody"

    @pytest.mark.parametrize(
        "target",
        [{"list": "nobody"}, {"stream": "nobody"}, {"channel": "nobody"}],
        ids=["list", "stream", "channel-no-fail-fast"],
    )
    def test_unanswered_times_out_at_once(self, broker, target):
        """A request nobody can answer raises RequestTimeoutError at once, not after its timeout."""
        fail_fast = "channel" not in target
        started = time.monotonic()
        with (
            TestRedisBroker(broker) as br,
            pytest.raises(RequestTimeoutError) as caught,
        ):
            br.request("x", **target, timeout=30, fail_fast=fail_fast)
        assert time.monotonic() - started < AT_ONCE
        assert caught.value.timeout == 30

    def test_handler_without_reply(self, broker):
        """A no_reply subscriber handles the request, and the caller's request times out at once."""

        @broker.subscriber("quiet", no_reply=True)
        def quiet(body: str) -> str:
            return body

        with TestRedisBroker(broker) as br:
            with pytest.raises(RequestTimeoutError):
                br.request("x", "quiet", timeout=30)
            quiet.mock.assert_called_once_with("x")


class TestMocks:
    def test_mock_records_decoded_bodies(self, broker):
        """Each handler's mock is called with every body it received, decoded, valid or not."""

        @broker.subscriber("total")
        def total(item: Item) -> int:
            return item.qty

        with TestRedisBroker(broker) as br:
            br.request(Item("pen", 1), "total")
            with pytest.raises(RemoteError):
                br.request({"qty": "bad"}, "total")
            assert total.mock.call_args_list == [
                (({"name": "pen", "qty": 1},),),
                (({"qty": "bad"},),),
            ]

    def test_mock_method_and_reset(self, broker):
        """mock(handler) gives the same mock; the attribute stops recording on exit and each block starts afresh."""

        @broker.subscriber("echo")
        def echo(body: str) -> str:
            return body

        test_broker = TestRedisBroker(broker)
        with test_broker as br:
            br.publish("one", "echo")
            first = test_broker.mock(echo)
            assert first is echo.mock
            first.assert_called_once_with("one")
        with pytest.raises(BrokerStateError, match="not under a test broker"):
            echo.mock.assert_called_once_with("one")
        assert test_broker.mock(echo) is first  # kept for asserting after the block
        with test_broker:
            assert test_broker.mock(echo) is not first
            echo.mock.assert_not_called()

    def test_mock_of_unknown_handler(self, broker):
        """mock() of a function that is not a handler raises BrokerStateError."""
        with TestRedisBroker(broker) as br, pytest.raises(BrokerStateError):
            TestRedisBroker(br).mock(print)

    def test_bound_method_handler(self, broker):
        """A bound method handles messages; its mock comes from mock(), not an attribute."""

        class Service:
            def handle(self, body: str) -> str:
                return body.upper()

        service = Service()
        broker.subscriber("svc")(service.handle)
        test_broker = TestRedisBroker(broker)
        with test_broker as br:
            assert br.request("a", "svc").decode() == "A"
            test_broker.mock(service.handle).assert_called_once_with("a")


class TestPublisherObject:
    """broker.publisher() returns an object that decorates, publishes, and has a mock, as FastStream's."""

    def test_a_test_written_the_faststream_way(self, broker):
        """Handler and publisher mocks record a request and the result it caused, as in FastStream's testing guide."""
        to_shipping = broker.publisher(list="shipping")

        @broker.subscriber("orders")
        @to_shipping
        def place(order: dict[str, object]) -> dict[str, object]:
            return {**order, "placed": True}

        with TestRedisBroker(broker) as br:
            br.publish({"item": "pen"}, "orders")
            place.mock.assert_called_once_with({"item": "pen"})
            to_shipping.mock.assert_called_once_with({"item": "pen", "placed": True})

    def test_the_decorator_stacks_in_either_order(self, broker):
        """The publisher decorates above or below @broker.subscriber and returns the function unchanged."""
        above, below = broker.publisher("a"), broker.publisher(list="b")

        def first(body: str) -> str:
            return body + "1"

        def second(body: str) -> str:
            return body + "2"

        assert above(broker.subscriber("one")(first)) is first
        assert broker.subscriber("two")(below(second)) is second
        with TestRedisBroker(broker) as br:
            br.publish("x", "one")
            br.publish("y", "two")
            above.mock.assert_called_once_with("x1")
            below.mock.assert_called_once_with("y2")

    def test_publish_reaches_its_destination_and_its_mock(self, broker):
        """publisher.publish() sends to its destination through the broker; its mock records that and broker.publish() there."""
        seen = []

        @broker.subscriber(stream="events")
        def collect(body: object) -> None:
            seen.append(body)

        events = broker.publisher(stream="events")
        with TestRedisBroker(broker) as br:
            entry = events.publish({"n": 1}, headers={"k": "v"})
            br.publish("two", stream="events")
            assert isinstance(entry, str)
            assert seen == [{"n": 1}, "two"]
            assert events.mock.call_args_list == [(({"n": 1},),), (("two",),)]
            collect.mock.assert_called_with("two")

    def test_mocks_are_fresh_in_each_block(self, broker):
        """Each block starts with a fresh publisher mock."""
        out = broker.publisher("out")
        with TestRedisBroker(broker):
            out.publish("one")
            first = out.mock
        with TestRedisBroker(broker):
            assert out.mock is not first
            out.mock.assert_not_called()

    def test_mocks_outside_a_block_say_so(self, broker):
        """Outside a block, a publisher's and a handler's mock raise BrokerStateError saying they are not under a test broker."""
        out = broker.publisher(list="out")

        @broker.subscriber("in")
        def handle(body: str) -> None:
            return None

        with pytest.raises(BrokerStateError, match="not under a test broker"):
            out.mock.assert_called_once_with("x")
        with pytest.raises(BrokerStateError, match="handle is not under a test broker"):
            handle.mock.assert_called_once_with("x")
        with pytest.raises(BrokerStateError, match="not under a test broker"):
            handle.mock("x")
        with TestRedisBroker(broker):
            handle.mock.assert_not_called()
        with pytest.raises(BrokerStateError, match="handle is not under a test broker"):
            handle.mock.assert_not_called()

    def test_decorating_after_start_is_refused(self, broker):
        """A publisher decorates only before start(), as today; publishing through it works any time."""
        out = broker.publisher("out")
        with TestRedisBroker(broker):
            with pytest.raises(SetupError, match="declare publishers before start"):
                out(lambda body: body)
            assert out.publish("x") == 0  # nobody subscribes to the channel
            out.mock.assert_called_once_with("x")


class TestNesting:
    def test_handler_request_is_routed_in_memory(self, broker):
        """A handler's own broker.request() is handled in memory, with the caller's deadline passed on."""
        deadlines = []

        @broker.subscriber("inner")
        def inner(n: int, message: RedisMessage) -> int:
            deadlines.append(message.deadline)
            return n + 1

        @broker.subscriber(list="outer")
        def outer(n: int, message: RedisMessage) -> int:
            deadlines.append(message.deadline)
            return broker.request(n, "inner", timeout=60).decode() * 10

        with TestRedisBroker(broker) as br:
            assert br.request(1, list="outer", timeout=5).decode() == 20
        outer_deadline, inner_deadline = deadlines
        assert outer_deadline is not None
        assert inner_deadline is not None
        assert inner_deadline <= outer_deadline  # not the inner request's own 60 s

    def test_request_to_own_single_worker_subscriber(self, broker):
        """A handler requesting its own single-worker subscriber fails as with the real broker."""

        @broker.subscriber("self")
        def selfish(n: int) -> int:
            return broker.request(n, "self").decode()

        with TestRedisBroker(broker) as br, pytest.raises(RemoteError) as caught:
            br.request(1, "self")
        assert caught.value.type_name == "BrokerStateError"

    def test_request_from_another_thread(self, broker):
        """A request made on another thread inside the block is handled on that thread."""

        @broker.subscriber("where")
        def where(body) -> str:
            return threading.current_thread().name

        results = []
        with TestRedisBroker(broker) as br:
            thread = threading.Thread(
                target=lambda: results.append(br.request(None, "where").decode()),
                name="test-caller",
            )
            thread.start()
            thread.join(AT_ONCE * 5)
        assert results == ["test-caller"]


class TestLifecycle:
    def test_broker_is_new_again_after(self, broker):
        """The block hands back the broker itself, RUNNING inside and NEW after."""
        _declare(broker)
        with TestRedisBroker(broker) as br:
            assert br is broker
            assert repr(broker).startswith("<RedisBroker RUNNING consumers=3")
        assert repr(broker) == "<RedisBroker NEW consumers=0 pending_requests=0>"
        with TestRedisBroker(broker) as br:
            assert br.request(Item("a", 1), "total").decode() == 2

    def test_started_broker_refused(self, broker):
        """A broker that is closed (or started) cannot be tested in memory."""
        broker.close()
        with pytest.raises(BrokerStateError):
            TestRedisBroker(broker).__enter__()

    def test_blocks_do_not_nest(self, broker):
        """A broker already in a block cannot enter a second one."""
        with TestRedisBroker(broker), pytest.raises(BrokerStateError):
            TestRedisBroker(broker).__enter__()

    def test_start_inside_block(self, broker):
        """start() inside the block raises BrokerStateError: the broker already runs."""
        with TestRedisBroker(broker) as br, pytest.raises(BrokerStateError):
            br.start()

    def test_subscriber_inside_block(self, broker):
        """Subscribers cannot be added inside the block, as after start()."""
        with (
            TestRedisBroker(broker) as br,
            pytest.raises(Exception, match="before start"),
        ):
            br.subscriber("late")(print)

    def test_close_inside_block(self, broker):
        """close() inside the block closes the broker for good."""
        _declare(broker)
        with TestRedisBroker(broker) as br:
            br.close()
            with pytest.raises(BrokerClosedError):
                br.request(Item("a", 1), "total")
        with pytest.raises(BrokerClosedError):
            broker.publish("x", "total")

    def test_listsub_options_accepted(self, broker):
        """A reliable list subscriber handles items in memory, and dead-letters failures."""
        dead = []

        @broker.subscriber(list=ListSub("tasks", reliable=True))
        def task(body: str) -> None:
            raise ValueError(body)

        @broker.subscriber(list="tasks:dead")
        def grave(body: str) -> None:
            dead.append(body)

        with TestRedisBroker(broker) as br:
            br.publish("t1", list="tasks")
        assert dead == ["t1"]


@pytest.mark.parametrize(
    ("pattern", "matches", "misses"),
    [
        ("news.*", ["news.", "news.a.b"], ["new", "xnews.a"]),
        ("h?llo", ["hello", "hallo"], ["hllo", "heello"]),
        ("h[ae]llo", ["hello", "hallo"], ["hillo"]),
        ("h[^e]llo", ["hallo"], ["hello"]),
        ("h[a-c]llo", ["hbllo"], ["hdllo"]),
        ("h[c-a]llo", ["hbllo"], ["hdllo"]),
        (r"what\?", ["what?"], ["whatX"]),
        (r"h[\]]", ["h]"], ["h["]),
        ("h[", [], ["h[", "ha"]),
        ("h[ab", ["ha", "hb"], ["h[ab", "hc"]),
        ("h[]", [], ["h", "h]", "ha"]),
        ("a.b+c", ["a.b+c"], ["aXb+c", "a.bbc"]),
    ],
)
def test_glob_follows_redis(pattern, matches, misses):
    """Patterns match channel names by Redis' glob rules, not by regular expressions or fnmatch."""
    for name in matches:
        assert glob(pattern).fullmatch(name), name
    for name in misses:
        assert not glob(pattern).fullmatch(name), name


def test_stats_count_what_the_handlers_did_in_memory():
    """broker.stats() counts in-memory handling as it counts handling over Redis."""
    broker = RedisBroker("redis://127.0.0.1:1/0")

    @broker.subscriber(list="numbers")
    def double(n: int) -> int:
        if n < 0:
            raise ValueError("negative")
        return 2 * n

    with TestRedisBroker(broker) as br:
        assert br.request(2, list="numbers").decode() == 4
        with pytest.raises(RemoteError):
            br.request(-1, list="numbers")
        stats = br.stats()
    served = stats.subscribers["list:numbers"]
    assert (served.received, served.handled, served.failed, served.in_flight) == (
        2,
        1,
        1,
        0,
    )
    assert stats.destinations["list:numbers"].requests == 2


def test_submit_gather_and_stream_run_in_memory():
    """Under TestRedisBroker, a future completes, gather() collects and stream() yields, with no thread."""
    broker = RedisBroker("redis://127.0.0.1:1")

    @broker.subscriber("shops")
    def count(item: str) -> int:
        return len(item)

    @broker.subscriber(list="report")
    def report(rows: int):
        yield from range(rows)

    threads = threading.active_count()
    with TestRedisBroker(broker):
        assert broker.submit("apple", "shops").result(0).decode() == 5
        assert [r.decode() for r in broker.gather("pear", "shops", timeout=1)] == [4]
        assert [r.decode() for r in broker.stream(3, list="report")] == [0, 1, 2]
        assert threading.active_count() == threads
