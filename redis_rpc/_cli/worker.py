"""One worker of ``redis-rpc run``: it loads the target and serves it until told to stop."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
from typing import TYPE_CHECKING

from redis_rpc._cli.app import _default_logging
from redis_rpc._cli.console import (
    CLI_LOG_FORMAT,
    EXIT_FAILURE,
    EXIT_OK,
    EXIT_USAGE,
    LOG_LEVELS,
    SIGNALS,
    error,
)
from redis_rpc._cli.target import TargetError, load_target
from redis_rpc.errors import RedisRPCError

if TYPE_CHECKING:
    from redis_rpc._cli.app import App

logger = logging.getLogger(__name__)

# What a worker tells its supervisor on its status pipe, one line each.
SERVING, FAILED = "serving", "failed"
# How often a worker checks that its supervisor is still there.
ORPHAN_CHECK_INTERVAL = 1.0


def serve(
    target: str,
    *,
    log_level: str | None = None,
    worker: int | None = None,
    supervisor: int | None = None,
    status_fd: int | None = None,
) -> int:
    """Load *target* and run it in this process until SIGINT or SIGTERM; return the exit status.

    Call from the main thread of a process that is about to exit: signals
    that arrive once the service has stopped are ignored, so that a late
    one cannot interrupt the exit with a traceback.

    Args:
        log_level: A name from ``LOG_LEVELS``, or ``None`` for the default
            set-up of ``App.run()``.
        worker: This process's number, when a supervisor started it.
        supervisor: The supervisor's pid: the service stops if it goes.
        status_fd: The write end of the supervisor's status pipe, which
            hears ``serving`` once the service is up, or why it failed.
    """
    status = _Status(status_fd)
    if worker is not None:
        # The supervisor forwards SIGINT. Until the App takes it over, a
        # worker just ends, without a KeyboardInterrupt traceback.
        signal.signal(signal.SIGINT, signal.SIG_DFL)
    try:
        app = load_target(target)
    except TargetError as exc:
        error(str(exc))
        status.close()
        return EXIT_USAGE
    # Registered last, so it runs once the application's own hooks have.
    app.after_startup(status.serving)
    watch = None if supervisor is None else _OrphanWatch(app, supervisor)
    try:
        with _default_logging(
            None if log_level is None else LOG_LEVELS[log_level], CLI_LOG_FORMAT
        ):
            if worker is not None:
                logger.info("Worker %d starting %s", worker, target)
            app.run()
    except RedisRPCError as exc:  # the broker could not start: one line says why
        error(str(exc))
        status.failed(str(exc))
        return EXIT_FAILURE
    finally:
        # App.run() put back the handlers it replaced; a second Ctrl-C, or the
        # terminal's copy of a signal the supervisor also forwards, lands here.
        for signum in SIGNALS:
            signal.signal(signum, signal.SIG_IGN)
        if watch is not None:
            watch.stop()
        status.close()
    return EXIT_OK


class _Status:
    """A worker's side of its status pipe: one line once it serves, or one saying why it failed.

    Without a pipe (no supervisor) it does nothing. A supervisor that has
    gone closed the read end; the worker then carries on without it.
    """

    def __init__(self, fd: int | None) -> None:
        self._fd = fd

    def serving(self) -> None:
        self._say(SERVING)

    def failed(self, reason: str) -> None:
        self._say(f"{FAILED} {' '.join(reason.split())}")

    def _say(self, line: str) -> None:
        if self._fd is None:
            return
        # The supervisor may have gone; _OrphanWatch then stops the service.
        with contextlib.suppress(OSError):
            # One write below PIPE_BUF (4 KiB) is atomic, so lines never mix.
            os.write(self._fd, (line[:1000] + "\n").encode(errors="replace"))

    def close(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)


class _OrphanWatch:
    """Stops a worker's service when its supervisor is gone, so that no worker outlives it.

    A supervisor killed with SIGKILL forwards nothing; its workers are then
    adopted by another process, which shows as a new parent pid.
    """

    def __init__(self, app: App, supervisor: int) -> None:
        self._app = app
        self._supervisor = supervisor
        self._stopped = threading.Event()
        self._thread = threading.Thread(
            target=self._watch, name="redis_rpc:cli:supervisor_watch", daemon=True
        )
        self._thread.start()

    def _watch(self) -> None:
        while not self._stopped.wait(ORPHAN_CHECK_INTERVAL):
            if os.getppid() != self._supervisor:
                logger.warning(
                    "The supervisor (pid %d) has gone; stopping", self._supervisor
                )
                self._app.exit()
                return

    def stop(self) -> None:
        self._stopped.set()
        self._thread.join(ORPHAN_CHECK_INTERVAL)
