"""Our warnings reach stderr in a process that configured no logging, and only there.

A library must not print by itself where the application decides what is
logged, so ``redis_rpc`` used to carry only a ``NullHandler``. But web
servers leave the root logger unconfigured: gunicorn configures its own
``gunicorn.error`` logger, uWSGI nothing, Django its ``django`` logger. So
a lost Redis, a fork misuse, dropped messages or refused signing keys left
no line anywhere. Python's own ``logging.lastResort`` would print them
there, but any handler in the way, our ``NullHandler`` included, turns it
off.

``LastResort`` takes the place of the ``NullHandler``: for each WARNING or
worse of ours, it looks for another handler that the record reaches (on its
logger and the loggers above, as far as they propagate); if there is none,
as in a web worker that configured nothing, it writes the record to
stderr; if there is one, it writes nothing, so an application that
configured logging sees each line once, where it chose.
"""

from __future__ import annotations

import logging
import sys

# gunicorn's lines have the time, the pid and the level too; ours say whose they are.
LAST_RESORT_FORMAT = "%(asctime)s [%(process)d] [%(levelname)s] %(name)s: %(message)s"


class LastResort(logging.Handler):
    """Writes our WARNING and worse to stderr when no other handler would take them.

    Safe from any thread, as every logging handler.
    """

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.setFormatter(logging.Formatter(LAST_RESORT_FORMAT))

    def handle(self, record: logging.LogRecord) -> bool:
        # Decided before the lock and the formatting: with logging set up,
        # this is all a record of ours costs here.
        if self._others_take(record):
            return False
        return super().handle(record)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            # stderr as it is now: a test, or the application, may have replaced it.
            stream = sys.stderr
            if stream is None:  # pythonw, or a daemon that closed it
                return
            stream.write(self.format(record) + "\n")
            stream.flush()
        except Exception:  # noqa: BLE001 - logging must never raise into our threads
            self.handleError(record)

    def _others_take(self, record: logging.LogRecord) -> bool:
        """Whether the record reaches another handler, whatever that one's level."""
        logger: logging.Logger | None = logging.getLogger(record.name)
        while logger is not None:
            if any(handler is not self for handler in logger.handlers):
                return True
            if not logger.propagate:
                return False
            logger = logger.parent
        return False


def install(package_logger: logging.Logger) -> None:
    """Give *package_logger* its ``LastResort``, once, however often the package is imported."""
    if not any(isinstance(h, LastResort) for h in package_logger.handlers):
        package_logger.addHandler(LastResort())
