"""Stream consumer groups: a lost group does not replay history, and dead consumers' entries are claimed in seconds."""

from __future__ import annotations

import threading
from logging import WARNING

import pytest

from redis_rpc import RedisMessage, StreamSub
from redis_rpc.errors import RequestTimeoutError
from tests.conftest import LONG_TIMEOUT, SHORT_TIMEOUT
from tests.helpers import wait_for

GROUP = "redis_rpc"  # StreamSub's default group
# Short enough for tests to watch a consumer die; the heartbeat beats three
# times in it.
RECOVER_AFTER = 0.5


def registry(stream):
    """The set that lists the consumers of *stream*'s group that beat."""
    return f"{stream}:redis_rpc:group:{GROUP}:consumers"


def server_ms(raw):
    seconds, microseconds = raw.time()
    return seconds * 1000 + microseconds // 1000


def take_as_ghost(raw, stream, count, *, listed):
    """Read *count* entries as consumer ``ghost``, which then dies without a heartbeat.

    *listed* puts it in the registry, as a redis_rpc consumer that beat would be.
    """
    raw.xgroup_create(stream, GROUP, id="0", mkstream=True)
    (_, entries), *_ = raw.xreadgroup(GROUP, "ghost", {stream: ">"}, count=count)
    assert len(entries) == count
    if listed:
        raw.sadd(registry(stream), "ghost")


def consumer_names(raw, stream):
    return {c["name"].decode() for c in raw.xinfo_consumers(stream, GROUP)}


class TestLostGroup:
    def test_destroyed_group_does_not_replay_handled_entries(
        self, make_broker, unique_name, raw, caplog
    ):
        """After XGROUP DESTROY under a running server, the entries it handled are not
        handled again, a request sent right after is answered, and one warning says so."""
        broker = make_broker()
        seen = []

        @broker.subscriber(stream=unique_name)
        def record(body):
            seen.append(body)
            return body

        with broker:
            for n in range(50):
                broker.publish(n, stream=unique_name)
            assert wait_for(lambda: len(seen) == 50, LONG_TIMEOUT)
            raw.xgroup_destroy(unique_name, GROUP)
            # In id order with one worker: a replayed entry would come first.
            assert (
                broker.request(
                    "after", stream=unique_name, timeout=LONG_TIMEOUT
                ).decode()
                == "after"
            )
        assert seen == [*range(50), "after"]
        warnings = [r.getMessage() for r in caplog.records if r.levelno >= WARNING]
        assert len(warnings) == 1
        assert "gone" in warnings[0]

    def test_handler_in_flight_when_the_group_is_lost_answers_once(
        self, make_broker, unique_name, raw, caplog
    ):
        """A handler that was running when its group was destroyed still answers, without
        a warning about the failed acknowledgement, and its entry is not handled again."""
        broker = make_broker()
        started, release = threading.Event(), threading.Event()
        seen = []

        @broker.subscriber(stream=unique_name)
        def record(body):
            seen.append(body)
            started.set()
            release.wait(LONG_TIMEOUT)
            return body

        def call():
            replies.append(
                broker.request("first", stream=unique_name, timeout=LONG_TIMEOUT)
            )

        replies: list[RedisMessage] = []
        with broker:
            caller = threading.Thread(target=call)
            caller.start()
            assert started.wait(SHORT_TIMEOUT)
            raw.xgroup_destroy(unique_name, GROUP)
            release.set()
            caller.join(LONG_TIMEOUT)
            assert (
                broker.request(
                    "second", stream=unique_name, timeout=LONG_TIMEOUT
                ).decode()
                == "second"
            )
        assert [reply.decode() for reply in replies] == ["first"]
        assert seen == ["first", "second"]
        assert not [r for r in caplog.records if "could not send" in r.getMessage()]

    def test_new_group_skips_entries_older_than_replay_window(
        self, make_broker, unique_name, raw
    ):
        """A group created on a stream with history handles the entries of the last
        replay_window seconds, by the Redis server's clock, and skips older ones."""
        old = server_ms(raw) - 120_000  # two minutes ago: outside the 60 s default
        for n in range(3):
            raw.xadd(unique_name, {"old": str(n)}, id=f"{old}-{n}")
        broker = make_broker()
        for n in range(3):  # before any group exists, as a request sent early
            broker.publish({"new": n}, stream=unique_name)
        seen = []

        @broker.subscriber(stream=unique_name)
        def record(body):
            seen.append(body)

        with broker:
            assert wait_for(lambda: {"new": 2} in seen, LONG_TIMEOUT)
        assert seen == [{"new": n} for n in range(3)]

    def test_replay_window_none_handles_the_whole_stream(
        self, make_broker, unique_name, raw
    ):
        """With replay_window=None a new group handles every entry already in the stream."""
        raw.xadd(unique_name, {"old": "0"}, id=f"{server_ms(raw) - 120_000}-0")
        broker = make_broker()
        seen = []

        @broker.subscriber(stream=StreamSub(unique_name, replay_window=None))
        def record(body):
            seen.append(body)

        with broker:
            assert wait_for(lambda: seen, LONG_TIMEOUT)
        assert seen == [{"old": "0"}]


