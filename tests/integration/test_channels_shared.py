"""Channel subscribers share one Pub/Sub connection and reader; the reply listener reads in bulk."""

from __future__ import annotations

import threading
import time
import uuid

import pytest

from redis_rpc import RedisBroker
from redis_rpc._io.subscription import RedisSubscription as Subscription
from redis_rpc._latch import Latch
from redis_rpc._wire.message import NONCE, build_frame
from redis_rpc.errors import RedisCommandError
from tests.conftest import LONG_TIMEOUT, SHORT_TIMEOUT
from tests.helpers import Callers, wait_for

MANY_CHANNELS = 5_000
# The reply listener, the channel reader, a few shared workers; never one per subscriber.
MAX_THREADS = 8
# Two subscriptions (replies, channels) and a few pooled connections for commands.
MAX_CONNECTIONS = 8


def our_threads():
    return {t for t in threading.enumerate() if t.name.startswith("redis_rpc:")}


def echo(body):
    return body


@pytest.mark.timeout(120)
def test_five_thousand_channel_subscribers_start_with_few_threads_and_connections(
    redis_url, raw, unique_name
):
    """A broker with 5,000 channel subscribers on default settings starts within start_timeout, with a bounded number of threads and Redis connections, and answers."""
    broker = RedisBroker(redis_url, client_name=unique_name)
    channels = [f"{unique_name}-{n}" for n in range(MANY_CHANNELS)]
    for channel in channels:
        broker.subscriber(channel)(echo)
    before = our_threads()
    begun = time.monotonic()
    try:
        broker.start()
        assert time.monotonic() - begun < broker._start_timeout
        for channel in (channels[0], channels[2_500], channels[-1]):
            assert (
                broker.request(channel, channel, timeout=LONG_TIMEOUT).decode()
                == channel
            )
        ours = [c for c in raw.client_list() if c["name"] == unique_name]
        threads = our_threads() - before
        assert len(threads) <= MAX_THREADS, sorted(t.name for t in threads)
        assert len(ours) <= MAX_CONNECTIONS
        # One connection holds every channel subscription; the reply
        # listener's holds one, the cancel notices.
        assert sorted(int(c["sub"]) for c in ours if c["sub"] != "0") == [
            1,
            MANY_CHANNELS,
        ]
    finally:
        broker.close()


def test_order_kept_on_one_channel_while_another_handler_is_slow(
    make_broker, unique_name
):
    """With max_workers=1 a channel's messages are handled in order on the shared workers while another channel's handler is stuck."""
    broker = make_broker()
    seen, workers = [], set()
    slow_started, release = threading.Event(), threading.Event()

    @broker.subscriber(f"{unique_name}-ordered")
    def ordered(body: int) -> None:
        workers.add(threading.current_thread().name)
        seen.append(body)

    @broker.subscriber(f"{unique_name}-slow")
    def slow(body: int) -> None:
        workers.add(threading.current_thread().name)
        slow_started.set()
        release.wait(LONG_TIMEOUT)

    with broker:
        try:
            broker.publish(0, f"{unique_name}-slow")
            assert slow_started.wait(SHORT_TIMEOUT)
            for n in range(200):
                broker.publish(n, f"{unique_name}-ordered")
            assert wait_for(lambda: len(seen) == 200, LONG_TIMEOUT), len(seen)
            assert seen == list(range(200))
            assert not release.is_set()  # all of it while the slow handler ran
        finally:
            release.set()
    assert all(name.startswith("redis_rpc:channels:worker_") for name in workers)


def test_start_names_a_forbidden_channel(raw, redis_server, unique_name):
    """A user that may not subscribe to one of the channels fails start() with a permission error naming the channel reader."""
    user = f"u-{uuid.uuid4().hex[:12]}"
    raw.acl_setuser(user, enabled=True, passwords=[f"+pw-{user}"], reset=True)
    raw.execute_command(
        "ACL",
        "SETUSER",
        user,
        "~*",
        "&redis_rpc.reply.*",
        f"&{unique_name}-ok*",
        "+@all",
    )
    url = f"redis://{user}:pw-{user}@127.0.0.1:{redis_server.port}/0"
    broker = RedisBroker(url, poll_interval=0.05, start_timeout=3 * LONG_TIMEOUT)
    broker.subscriber(f"{unique_name}-ok")(echo)
    broker.subscriber(f"{unique_name}-forbidden")(echo)
    begun = time.monotonic()
    try:
        with pytest.raises(RedisCommandError) as info:
            broker.start()
    finally:
        broker.close()
        raw.acl_deluser(user)
    assert time.monotonic() - begun < LONG_TIMEOUT
    assert info.value.reason == "permission"
    assert "redis_rpc:channels" in str(info.value)
    assert f"{unique_name}-forbidden" in str(info.value)


def test_many_concurrent_requests_each_get_their_own_reply(make_broker, unique_name):
    """200 threads requesting at once over channels each get the reply to their own request."""
    broker = make_broker()
    broker.subscriber(unique_name, max_workers=8)(echo)
    with broker, Callers(200, timeout=LONG_TIMEOUT * 2) as pool:
        replies = list(
            pool.map(
                lambda n: broker.request(n, unique_name, timeout=LONG_TIMEOUT).decode(),
                range(200),
            )
        )
    assert replies == list(range(200))


def test_reply_listener_completes_many_waiters_per_wake_up(
    make_broker, raw, monkeypatch
):
    """Replies published together complete their requests in a few reads, not one read per reply."""
    wake_ups = []
    original = Subscription.get_messages

    def counting(self, timeout, limit=1000):
        found = original(self, timeout, limit)
        if found:
            wake_ups.append(len(found))
        return found

    monkeypatch.setattr(Subscription, "get_messages", counting)
    broker = make_broker()
    with broker:
        listener = broker._reply_listener()
        assert listener.wait_ready(SHORT_TIMEOUT)
        latches: list[Latch[bytes]] = [Latch() for _ in range(200)]
        waiting = [
            listener.register(str(n), sink=latch) for n, latch in enumerate(latches)
        ]
        pipe = raw.pipeline(transaction=False)
        for n, pending in enumerate(waiting):
            pipe.publish(
                pending.channel,
                build_frame(n, correlation_id=str(n), headers={NONCE: pending.nonce}),
            )
        pipe.execute()
        payloads = [latch.result(SHORT_TIMEOUT) for latch in latches]
    assert payloads == [
        build_frame(n, correlation_id=str(n), headers={NONCE: pending.nonce})
        for n, pending in enumerate(waiting)
    ]
    assert sum(wake_ups) == 200
    assert len(wake_ups) <= 20, wake_ups


def test_messages_arriving_while_subscribing_are_kept(redis_url, raw, unique_name):
    """A message that arrives while more channels are being subscribed is handed on afterwards, not lost."""
    broker = RedisBroker(redis_url)
    subscription = broker._backend.subscription()
    try:
        subscription.subscribe(
            f"{unique_name}-first", pattern=False, timeout=LONG_TIMEOUT
        )
        assert raw.publish(f"{unique_name}-first", b"early") == 1
        subscription.subscribe_many(
            [f"{unique_name}-{n}" for n in range(10)],
            pattern=False,
            timeout=LONG_TIMEOUT,
        )
        assert raw.publish(f"{unique_name}-3", b"late") == 1
        received: list[object] = []

        def both_received():
            received.extend(subscription.get_messages(0.1))
            return len(received) == 2

        assert wait_for(both_received)
        assert received == [
            (None, f"{unique_name}-first".encode(), b"early"),
            (None, f"{unique_name}-3".encode(), b"late"),
        ]
    finally:
        subscription.close()
        broker.close()
