"""The greeting service: the project's broker and its handlers.

The broker is created at import, as a module-level object, so each process
has one, shared by all its threads. Web workers import this module through
the views and only call: the handlers declared here run only where the
broker is started, which ``python manage.py runrpc`` does. A broker that
only calls needs no ``start()``: its reply listener starts with the first
``request()``, in the process that makes it, so a fork before that is harmless.

Handlers run on the broker's threads, outside Django's request cycle: one
that uses the ORM should call ``django.db.close_old_connections()`` before
and after its work, as Django does around each request.
"""

from __future__ import annotations

from django.conf import settings

from redis_rpc import RedisBroker

# The list the handlers read their requests from.
GREET = "django_project.greet"

broker = RedisBroker(settings.REDIS_URL)


@broker.subscriber(list=GREET, max_workers=4)
def greet(name: str) -> str:
    return f"Hello, {name}!"
