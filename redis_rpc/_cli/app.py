"""``App``: run a broker as a service, with startup and shutdown hooks."""

from __future__ import annotations

import contextlib
import logging
import signal
import sys
import threading
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from types import FrameType

    from redis_rpc._broker import RedisBroker

F = TypeVar("F", bound="Callable[[], Any]")

_SIGNALS = (signal.SIGINT, signal.SIGTERM)

# What App.run() prints when the application has not configured logging.
LOG_FORMAT = "%(asctime)s %(levelname)-8s %(name)s [%(threadName)s] %(message)s"


@contextlib.contextmanager
def _default_logging(
    level: int | None = None, log_format: str = LOG_FORMAT
) -> Iterator[None]:
    """Log to stderr at INFO while the service runs, unless the application configured logging.

    A service run by ``App.run()`` owns its process, so it should say what
    it does, and a handler's exception must be visible, as with
    FastStream; a library inside someone else's process must not (it only
    writes its own warnings, where nothing else would show them: see
    ``_logs``). Configured means the root logger has a handler. What is added is taken away again when ``run()`` returns.

    Args:
        level: The root logger's level instead, chosen by whoever runs the
            service (``redis-rpc run --log-level``); it applies to the
            application's own set-up too, since it was asked for by name.
        log_format: The added handler's format; the ``redis-rpc`` command
            adds the process id, to tell its workers' lines apart.
    """
    root = logging.getLogger()
    previous = root.level
    handler = None
    if not root.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(log_format))
        root.addHandler(handler)
        # WARNING is the default level: nobody chose it.
        if level is None and previous == logging.WARNING:
            level = logging.INFO
    if level is not None:
        root.setLevel(level)
    try:
        yield
    finally:
        if handler is not None:
            root.removeHandler(handler)
        root.setLevel(previous)


class App:
    """Runs a broker until SIGINT, SIGTERM or ``exit()``, calling hooks around it.

    ``exit()`` may be called from any thread, hooks included; ``run()``
    belongs to one thread.

    The order is: ``on_startup`` hooks, ``broker.start()``, ``after_startup``
    hooks, wait, ``on_shutdown`` hooks, ``broker.close()`` (in-flight
    handlers finish within the broker's ``graceful_timeout``), then
    ``after_shutdown`` hooks.
    """

    def __init__(self, broker: RedisBroker) -> None:
        self.broker = broker
        self._exit = threading.Event()
        self._hooks: dict[str, list[Callable[[], Any]]] = {
            "on_startup": [],
            "after_startup": [],
            "on_shutdown": [],
            "after_shutdown": [],
        }

    def on_startup(self, func: F) -> F:
        """Call *func* before the broker starts."""
        self._hooks["on_startup"].append(func)
        return func

    def after_startup(self, func: F) -> F:
        """Call *func* once the broker runs; it may send requests."""
        self._hooks["after_startup"].append(func)
        return func

    def on_shutdown(self, func: F) -> F:
        """Call *func* before the broker closes; it may still send requests."""
        self._hooks["on_shutdown"].append(func)
        return func

    def after_shutdown(self, func: F) -> F:
        """Call *func* after the broker has closed."""
        self._hooks["after_shutdown"].append(func)
        return func

    def exit(self) -> None:
        """Make ``run()`` shut down and return. Safe from any thread or hook."""
        self._exit.set()

    def run(self) -> None:
        """Start, block until SIGINT, SIGTERM or ``exit()``, then shut down gracefully.

        Signal handlers are installed only when called from the main thread,
        and the previous ones are restored on return. An exception from a
        hook still closes the broker before it propagates. When the
        application has not configured logging (the root logger has no
        handler), log records of INFO and above go to stderr while it runs.
        """
        with _default_logging():
            self._run()

    def _run(self) -> None:
        previous = self._install_signal_handlers()
        try:
            try:
                self._call("on_startup")
                self.broker.start()
                self._call("after_startup")
                # A bounded wait, so that Python can run signal handlers meanwhile.
                while not self._exit.wait(0.5):
                    pass
            finally:
                try:
                    self._call("on_shutdown")
                finally:
                    self.broker.close()  # idempotent, and fine if never started
            self._call("after_shutdown")
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)

    def _call(self, stage: str) -> None:
        for hook in self._hooks[stage]:
            hook()

    def _install_signal_handlers(self) -> dict[int, Any]:
        if threading.current_thread() is not threading.main_thread():
            return {}

        def handle(signum: int, frame: FrameType | None) -> None:
            self._exit.set()

        return {signum: signal.signal(signum, handle) for signum in _SIGNALS}