class TestDeadConsumers:
    def test_listed_dead_consumers_entries_are_claimed_and_it_is_deleted(
        self, make_broker, unique_name, raw
    ):
        """Entries pending for a listed consumer without heartbeat are handled after
        recover_after, not claim_idle_time, and the dead consumer leaves the group."""
        broker = make_broker()
        for n in range(3):
            broker.publish(n, stream=unique_name)
        take_as_ghost(raw, unique_name, 3, listed=True)
        seen = []

        @broker.subscriber(stream=StreamSub(unique_name, recover_after=RECOVER_AFTER))
        def record(body):
            seen.append(body)

        with broker:  # claim_idle_time is the default 60 s
            assert wait_for(lambda: len(seen) == 3, LONG_TIMEOUT)
            assert wait_for(
                lambda: "ghost" not in consumer_names(raw, unique_name), LONG_TIMEOUT
            )
        assert seen == [0, 1, 2]
        assert raw.xpending(unique_name, GROUP)["pending"] == 0
        assert b"ghost" not in raw.smembers(registry(unique_name))

    def test_claimed_entry_whose_caller_gave_up_is_settled_unhandled(
        self, make_broker, unique_name, raw
    ):
        """A dead consumer's request whose caller stopped waiting is acknowledged
        without running the handler."""
        broker = make_broker()
        with pytest.raises(RequestTimeoutError):
            broker.request("late", stream=unique_name, timeout=0.1)
        take_as_ghost(raw, unique_name, 1, listed=True)
        calls = []

        @broker.subscriber(stream=StreamSub(unique_name, recover_after=RECOVER_AFTER))
        def record(body):
            calls.append(body)

        with broker:
            assert wait_for(
                lambda: raw.xpending(unique_name, GROUP)["pending"] == 0, LONG_TIMEOUT
            )
        assert calls == []

    def test_unlisted_consumer_keeps_its_entries_until_claim_idle_time(
        self, make_broker, unique_name, raw
    ):
        """Entries of a consumer that never beats (FastStream's) wait for
        claim_idle_time, as a long handler of it would need."""
        broker = make_broker()
        broker.publish("x", stream=unique_name)
        take_as_ghost(raw, unique_name, 1, listed=False)
        seen = []

        @broker.subscriber(
            stream=StreamSub(
                unique_name, recover_after=RECOVER_AFTER, claim_idle_time=4.0
            )
        )
        def record(body):
            seen.append(body)

        with broker:
            # Long enough for a listed consumer's entries (see above), well
            # before claim_idle_time.
            assert not wait_for(lambda: seen, 4 * RECOVER_AFTER)
            assert wait_for(lambda: seen, LONG_TIMEOUT)
        assert "ghost" in consumer_names(raw, unique_name)

    def test_live_consumer_with_a_long_handler_keeps_its_entry(
        self, make_broker, unique_name
    ):
        """A handler running on the consumer thread for many recover_after periods
        keeps its entry: another consumer of the group does not take it over."""
        source = StreamSub(unique_name, recover_after=RECOVER_AFTER)
        busy, other = make_broker(), make_broker()
        started, release = threading.Event(), threading.Event()
        stolen = []

        @busy.subscriber(stream=source)
        def slow(body):
            started.set()
            release.wait(LONG_TIMEOUT)
            return "slow"

        @other.subscriber(stream=StreamSub(unique_name, recover_after=RECOVER_AFTER))
        def fast(body):
            stolen.append(body)
            return "fast"

        def call():
            replies.append(busy.request("x", stream=unique_name, timeout=LONG_TIMEOUT))

        replies: list[RedisMessage] = []
        with busy:
            caller = threading.Thread(target=call)
            caller.start()
            assert started.wait(SHORT_TIMEOUT)
            with other:
                assert not wait_for(lambda: stolen, 6 * RECOVER_AFTER)
                release.set()
                caller.join(LONG_TIMEOUT)
        assert [reply.decode() for reply in replies] == ["slow"]
        assert stolen == []
