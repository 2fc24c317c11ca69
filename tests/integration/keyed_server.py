"""A server of keyed requests in its own process, for the idempotency tests.

Run as ``python -m tests.integration.keyed_server URL LIST STREAM [die-after-store]``:
it prints ``ready`` once consuming; both handlers count each run in the
Redis key ``<LIST>:runs``, sleep a little, and answer with the pid and a
value drawn for that run. With ``die-after-store``, the process kills
itself as soon as it has stored a reply of a keyed message, before it
acknowledges it: a crash at the worst moment. It exits on SIGTERM, or by
itself after ``LIFETIME`` seconds.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
import uuid

import redis

from redis_rpc import App, RedisBroker, StreamSub
from redis_rpc._io.commands import IdempotencyStore
from redis_rpc._io.server import RedisBackend

LIFETIME = 60.0  # a safety net: the test always stops it well before
RUN_TIME = 0.3  # seconds each run takes: duplicates arrive while it runs
RECOVER_AFTER = 1.0  # seconds before a dead consumer's entries are claimed


def main(url: str, name: str, stream: str, mode: str = "") -> None:
    if mode == "die-after-store":
        execute = RedisBackend.execute

        def execute_then_die(self, command, *, deadline=None):
            answer = execute(self, command, deadline=deadline)
            if isinstance(command, IdempotencyStore):
                os.kill(os.getpid(), signal.SIGKILL)
            return answer

        RedisBackend.execute = execute_then_die  # type: ignore[method-assign]

    broker = RedisBroker(url, poll_interval=0.05, graceful_timeout=1.0, max_workers=8)
    app = App(broker)
    counter = redis.Redis.from_url(url)

    def run(body: str) -> dict[str, object]:
        counter.incr(f"{name}:runs")
        time.sleep(RUN_TIME)
        return {"pid": os.getpid(), "run": uuid.uuid4().hex, "body": body}

    broker.subscriber(list=name)(run)
    broker.subscriber(stream=StreamSub(stream, recover_after=RECOVER_AFTER))(run)

    @app.after_startup
    def announce() -> None:
        print("ready", flush=True)  # noqa: T201 - the test waits for this line

    timer = threading.Timer(LIFETIME, app.exit)
    timer.start()
    try:
        app.run()
    finally:
        timer.cancel()
        counter.close()


if __name__ == "__main__":
    main(*sys.argv[1:])
