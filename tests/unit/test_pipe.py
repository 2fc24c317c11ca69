"""The pipe over a fake connection: batching, order, deadlines, push-back, failures."""

from __future__ import annotations

import logging
import pickle
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from redis_rpc._io.pipe import Pipe
from redis_rpc._latch import Latch
from redis_rpc.errors import (
    BrokerClosedError,
    MessageTooLargeError,
    RedisCommandError,
    RedisConnectionError,
)

WAIT = 5.0  # for what should happen at once; generous for a loaded machine
SHORT = 0.2  # a deadline meant to run out


class FakeLink:
    """Answers each command with its own arguments; reads can be held and failed."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.unanswered: list[tuple[object, ...]] = []
        self.closed = False

    def check(self) -> None:
        if self.world.stale:
            raise RedisConnectionError("Stale.", reason="unreachable")

    def send(self, commands) -> None:
        if self.world.fail_send:
            raise RedisConnectionError("Broken pipe.", reason="unreachable")
        self.world.sent.append(list(commands))
        self.world.senders.append(threading.current_thread().name)
        self.unanswered.extend(commands)

    def wait(self, timeout) -> bool:
        self.world.reading.set()
        return self.world.gate.wait(timeout)

    def ready(self) -> bool:
        return bool(self.unanswered) and self.world.gate.is_set()

    def read(self) -> object:
        world = self.world
        world.reading.set()
        if not world.gate.wait(WAIT):
            raise RedisConnectionError("No answer.", reason="timeout")
        with world.lock:
            if world.reads_left is not None:
                if world.reads_left == 0:
                    raise RedisConnectionError(
                        "Connection reset.", reason="unreachable"
                    )
                world.reads_left -= 1
        command = self.unanswered.pop(0)
        if command[0] == b"BAD":
            return RedisCommandError("Refused.", reason="command")
        return command

    def close(self) -> None:
        self.closed = True

    def oversized(self, commands):
        if any(command[0] == b"HUGE" for command in commands):
            return MessageTooLargeError("Too long for Redis.")
        return None


class World:
    """What the fake server does, and what it saw."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.sent: list[list[tuple[object, ...]]] = []
        self.senders: list[str] = []  # the thread of each write
        self.links: list[FakeLink] = []
        self.gate = threading.Event()  # cleared: reads wait, as with a stalled Redis
        self.gate.set()
        self.reading = threading.Event()
        self.reads_left: int | None = None  # then the connection breaks
        self.fail_send = False
        self.stale = False
        self.refuse_connect = False

    def connect(self) -> FakeLink:
        if self.refuse_connect:
            raise RedisConnectionError("Connection refused.", reason="unreachable")
        link = FakeLink(self)
        self.links.append(link)
        return link

    def sent_commands(self) -> list[tuple[object, ...]]:
        return [command for batch in self.sent for command in batch]


@pytest.fixture
def world():
    return World()


@pytest.fixture
def make_pipe(world):
    pipes: list[Pipe] = []

    def make(**options) -> Pipe:
        pipe = Pipe(world.connect, address="fake:1", **options)
        pipes.append(pipe)
        return pipe

    yield make
    world.gate.set()
    for pipe in pipes:
        assert pipe.close(WAIT)


def soon() -> float:
    return time.monotonic() + WAIT


def test_each_caller_gets_its_own_replies_in_order(world, make_pipe):
    """Many threads at once each get the replies to their own commands, in order."""
    pipe = make_pipe()

    def call(n):
        commands = [(b"ECHO", n, i) for i in range(3)]
        return pipe.submit(commands, soon()) == commands

    with ThreadPoolExecutor(16) as pool:
        results = [pool.submit(call, n) for n in range(200)]
        assert all(r.result(WAIT) for r in results)
    assert len(world.links) == 1


