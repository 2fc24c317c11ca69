"""Calls that compose: ``submit()`` (a future), ``gather()`` (every subscriber's reply) and ``stream()`` (a generator's items).

All three send through ``Caller.begin()``, as ``request()`` does, and take
their replies from the broker's one reply listener; none holds a thread
per call. A submitted request's future is completed on the listener's
thread, or failed by the broker's ``Deadlines`` thread at its deadline; a
cancelled one tells its server (``_wire.cancel``).
"""

from __future__ import annotations

import queue
import threading
import time
import weakref
from concurrent.futures import Future
from typing import TYPE_CHECKING

from redis_rpc._hooks import Event, around
from redis_rpc._wire import codec
from redis_rpc._wire.message import CHUNK, END, ERROR, STREAM, new_correlation_id
from redis_rpc._wire.schemas import PubSub
from redis_rpc.errors import RedisConnectionError, SetupError

if TYPE_CHECKING:
    from redis_rpc._client.deadlines import Deadlines
    from redis_rpc._client.request import Ask, Call, Caller
    from redis_rpc._io.interfaces import Connection
    from redis_rpc._wire.message import RedisMessage
    from redis_rpc._wire.schemas import Destination

_STREAM_HEADERS = frozenset((CHUNK, END, ERROR))


class Composer:
    """``submit()``, ``gather()`` and ``stream()`` for one broker; safe from any number of threads.

    Args:
        caller: Sends and reads replies, as for ``request()``.
        deadlines: Fails submitted requests whose time is up.
    """

    def __init__(self, caller: Caller, deadlines: Deadlines) -> None:
        self._caller = caller
        self._deadlines = deadlines

    def submit(self, ask: Ask) -> Future[RedisMessage]:
        """Send a request and return at once a future of its reply; see ``RedisBroker.submit()``."""
        caller, target = self._caller, ask.target
        correlation_id = ask.correlation_id or new_correlation_id()
        event = Event("submit", str(target), dict(ask.headers or {}), correlation_id)
        future: Future[RedisMessage] = Future()
        sink = _FutureSink(caller, future, target, time.monotonic())

        def send() -> Call:
            return caller.begin(
                ask._replace(headers=event.headers, correlation_id=correlation_id),
                sink=sink,
            )

        # Hooks see the sending; what came of it is in stats().
        call = around(caller.hooks, event, send) if caller.hooks else send()
        sink.attach(call)
        if call.deadline is not None and not future.done():
            self._deadlines.at(call.deadline, sink.expire)

        def cancelled(done: Future[RedisMessage]) -> None:
            if done.cancelled():
                call.listener.discard(call.reply_to)
                caller.count(target, "cancelled", time.monotonic() - sink.started)
                caller.cancel(ask.connection, call.reply_to)

        future.add_done_callback(cancelled)
        return future

    def gather(self, ask: Ask) -> list[RedisMessage]:
        """Publish once and collect every subscriber's reply; see ``RedisBroker.gather()``."""
        if not isinstance(ask.target, PubSub):
            msg = f"gather() publishes to a channel and collects every subscriber's reply; a {type(ask.target).__name__} has one consumer per message. Use request()."
            raise SetupError(msg)
        if ask.timeout is None or not ask.timeout > 0:
            msg = f"gather() needs a positive timeout, not {ask.timeout!r}: it may not know how many replies to wait for."
            raise SetupError(msg)
        collected = _Collected()
        call = self._caller.begin(
            # Nobody listening is an answer here: no replies.
            ask._replace(fail_fast=False),
            sink=collected,
            collect=collected.add,
            keep=False,  # one key would hold one reply of many
            on_count=collected.expect,
        )
        try:
            collected.done.wait(call.left())
        finally:
            call.listener.discard(call.reply_to)
        if collected.error is not None:
            raise collected.error
        return [self._caller.reply(payload) for payload in collected.payloads()]

    def stream(self, ask: Ask) -> ReplyStream:
        """Send a request and return the iterator of a generator handler's items; see ``RedisBroker.stream()``."""
        chunks = _Chunks()
        call = self._caller.begin(
            # Each item has its own wait: no deadline for the whole.
            ask._replace(timeout=None),
            sink=chunks,
            collect=chunks.add,
            keep=False,
            extra={STREAM: "1"},
        )
        call.timeout = ask.timeout
        return ReplyStream(self._caller, ask.connection, call, chunks)


class ReplyStream:
    """The items of a streamed reply, in order, as they come; what ``broker.stream()`` returns.

    Iterating waits up to the call's timeout for each item. Closing it
    before the end (``close()``, leaving a ``with`` block, or its garbage
    collection) stops waiting and tells the handler.
    """

    def __init__(
        self, caller: Caller, connection: Connection, call: Call, chunks: _Chunks
    ) -> None:
        self._caller = caller
        self._call = call
        self._chunks = chunks
        self._number = 0  # of the next item
        # Runs once: at the end, at close(), or when the stream is dropped.
        self._finish = weakref.finalize(self, _give_up, caller, connection, call)

    def __iter__(self) -> ReplyStream:
        return self

    def __next__(self) -> RedisMessage:
        if not self._finish.alive:
            raise StopIteration
        call, number = self._call, self._number
        try:
            payload = self._chunks.get(call.timeout)
        except queue.Empty:
            self.close()
            msg = f"No item {number} of the streamed reply of {call.target} within {call.timeout} s (correlation_id={call.correlation_id!r}); is its handler still running?"
            raise call.timed_out(msg) from None
        except BaseException:
            self.close()
            raise
        if payload is None:  # the end, or the error reply that cut it short
            call.listener.discard(call.reply_to)
            self._finish.detach()  # it ended: nobody to tell
            if self._chunks.last is not None:
                self._caller.answer(call, self._chunks.last)  # raises what it reports
            raise StopIteration
        self._number += 1
        return self._caller.reply(payload)

    def close(self) -> None:
        """Stop waiting for items; a handler still sending them is told to stop."""
        self._finish()

    def __enter__(self) -> ReplyStream:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _give_up(caller: Caller, connection: Connection, call: Call) -> None:
    call.listener.discard(call.reply_to)
    caller.cancel(connection, call.reply_to)


