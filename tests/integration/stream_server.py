"""A stream echo server in its own process, for tests of several server processes.

Run as ``python -m tests.integration.stream_server URL STREAM [hang]``: it
prints ``ready`` once consuming, answers ``{"pid": ..., "body": ...}`` and
exits cleanly on SIGTERM, or by itself after ``LIFETIME`` seconds. With
``hang``, the handler prints ``handling`` and never returns, so that a test
can kill the process in the middle of a request.
"""

from __future__ import annotations

import os
import sys
import threading

from redis_rpc import App, RedisBroker, StreamSub

LIFETIME = 60.0  # a safety net: the test always sends SIGTERM well before
CLAIM_IDLE_TIME = 0.5  # seconds before a dead consumer's entry is claimed


def main(url: str, stream: str, mode: str = "") -> None:
    broker = RedisBroker(url, poll_interval=0.05, graceful_timeout=1.0)
    app = App(broker)
    never = threading.Event()

    @broker.subscriber(stream=StreamSub(stream, claim_idle_time=CLAIM_IDLE_TIME))
    def echo(body):
        if mode == "hang":
            print("handling", flush=True)  # noqa: T201 - the test waits for this line
            never.wait(LIFETIME)
        return {"pid": os.getpid(), "body": body}

    @app.after_startup
    def announce():
        print("ready", flush=True)  # noqa: T201 - the test waits for this line

    timer = threading.Timer(LIFETIME, app.exit)
    timer.start()
    try:
        app.run()
    finally:
        timer.cancel()


if __name__ == "__main__":
    main(*sys.argv[1:])
