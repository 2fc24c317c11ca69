"""RedisBroker against a real redis-server: requests, replies, workers, lifecycle."""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import TimeoutError as FutureTimeoutError

import pytest

from redis_rpc import (
    ListSub,
    PubSub,
    RedisBroker,
    RedisMessage,
    RedisResponse,
    StreamSub,
)
from redis_rpc._wire.codec import encode_frame
from redis_rpc.errors import (
    BrokerClosedError,
    BrokerStateError,
    RedisConnectionError,
    RemoteError,
    RequestTimeoutError,
    SetupError,
)
from tests.conftest import LONG_TIMEOUT, POLL_INTERVAL, SHORT_TIMEOUT
from tests.helpers import Callers, wait_for

TRANSPORTS = ["channel", "list", "stream"]


class TestRequest:
    @pytest.mark.parametrize(
        "body", ["text", b"\x00\xffbytes", {"a": [1, 2.5, None]}, 42, None]
    )
    def test_bodies_round_trip(self, make_broker, unique_name, body):
        """Each kind of body comes back as it was sent, by its content type."""
        broker = make_broker()

        @broker.subscriber(list=unique_name)
        def echo(msg):
            return msg

        with broker:
            reply = broker.request(body, list=unique_name, timeout=SHORT_TIMEOUT)
        assert reply.decode() == (b"" if body is None else body)

    def test_handler_sees_headers_and_message(self, make_broker, unique_name):
        """A RedisMessage parameter carries user headers apart from protocol fields."""
        broker = make_broker()

        @broker.subscriber(channel=unique_name)
        def handle(body: bytes, message: RedisMessage):
            return {
                "body": body.decode(),
                "headers": dict(message.headers),
                "correlation_id": message.correlation_id,
                "reply_to_set": bool(message.reply_to),
                "content_type": message.content_type,
            }

        with broker:
            reply = broker.request(
                "hi", channel=unique_name, headers={"k": "v"}, correlation_id="cid-1"
            )
        assert reply.decode() == {
            "body": "hi",
            "headers": {"k": "v"},
            "correlation_id": "cid-1",
            "reply_to_set": True,
            "content_type": "text/plain",
        }
        assert reply.correlation_id == "cid-1"

    def test_timeout_is_prompt_and_leaves_nothing_behind(
        self, make_broker, unique_name
    ):
        """A request nobody answers raises RequestTimeoutError on time and forgets itself."""
        broker = make_broker()
        with broker:
            started = time.monotonic()
            with pytest.raises(RequestTimeoutError) as info:
                broker.request("x", list=unique_name, timeout=0.2)
            elapsed = time.monotonic() - started
            assert isinstance(info.value, TimeoutError)
            assert info.value.destination == f"list:{unique_name}"
            assert info.value.timeout == 0.2
            assert elapsed < 0.2 + SHORT_TIMEOUT
            assert "pending_requests=0" in repr(broker)

    def test_late_reply_is_dropped(self, make_broker, unique_name, raw):
        """A reply that arrives after its timeout is dropped, and the next request works."""
        server, client = make_broker(), make_broker()
        release = threading.Event()

        @server.subscriber(list=unique_name)
        def slow(msg):
            if msg == "slow":
                release.wait(LONG_TIMEOUT)
            return msg

        with server, client:
            with pytest.raises(RequestTimeoutError):
                client.request("slow", list=unique_name, timeout=0.1)
            release.set()
            assert (
                client.request("fast", list=unique_name, timeout=SHORT_TIMEOUT).decode()
                == "fast"
            )
            assert "pending_requests=0" in repr(client)

    @pytest.mark.parametrize("kind", TRANSPORTS)
    def test_replaced_correlation_id_still_reaches_caller(
        self, make_broker, unique_name, kind
    ):
        """Replies are routed by reply channel, so a handler may change the correlation id."""
        broker = make_broker(max_workers=4)

        @broker.subscriber(**{kind: unique_name})
        def handle(msg):
            return RedisResponse(msg, correlation_id="same-for-all")

        with broker, Callers(8) as callers:
            bodies = [f"m{i}" for i in range(40)]
            replies = list(
                callers.map(
                    lambda b: broker.request(
                        b, **{kind: unique_name}, timeout=LONG_TIMEOUT
                    ),
                    bodies,
                )
            )
        assert [r.decode() for r in replies] == bodies
        assert {r.correlation_id for r in replies} == {"same-for-all"}

    def test_one_broker_shared_by_many_threads(self, make_broker, unique_name, raw):
        """Sixteen threads share one broker; each gets its own replies over one subscription."""
        broker = make_broker(max_workers=4)

        @broker.subscriber(stream=unique_name)
        def double(n):
            return n * 2

        def call(i):
            return [
                broker.request(
                    i * 100 + j, stream=unique_name, timeout=LONG_TIMEOUT
                ).decode()
                for j in range(10)
            ]

        with broker:
            clients_before = len(raw.client_list())
            with Callers(16) as pool:
                results = list(pool.map(call, range(16)))
            assert results == [
                [(i * 100 + j) * 2 for j in range(10)] for i in range(16)
            ]
            pubsub_clients = [
                c for c in raw.client_list() if c["cmd"] in ("psubscribe", "subscribe")
            ]
            # One pattern subscription for all 160 requests, however many threads asked.
            assert sum(int(c["psub"]) for c in pubsub_clients) == 1
            assert len(raw.client_list()) <= clients_before + 16

    def test_request_without_start(self, make_broker, unique_name):
        """A client-only broker needs no start(): the reply listener starts on first use."""
        server, client = make_broker(), make_broker()

        @server.subscriber(channel=unique_name)
        def echo(msg):
            return msg

        with server:
            assert (
                client.request(
                    "lazy", channel=unique_name, timeout=SHORT_TIMEOUT
                ).decode()
                == "lazy"
            )
            client.close()

    def test_close_fails_waiting_request(self, make_broker, unique_name):
        """Closing the broker wakes a caller still waiting with BrokerClosedError."""
        broker = make_broker()
        broker.start()
        with Callers(1) as pool:
            waiting = pool.submit(
                broker.request, "x", list=unique_name, timeout=LONG_TIMEOUT
            )
            assert wait_for(lambda: "pending_requests=1" in repr(broker))
            broker.close()
            with pytest.raises(BrokerClosedError):
                waiting.result(SHORT_TIMEOUT)


