"""The pipe: one connection and one writer thread that every caller thread shares.

Every short command of the hot path (``PUBLISH``, ``RPUSH``, ``XADD``,
``XACK``, ``LREM``, ``MULTI``/``EXEC`` groups) used to borrow a connection
from redis-py's pool for one round trip: N concurrent calls cost N
connections, N syscall pairs and N pool checkouts, and the pool ran dry at
a few hundred threads. Here callers queue their commands with a deadline
and wait; one writer thread takes everything queued, sends it in one
write, and reads the replies in order, handing each caller its own. Between
two callers' replies it sends whatever was queued meanwhile, so that new
commands do not wait for the replies of earlier ones.

Only the writer thread touches the connection. A caller that found it
idle used to write and read for itself, saving a lone caller the hand-off
to the writer and back; measured with ``benchmarks/mechanisms.py`` it
bought 1.05x to 1.12x on one caller's latency and cost up to 0.8x of the
rate of 32 callers on a stream, so every call goes through the queue.

The guarantees, each stated where it is kept:

- the queue is bounded: a full queue makes callers wait for room, up to
  their deadline, instead of growing;
- a caller never waits past its deadline, whatever Redis does; a command
  whose deadline passed before it was written is dropped, not sent late;
- a failed connection fails exactly the commands written on it and not yet
  answered (they may have been applied), and those not yet written are
  failed as not sent;
- the connection is opened again with backoff.

This module knows nothing of redis-py: it drives a :class:`Link`, which
``_io.link`` implements over a redis-py connection and unit tests fake.
"""

from __future__ import annotations

import collections
import copy as _copy_module
import enum
import logging
import threading
import time
from typing import TYPE_CHECKING, Protocol

from redis_rpc._backoff import Backoff
from redis_rpc._latch import Latch
from redis_rpc.errors import BrokerClosedError, RedisConnectionError, RedisRPCError

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from redis_rpc._io.commands import Args
    from redis_rpc._io.interfaces import Outcome

logger = logging.getLogger(__name__)

# Enough for thousands of callers at once, small enough that a stalled Redis
# holds at most a few megabytes of typical frames in this process.
DEFAULT_MAX_QUEUED = 4096
# Calls per write: bounds the size of one write.
MAX_BATCH = 512
# After a failed connection attempt, calls fail at once for a while rather
# than each waiting for a connection that is not there; short, so that
# calls work again soon after Redis is back.
RECONNECT = Backoff(start=0.05, cap=1.0)


class Link(Protocol):
    """One connection to Redis, used by the writer thread alone."""

    def send(self, commands: Sequence[Args]) -> None:
        """Write every command, in order, in as few writes as possible.

        Raises:
            RedisConnectionError: The connection failed; it is closed.
        """

    def read(self) -> object:
        """The next reply; an error reply is returned, not raised, as a ``RedisRPCError``.

        Raises:
            RedisConnectionError: The connection failed or Redis did not
                answer in time; it is closed.
        """

    def ready(self) -> bool:
        """Whether a reply has been received already, so that ``read()`` will not wait."""

    def wait(self, timeout: float) -> bool:
        """Whether a reply is ready to read within *timeout* seconds.

        Raises:
            RedisConnectionError: The connection failed; it is closed.
        """

    def check(self) -> None:
        """Make sure the connection still works before writing, reopening it if it went stale.

        Raises:
            RedisConnectionError: It cannot be reopened; nothing was sent.
        """

    def close(self) -> None:
        """Close the connection; never raises."""

    def oversized(self, commands: Sequence[Args]) -> RedisRPCError | None:
        """Why Redis would drop the connection on *commands* instead of running them (an argument too long), or ``None``."""


class Posted:
    """The outcome of commands nobody waits on: it logs what went wrong.

    Args:
        what: What the commands do, for the log line, such as "the reply or ack of ...".
    """

    __slots__ = ("_what",)

    def __init__(self, what: str) -> None:
        self._what = what

    def set_result(self, value: list[object]) -> None:
        for reply in value:
            # EXEC answers with a list, which holds the refusals of its commands.
            for item in reply if isinstance(reply, list) else (reply,):
                if isinstance(item, Exception):
                    logger.warning("Redis refused %s: %s", self._what, item)

    def set_error(self, error: RedisRPCError) -> None:
        logger.warning("Could not send %s: %s", self._what, error)


class _State(enum.Enum):
    QUEUED = "QUEUED"  # in the queue; the caller may still take it back
    TAKEN = "TAKEN"  # the writer has it: it may be written at any moment
    CANCELLED = "CANCELLED"  # its caller gave up before the writer took it


