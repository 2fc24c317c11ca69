"""A channel server whose replies wait in its pipe when the test stops the process, for ``test_reply_after_stall``.

Run as ``python -m tests.fault.stall_server URL CHANNEL``. It serves
*CHANNEL* with four workers and ``socket_timeout=SOCKET_TIMEOUT``; each
handler prints ``handling <body>`` and returns its body once the test
writes a ``release`` line on stdin (one handler per line). It prints
``ready`` once serving, ``written`` once the first reply is written (and,
Redis being paused by the test, waits for its answer), and ``queued`` once
the three other replies wait in the pipe's queue behind it. It exits on
SIGTERM, or by itself after ``LIFETIME`` seconds.
"""

from __future__ import annotations

import os
import sys
import threading

from redis_rpc import App, RedisBroker
from tests.helpers import wait_for

LIFETIME = 60.0  # a safety net: the test ends the process well before
SOCKET_TIMEOUT = 2.0  # shorter than the stall the test makes
HANDLERS = 4


def say(line: str) -> None:
    """Print *line* whole, even when several threads print at once."""
    os.write(sys.stdout.fileno(), f"{line}\n".encode())


def main(url: str, channel: str) -> None:
    broker = RedisBroker(url, poll_interval=0.05, socket_timeout=SOCKET_TIMEOUT)
    app = App(broker)
    releases = threading.Semaphore(0)

    @broker.subscriber(channel, max_workers=HANDLERS)
    def hold(body):
        say(f"handling {body}")
        releases.acquire(timeout=LIFETIME)
        return body

    def read_stdin():
        for line in sys.stdin:
            if line.strip() == "release":
                releases.release()

    def watch_pipe():
        pipe = broker._backend._pipe  # type: ignore[attr-defined]
        batches = pipe.batches
        if wait_for(lambda: pipe.batches > batches, LIFETIME):
            say("written")
        if wait_for(lambda: len(pipe._queue) >= HANDLERS - 1, LIFETIME):
            say("queued")

    threading.Thread(target=read_stdin, daemon=True).start()

    @app.after_startup
    def started():
        threading.Thread(target=watch_pipe, daemon=True).start()
        say("ready")

    timer = threading.Timer(LIFETIME, app.exit)
    timer.start()
    try:
        app.run()
    finally:
        timer.cancel()


if __name__ == "__main__":
    main(*sys.argv[1:3])
