"""``WorkerPool``: the handler threads of one subscriber, or of many channel subscribers.

It has the shape of ``concurrent.futures.ThreadPoolExecutor`` (threads
started as work arrives, ``submit()`` refused after ``shutdown()``), with
one difference that matters for a server: its threads are daemons.
``ThreadPoolExecutor`` joins its workers when the interpreter exits, so a
handler that never returns keeps the process alive for ever after
``close()`` gave up on it, and SIGTERM never ends the service. Here
``close()`` waits for handlers up to ``graceful_timeout``, names the ones
that overran, and the process may exit.

There is no result and no future: a handler's outcome is sent to Redis by
the handler's own thread. The consumer's slots bound how much is queued.
"""

from __future__ import annotations

import collections
import threading
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable


class WorkerPool:
    """Runs callables on up to *max_workers* daemon threads named *name*``:worker_<n>``.

    One subscriber's pool, or one shared by many channel subscribers.

    Threads are started as work arrives, and only while no started thread
    is idle: an idle one is counted exactly, so work is never left queued
    behind a busy thread while the limit allows another. A thread that
    finishes a task takes the next queued one at once, with no hand-off.
    ``submit()`` and ``shutdown()`` may be called from any thread.
    """

    # How long an idle worker sleeps before checking again; a submit wakes it sooner.
    _IDLE_CHECK = 1.0

    def __init__(self, max_workers: int, name: str) -> None:
        self._max_workers = max_workers
        self._name = name
        # Guards _queue, _idle, _threads and _shut_down.
        self._lock = threading.Lock()
        self._work_arrived = threading.Condition(self._lock)
        self._queue: collections.deque[Callable[[], None]] = collections.deque()
        self._idle = 0  # workers waiting on _work_arrived
        self._threads: list[threading.Thread] = []
        self._shut_down = False

    @property
    def threads(self) -> int:
        return len(self._threads)

    def submit(self, work: Callable[[], None]) -> None:
        """Run *work* on a worker thread; it must not raise.

        Raises:
            RuntimeError: The pool has been shut down.
        """
        with self._lock:
            if self._shut_down:
                msg = "Cannot take work: the worker pool has been shut down."
                raise RuntimeError(msg)
            self._queue.append(work)
            # Each idle worker takes one task when it wakes; start a thread
            # only for tasks that no idle worker will take.
            if self._idle >= len(self._queue):
                self._work_arrived.notify()
                return
            if len(self._threads) >= self._max_workers:
                return  # the next thread to finish a task takes it
            thread = threading.Thread(
                target=self._work,
                name=f"{self._name}:worker_{len(self._threads)}",
                daemon=True,
            )
            # Started under the lock, so that shutdown() finds every thread running.
            thread.start()
            self._threads.append(thread)

    def shutdown(self, timeout: float) -> bool:
        """Refuse new work, let the workers finish what is queued, wait up to *timeout* seconds.

        Returns:
            Whether every worker ended in time. Those that did not are left
            running; as daemons, they do not keep the process alive.
        """
        with self._lock:
            self._shut_down = True
            threads = list(self._threads)
            self._work_arrived.notify_all()
        deadline = time.monotonic() + timeout
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        return not any(thread.is_alive() for thread in threads)

    def _work(self) -> None:
        while True:
            with self._lock:
                while not self._queue:
                    if self._shut_down:
                        return
                    self._idle += 1
                    self._work_arrived.wait(self._IDLE_CHECK)
                    self._idle -= 1
                work = self._queue.popleft()
            work()
