"""Waiting helpers for tests: polls with deadlines, bounded callers and process output."""

from __future__ import annotations

import queue
import threading
import time
from concurrent.futures import Executor, Future
from typing import IO, TYPE_CHECKING, Any

import pytest

from redis_rpc import RedisBroker
from redis_rpc.errors import NoSubscriberError, RedisConnectionError
from tests.conftest import LONG_TIMEOUT, READY_TIMEOUT, SHORT_TIMEOUT

if TYPE_CHECKING:
    from collections.abc import Callable
    from types import TracebackType


def wait_for(predicate, timeout=SHORT_TIMEOUT, interval=0.01):
    """Poll *predicate* until it is true or *timeout* passes; return its last value."""
    deadline = time.monotonic() + timeout
    while not (result := predicate()) and time.monotonic() < deadline:
        time.sleep(interval)
    return result


def request_eventually(broker: RedisBroker, body: Any, **target: Any) -> Any:
    """Retry a request while the broker recovers from losing Redis; return the decoded reply."""
    deadline = time.monotonic() + LONG_TIMEOUT
    # The listener and consumers back off, so the first tries may fail, and a
    # channel consumer may not have subscribed again yet (NoSubscriberError).
    while True:
        try:
            return broker.request(body, **target, timeout=SHORT_TIMEOUT).decode()
        except (RedisConnectionError, NoSubscriberError, TimeoutError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


_Work = tuple["Future[Any]", "Callable[..., Any]", tuple[Any, ...], dict[str, Any]]


class Callers(Executor):
    """A fixed set of caller threads for a test, whose shutdown never hangs.

    Use it where a test would use ``with ThreadPoolExecutor(n) as pool``:
    that one's ``__exit__`` joins its workers without a bound, and the
    interpreter joins them again at exit, so a single stuck call hangs the
    whole run, even after pytest-timeout has failed the test. Leaving a
    ``with Callers(n)`` block cancels the calls that have not started, waits
    at most *timeout* seconds for the running ones, and fails the test if
    any is still running. The threads are daemons, so a stuck one cannot
    keep the process alive either.

    Args:
        max_workers: How many calls run at the same time.
        timeout: Seconds ``shutdown()`` waits for running calls; longer
            than any call the test makes, so that it only ever cuts off a hang.
        name: Prefix of the thread names (never ``redis_rpc:``, which the
            thread-leak check watches).
    """

    def __init__(
        self,
        max_workers: int,
        *,
        timeout: float = LONG_TIMEOUT + SHORT_TIMEOUT,
        name: str = "test-caller",
    ) -> None:
        self.timeout = timeout
        self._work: queue.SimpleQueue[_Work | None] = queue.SimpleQueue()
        self._lock = threading.Lock()  # guards _closed
        self._closed = False
        self._threads = [
            threading.Thread(target=self._serve, name=f"{name}-{n}", daemon=True)
            for n in range(max_workers)
        ]
        for thread in self._threads:
            thread.start()

    def submit(self, fn, /, *args, **kwargs):
        future: Future[Any] = Future()
        with self._lock:
            if self._closed:
                msg = "Cannot submit: these callers have been shut down."
                raise RuntimeError(msg)
            self._work.put((future, fn, args, kwargs))
        return future

    def map(self, fn, *iterables, timeout=None, chunksize=1):
        """Executor.map(), whose results are waited for up to ``timeout`` seconds in all by default."""
        if timeout is None:  # Executor.map() would wait for each result forever
            timeout = self.timeout
        return super().map(fn, *iterables, timeout=timeout, chunksize=chunksize)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Stop taking calls; with *wait*, wait up to ``timeout`` and fail the test on a stuck call."""
        with self._lock:
            already, self._closed = self._closed, True
        if cancel_futures:
            while True:
                try:
                    work = self._work.get_nowait()
                except queue.Empty:
                    break
                if work is not None:
                    work[0].cancel()
        if not already:
            for _ in self._threads:
                self._work.put(None)  # one stop sign per thread, after the work
        if wait and (stuck := self.join()):
            pytest.fail(
                f"Calls still running {self.timeout} s after the callers were shut down: {stuck}."
            )

    def join(self) -> list[str]:
        """Wait up to ``timeout`` seconds in all for the threads; return the names of those still running."""
        deadline = time.monotonic() + self.timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        return [thread.name for thread in self._threads if thread.is_alive()]

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # While an exception is on its way out, a stuck call is most likely
        # its consequence: report that exception, not the stuck call.
        self.shutdown(wait=exc_type is None, cancel_futures=True)
        if exc_type is not None:
            self.join()

    def _serve(self) -> None:
        # Blocks without a bound: the thread is a daemon, and shutdown() puts a
        # stop sign for every thread.
        while (work := self._work.get()) is not None:
            future, fn, args, kwargs = work
            if not future.set_running_or_notify_cancel():
                continue
            try:
                result = fn(*args, **kwargs)
            except BaseException as exc:  # noqa: BLE001 - handed to the caller through the future
                future.set_exception(exc)
            else:
                future.set_result(result)


class OutputLines:
    """The lines a child process prints, collected by a daemon thread, read with a deadline."""

    def __init__(self, stream: IO[str], name: str = "test-output-reader") -> None:
        self.name = name
        self._stream = stream
        self._lines: queue.Queue[str] = queue.Queue()
        self._reader = threading.Thread(target=self._read, name=name, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self._stream:
            self._lines.put(line.strip())

    def next(self, timeout: float = READY_TIMEOUT) -> str:
        """The next line printed, waiting at most *timeout* seconds.

        Fails the test if nothing was printed in time.
        """
        try:
            return self._lines.get(timeout=timeout)
        except queue.Empty:
            pytest.fail(f"{self.name}: the process printed nothing within {timeout} s.")

    def rest(self) -> list[str]:
        """The lines printed and not read yet, without waiting for more."""
        lines = []
        while True:
            try:
                lines.append(self._lines.get_nowait())
            except queue.Empty:
                return lines

    def close(self, timeout: float = LONG_TIMEOUT) -> None:
        """Wait for the reader, which ends once the process has gone, then close the pipe."""
        self._reader.join(timeout)
        if not self._reader.is_alive():
            self._stream.close()
