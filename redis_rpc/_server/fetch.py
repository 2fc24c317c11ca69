"""The fetch loop of list and stream consumers: one thread per subscriber, its workers beside it.

One consumer thread per subscriber fetches messages through its transport's
``Source`` (``_server.lists``, ``_server.streams``) and hands each to the
``Processor``: on the consumer thread itself when ``max_workers == 1``,
which keeps order, or on a ``WorkerPool`` of daemon threads otherwise. A
slot from a bounded semaphore is taken *before* each fetch and given back
when the message is done, so a consumer never takes out of Redis more than
its workers can start on. Under a backlog, one fetch takes several
messages, one per free worker: the batch doubles while fetches come back
full, and falls back to one when they do not.

With several workers and typically quick handlers, the consumer thread
handles a batch itself rather than hand each message to a worker, which
costs more than such a handler; should one overrun, the broker's ``Watch``
has the consumer ``relieve()`` it: a new consumer thread takes over the
fetching, and the waiting messages go to the workers. Which thread fetches
is decided under ``_role_lock`` only, by the relieving side and by the
stuck thread when its handler returns, so that two threads never read
through the one ``Reader``.

What the handlers produce (replies, acks) rides with the next read when
one is coming (see ``_server.owed``).
"""

from __future__ import annotations

import collections
import functools
import itertools
import logging
import threading
import time
from typing import TYPE_CHECKING, Protocol

import attrs

from redis_rpc._backoff import Backoff
from redis_rpc._io.commands import Publish
from redis_rpc._server.model import Settlement
from redis_rpc._server.owed import Owed
from redis_rpc._server.workers import WorkerPool
from redis_rpc.errors import RedisRPCError

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from redis_rpc._io.commands import Command
    from redis_rpc._io.interfaces import Backend, Reader
    from redis_rpc._server.model import Delivery, Subscriber
    from redis_rpc._server.process import Processor
    from redis_rpc._wire.schemas import ListSub, StreamSub

logger = logging.getLogger(__name__)

# The first fetch waits at most this long: it proves that Redis lets us
# read (an ACL may not), and start() waits for it.
_FIRST_FETCH_TIMEOUT = 0.01

# Replies go to channels under this prefix; nobody listens on this one.
PERMISSION_PROBE_CHANNEL = "redis_rpc.reply.permission-check"

# A subscriber whose handlers typically return within this many seconds has
# them run on the consumer thread itself, batch by batch, with no hand-off
# to a worker (which costs more than such a handler).
_INLINE_BELOW = 0.001
# How many entries a stream consumer with one worker and quick handlers
# reads at once: they stay pending, its own until acknowledged, and are
# handled back to back, their replies and acks riding with the next read.
READ_AHEAD = 16


class Watching(Protocol):
    """What relieves a fetching thread stuck in an inline handler: ``_server.watch.Watch``."""

    def add(self, consumer: FetchingConsumer) -> None:
        """Watch *consumer*; before it starts."""

    def poke(self) -> None:
        """Say that a handler runs inline now."""


class Source(Settlement, Protocol):
    """One transport's side of a fetching consumer: where messages come from, and how they settle.

    Its methods run on the consumer thread only.
    """

    # The list or stream read: in a cluster, what rides with a read must be on its master.
    key: str
    # How many messages a fetch may take whatever the free workers (ListSub(prefetch=)).
    prefetch: int
    # Whether messages read ahead stay in Redis until settled (stream entries
    # stay pending), so that a consumer with one worker may read ahead.
    keeps_read: bool

    def open(self) -> None:
        """Create the group, register the heartbeat, or check the connection."""

    def maintain(self) -> None:
        """Periodic work between fetches, such as recovering dead consumers' messages."""

    def fetch(
        self, reader: Reader, owed: Owed, timeout: float, count: int
    ) -> list[Delivery]:
        """Take at most *count* messages, waiting up to *timeout* seconds for the first."""

    def probes(self) -> list[Command]:
        """Harmless commands the consumer will run later (acks), to check the ACL at start."""


def run_logged(name: str, loop: Callable[[], None]) -> None:
    """Run a thread's *loop*, logging its death, which only a bug can cause, as critical."""
    try:
        loop()
    except BaseException:
        logger.critical("%s died", name, exc_info=True)
        raise


def log_failure(name: str, error: Exception) -> None:
    """Say that the loop of *name* failed and retries: once per outage, not per retry.

    Our own errors (Redis went away, refused a command) are warnings; any
    other is a bug somewhere and is logged as an error with its traceback.
    """
    level = logging.WARNING if isinstance(error, RedisRPCError) else logging.ERROR
    logger.log(
        level,
        "%s failed, retrying with backoff: %s",
        name,
        error,
        exc_info=level == logging.ERROR,
    )


