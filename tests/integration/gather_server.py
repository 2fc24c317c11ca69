"""A channel subscriber in its own process, for ``gather()`` over several processes.

Run as ``python -m tests.integration.gather_server URL CHANNEL DELAY``: it
prints ``ready`` once subscribed, answers each request with
``{"pid": ..., "body": ...}`` after *DELAY* seconds, and exits on SIGTERM,
or by itself after ``LIFETIME`` seconds.
"""

from __future__ import annotations

import os
import sys
import threading

from redis_rpc import App, RedisBroker

LIFETIME = 60.0  # a safety net: the test always stops it well before


def main(url: str, channel: str, delay: str) -> None:
    broker = RedisBroker(url, poll_interval=0.05, graceful_timeout=0.5)
    app = App(broker)
    stopping = threading.Event()

    @broker.subscriber(channel)
    def answer(body: str) -> dict[str, object]:
        stopping.wait(float(delay))  # the slow one: a wait that SIGTERM cuts short
        return {"pid": os.getpid(), "body": body}

    @app.after_startup
    def announce() -> None:
        print("ready", flush=True)  # noqa: T201 - the test waits for this line

    @app.on_shutdown
    def stop() -> None:
        stopping.set()

    timer = threading.Timer(LIFETIME, app.exit)
    timer.start()
    try:
        app.run()
    finally:
        timer.cancel()


if __name__ == "__main__":
    main(*sys.argv[1:])