class TestServing:
    def test_publish_reply_to_sends_result_to_channel(
        self, make_broker, unique_name, raw
    ):
        """publish(reply_to=x) makes the handler's result go to channel x."""
        broker = make_broker()

        @broker.subscriber(list=unique_name)
        def upper(msg):
            return msg.upper()

        results = raw.pubsub()
        results.subscribe(f"{unique_name}-out")
        assert results.get_message(timeout=SHORT_TIMEOUT)["type"] == "subscribe"
        with broker:
            broker.publish("abc", list=unique_name, reply_to=f"{unique_name}-out")
            message = wait_for(lambda: results.get_message(timeout=0.1))
        results.close()
        assert RedisMessage.from_payload(message["data"]).decode() == "ABC"

    @pytest.mark.parametrize("order", ["publisher-inside", "publisher-outside"])
    def test_publisher_decorator_forwards_result(
        self, make_broker, unique_name, raw, order
    ):
        """@broker.publisher sends the handler's result on, stacked in either order."""
        broker = make_broker()
        out = f"{unique_name}-out"

        def handle(msg):
            return RedisResponse(f"got {msg}", headers={"h": "1"})

        if order == "publisher-inside":
            broker.subscriber(list=unique_name)(broker.publisher(list=out)(handle))
        else:
            broker.publisher(list=out)(broker.subscriber(list=unique_name)(handle))

        with broker:
            assert (
                broker.request("a", list=unique_name, timeout=SHORT_TIMEOUT).decode()
                == "got a"
            )
        forwarded = RedisMessage.from_payload(raw.lpop(out))
        assert (forwarded.decode(), forwarded.headers) == ("got a", {"h": "1"})

    def test_redis_response_maxlen_trims_stream_publisher(
        self, make_broker, unique_name, raw
    ):
        """RedisResponse(maxlen=n) trims a stream the result is published to."""
        broker = make_broker()
        out = f"{unique_name}-out"

        @broker.subscriber(list=unique_name, no_reply=True)
        @broker.publisher(stream=out)
        def handle(msg):
            return RedisResponse(msg, maxlen=10)

        with broker:
            for i in range(300):
                broker.publish(i, list=unique_name)
            assert wait_for(lambda: raw.llen(unique_name) == 0, LONG_TIMEOUT)
            assert wait_for(
                lambda: raw.xrevrange(out, count=1)[0][1][b"__data__"].endswith(b"299"),
                LONG_TIMEOUT,
            )
        # MAXLEN ~ trims whole macro nodes (100 entries by default), so "about 10".
        assert raw.xlen(out) < 200

    def test_pattern_channel(self, make_broker, unique_name):
        """A channel name with * subscribes by pattern."""
        broker = make_broker()

        @broker.subscriber(channel=f"{unique_name}.*")
        def handle(msg):
            return msg

        with broker:
            assert (
                broker.request(
                    "p", channel=f"{unique_name}.info", timeout=SHORT_TIMEOUT
                ).decode()
                == "p"
            )

    @pytest.mark.parametrize(
        ("fault", "logged"),
        [
            (ValueError("boom"), ValueError),
            (SystemExit(3), SystemExit),
            ("return", TypeError),  # a result that cannot be encoded
        ],
    )
    def test_failed_message_keeps_consumer_alive(
        self, make_broker, unique_name, caplog, fault, logged
    ):
        """A handler that raises (even SystemExit) or returns what cannot be sent is logged, the caller gets RemoteError, and the next message is served."""
        broker = make_broker()

        @broker.subscriber(list=unique_name)
        def handle(msg):
            if msg != "bad":
                return msg
            if fault == "return":
                return object()
            raise fault

        with broker:
            with pytest.raises(RemoteError) as raised:
                broker.request("bad", list=unique_name, timeout=SHORT_TIMEOUT)
            assert raised.value.type_name == logged.__name__
            assert (
                broker.request("ok", list=unique_name, timeout=SHORT_TIMEOUT).decode()
                == "ok"
            )
        errors = [r for r in caplog.records if r.levelname == "ERROR"]
        assert len(errors) == 1
        assert errors[0].exc_info[0] is logged

    def test_workers_run_concurrently(self, make_broker, unique_name):
        """With max_workers=n, n handlers of one subscriber run at the same time."""
        broker = make_broker()
        barrier = threading.Barrier(3, timeout=LONG_TIMEOUT)

        @broker.subscriber(list=unique_name, max_workers=3)
        def handle(msg):
            barrier.wait()
            return msg

        with broker, Callers(3) as callers:
            replies = callers.map(
                lambda i: broker.request(i, list=unique_name, timeout=LONG_TIMEOUT),
                range(3),
            )
            assert sorted(r.decode() for r in replies) == [0, 1, 2]

    def test_consumer_pops_no_more_than_workers(self, make_broker, unique_name, raw):
        """A list consumer leaves messages in Redis while all its workers are busy."""
        broker = make_broker()
        release = threading.Event()
        started = threading.Semaphore(0)

        @broker.subscriber(list=unique_name, max_workers=2)
        def handle(msg):
            started.release()
            release.wait(LONG_TIMEOUT)

        with broker:
            for i in range(5):
                broker.publish(i, list=unique_name)
            assert started.acquire(timeout=SHORT_TIMEOUT)
            assert started.acquire(timeout=SHORT_TIMEOUT)
            # Both workers are busy; give the consumer a few polls to (wrongly) pop more.
            assert not started.acquire(timeout=5 * POLL_INTERVAL)
            assert raw.llen(unique_name) == 3
            release.set()
            assert wait_for(lambda: raw.llen(unique_name) == 0)

    def test_list_is_fifo(self, make_broker, unique_name):
        """Items pushed to a list are handled in order with one worker."""
        broker = make_broker()
        seen = []
        done = threading.Event()

        @broker.subscriber(list=unique_name)
        def handle(n):
            seen.append(n)
            if n == 49:
                done.set()

        for i in range(50):
            broker.publish(i, list=unique_name)
        with broker:
            assert done.wait(LONG_TIMEOUT)
        assert seen == list(range(50))

    def test_stream_group_shares_work_and_acks(self, make_broker, unique_name, raw):
        """Two servers in one consumer group answer each request once and ack every entry."""
        handled = []
        servers = [make_broker(), make_broker()]
        for server in servers:

            @server.subscriber(stream=unique_name)
            def handle(msg, _server=server):
                handled.append((id(_server), msg))
                return msg

        client = make_broker()
        for server in servers:
            server.start()
        with client:
            replies = [
                client.request(i, stream=unique_name, timeout=SHORT_TIMEOUT).decode()
                for i in range(30)
            ]
        assert replies == list(range(30))
        assert sorted(msg for _, msg in handled) == list(range(30))
        assert raw.xpending(unique_name, "redis_rpc")["pending"] == 0
        consumers = raw.xinfo_consumers(unique_name, "redis_rpc")
        assert len(consumers) == 2

    def test_stream_handler_error_leaves_entry_pending(
        self, make_broker, unique_name, raw
    ):
        """A stream entry whose handler raised is not acknowledged."""
        broker = make_broker()
        done = threading.Event()

        @broker.subscriber(stream=StreamSub(unique_name, group="g1"))
        def handle(msg):
            done.set()
            raise RuntimeError("no")

        with broker:
            broker.publish("x", stream=unique_name)
            assert done.wait(SHORT_TIMEOUT)
            assert wait_for(lambda: raw.xpending(unique_name, "g1")["pending"] == 1)

    def test_foreign_payloads_are_handled(self, make_broker, unique_name, raw):
        """Legacy JSON envelopes, raw bytes and stream entries without __data__ reach handlers."""
        broker = make_broker()
        seen = []
        done = threading.Semaphore(0)

        @broker.subscriber(list=unique_name)
        @broker.subscriber(stream=f"{unique_name}-s")
        def handle(msg, message: RedisMessage):
            seen.append((msg, dict(message.headers)))
            done.release()

        with broker:
            raw.rpush(
                unique_name, json.dumps({"data": "legacy", "headers": {"k": "v"}})
            )
            assert done.acquire(timeout=SHORT_TIMEOUT)
            raw.rpush(unique_name, b"plain")
            assert done.acquire(timeout=SHORT_TIMEOUT)
            raw.rpush(
                unique_name,
                encode_frame(b"\x00", {"content-type": "application/octet-stream"}),
            )
            assert done.acquire(timeout=SHORT_TIMEOUT)
            raw.xadd(f"{unique_name}-s", {"a": "1", "b": "2"})
            assert done.acquire(timeout=SHORT_TIMEOUT)
        assert seen == [
            (b"legacy", {"k": "v"}),  # no content type and not JSON: bytes
            (b"plain", {}),
            (b"\x00", {}),
            ({"a": "1", "b": "2"}, {}),
        ]