class _FutureSink:
    """Completes a submitted request's future with its reply, or what went wrong; once.

    It lets go of the future once done, though the deadlines thread holds
    it until the request's deadline: a reply is not kept alive that long.
    """

    def __init__(
        self,
        caller: Caller,
        future: Future[RedisMessage],
        target: Destination,
        started: float,
    ) -> None:
        self._caller = caller
        self._future: Future[RedisMessage] | None = future
        self._target = target
        self.started = started
        self.call: Call | None = None  # set once sent
        self._lock = threading.Lock()  # guards _future, call and _early
        # A reply that came before begin() returned the call: kept for attach().
        self._early: bytes | None = None

    def _claim(self) -> Future[RedisMessage] | None:
        """The future, for the one who completes it; None if done, or cancelled."""
        with self._lock:
            future, self._future = self._future, None
        if future is None or not future.set_running_or_notify_cancel():
            return None
        return future

    def attach(self, call: Call) -> None:
        """The request is on its way as *call*; its reply may have come already."""
        with self._lock:
            self.call, early, self._early = call, self._early, None
        if early is not None:
            self.set_result(early)

    def set_result(self, value: bytes) -> None:
        with self._lock:
            call = self.call
            if call is None:  # begin() has not returned yet
                self._early = value
                return
        future = self._claim()
        if future is None:
            return
        try:
            reply = self._caller.answer(call, value)
        except BaseException as exc:  # noqa: BLE001 - handed to the future
            self._fail(future, exc)
        else:
            self._caller.count(self._target, "ok", time.monotonic() - self.started)
            future.set_result(reply)

    def set_error(self, error: BaseException) -> None:
        future = self._claim()
        if future is None:
            return
        call = self.call
        if call is not None and isinstance(error, RedisConnectionError):
            error = call.not_taken(error)
        self._fail(future, error)

    def expire(self) -> None:
        call = self.call
        future = None if call is None else self._claim()
        if call is None or future is None:
            return
        call.listener.discard(call.reply_to)
        self._fail(future, call.no_reply())

    def _fail(self, future: Future[RedisMessage], error: BaseException) -> None:
        self._caller.count_error(self._target, error, time.monotonic() - self.started)
        future.set_exception(error)


class _Collected:
    """The replies of a ``gather()``: as many as Redis said it reached, or all that came by the deadline."""

    def __init__(self) -> None:
        self._lock = threading.Lock()  # guards _payloads and _expected
        self._payloads: list[bytes] = []
        self._expected: int | None = None
        self.done = threading.Event()
        self.error: BaseException | None = None

    def add(self, payload: bytes) -> bool:
        with self._lock:
            self._payloads.append(payload)
            complete = (
                self._expected is not None and len(self._payloads) >= self._expected
            )
        if complete:
            self.done.set()
        return complete

    def expect(self, count: int) -> None:
        with self._lock:
            self._expected = count
            complete = len(self._payloads) >= count
        if complete:
            self.done.set()

    def payloads(self) -> list[bytes]:
        with self._lock:
            return list(self._payloads)

    # As a sink: only failures come this way (a refused PUBLISH).
    def set_result(self, value: bytes) -> None:
        self.add(value)

    def set_error(self, error: BaseException) -> None:
        with self._lock:
            if self.done.is_set():  # complete already: what came is the answer
                return
            self.error = error
        self.done.set()


class _Chunks:
    """The replies of a ``stream()``, put back in order by their item numbers."""

    def __init__(self) -> None:
        self._lock = threading.Lock()  # guards _early and _end
        self._ready: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        self._early: dict[int, bytes] = {}  # items that overtook earlier ones
        self._next = 0  # the number of the next item to hand on
        self._end: int | None = None  # how many items come in all, once known
        self.last: bytes | None = None  # the error reply that cut it short, if any
        self.error: BaseException | None = None

    def add(self, payload: bytes) -> bool:
        """Take one reply; whether it was the last the stream needs."""
        found = codec.frame_headers(payload, _STREAM_HEADERS)
        with self._lock:
            if CHUNK in found:
                self._early[_number(found[CHUNK])] = payload
            elif ERROR in found:  # cut short after END items, or before any
                self.last = payload
                self._end = _number(found[END]) if END in found else self._next
            elif END in found:
                self._end = _number(found[END])
            else:  # not a streaming handler or server: its one reply is the only item
                self._early[self._next] = payload
                self._end = self._next + 1
            while self._next in self._early:
                self._ready.put(self._early.pop(self._next))
                self._next += 1
            complete = self._end is not None and self._next >= self._end
        if complete:
            self._ready.put(None)
        return complete

    def get(self, timeout: float | None) -> bytes | None:
        """The next item, or None at the end, waiting up to *timeout* seconds for it.

        Raises:
            queue.Empty: Nothing came within *timeout*.
            RedisRPCError: The request failed on its way (``set_error()``).
        """
        payload = self._ready.get(timeout=timeout)
        if payload is None and self.error is not None:
            raise self.error
        return payload

    # As a sink: only failures come this way (a refused PUBLISH, a closed broker).
    def set_result(self, value: bytes) -> None:
        self.add(value)

    def set_error(self, error: BaseException) -> None:
        self.error = error
        self._ready.put(None)


def _number(text: str) -> int:
    try:
        return max(0, int(text))
    except ValueError:
        return 0