def dead_letter_key(backend: Backend, source: ListSub | StreamSub) -> str:
    """The dead-letter list or stream; by default, in a cluster, on the source's slot."""
    if source.dead_letter == f"{source.name}:dead":
        return backend.companion(source.name, ":dead")
    return source.dead_letter


def reader_exit_bound(poll_interval: float) -> float:
    """How long a reader thread may take to notice a stop: a slot wait, a fetch, a margin."""
    return 2 * poll_interval + 0.5


class FetchingConsumer:
    """Runs one list or stream subscriber: a named thread fetching from Redis, plus its workers.

    ``start()``, ``stop()``, ``join_reader()``, ``drain()``, ``busy()`` and
    ``relieve()`` may be called from any thread; the rest runs on the
    fetching thread.
    """

    def __init__(
        self,
        processor: Processor,
        source: Source,
        backend: Backend,
        *,
        poll_interval: float,
        watch: Watching | None = None,
    ) -> None:
        """*watch*: relieves the fetching thread of an overrunning inline handler; without one, nothing runs inline."""
        self.processor = processor
        self.subscriber: Subscriber = processor.subscriber
        self.name = processor.name
        # Set once the source is open and a first fetch came back: Redis
        # lets us read it.
        self.ready = threading.Event()
        # Why the consumer is not consuming, while it is not; read by start().
        self.error: Exception | None = None
        self._source = source
        self._backend = backend
        self._poll_interval = poll_interval
        self._stopping = threading.Event()
        self._batch = 1  # how many messages the next fetch may take
        workers = self.subscriber.max_workers
        self._slots = threading.BoundedSemaphore(workers)
        self._pool = WorkerPool(workers, self.name) if workers > 1 else None
        self._watch = watch if self._pool is not None else None
        if self._watch is not None:
            self._watch.add(self)
        # Guards _fetcher, _spare and inline_since; never held for I/O.
        self._role_lock = threading.Lock()
        # The one thread that fetches, and reads through _reader; relieve()
        # replaces it, with a successor named after it (name#2, name#3, ...).
        self._fetcher = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._successors = itertools.count(2)
        # Fetched messages the fetching thread will handle itself, in order.
        self._spare: collections.deque[Delivery] = collections.deque()
        # When the inline handler now running started; 0.0 when none is.
        self.inline_since = 0.0
        # State of the fetching thread alone.
        self._is_open = False
        self._backoff = Backoff()
        # The blocking reads' own connection, which also carries what the
        # handlers produced since the previous read; opened on first use.
        self._reader: Reader | None = None
        self._owed = Owed(
            backend, f"the replies or acks of {self.name}", key=source.key
        )

    @property
    def exit_bound(self) -> float:
        """How long the consume loop may take to notice ``stop()``."""
        return reader_exit_bound(self._poll_interval)

    def start(self) -> None:
        self._fetcher.start()

    def stop(self) -> None:
        """Ask the loop to stop taking messages; it does within one poll interval."""
        self._stopping.set()

    def join_reader(self, timeout: float) -> bool:
        """Wait up to *timeout* seconds for the consume loop to end; True if it did."""
        deadline = time.monotonic() + timeout
        while True:
            with self._role_lock:
                thread = self._fetcher
            if thread.ident is not None:  # started
                thread.join(max(0.0, deadline - time.monotonic()))
            with self._role_lock:
                if thread is self._fetcher:  # not relieved meanwhile
                    return not thread.is_alive()
            if time.monotonic() >= deadline:
                return False

    def drain(self, timeout: float) -> bool:
        """Wait up to *timeout* seconds for in-flight handlers, then let the workers go.

        Call after ``join_reader()``: a message the loop popped must still
        reach a worker, so the workers are shut down only once it ended.

        Returns:
            Whether every handler finished in time. Those that did not keep
            running on daemon threads, which do not keep the process alive.
        """
        deadline = time.monotonic() + timeout
        taken = 0
        # Holding every slot means no handler is running any more.
        while taken < self.subscriber.max_workers and self._slots.acquire(
            timeout=max(0.0, deadline - time.monotonic())
        ):
            taken += 1
        with self._role_lock:
            fetcher = self._fetcher
        finished = taken == self.subscriber.max_workers and not fetcher.is_alive()
        if self._pool is not None and not fetcher.is_alive():
            # Idle workers end at once; busy ones are not waited for.
            self._pool.shutdown(timeout=0.0 if not finished else timeout)
        return finished

    def busy(self) -> list[str]:
        """What the handlers still running are busy with, one line each."""
        return self.processor.busy()

    def relieve(self, since: float) -> None:
        """Take the fetching away from the thread stuck in an inline handler since *since*.

        Called by the ``Watch``. The messages of its batch that were
        waiting go to the workers, and a successor thread fetches on; the
        stuck one ends once its handler returns. Nothing happens if that
        handler returned meanwhile, or the consumer is stopping (the stuck
        thread then finishes the batch and ends the loop itself).
        """
        with self._role_lock:
            if self.inline_since != since or self._stopping.is_set():
                return
            assert self._pool is not None  # only consumers with workers are watched
            self.inline_since = 0.0  # tells the stuck thread that it was relieved
            waiting, ahead = 0, []
            while self._spare:
                delivery = self._spare.popleft()
                if not delivery.slot:  # read ahead: the successor starts it
                    ahead.append(delivery)
                    continue
                self._pool.submit(functools.partial(self._handle, delivery))
                waiting += 1
            self._spare.extend(ahead)
            self._fetcher = self._successor()
            self._fetcher.start()
        logger.debug(
            "%s: a handler has run inline for %.3f s; a new thread fetches, %d waiting message(s) went to workers",
            self.name,
            time.monotonic() - since,
            waiting,
        )

    def _successor(self) -> threading.Thread:
        """The thread that takes the fetching over from a relieved one; under ``_role_lock``."""
        return threading.Thread(
            target=self._run,
            name=f"{self.name}#{next(self._successors)}",
            daemon=True,
        )

    # -- the fetching thread -------------------------------------------------

    def _run(self) -> None:
        run_logged(threading.current_thread().name, self._loop)

    def _fetching(self, me: threading.Thread) -> bool:
        with self._role_lock:
            return self._fetcher is me

    def _loop(self) -> None:
        me = threading.current_thread()
        try:
            while not self._stopping.is_set():
                try:
                    if not self._is_open:
                        self._source.open()
                        self._check_permissions()
                        self._is_open = True
                    self._source.maintain()
                    if not self._step():
                        return  # relieved: the successor fetches on
                    if (
                        self.error is not None
                    ):  # only a fetch that worked proves recovery
                        if self._backoff.failures:
                            logger.info("%s is consuming again", self.name)
                        self.error, self._backoff = None, Backoff()
                except Exception as exc:  # noqa: BLE001 - the loop must outlive any error
                    if self.error is None:
                        log_failure(self.name, exc)
                    self.error = exc
                    self._close()
                    self._is_open = False
                    self._stopping.wait(self._backoff.delay())
                    self._backoff = self._backoff.after_failure()
        finally:
            if self._fetching(me):  # a relieved thread leaves it to its successor
                self._close()

    def _check_permissions(self) -> None:
        """Prove, before ``start()`` returns, that an ACL lets us answer and settle too.

        The first fetch proves that we may read.
        """
        probes = self._source.probes()
        if not self.subscriber.no_reply:
            probes = [Publish(PERMISSION_PROBE_CHANNEL, b""), *probes]
        if probes:
            self._backend.execute_many(probes)

    def _close(self) -> None:
        """Send what is owed, and drop the reader's connection; never raises."""
        self._owed.flush()
        if self._reader is not None:
            self._reader.close()

    def _step(self) -> bool:
        """Fetch once and start on what came; False once this thread was relieved."""
        with self._role_lock:
            left = bool(self._spare)
        if left:  # read ahead, left by a relieved thread: before anything new
            return self._handle_spare()
        if not self._slots.acquire(timeout=self._poll_interval):
            return True  # every worker is busy: leave the message in Redis
        if self._stopping.is_set():  # stop() came while we waited for a worker
            self._slots.release()
            return True
        taken = 1  # slots held: one message may be fetched per slot, never more
        while taken < self._batch and self._slots.acquire(blocking=False):
            taken += 1
        # Until the first fetch came back, start() is waiting: keep it short.
        timeout = self._poll_interval if self.ready.is_set() else _FIRST_FETCH_TIMEOUT
        # A list may read ahead of its free workers, where the user said so;
        # a stream consumer with one worker, while its handlers are quick.
        count = max(taken, self._source.prefetch)
        if self._source.keeps_read and self._pool is None and self._quick():
            count = max(count, READ_AHEAD)
        if self._reader is None:
            self._reader = self._backend.reader()
        try:
            deliveries = self._source.fetch(self._reader, self._owed, timeout, count)
        except BaseException:
            for _ in range(taken):
                self._slots.release()
            raise
        finally:
            self._owed.flush()  # in case the fetch did not read: a claim, an error
        self._owed.reopen()  # what the handlers send goes with the next read
        self.ready.set()
        for _ in range(taken - len(deliveries)):
            self._slots.release()
        if len(deliveries) > taken:  # the ones read ahead take a slot when they start
            deliveries[taken:] = [
                attrs.evolve(delivery, slot=False) for delivery in deliveries[taken:]
            ]
        full = len(deliveries) >= taken
        self._batch = min(2 * taken, self.subscriber.max_workers) if full else 1
        if self._pool is not None and (self._watch is None or not self._quick()):
            for delivery in deliveries:
                if not delivery.slot:  # read ahead: it waits for a worker of our own
                    self._wait_for_slot()
                self._pool.submit(functools.partial(self._handle, delivery))
            return True
        # Handled here, one after the other: the next fetch carries their
        # replies. Should a handler overrun, the watch relieves this thread.
        with self._role_lock:
            self._spare.extend(deliveries)
        return self._handle_spare()

    def _quick(self) -> bool:
        return self.processor.counter.typical < _INLINE_BELOW

    def _handle_spare(self) -> bool:
        """Handle the batch on this thread, in order, until done; False once relieved.

        A message read ahead of the free workers waits for a slot here: a
        handler holding one always finishes (``close()`` bounds how long it
        is waited for), and no message is handed on without one.
        """
        while True:
            with self._role_lock:
                if not self._spare:
                    return True
                delivery = self._spare.popleft()
            if not delivery.slot:
                self._wait_for_slot()
            if self._watch is None:  # one worker: nobody to hand the rest to
                self._handle(delivery)
                continue
            with self._role_lock:
                since = self.inline_since = time.monotonic()
            self._watch.poke()
            self._handle(delivery)
            with self._role_lock:
                if self.inline_since != since:  # relieve() took the fetching over
                    return False
                self.inline_since = 0.0

    def _wait_for_slot(self) -> None:
        """Take a slot for a message read ahead, however long its handlers take.

        A handler holding one always finishes, or ``close()`` gives up on
        it after ``graceful_timeout``, leaving this daemon thread behind.
        """
        while not self._slots.acquire(timeout=self._poll_interval):
            pass

    def _handle(self, delivery: Delivery) -> None:
        """Process one message and send what it produced. Never raises."""
        try:
            done = self.processor.run(delivery)
            if done.commands:  # nobody waits: a failure is logged
                self._owed.send(
                    done.commands, atomic=done.atomic, deadline=done.send_by()
                )
        except RedisRPCError as exc:  # Redis went away: the consume loop says so too
            logger.warning("%s could not send the reply or ack: %s", self.name, exc)
        except Exception:
            logger.exception("%s could not send the reply or ack", self.name)
        finally:
            self._slots.release()


