"""A service run by ``App.run()`` for the default-logging tests.

Run as ``python -m tests.integration.logging_server URL LIST [custom]``.
It serves list *LIST*: the handler logs ``handling <body>`` at INFO and
raises ``ValueError("boom")`` for the body ``"fail"``. It prints ``ready``
on stdout once serving and exits on SIGTERM. With ``custom``, the
application configures logging itself first.
"""

from __future__ import annotations

import logging
import sys

from redis_rpc import App, Logger, RedisBroker


def main(url: str, name: str, custom: bool) -> None:
    if custom:
        logging.basicConfig(format="CUSTOM %(message)s", level=logging.INFO)
    broker = RedisBroker(url, poll_interval=0.05)
    app = App(broker)

    @broker.subscriber(list=name)
    def handle(body: str, logger: Logger) -> str:
        logger.info("handling %s", body)
        if body == "fail":
            raise ValueError("boom")
        return body

    app.after_startup(lambda: print("ready", flush=True))  # noqa: T201 - the test reads it
    app.run()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3:] == ["custom"])
