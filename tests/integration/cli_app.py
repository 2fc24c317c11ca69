"""An application for the ``redis-rpc run`` tests, configured by environment.

``CLI_APP_URL`` is the Redis URL and ``CLI_APP_LIST`` the list it serves.
The handler takes a number of seconds, sleeps that long and answers its
process id; before a sleep it prints ``handling <pid>`` on stdout. Once
serving, the process prints ``ready <pid>`` on stdout.
"""

from __future__ import annotations

import os
import sys
import time

from redis_rpc import App, RedisBroker

broker = RedisBroker(
    os.environ.get("CLI_APP_URL", "redis://localhost:6379"), poll_interval=0.05
)
app = App(broker)
NOT_AN_APP = "an App's name, not an App"


def say(line: str) -> None:
    """Print *line* for the test in one write, so that two workers' lines never mix."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


@broker.subscriber(list=os.environ.get("CLI_APP_LIST", "cli-app"))
def handle(seconds: float) -> int:
    if seconds:
        say(f"handling {os.getpid()}")
        time.sleep(seconds)
    return os.getpid()


@app.after_startup
def say_ready() -> None:
    say(f"ready {os.getpid()}")
