"""The handler pool: daemon workers, bounded shutdown, no work after shutdown."""

from __future__ import annotations

import threading
import time

import pytest

from redis_rpc._server.workers import WorkerPool
from tests.conftest import SHORT_TIMEOUT


def test_runs_work_on_named_daemon_threads():
    """Submitted work runs on daemon threads named after the pool."""
    pool, seen, done = WorkerPool(2, "redis_rpc:list:x"), [], threading.Event()

    def work():
        seen.append(threading.current_thread())
        done.set()

    pool.submit(work)
    assert done.wait(SHORT_TIMEOUT)
    assert pool.shutdown(SHORT_TIMEOUT)
    assert seen[0].daemon
    assert seen[0].name == "redis_rpc:list:x:worker_0"


def test_never_more_threads_than_workers():
    """Work beyond max_workers waits for a free thread instead of starting one."""
    pool, release, names = WorkerPool(2, "p"), threading.Event(), set()
    started = threading.Semaphore(0)

    def work():
        names.add(threading.current_thread().name)
        started.release()
        release.wait(SHORT_TIMEOUT)

    for _ in range(5):
        pool.submit(work)
    assert started.acquire(timeout=SHORT_TIMEOUT)
    assert started.acquire(timeout=SHORT_TIMEOUT)
    release.set()
    for _ in range(3):
        assert started.acquire(timeout=SHORT_TIMEOUT)
    assert pool.shutdown(SHORT_TIMEOUT)
    assert names == {"p:worker_0", "p:worker_1"}


def test_shutdown_gives_up_on_a_stuck_worker():
    """shutdown() returns False after its timeout when a worker never finishes."""
    pool, stuck, release = WorkerPool(2, "p"), threading.Event(), threading.Event()

    def work():
        stuck.set()
        release.wait(SHORT_TIMEOUT * 5)

    pool.submit(work)
    assert stuck.wait(SHORT_TIMEOUT)
    assert not pool.shutdown(0.05)
    release.set()


def test_refuses_work_after_shutdown():
    """submit() after shutdown() raises instead of queuing work nobody will run."""
    pool = WorkerPool(1, "p")
    assert pool.shutdown(SHORT_TIMEOUT)
    with pytest.raises(RuntimeError, match="shut down"):
        pool.submit(lambda: None)


def test_shared_pool_starts_a_thread_while_the_others_are_busy():
    """Work submitted while every started thread is busy gets a new thread, up to the limit."""
    pool, release = WorkerPool(2, "s"), threading.Event()
    second_ran = threading.Event()

    def blocked():
        release.wait(SHORT_TIMEOUT)

    pool.submit(blocked)
    pool.submit(second_ran.set)
    try:
        assert second_ran.wait(SHORT_TIMEOUT)  # not stuck behind the first
    finally:
        release.set()
    assert pool.shutdown(SHORT_TIMEOUT)


def test_shared_pool_reuses_an_idle_thread():
    """Work arriving one at a time runs on one thread: an idle one is reused, not another started."""
    pool, names = WorkerPool(4, "s"), []
    for _ in range(20):
        done = threading.Event()

        def work(done=done):
            names.append(threading.current_thread().name)
            done.set()

        pool.submit(work)
        assert done.wait(SHORT_TIMEOUT)
        # Wait until the worker is idle again, so the next submit can see it.
        deadline = time.monotonic() + SHORT_TIMEOUT
        while pool._idle == 0 and time.monotonic() < deadline:
            time.sleep(0.001)
    assert pool.threads == 1
    assert set(names) == {"s:worker_0"}
    assert pool.shutdown(SHORT_TIMEOUT)


def test_shared_pool_bounded_and_refuses_after_shutdown():
    """No more threads than max_workers, queued work still runs, and nothing is taken after shutdown."""
    pool, release, done = WorkerPool(2, "s"), threading.Event(), threading.Semaphore(0)

    def work():
        release.wait(SHORT_TIMEOUT)
        done.release()

    for _ in range(6):
        pool.submit(work)
    assert pool.threads == 2
    release.set()
    for _ in range(6):
        assert done.acquire(timeout=SHORT_TIMEOUT)
    assert pool.shutdown(SHORT_TIMEOUT)
    with pytest.raises(RuntimeError):
        pool.submit(work)