class _Entry:
    """Commands that go out together and whose replies go to one waiter."""

    __slots__ = ("commands", "deadline", "state", "waiter")

    def __init__(
        self,
        commands: Sequence[Args],
        deadline: float,
        waiter: Latch[list[object]] | Outcome,
    ) -> None:
        self.commands = commands
        self.deadline = deadline  # time.monotonic()
        self.state = _State.QUEUED
        self.waiter = waiter


class Pipe:
    """Commands from any number of threads, written in batches on one connection.

    Safe to use from any number of threads at once. The writer thread starts
    with the first command.

    Args:
        connect: Opens a connection; raises ``RedisRPCError`` when it cannot.
        address: Where Redis is, for messages (never the URL: it may hold a password).
        max_queued: How many calls may wait to be written; more callers wait for room.
    """

    def __init__(
        self,
        connect: Callable[[], Link],
        *,
        address: str,
        max_queued: int = DEFAULT_MAX_QUEUED,
        max_batch: int = MAX_BATCH,
        name: str = "redis_rpc:writer",
    ) -> None:
        """*name*: of the writer thread."""
        self._name = name
        self._connect = connect
        self._address = address
        self._max_queued = max_queued
        self._max_batch = max_batch
        # Guards _queue, each queued entry's state, _closing, _thread,
        # _down_until, _down_error, _backoff, _writer_waits and _room_waiters;
        # held for list operations only, never I/O.
        self._lock = threading.Lock()
        self._work = threading.Condition(self._lock)  # something was queued, or close()
        self._room = threading.Condition(self._lock)  # the queue has room again
        self._queue: collections.deque[_Entry] = collections.deque()
        self._closing = False
        self._flush_until = 0.0  # once closing: when to stop writing what is queued
        self._thread: threading.Thread | None = None
        # After a failed connection attempt: until when calls fail at once,
        # why, and the schedule of the attempts that follow.
        self._down_until = 0.0
        self._down_error: RedisRPCError | None = None
        self._backoff = RECONNECT
        self._link: Link | None = None  # the writer thread's alone
        # Who waits on the conditions, so that nobody notifies an empty room.
        self._writer_waits = False
        self._room_waiters = 0
        self.batches = 0  # writes so far, for tests and benchmarks
        self.written = 0  # calls written so far

    def __repr__(self) -> str:
        return (
            f"<Pipe {self._address} queued={len(self._queue)} batches={self.batches}>"
        )

    @property
    def used(self) -> bool:
        """Whether this pipe opened its connection or started its writer thread."""
        return self._thread is not None or self._link is not None

    @property
    def down(self) -> bool:
        """Whether the last attempt to connect failed: calls fail at once for a while."""
        return self._down_error is not None  # read without the lock: a hint

    def submit(self, commands: Sequence[Args], deadline: float) -> list[object]:
        """Send *commands* together and return their replies, in order.

        An error reply is returned in its place as a ``RedisRPCError``.

        Args:
            deadline: A ``time.monotonic()`` time: this call returns by
                then whatever Redis does, and the commands are not written
                after it.

        Raises:
            RedisConnectionError: Not sent, or sent but not answered, by
                *deadline*, or the connection failed; ``maybe_applied``
                says whether Redis may have run the commands.
            BrokerClosedError: The pipe has been closed.
        """
        waiter: Latch[list[object]] = Latch()
        entry = _Entry(commands, deadline, waiter)
        self._start(entry)
        if waiter.wait(deadline - time.monotonic()):
            return waiter.result()
        with self._lock:
            taken = entry.state is not _State.QUEUED
            if not taken:
                entry.state = _State.CANCELLED
                self._queue.remove(entry)
                self._room.notify()
        if taken and waiter.wait(0):  # answered while we were deciding
            return waiter.result()
        msg = f"Redis at {self._address} did not answer in time"
        raise RedisConnectionError(
            _sentence(msg, applied=taken), reason="timeout", maybe_applied=taken
        )

    def post(
        self,
        commands: Sequence[Args],
        deadline: float,
        outcome: Outcome,
    ) -> None:
        """Send *commands* together, without waiting for their replies.

        For what nobody waits on as such: a server's replies and acks, or a
        request, whose caller waits for the reply instead. *outcome* is
        told what Redis answered, or why the commands failed, on whichever
        thread finds out. Waits only when the queue is full, up to *deadline*.

        Raises:
            RedisConnectionError: Redis is known to be down, or the queue
                stayed full until *deadline*; not sent.
            BrokerClosedError: The pipe has been closed.
        """
        self._start(_Entry(commands, deadline, outcome))

    def _start(self, entry: _Entry) -> None:
        """Queue *entry* for the writer, refusing it at once while Redis is known to be down."""
        with self._lock:
            self._refuse_if_closing()
            if self._down_error is not None and time.monotonic() < self._down_until:
                raise _not_sent(self._down_error)
            if len(self._queue) < self._max_queued and self._thread is not None:
                self._queue.append(entry)  # the common case, under the same lock
                if self._writer_waits:
                    self._work.notify()
                return
        self._enqueue(entry)

    def _enqueue(self, entry: _Entry) -> None:
        """Queue *entry* for the writer, waiting for room up to its deadline.

        Raises:
            RedisConnectionError: No room before the deadline; not sent.
            BrokerClosedError: The pipe was closed meanwhile.
        """
        with self._lock:
            while len(self._queue) >= self._max_queued:
                self._refuse_if_closing()  # close() may come while we wait for room
                remaining = entry.deadline - time.monotonic()
                if remaining <= 0:
                    msg = f"Redis at {self._address} did not take the command in time: {len(self._queue)} calls were still waiting to be written"
                    raise RedisConnectionError(
                        _sentence(msg, applied=False),
                        reason="timeout",
                        maybe_applied=False,
                    )
                self._room_waiters += 1
                try:
                    self._room.wait(min(remaining, threading.TIMEOUT_MAX))
                finally:
                    self._room_waiters -= 1
            self._queue.append(entry)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name=self._name, daemon=True
                )
                self._thread.start()
            if self._writer_waits:
                self._work.notify()

    def _refuse_if_closing(self) -> None:
        if self._closing:
            msg = f"Cannot send to Redis at {self._address}: the connection has been closed."
            raise BrokerClosedError(msg)

    def close(self, timeout: float) -> bool:
        """Write what is queued, for up to *timeout* seconds, then stop; idempotent.

        Calls still queued after *timeout* fail as not sent.

        Returns:
            Whether the writer thread stopped in time.
        """
        with self._lock:
            if not self._closing:
                self._closing = True
                self._flush_until = time.monotonic() + timeout
            thread = self._thread
            self._work.notify_all()
            self._room.notify_all()
        if thread is None:
            return True
        thread.join(timeout + 1.0)  # the writer's last read is bounded by the link
        return not thread.is_alive()

    def abandon(self) -> None:
        """Forget the parent's writer in a forked child, where it does not run.

        Takes no lock and closes nothing: a parent thread may have held a
        lock at the fork, and the socket is the parent's too. Like
        redis-py's pool after a fork, the child just forgets it.
        """
        self._link = None

    # -- the writer thread ---------------------------------------------------

    def _take(self, *, idle: bool, full: bool) -> list[_Entry] | None:
        """The next batch to write.

        Waits for work only when *idle* (nothing in flight); takes no new
        batch when *full* (as many calls in flight as may be queued).
        Returns None once closed, flushed and idle.
        """
        with self._lock:
            if idle:
                while not (self._queue or self._closing):
                    # Bounded, as every wait; nothing to do but wait again.
                    self._writer_waits = True
                    try:
                        self._work.wait(1.0)
                    finally:
                        self._writer_waits = False
            flushed = self._closing and (
                not self._queue or time.monotonic() > self._flush_until
            )
            if flushed and idle:
                return None
            batch: list[_Entry] = []
            while (
                self._queue and len(batch) < self._max_batch and not (flushed or full)
            ):
                entry = self._queue.popleft()
                entry.state = _State.TAKEN
                batch.append(entry)
            if self._room_waiters:
                self._room.notify(len(batch))
        return batch

    def _run(self) -> None:
        # Written and not yet answered, oldest first: replies come in this order.
        in_flight: collections.deque[_Entry] = collections.deque()
        try:
            while (
                batch := self._take(
                    idle=not in_flight, full=len(in_flight) >= self._max_queued
                )
            ) is not None:
                # Written before reading: what was queued meanwhile goes out
                # while earlier replies are still on their way. Nothing of the
                # batch may outlive this step: the next _take() may wait long,
                # and a frame can be hundreds of megabytes.
                self._write(batch, in_flight)
                del batch
                if in_flight:
                    self._read_one(in_flight)
                # Replies already received cost no wait: take them all now.
                while in_flight and self._link is not None and self._link.ready():
                    self._read_one(in_flight)
        except BaseException:
            logger.critical("The Redis writer thread died", exc_info=True)
            raise
        finally:
            self._shut()

    def _shut(self) -> None:
        with self._lock:
            self._closing = True
            left = list(self._queue)
            self._queue.clear()
            for entry in left:  # their callers must not look for them in the queue
                entry.state = _State.TAKEN
            self._room.notify_all()
        error = BrokerClosedError(
            f"Cannot send to Redis at {self._address}: the connection was closed before this was written."
        )
        for entry in left:
            entry.waiter.set_error(error)
        if self._link is not None:
            self._link.close()
            self._link = None

    def _write(self, batch: list[_Entry], in_flight: collections.deque[_Entry]) -> None:
        """Write the calls of *batch* still within their deadline, and add them to *in_flight*."""
        now = time.monotonic()
        live = [entry for entry in batch if entry.deadline > now]
        for entry in batch:
            if entry.deadline <= now:
                # Written after its caller stopped waiting, it would be a surprise.
                entry.waiter.set_error(self._late())
        if not live:
            return
        # With replies due, the connection is known to work (and a
        # staleness check would mistake those replies for stray data).
        link = self._link if in_flight else self._open(live)
        if link is None:
            return
        refused = [(entry, link.oversized(entry.commands)) for entry in live]
        if any(error is not None for _, error in refused):
            live = []
            for entry, error in refused:
                if error is None:
                    live.append(entry)
                else:  # sending it would cost the connection
                    entry.waiter.set_error(error)
            if not live:
                return
        try:
            link.send([command for entry in live for command in entry.commands])
        except RedisRPCError as exc:
            self._lost(exc, [*in_flight, *live])
            in_flight.clear()
            return
        self.batches += 1
        self.written += len(live)
        in_flight.extend(live)

    def _read_one(self, in_flight: collections.deque[_Entry]) -> None:
        """Read the replies of the oldest call in flight; on failure, fail every call in flight."""
        entry, link = in_flight[0], self._link
        try:
            if link is None:  # cannot happen: calls in flight keep it open
                msg = f"The connection to Redis at {self._address} was closed with calls in flight."
                raise RedisConnectionError(msg)
            replies = [link.read() for _ in entry.commands]
        except RedisRPCError as exc:
            self._lost(exc, list(in_flight))
            in_flight.clear()
            return
        in_flight.popleft()
        entry.waiter.set_result(replies)

    def _late(self) -> RedisConnectionError:
        msg = f"Redis at {self._address} did not take the command in time"
        return RedisConnectionError(
            _sentence(msg, applied=False), reason="timeout", maybe_applied=False
        )

    def _open(self, batch: list[_Entry]) -> Link | None:
        """The connection, opened if need be; on failure, fail *batch* as not sent."""
        try:
            if self._link is None:
                self._link = self._connect()
            else:  # Redis may have closed it while it was idle
                self._link.check()
        except RedisRPCError as exc:
            if self._link is not None:
                self._link.close()
                self._link = None
            with self._lock:
                first = self._down_error is None
                self._down_error = exc
                self._down_until = time.monotonic() + self._backoff.delay()
                self._backoff = self._backoff.after_failure()
            if first:
                logger.warning("Cannot connect to Redis at %s: %s", self._address, exc)
            for entry in batch:
                entry.waiter.set_error(_not_sent(exc))
            return None
        with self._lock:
            was_down, self._down_error = self._down_error is not None, None
            self._backoff = RECONNECT
        if was_down:
            logger.info("Connected to Redis at %s again", self._address)
        return self._link

    def _lost(self, error: RedisRPCError, unanswered: list[_Entry]) -> None:
        """The connection failed with *unanswered* written: they may have run."""
        if self._link is not None:
            self._link.close()
            self._link = None
        logger.warning(
            "Lost the connection to Redis at %s with %d call(s) unanswered: %s",
            self._address,
            len(unanswered),
            error,
        )
        for entry in unanswered:
            entry.waiter.set_error(_maybe_applied(error))


def _sentence(text: str, *, applied: bool) -> str:
    outcome = "it may have been applied" if applied else "it was not sent"
    return f"{text.rstrip().rstrip('.')}; {outcome}."


def _copy(error: RedisRPCError, *, applied: bool) -> RedisRPCError:
    """A fresh exception for one caller: raising one instance in several threads mixes tracebacks."""
    copy: RedisRPCError
    if isinstance(error, RedisConnectionError):
        copy = RedisConnectionError(
            _sentence(str(error), applied=applied),
            reason=error.reason,
            maybe_applied=applied,
        )
    else:  # a command refused while connecting, such as a bad password
        copy = _copy_module.copy(error)
    copy.__cause__ = error.__cause__ or error
    return copy


def _not_sent(error: RedisRPCError) -> RedisRPCError:
    return _copy(error, applied=False)


def _maybe_applied(error: RedisRPCError) -> RedisRPCError:
    return _copy(error, applied=True)
