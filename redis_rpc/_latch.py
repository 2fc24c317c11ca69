"""``Latch``: a one-shot slot for a result or an error, set by one thread and waited on by another.

The pipe hands each caller its replies through one, and the reply listener
each requester its reply. It is a lock held from birth and released when
the outcome is in: lighter than a ``concurrent.futures.Future``, whose
condition variable costs both sides more per call.
"""

from __future__ import annotations

import threading
from concurrent.futures import TimeoutError as FutureTimeoutError
from typing import Generic, TypeVar, cast

T = TypeVar("T")


class Latch(Generic[T]):
    """Set once, with ``set_result()`` or ``set_error()``; waited on by any thread, any number of times."""

    __slots__ = ("_error", "_lock", "_value")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._lock.acquire()  # released once the outcome is in
        self._value: T | None = None
        self._error: BaseException | None = None

    def set_result(self, value: T) -> None:
        self._value = value
        self._lock.release()

    def set_error(self, error: BaseException) -> None:
        self._error = error
        self._lock.release()

    def wait(self, timeout: float | None) -> bool:
        """Whether the outcome is in, waiting up to *timeout* seconds (``None``: for ever)."""
        wait = -1 if timeout is None else min(max(0.0, timeout), threading.TIMEOUT_MAX)
        if not self._lock.acquire(timeout=wait):
            return False
        self._lock.release()  # stays released: later waits return at once
        return True

    def result(self, timeout: float | None = 0.0) -> T:
        """The result, waiting up to *timeout* seconds for it (``None``: for ever).

        Raises:
            concurrent.futures.TimeoutError: Not set within *timeout*.
            BaseException: The error it was set with.
        """
        if not self.wait(timeout):
            raise FutureTimeoutError
        if self._error is not None:
            raise self._error
        return cast("T", self._value)  # set_result() gave a T
