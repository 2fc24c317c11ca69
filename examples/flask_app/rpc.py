"""The broker of each process, and the names of the services it calls.

The broker is created at import, as a module-level object, and never
started by the web app: a broker that only calls needs no ``start()``, since
its reply listener starts with the first ``request()``. It opens its
connections in the process that first uses it, so it does not matter
whether a gunicorn worker imported this module itself (the default) or
inherited it from a master that preloaded the app: nothing crosses a fork.
One broker serves every thread of its process.
"""

from __future__ import annotations

import os

from redis_rpc import RedisBroker

REDIS_URL = os.environ.get("REDIS_URL", "redis://localhost:6379/0")

# The list the greeting service reads its requests from (see service.py).
GREET = "flask_app.greet"

broker = RedisBroker(REDIS_URL)
