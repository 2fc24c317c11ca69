"""``Deadlines``: one thread per broker that fails submitted requests when their time is up.

``broker.submit()`` returns a future with nobody blocked on it, and
``broker.gather()`` may wait for a number of replies it does not know: each
registers a callback for its deadline here instead of a timer thread of its
own. The thread (``redis_rpc:deadlines``) starts with the first callback and
sleeps until the next one is due.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable

logger = logging.getLogger(__name__)

# How long the thread sleeps at most with nothing due: how late it notices stop().
_IDLE = 1.0


class Deadlines:
    """Calls each registered callback once its ``time.monotonic()`` deadline has come. Thread-safe."""

    def __init__(self) -> None:
        # Guards _due, _thread and _stopping; _changed wakes the thread.
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._due: list[tuple[float, int, Callable[[], None]]] = []
        self._order = itertools.count()  # ties: first registered, first called
        self._thread: threading.Thread | None = None
        self._stopping = False

    def at(self, deadline: float, callback: Callable[[], None]) -> None:
        """Call *callback* (which must not raise, and must be quick) at *deadline*, or at ``stop()``."""
        with self._lock:
            if self._stopping:
                run_now = True
            else:
                run_now = False
                heapq.heappush(self._due, (deadline, next(self._order), callback))
                if self._thread is None:
                    self._thread = threading.Thread(
                        target=self._run, name="redis_rpc:deadlines", daemon=True
                    )
                    self._thread.start()
                elif self._due[0][2] is callback:  # the new first: wake up sooner
                    self._changed.notify()
        if run_now:
            callback()

    def stop(self, timeout: float) -> bool:
        """Call every callback still waiting, end the thread; True if it ended within *timeout*."""
        with self._lock:
            self._stopping = True
            left, self._due = self._due, []
            thread = self._thread
            self._changed.notify()
        for _, _, callback in sorted(left):
            _call(callback)
        if thread is not None:
            thread.join(timeout)
        return thread is None or not thread.is_alive()

    def _run(self) -> None:
        while True:
            with self._lock:
                while not self._stopping and (
                    not self._due or self._due[0][0] > time.monotonic()
                ):
                    wait = self._due[0][0] - time.monotonic() if self._due else _IDLE
                    self._changed.wait(min(max(wait, 0.0), _IDLE))
                if self._stopping:
                    return
                _, _, callback = heapq.heappop(self._due)
            _call(callback)


def _call(callback: Callable[[], None]) -> None:
    try:
        callback()
    except Exception:  # the thread must outlive a bug in one callback
        logger.exception("A deadline callback failed")