def test_commands_queued_meanwhile_go_out_in_one_write(world, make_pipe):
    """What callers queue while the writer waits for replies is sent in a single write."""
    pipe = make_pipe()
    world.gate.clear()
    with ThreadPoolExecutor(11) as pool:
        first = pool.submit(pipe.submit, [(b"FIRST",)], soon())
        assert world.reading.wait(WAIT)
        rest = [pool.submit(pipe.submit, [(b"N", n)], soon()) for n in range(10)]
        assert _until(lambda: len(pipe._queue) == 10)
        world.gate.set()
        assert first.result(WAIT) == [(b"FIRST",)]
        assert [r.result(WAIT) for r in rest] == [[(b"N", n)] for n in range(10)]
    assert [len(batch) for batch in world.sent] == [1, 10]
    assert pipe.batches == 2


def test_a_command_past_its_deadline_is_never_written(world, make_pipe):
    """A command whose deadline passes while queued fails as not sent, and is dropped."""
    pipe = make_pipe()
    world.gate.clear()
    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(pipe.submit, [(b"FIRST",)], soon())
        assert world.reading.wait(WAIT)
        started = time.monotonic()
        with pytest.raises(RedisConnectionError) as info:
            pipe.submit([(b"LATE",)], time.monotonic() + SHORT)
        assert time.monotonic() - started < SHORT + 1.0
        world.gate.set()
        first.result(WAIT)
    assert info.value.reason == "timeout"
    assert info.value.maybe_applied is False
    assert "not sent" in str(info.value)
    pipe.submit([(b"AFTER",)], soon())
    assert (b"LATE",) not in world.sent_commands()


def test_the_writer_drops_commands_that_expired_before_it_took_them(world, make_pipe):
    """A command taken by the writer after its deadline fails as not sent."""
    pipe = make_pipe()
    # Already past: the writer takes it, sees the deadline, drops it.
    with pytest.raises(RedisConnectionError) as info:
        pipe.submit([(b"LATE",)], time.monotonic() - 1.0)
    assert info.value.maybe_applied is False
    assert world.sent == []


def test_a_written_command_unanswered_by_its_deadline_may_have_been_applied(
    world, make_pipe
):
    """A caller whose command was written but not answered in time returns by its deadline, told it may have run."""
    pipe = make_pipe()
    world.gate.clear()
    started = time.monotonic()
    with pytest.raises(RedisConnectionError) as info:
        pipe.submit([(b"SLOW",)], time.monotonic() + SHORT)
    assert time.monotonic() - started < SHORT + 1.0
    assert info.value.reason == "timeout"
    assert info.value.maybe_applied is True
    world.gate.set()
    assert pipe.submit([(b"NEXT",)], soon()) == [
        (b"NEXT",)
    ]  # order kept after the late reply


def test_only_the_writer_thread_writes(world, make_pipe):
    """Every call goes through the writer thread, a lone caller's too: no other thread touches the connection."""
    pipe = make_pipe()
    for n in range(3):
        assert pipe.submit([(b"N", n)], soon()) == [(b"N", n)]
    assert set(world.senders) == {"redis_rpc:writer"}
    assert len(world.links) == 1


def test_a_full_queue_pushes_back_until_room_or_deadline(world, make_pipe):
    """With the queue full a caller waits for room: it fails at its deadline, or goes on once room frees."""
    pipe = make_pipe(max_queued=2)
    world.gate.clear()
    with ThreadPoolExecutor(4) as pool:
        first = pool.submit(pipe.submit, [(b"FIRST",)], soon())
        assert world.reading.wait(WAIT)
        queued = [pool.submit(pipe.submit, [(b"Q", n)], soon()) for n in range(2)]
        assert _until(lambda: len(pipe._queue) == 2)
        with pytest.raises(RedisConnectionError) as info:
            pipe.submit([(b"NO_ROOM",)], time.monotonic() + SHORT)
        assert info.value.maybe_applied is False
        assert len(pipe._queue) == 2  # never grew past its bound
        waiting = pool.submit(pipe.submit, [(b"ROOM",)], soon())
        world.gate.set()
        assert waiting.result(WAIT) == [(b"ROOM",)]
        assert first.result(WAIT)
        assert all(q.result(WAIT) for q in queued)
    assert (b"NO_ROOM",) not in world.sent_commands()


