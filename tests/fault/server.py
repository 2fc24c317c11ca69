"""A server process for fault tests, run through ``App.run()``.

Run as ``python -m tests.fault.server URL MODE NAME``. It prints ``ready``
once consuming, then one line per event the test waits for, and exits on
SIGTERM, or by itself after ``LIFETIME`` seconds. Modes:

``hold-list``, ``hold-stream``
    Serve list or stream *NAME* with two workers; each handler prints
    ``handling <body>`` and waits for an item on list ``NAME:release``.
    Before ``ready``, a request of its own waits on ``NAME:nobody``; how it
    ended is printed at shutdown (``own request: <exception class>``), after
    the broker printed ``closing`` once ``close()`` told its consumer to stop.
``reliable-hold``, ``reliable-echo``
    Serve list *NAME* in reliable mode with three workers; ``hold`` prints
    ``handling <body>`` and never answers, ``echo`` answers with its pid.
``stuck-stream``, ``echo-stream``
    Serve stream *NAME* with all default settings and one worker; ``stuck``
    prints ``handling <body>`` and never answers, ``echo`` answers
    ``{"pid": <its pid>, "body": <body>}``.
``soak``
    Answer list *NAME* at once, and list ``NAME:slow`` after ``SLOW_DELAY``.
"""

from __future__ import annotations

import os
import sys
import threading

import redis

from redis_rpc import App, ListSub, RedisBroker
from tests.helpers import wait_for

LIFETIME = 60.0  # a safety net: tests always end the process well before
HOLD = 20.0  # how long a held handler waits for its release, at most
RECOVER_AFTER = 0.5  # reliable mode: a killed server's items come back this fast
SLOW_DELAY = 0.2  # longer than the leak test's short request timeout
SLOW_WORKERS = 16
# The most threads the soak server ever runs: main, timer, the reply listener
# (start() starts it), two consumers, the writer of replies and acks, the
# watch of inline handlers, workers, and a consumer thread that the watch
# relieved and that is still finishing its handler.
SOAK_THREADS = 8 + SLOW_WORKERS


def say(line: str) -> None:
    """Print *line* for the test, whole even when several handler threads print at once.

    print() writes the text and its newline in two calls, so lines from
    two threads could come out as ``handling 0handling 1``. One write() of
    fewer than PIPE_BUF bytes to a pipe is atomic.
    """
    os.write(sys.stdout.fileno(), f"{line}\n".encode())


def main(url: str, mode: str, name: str) -> None:
    broker = RedisBroker(url, poll_interval=0.05, graceful_timeout=HOLD)
    app = App(broker)
    raw = redis.Redis.from_url(url)

    if mode.startswith("hold-"):

        @broker.subscriber(
            list=name if mode == "hold-list" else None,
            stream=name if mode == "hold-stream" else None,
            max_workers=2,
        )
        def hold(body):
            say(f"handling {body}")
            raw.blpop([f"{name}:release"], timeout=HOLD)
            return body

        def own_request():
            try:
                broker.request("x", list=f"{name}:nobody", timeout=LIFETIME)
            except Exception as exc:  # noqa: BLE001 - reported, not handled
                say(f"own request: {type(exc).__name__}")

        caller = threading.Thread(target=own_request)

        @app.after_startup
        def wait_for_own_request():
            caller.start()
            assert wait_for(lambda: "pending_requests=1" in repr(broker), HOLD)

        def say_closing_once_stopped():
            # Only once close() has told the consumer to stop may the test
            # publish a message that must stay untouched: on_shutdown runs
            # before close(), which a loaded machine may delay. Both workers
            # are busy, so no fetch is under way when the flag is set.
            assert wait_for(
                lambda: all(
                    c._stopping.is_set()  # type: ignore[union-attr]
                    for c in broker._serving.consumers  # type: ignore[union-attr]
                ),
                HOLD,
            )
            say("closing")

        closing = threading.Thread(target=say_closing_once_stopped)
        app.on_shutdown(closing.start)

        @app.after_shutdown
        def join_threads():
            closing.join(HOLD)
            caller.join(HOLD)
    elif mode.startswith("reliable-"):
        hold_forever = mode == "reliable-hold"

        @broker.subscriber(
            list=ListSub(name, reliable=True, recover_after=RECOVER_AFTER),
            max_workers=3,
        )
        def reliable(body):
            if hold_forever:
                say(f"handling {body}")
                threading.Event().wait(LIFETIME)  # the test SIGKILLs us first
            return {"pid": os.getpid(), "body": body}
    elif mode.endswith("-stream"):
        stuck = mode == "stuck-stream"

        @broker.subscriber(stream=name)
        def stream(body):
            if stuck:
                say(f"handling {body}")
                threading.Event().wait(LIFETIME)  # the test SIGKILLs us first
            return {"pid": os.getpid(), "body": body}
    else:

        @broker.subscriber(list=name)
        def echo(body):
            return body

        @broker.subscriber(list=f"{name}:slow", max_workers=SLOW_WORKERS)
        def slow(body):
            threading.Event().wait(SLOW_DELAY)
            return body

    app.after_startup(lambda: say("ready"))
    timer = threading.Timer(LIFETIME, app.exit)
    timer.start()
    try:
        app.run()
    finally:
        timer.cancel()
        raw.close()


if __name__ == "__main__":
    main(*sys.argv[1:4])
