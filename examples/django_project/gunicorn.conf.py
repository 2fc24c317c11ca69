"""gunicorn settings for the Django example: ``gunicorn -c gunicorn.conf.py mysite.wsgi``.

Where the broker lives: greetings/services.py creates it when a worker first
imports the views, after the fork (``preload_app`` is off, gunicorn's
default). The web workers only call; ``manage.py runrpc`` serves.
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


def post_fork(server, worker):
    """Run in each new worker, before it loads Django.

    A broker that only calls needs nothing here or anywhere. A serving one
    starts in the worker, never in the master: see ``post_worker_init``.
    """


def post_worker_init(worker):
    """Run in each worker once it has loaded Django (settings, apps).

    A web worker that also serves handlers would start its broker here,
    and ``worker_exit`` below would close it, letting in-flight handlers
    finish::

        from greetings.services import broker

        broker.start()
    """
    worker.log.info("Worker %s loaded the app", worker.pid)


def worker_exit(server, worker):
    """Close the worker's broker: pending requests fail at once, connections close.

    gunicorn also calls this hook in the master, for a worker that died
    before it could; the master has no broker of the worker's to close.
    """
    services = sys.modules.get("greetings.services")  # imported by a request
    if os.getpid() == worker.pid and services is not None:
        services.broker.close()
        worker.log.info("Worker %s closed its broker", worker.pid)