def test_a_broken_connection_fails_exactly_the_unanswered_commands(world, make_pipe):
    """Commands answered before the break succeed, the written rest may have run, and the next call reconnects."""
    pipe = make_pipe()
    world.gate.clear()
    with ThreadPoolExecutor(5) as pool:
        first = pool.submit(pipe.submit, [(b"FIRST",)], soon())
        assert world.reading.wait(WAIT)
        batch = [pool.submit(pipe.submit, [(b"B", n)], soon()) for n in range(4)]
        assert _until(lambda: len(pipe._queue) == 4)
        world.reads_left = 3  # FIRST and two of the batch are answered
        world.gate.set()
        assert first.result(WAIT) == [(b"FIRST",)]
        outcomes = []
        for future in batch:
            try:
                outcomes.append(future.result(WAIT))
            except RedisConnectionError as exc:
                outcomes.append(exc.maybe_applied)
    assert outcomes == [[(b"B", 0)], [(b"B", 1)], True, True]
    world.reads_left = None
    assert pipe.submit([(b"AGAIN",)], soon()) == [(b"AGAIN",)]
    assert len(world.links) == 2
    assert world.links[0].closed


def test_a_failed_write_says_the_commands_may_have_run(world, make_pipe):
    """A write that fails may have reached Redis in part, so its commands may have been applied."""
    pipe = make_pipe()
    world.fail_send = True
    with pytest.raises(RedisConnectionError) as info:
        pipe.submit([(b"X",)], soon())
    assert info.value.maybe_applied is True


def test_an_unreachable_redis_fails_calls_as_not_sent_then_backs_off(
    world, make_pipe, caplog
):
    """When Redis cannot be reached calls fail as not sent, further calls fail at once during the backoff, and later ones connect, said at INFO."""
    caplog.set_level(logging.INFO, logger="redis_rpc")
    pipe = make_pipe()
    world.refuse_connect = True
    with pytest.raises(RedisConnectionError) as info:
        pipe.submit([(b"X",)], soon())
    assert info.value.maybe_applied is False
    assert "refused" in str(info.value)
    world.refuse_connect = False
    # Within the backoff: refused without a connection attempt.
    with pytest.raises(RedisConnectionError):
        pipe.submit([(b"Y",)], soon())
    assert world.links == []

    def connects():
        try:
            return pipe.submit([(b"Z",)], soon()) == [(b"Z",)]
        except RedisConnectionError:
            return False

    assert _until(connects)
    assert len(world.links) == 1
    assert [
        (r.levelname, r.getMessage())
        for r in caplog.records
        if "again" in r.getMessage()
    ] == [("INFO", "Connected to Redis at fake:1 again")]


def test_a_stale_connection_is_reported_before_anything_is_written(world, make_pipe):
    """A connection found dead before a write fails the calls as not sent, and the next one reconnects."""
    pipe = make_pipe()
    pipe.submit([(b"X",)], soon())
    world.stale = True
    with pytest.raises(RedisConnectionError) as info:
        pipe.submit([(b"Y",)], soon())
    assert info.value.maybe_applied is False
    world.stale = False
    assert _until(lambda: _answers(pipe))
    assert (b"Y",) not in world.sent_commands()


def test_an_error_reply_is_returned_and_keeps_the_connection(world, make_pipe):
    """A refused command comes back as an error in its place, and the connection stays in use."""
    pipe = make_pipe()
    replies = pipe.submit([(b"OK",), (b"BAD",), (b"OK2",)], soon())
    assert replies[0] == (b"OK",)
    assert replies[2] == (b"OK2",)
    assert isinstance(replies[1], RedisCommandError)
    assert pipe.submit([(b"NEXT",)], soon()) == [(b"NEXT",)]
    assert len(world.links) == 1


