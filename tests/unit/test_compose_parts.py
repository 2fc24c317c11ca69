"""The parts of submit() and stream() that need no Redis: the deadlines thread, and putting streamed items in order."""

from __future__ import annotations

import queue
import threading
import time

import pytest

from redis_rpc._client.compose import _Chunks
from redis_rpc._client.deadlines import Deadlines
from redis_rpc._wire.codec import encode_frame
from redis_rpc._wire.message import CHUNK, END, build_frame, error_frame_parts
from tests.conftest import SHORT_TIMEOUT


class TestDeadlines:
    def test_callbacks_run_in_the_order_of_their_deadlines(self):
        """Registered out of order, they run by deadline, each once, on the one thread."""
        deadlines = Deadlines()
        ran: list[int] = []
        threads: set[str] = set()
        last = threading.Event()

        def note(n: int):
            def callback() -> None:
                ran.append(n)
                threads.add(threading.current_thread().name)
                if len(ran) == 3:
                    last.set()

            return callback

        now = time.monotonic()
        deadlines.at(now + 0.15, note(3))
        deadlines.at(now + 0.05, note(1))
        deadlines.at(now + 0.10, note(2))
        assert last.wait(SHORT_TIMEOUT)
        assert deadlines.stop(SHORT_TIMEOUT)
        assert ran == [1, 2, 3]
        assert threads == {"redis_rpc:deadlines"}

    def test_stop_runs_what_is_left_and_later_ones_at_once(self):
        """stop() calls the callbacks not yet due; one registered after stop() runs at once."""
        deadlines = Deadlines()
        ran: list[str] = []
        deadlines.at(time.monotonic() + 3600, lambda: ran.append("far"))
        assert deadlines.stop(SHORT_TIMEOUT)
        deadlines.at(time.monotonic() + 3600, lambda: ran.append("late"))
        assert ran == ["far", "late"]

    def test_a_failing_callback_does_not_stop_the_thread(self, caplog):
        """A callback that raises is logged; the next one still runs."""
        deadlines = Deadlines()
        done = threading.Event()

        def broken() -> None:
            raise RuntimeError("bug")

        now = time.monotonic()
        deadlines.at(now, broken)
        deadlines.at(now + 0.01, done.set)
        assert done.wait(SHORT_TIMEOUT)
        assert deadlines.stop(SHORT_TIMEOUT)
        assert "A deadline callback failed" in caplog.text


def _chunk(number: int, body: str) -> bytes:
    return build_frame(body, correlation_id="c", headers={CHUNK: str(number)})


def _end(items: int) -> bytes:
    return build_frame(b"", correlation_id="c", headers={END: str(items)})


class TestChunks:
    def test_items_that_overtake_each_other_come_out_in_order(self):
        """Chunks 2, 0, end, 1 come out as 0, 1, 2, then the end."""
        chunks = _Chunks()
        a, b, c = _chunk(0, "a"), _chunk(1, "b"), _chunk(2, "c")
        assert not chunks.add(c)
        assert not chunks.add(a)
        assert not chunks.add(_end(3))
        assert chunks.add(b)
        assert [chunks.get(0) for _ in range(4)] == [a, b, c, None]
        assert chunks.last is None

    def test_an_error_reply_ends_the_stream_after_its_items(self):
        """An error reply saying two items came ends the stream after those two, and is kept."""
        chunks = _Chunks()
        data, headers = error_frame_parts(ValueError("x"), correlation_id="c")
        headers[END] = "2"
        error = encode_frame(data, headers)
        a, b = _chunk(0, "a"), _chunk(1, "b")
        assert not chunks.add(error)
        assert not chunks.add(a)
        assert chunks.add(b)
        assert [chunks.get(0) for _ in range(3)] == [a, b, None]
        assert chunks.last == error

    def test_a_plain_reply_is_the_only_item(self):
        """A reply without our stream headers (a plain handler, FastStream) is one item, then the end."""
        chunks = _Chunks()
        plain = build_frame("only", correlation_id="c")
        assert chunks.add(plain)
        assert chunks.get(0) == plain
        assert chunks.get(0) is None

    def test_nothing_within_the_timeout_is_empty(self):
        """get() waits at most its timeout."""
        with pytest.raises(queue.Empty):
            _Chunks().get(0.01)
