"""A WSGI app that starts a serving broker at import: what ``gunicorn --preload`` must not be given.

Run by ``test_last_resort_logging``: gunicorn imports it once, in its
master, and forks the workers from there, so the broker's consumers serve
in the master. The broker says so, and the test checks that gunicorn's
output shows it, though nothing configured logging.
"""

from __future__ import annotations

import os

from redis_rpc import RedisBroker

broker = RedisBroker(os.environ["REDIS_URL"], poll_interval=0.05)


@broker.subscriber(list=os.environ["PRELOAD_LIST"])
def echo(body):
    return body


broker.start()


def application(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]
