"""A stream echo server in its own process, for tests of several server processes.

Run as ``python -m tests.integration.stream_server URL STREAM``: it prints
``ready`` once consuming, answers ``{"pid": ..., "body": ...}`` and exits
cleanly on SIGTERM, or by itself after ``LIFETIME`` seconds.
"""

from __future__ import annotations

import os
import sys
import threading

from redis_rpc import App, RedisBroker

LIFETIME = 60.0  # a safety net: the test always sends SIGTERM well before


def main(url: str, stream: str) -> None:
    broker = RedisBroker(url, poll_interval=0.05)
    app = App(broker)

    @broker.subscriber(stream=stream)
    def echo(body):
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
    main(sys.argv[1], sys.argv[2])
