"""A server whose handlers never return, for the clean-exit test.

Run as ``python -m tests.fault.stuck_server URL LIST``. It serves list
*LIST* with two workers through ``App.run()``; each handler prints
``stuck <body>`` and then blocks for far longer than any test runs. It
prints ``ready`` once consuming, ``closed`` when ``run()`` returned, and
should then exit although its handlers are still blocked.
"""

from __future__ import annotations

import sys
import threading

from redis_rpc import App, RedisBroker

GRACEFUL_TIMEOUT = 1.0
STUCK_FOR = 3600.0  # "never": the test is over long before


def say(line: str) -> None:
    print(line, flush=True)  # noqa: T201 - the test reads these lines


def main(url: str, name: str) -> None:
    broker = RedisBroker(
        url, poll_interval=0.05, graceful_timeout=GRACEFUL_TIMEOUT, max_workers=2
    )
    app = App(broker)
    never = threading.Event()

    @broker.subscriber(list=name)
    def stuck_handler(body: str) -> None:
        say(f"stuck {body}")
        never.wait(STUCK_FOR)

    app.after_startup(lambda: say("ready"))
    app.run()
    say("closed")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
