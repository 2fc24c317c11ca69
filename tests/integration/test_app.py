"""App: hooks in order around the broker's lifecycle, and exit by call or by signal."""

from __future__ import annotations

import os
import signal
import threading

import pytest

from redis_rpc import App
from tests.conftest import LONG_TIMEOUT, SHORT_TIMEOUT


def test_hooks_run_in_order_around_the_broker(make_broker):
    """Hooks run in lifecycle order and see the broker new, running, then closed."""
    broker = make_broker()
    app = App(broker)
    seen = []

    def record(stage):
        def hook():
            seen.append((stage, repr(broker).split()[1]))
            if stage == "after_startup":
                app.exit()

        return hook

    for stage in ("on_startup", "after_startup", "on_shutdown", "after_shutdown"):
        getattr(app, stage)(record(stage))
    app.run()
    assert seen == [
        ("on_startup", "NEW"),
        ("after_startup", "RUNNING"),
        ("on_shutdown", "RUNNING"),
        ("after_shutdown", "CLOSED"),
    ]


def test_sigterm_shuts_down_and_restores_handler(make_broker):
    """SIGTERM makes run() close the broker and return, restoring the previous handler."""
    broker = make_broker()
    app = App(broker)
    before = signal.getsignal(signal.SIGTERM)

    @app.after_startup
    def send_sigterm():
        os.kill(os.getpid(), signal.SIGTERM)

    runner = threading.Timer(SHORT_TIMEOUT * 5, app.exit)  # a safety net only
    runner.start()
    try:
        app.run()
    finally:
        runner.cancel()
        runner.join(SHORT_TIMEOUT)
    assert repr(broker).startswith("<RedisBroker CLOSED")
    assert signal.getsignal(signal.SIGTERM) is before


def test_exit_from_another_thread(make_broker):
    """exit() called from another thread makes run() return."""
    broker = make_broker()
    app = App(broker)
    started = threading.Event()
    app.after_startup(started.set)

    def exit_when_started():
        if started.wait(LONG_TIMEOUT):  # starting may take a while on a busy machine
            app.exit()

    exiter = threading.Thread(target=exit_when_started)
    exiter.start()
    app.run()
    exiter.join(LONG_TIMEOUT)
    assert repr(broker).startswith("<RedisBroker CLOSED")


def test_failing_hook_still_closes_broker(make_broker):
    """An exception from an after_startup hook propagates after the broker is closed."""
    broker = make_broker()
    app = App(broker)

    @app.after_startup
    def fail():
        raise RuntimeError("hook failed")

    with pytest.raises(RuntimeError, match="hook failed"):
        app.run()
    assert repr(broker).startswith("<RedisBroker CLOSED")


def test_failing_startup_hook_still_closes_broker(make_broker, unique_name):
    """An on_startup hook that fails after sending a request still leaves no thread behind."""
    broker = make_broker()
    app = App(broker)

    @app.on_startup
    def fail():
        with pytest.raises(TimeoutError):
            broker.request(
                "x", list=unique_name, timeout=0.05
            )  # starts the reply listener
        raise RuntimeError("startup failed")

    with pytest.raises(RuntimeError, match="startup failed"):
        app.run()
    assert repr(broker).startswith("<RedisBroker CLOSED")