class TestLifecycle:
    def test_no_thread_survives_close(self, make_broker, unique_name):
        """After close() no thread of the broker is alive, workers included."""
        broker = make_broker()

        @broker.subscriber(channel=unique_name, max_workers=3)
        @broker.subscriber(list=unique_name, max_workers=3)
        @broker.subscriber(stream=f"{unique_name}-s")
        def echo(msg):
            return msg

        broker.start()
        for kind, name in zip(
            TRANSPORTS, [unique_name, unique_name, f"{unique_name}-s"], strict=True
        ):
            broker.request("x", **{kind: name}, timeout=SHORT_TIMEOUT)
        ours = [t for t in threading.enumerate() if t.name.startswith("redis_rpc:")]
        assert {t.name for t in ours} >= {
            "redis_rpc:replies",
            "redis_rpc:channels",  # the reader shared by channel subscribers
            "redis_rpc:channels:worker_0",
            f"redis_rpc:list:{unique_name}",
            f"redis_rpc:stream:{unique_name}-s",
        }
        broker.close()
        assert [t.name for t in ours if t.is_alive()] == []

    def test_state_machine(self, make_broker, unique_name):
        """start() twice is refused, close() is idempotent, and sending after close() fails."""
        broker = make_broker()
        assert repr(broker).startswith("<RedisBroker NEW")
        broker.start()
        assert repr(broker).startswith("<RedisBroker RUNNING")
        with pytest.raises(BrokerStateError):
            broker.start()
        with pytest.raises(SetupError):
            broker.subscriber(list=unique_name)(lambda m: m)
        broker.close()
        broker.close()
        assert repr(broker).startswith("<RedisBroker CLOSED")
        with pytest.raises(BrokerClosedError):
            broker.publish("x", list=unique_name)
        with pytest.raises(BrokerClosedError):
            broker.request("x", list=unique_name)

    def test_close_lets_inflight_handler_finish(self, make_broker, unique_name):
        """close() waits for a running handler, whose reply still reaches the caller."""
        server, client = make_broker(), make_broker()
        entered, release = threading.Event(), threading.Event()

        @server.subscriber(list=unique_name)
        def slow(msg):
            entered.set()
            release.wait(LONG_TIMEOUT)
            return "finished"

        server.start()
        with client, Callers(2) as pool:
            reply = pool.submit(
                client.request, "x", list=unique_name, timeout=LONG_TIMEOUT
            )
            assert entered.wait(SHORT_TIMEOUT)
            closing = pool.submit(server.close)
            with pytest.raises(FutureTimeoutError):  # close() waits for the handler
                closing.result(timeout=5 * POLL_INTERVAL)
            release.set()
            closing.result(SHORT_TIMEOUT)
            assert reply.result(SHORT_TIMEOUT).decode() == "finished"

    def test_message_popped_during_close_is_not_lost(
        self, make_broker, unique_name, raw
    ):
        """An item popped by the last fetch before close() stops is handled, even with no grace time."""
        broker = make_broker(graceful_timeout=0.0, poll_interval=0.5)
        handled = threading.Event()

        @broker.subscriber(list=unique_name, max_workers=2)
        def handle(msg):
            handled.set()

        broker.start()
        closing = threading.Thread(target=broker.close)
        closing.start()
        # The consumer is blocked in BLPOP for up to 0.5 s: this lands in that fetch.
        raw.rpush(unique_name, encode_frame(b"x", {}))
        closing.join(LONG_TIMEOUT)
        assert handled.is_set() or raw.llen(unique_name) == 1

    def test_close_while_starting(self, unique_name):
        """close() from another thread makes a start() that is still waiting raise at once."""
        broker = RedisBroker(
            "redis://127.0.0.1:1",
            poll_interval=POLL_INTERVAL,
            start_timeout=LONG_TIMEOUT,
            socket_connect_timeout=0.1,
        )

        @broker.subscriber(list=unique_name)
        def handle(msg):
            return msg

        with Callers(1) as pool:
            starting = pool.submit(broker.start)
            assert wait_for(lambda: "STARTING" in repr(broker))
            broker.close()
            with pytest.raises(BrokerClosedError):
                starting.result(SHORT_TIMEOUT)
        assert repr(broker).startswith("<RedisBroker CLOSED")

    def test_close_from_handler_is_refused(self, make_broker, unique_name):
        """A handler calling close() gets BrokerStateError, and the broker keeps running."""
        broker = make_broker()

        @broker.subscriber(list=unique_name)
        def handle(msg):
            try:
                broker.close()
            except BrokerStateError as exc:
                return str(exc)
            return "closed"

        with broker:
            reply = broker.request("x", list=unique_name, timeout=SHORT_TIMEOUT)
            assert "App.exit()" in reply.decode()
            assert repr(broker).startswith("<RedisBroker RUNNING")

    def test_second_close_waits_for_the_first(self, make_broker, unique_name):
        """A close() racing another one returns only once the broker is closed."""
        broker = make_broker()
        entered, release = threading.Event(), threading.Event()

        @broker.subscriber(list=unique_name)
        def slow(msg):
            entered.set()
            release.wait(LONG_TIMEOUT)

        broker.start()
        broker.publish("x", list=unique_name)
        assert entered.wait(SHORT_TIMEOUT)
        with Callers(2) as pool:
            first = pool.submit(broker.close)
            assert wait_for(lambda: "CLOSING" in repr(broker))
            second = pool.submit(broker.close)
            with pytest.raises(FutureTimeoutError):
                second.result(timeout=5 * POLL_INTERVAL)
            release.set()
            first.result(SHORT_TIMEOUT)
            second.result(SHORT_TIMEOUT)
        assert repr(broker).startswith("<RedisBroker CLOSED")

    def test_start_fails_clearly_without_redis(self, unique_name):
        """start() against an unreachable server raises RedisConnectionError within start_timeout."""
        broker = RedisBroker(
            "redis://127.0.0.1:1",
            poll_interval=POLL_INTERVAL,
            start_timeout=0.5,
            socket_connect_timeout=0.2,
        )

        @broker.subscriber(list=unique_name)
        def handle(msg):
            return msg

        with pytest.raises(RedisConnectionError, match="redis_rpc:list"):
            broker.start()
        assert repr(broker).startswith("<RedisBroker CLOSED")

    def test_idle_past_socket_timeout(self, make_broker, unique_name):
        """Consumers and the reply listener survive idling longer than socket_timeout."""
        broker = make_broker(socket_timeout=0.3, poll_interval=0.1)

        @broker.subscriber(channel=unique_name)
        @broker.subscriber(list=unique_name)
        @broker.subscriber(stream=f"{unique_name}-s")
        def echo(msg):
            return msg

        with broker:
            threading.Event().wait(1.0)  # idle: this is the behaviour under test
            for kind, name in zip(
                TRANSPORTS, [unique_name, unique_name, f"{unique_name}-s"], strict=True
            ):
                assert (
                    broker.request(kind, **{kind: name}, timeout=SHORT_TIMEOUT).decode()
                    == kind
                )

    def test_bad_declarations_fail_at_once(self, make_broker, unique_name):
        """Bad declarations and arguments raise SetupError at once, not later."""
        broker = make_broker()
        with pytest.raises(SetupError):
            broker.subscriber(channel=unique_name, list=unique_name)
        with pytest.raises(SetupError):
            broker.subscriber(list=PubSub(unique_name))
        with pytest.raises(SetupError):
            broker.subscriber(list=ListSub(unique_name), max_workers=0)
        with pytest.raises(SetupError):
            broker.subscriber(list=unique_name)(lambda body, other: None)
        with pytest.raises(SetupError):
            RedisBroker(decode_responses=True)
        with pytest.raises(SetupError, match="publish"):
            broker.request("x", list=unique_name, headers={"reply_to": "elsewhere"})

        async def handle_async(msg):
            return msg

        with pytest.raises(SetupError, match="async"):
            broker.subscriber(list=unique_name)(handle_async)

    def test_url_options_are_checked_too(self, redis_url):
        """Options given in the URL's query string pass the same checks as keywords."""
        with pytest.raises(SetupError, match="decode_responses"):
            RedisBroker(f"{redis_url}?decode_responses=True")
        with pytest.raises(SetupError, match="scheme") as info:
            RedisBroker("http://user:s3cret@localhost")
        assert "s3cret" not in str(info.value)
        with pytest.raises(SetupError, match="socket_timeout"):
            RedisBroker(f"{redis_url}?socket_timeout=0.5", poll_interval=1.0)

    def test_declarations_after_start_are_refused(self, make_broker, unique_name):
        """Subscribers and publishers declared after start() raise SetupError instead of being ignored."""
        broker = make_broker()
        with broker:
            with pytest.raises(SetupError):
                broker.subscriber(list=unique_name)(lambda m: m)
            with pytest.raises(SetupError):
                broker.publisher(list=unique_name)(lambda m: m)


