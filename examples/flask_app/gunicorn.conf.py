"""gunicorn settings for the Flask example: ``gunicorn -c gunicorn.conf.py app:app``.

Where the broker lives: rpc.py creates it when a worker imports the app,
after the fork (``preload_app`` is off, gunicorn's default). ``--preload``
works too: the broker then is created in the master, which never uses it,
and opens its connections in whichever worker uses it. But never start a
serving broker in the master: its consumers would run there, not in the
workers.
"""

from __future__ import annotations

import os
import sys

bind = "127.0.0.1:8000"
workers = 2
# Threads of a worker share its one broker: request() is thread-safe, and
# every thread's requests go over the same few Redis connections.
worker_class = "gthread"
threads = 4


# SERVE_IN_WORKERS=1 also runs the handlers in every web worker, for a
# deployment without service.py processes.
SERVE_IN_WORKERS = os.environ.get("SERVE_IN_WORKERS") == "1"


def post_fork(server, worker):
    """Run in each new worker, before it loads the app.

    A broker that only calls needs nothing here. A web worker that also
    serves handlers starts its broker here, in the worker, never in the
    master (consumers do not survive a fork); ``worker_exit`` closes it,
    letting in-flight handlers finish.
    """
    if SERVE_IN_WORKERS:
        import service  # declares the handlers on rpc.broker

        service.broker.start()


def post_worker_init(worker):
    worker.log.info("Worker %s loaded the app", worker.pid)


def worker_exit(server, worker):
    """Close the worker's broker: pending requests fail at once, connections close.

    gunicorn also calls this hook in the master, for a worker that died
    before it could; the master has no broker of the worker's to close.
    """
    rpc = sys.modules.get("rpc")  # only if the app was loaded in this process
    if os.getpid() == worker.pid and rpc is not None:
        rpc.broker.close()
        worker.log.info("Worker %s closed its broker", worker.pid)
