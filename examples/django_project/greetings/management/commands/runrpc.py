"""``python manage.py runrpc``: serve the handlers of greetings.services.

Runs in a process of its own, beside the web server, as Celery workers
do; run several for more throughput, as they share the list's requests.
"""

from __future__ import annotations

import logging
from typing import Any

from django.core.management.base import BaseCommand

from redis_rpc import App

logger = logging.getLogger("greetings.runrpc")


class Command(BaseCommand):
    help = "Serve the redis_rpc handlers until SIGINT or SIGTERM, then drain and exit."

    def handle(self, *args: Any, **options: Any) -> None:
        # Imported here, so that other commands never create the broker.
        from greetings.services import GREET, broker

        service = App(broker)

        @service.after_startup
        def announce() -> None:
            logger.info("Serving list %r; stop with Ctrl-C or SIGTERM", GREET)

        service.run()