def stop_all(consumers: Sequence[Consumer], timeout: float) -> list[str]:
    """Stop *consumers* together and wait up to *timeout* seconds for their handlers.

    Each loop gets at least its ``exit_bound`` to return from the fetch it
    is in, however short *timeout* is, so the whole wait is bounded by the
    longer of the two, whatever the handlers do.

    Returns:
        One line for each handler still running, naming it and its message.
    """
    for consumer in consumers:
        consumer.stop()
    start = time.monotonic()
    deadline = start + timeout
    reader_deadline = start + max(
        [timeout] + [consumer.exit_bound for consumer in consumers]
    )
    for consumer in consumers:
        consumer.join_reader(max(0.0, reader_deadline - time.monotonic()))
    late: list[str] = []
    for consumer in consumers:
        if not consumer.drain(max(0.0, deadline - time.monotonic())):
            late += consumer.busy() or [f"{consumer.name} (its consume loop)"]
    return late


class Consumer(Protocol):
    """What the broker needs of every consumer: ``FetchingConsumer`` and ``ChannelConsumer``."""

    name: str
    processor: Processor
    subscriber: Subscriber
    ready: threading.Event
    error: Exception | None

    @property
    def exit_bound(self) -> float:
        """How long the consumer may take to notice ``stop()``."""

    def start(self) -> None:
        """Start consuming; returns at once."""

    def stop(self) -> None:
        """Take no more messages."""

    def join_reader(self, timeout: float) -> bool:
        """Wait up to *timeout* seconds for the loop to end; True if it did."""

    def drain(self, timeout: float) -> bool:
        """Wait up to *timeout* seconds for in-flight handlers; True if they finished."""

    def busy(self) -> list[str]:
        """What the handlers still running are busy with, one line each."""