def test_stream_request_sent_before_any_consumer_is_answered(
    make_broker, unique_name, raw
):
    """A stream's group reads from the start, so a request added before the first
    consumer created the group (or after Redis restarted empty) is answered."""
    client, server = make_broker(), make_broker()

    @server.subscriber(stream=unique_name)
    def echo(body):
        return body

    with Callers(1) as caller:
        reply = caller.submit(
            client.request, "early", stream=unique_name, timeout=LONG_TIMEOUT
        )
        assert wait_for(lambda: raw.xlen(unique_name) == 1)
        with server:
            assert reply.result(LONG_TIMEOUT).decode() == "early"


@pytest.mark.parametrize("transport", ["list", "stream"])
def test_backlog_is_fetched_in_batches_but_never_beyond_free_workers(
    make_broker, unique_name, raw, transport
):
    """With a backlog, a consumer takes several messages per fetch, yet never more than
    it has free workers: the rest stays in Redis until a worker is free."""
    broker, client = make_broker(), make_broker()
    running = threading.Semaphore(0)
    release = threading.Event()
    handled = []

    @broker.subscriber(**{transport: unique_name}, max_workers=4)
    def hold(body):
        running.release()
        release.wait(LONG_TIMEOUT)
        handled.append(body)

    def waiting():
        if transport == "list":
            return raw.llen(unique_name)
        groups = raw.xinfo_groups(unique_name)
        return groups[0]["lag"] if groups else raw.xlen(unique_name)

    with broker:
        for n in range(20):
            client.publish(n, **{transport: unique_name})
        for _ in range(4):
            assert running.acquire(timeout=SHORT_TIMEOUT)
        assert not running.acquire(timeout=0.2)  # a fifth would have started by now
        assert waiting() == 16
        release.set()
        assert wait_for(lambda: len(handled) == 20, LONG_TIMEOUT)
    assert sorted(handled) == list(range(20))
