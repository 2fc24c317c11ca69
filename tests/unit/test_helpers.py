"""The test suite's own Callers: a stuck call fails the test instead of hanging it."""

from __future__ import annotations

import threading
import time
from concurrent.futures import CancelledError
from concurrent.futures import TimeoutError as FutureTimeoutError

import pytest

from tests.helpers import Callers

STUCK = 0.2  # the Callers timeout in these tests: short, since the calls are stuck on purpose


def stuck_call(callers, release):
    """Submit a call that waits for *release*, and return once it is running."""
    running = threading.Event()

    def hold():
        running.set()
        release.wait(10.0)

    callers.submit(hold)
    assert running.wait(10.0)


def test_results_come_back_through_submit_and_map():
    """submit() and map() return what the calls return, in order."""
    with Callers(3) as callers:
        assert callers.submit(pow, 2, 5).result(1.0) == 32
        assert list(callers.map(abs, [-1, -2, -3])) == [1, 2, 3]


def test_a_stuck_call_fails_the_block_within_its_timeout():
    """Leaving the block while a call is stuck fails the test after the timeout, naming the thread."""
    release = threading.Event()
    try:
        started = time.monotonic()
        with (
            pytest.raises(pytest.fail.Exception, match="test-caller-0"),
            Callers(1, timeout=STUCK) as callers,
        ):
            stuck_call(callers, release)
        assert time.monotonic() - started < 10 * STUCK
    finally:
        release.set()


def test_calls_not_started_are_cancelled_on_exit():
    """Calls still queued when the block ends are cancelled rather than run."""
    release = threading.Event()
    try:
        with pytest.raises(pytest.fail.Exception), Callers(1, timeout=STUCK) as callers:  # noqa: PT012
            stuck_call(callers, release)
            queued = callers.submit(pow, 2, 5)
        with pytest.raises(CancelledError):
            queued.result(0)
    finally:
        release.set()


def test_an_error_in_the_block_is_reported_not_the_stuck_call():
    """When the block raises, that exception propagates, and leaving still takes at most the timeout."""
    release = threading.Event()
    try:
        with pytest.raises(ZeroDivisionError), Callers(1, timeout=STUCK) as callers:  # noqa: PT012
            stuck_call(callers, release)
            started = time.monotonic()
            1 / 0  # noqa: B018
        assert time.monotonic() - started < 10 * STUCK
    finally:
        release.set()


def test_map_waits_a_bounded_time_by_default():
    """Iterating map() results raises TimeoutError instead of waiting forever behind a stuck call."""
    release = threading.Event()
    try:
        with pytest.raises(pytest.fail.Exception), Callers(1, timeout=STUCK) as callers:  # noqa: PT012
            stuck_call(callers, release)
            results = callers.map(abs, [-1])
            with pytest.raises(FutureTimeoutError):
                next(results)
    finally:
        release.set()


def test_threads_are_daemons():
    """A stuck caller thread cannot keep the interpreter from exiting."""
    with Callers(2) as callers:
        assert all(t.daemon for t in callers._threads)