def test_close_writes_what_is_queued_then_refuses(world, make_pipe):
    """close() writes the queued commands and stops its thread; later calls are refused."""
    pipe = make_pipe()
    world.gate.clear()
    with ThreadPoolExecutor(3) as pool:
        first = pool.submit(pipe.submit, [(b"FIRST",)], soon())
        assert world.reading.wait(WAIT)
        queued = pool.submit(pipe.submit, [(b"QUEUED",)], soon())
        assert _until(lambda: len(pipe._queue) == 1)
        closing = pool.submit(pipe.close, WAIT)
        world.gate.set()
        assert closing.result(WAIT + 2)
        assert queued.result(WAIT) == [(b"QUEUED",)]
        assert first.result(WAIT)
    assert not [t for t in threading.enumerate() if t.name == "redis_rpc:writer"]
    assert world.links[0].closed
    with pytest.raises(BrokerClosedError):
        pipe.submit([(b"LATE",)], soon())


def test_the_writer_thread_is_named_and_started_on_first_use(world, make_pipe):
    """No thread runs until the first command; then one named redis_rpc:writer does."""
    before = {t for t in threading.enumerate() if t.name == "redis_rpc:writer"}
    pipe = make_pipe()
    assert {t for t in threading.enumerate() if t.name == "redis_rpc:writer"} == before
    pipe.submit([(b"X",)], soon())
    writers = {t for t in threading.enumerate() if t.name == "redis_rpc:writer"}
    assert len(writers - before) == 1


def test_latch_reports_result_or_error_once_set():
    """A latch times out until set, then returns its result or raises its error at every wait."""
    waiter: Latch[list[int]] = Latch()
    assert not waiter.wait(0.01)
    waiter.set_result([1])
    assert waiter.wait(0)
    assert waiter.wait(0)
    assert waiter.result() == [1]
    failed: Latch[list[int]] = Latch()
    failed.set_error(RedisConnectionError("Gone.", maybe_applied=True))
    assert failed.wait(0)
    with pytest.raises(RedisConnectionError):
        failed.result()


def test_maybe_applied_survives_pickling():
    """RedisConnectionError keeps maybe_applied and reason through pickle."""
    error = RedisConnectionError("Gone.", reason="timeout", maybe_applied=True)
    copy = pickle.loads(pickle.dumps(error))
    assert (copy.reason, copy.maybe_applied, str(copy)) == ("timeout", True, "Gone.")


def _until(predicate, timeout=WAIT):
    deadline = time.monotonic() + timeout
    while not (result := predicate()) and time.monotonic() < deadline:
        time.sleep(0.005)
    return result


def _answers(pipe):
    try:
        return pipe.submit([(b"PING",)], soon()) == [(b"PING",)]
    except RedisConnectionError:
        return False


def test_a_command_redis_would_drop_the_connection_for_fails_alone(world, make_pipe):
    """A command the link says Redis would drop the connection for fails as too large, unsent, and the others on the connection go on."""
    pipe = make_pipe()
    assert pipe.submit([(b"ECHO", 0)], soon()) == [(b"ECHO", 0)]
    world.gate.clear()  # the writer holds a reply in flight while the rest queue
    with ThreadPoolExecutor(3) as pool:
        first = pool.submit(pipe.submit, [(b"ECHO", 1)], soon())
        assert world.reading.wait(WAIT)
        huge = pool.submit(pipe.submit, [(b"HUGE", 2)], soon())
        after = pool.submit(pipe.submit, [(b"ECHO", 3)], soon())
        world.gate.set()
        with pytest.raises(MessageTooLargeError):
            huge.result(WAIT)
        assert first.result(WAIT) == [(b"ECHO", 1)]
        assert after.result(WAIT) == [(b"ECHO", 3)]
    assert (b"HUGE", 2) not in world.sent_commands()
    assert len(world.links) == 1
