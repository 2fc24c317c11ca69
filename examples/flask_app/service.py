"""The greeting service that the web app calls: run it with ``python service.py``.

Its handlers are declared on the broker of rpc.py in this process only; the
web workers never import this module, so they call and never serve. Run as
many of these processes as the load needs: they share the list's requests.
``App.run()`` serves until SIGINT or SIGTERM, then lets in-flight handlers
finish and exits.
"""

from __future__ import annotations

import logging

from rpc import GREET, broker

from redis_rpc import App

logger = logging.getLogger("flask_app.service")
service = App(broker)


@broker.subscriber(list=GREET, max_workers=4)
def greet(name: str) -> str:
    return f"Hello, {name}!"


@service.after_startup
def announce() -> None:
    logger.info("Serving list %r; stop with Ctrl-C or SIGTERM", GREET)


if __name__ == "__main__":
    service.run()
