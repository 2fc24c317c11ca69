"""App.run() logs to stderr by default, where the service owns its process, and never on top of the application's own set-up."""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from redis_rpc import App
from redis_rpc.errors import RemoteError
from tests.conftest import LONG_TIMEOUT, PROCESS_TEST_TIMEOUT, READY_TIMEOUT
from tests.helpers import OutputLines

ROOT = Path(__file__).resolve().parents[2]


def serve_and_fail(make_broker, redis_url, unique_name, *extra):
    """Run the logging server, make its handler log and fail once, stop it; return its stderr."""
    lines = None
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.integration.logging_server",
            redis_url,
            unique_name,
            *extra,
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        lines = OutputLines(process.stdout, "logging_server")
        assert lines.next(READY_TIMEOUT) == "ready"
        caller = make_broker()
        with pytest.raises(RemoteError):
            caller.request("fail", list=unique_name, timeout=LONG_TIMEOUT)
        process.send_signal(signal.SIGTERM)
        assert process.wait(LONG_TIMEOUT) == 0
        assert process.stderr is not None
        return process.stderr.read()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(LONG_TIMEOUT)
        if lines is not None:
            lines.close()
        if process.stderr is not None:
            process.stderr.close()


@pytest.mark.timeout(PROCESS_TEST_TIMEOUT)
def test_a_service_logs_to_stderr_by_default(make_broker, redis_url, unique_name):
    """Without logging set up, App.run() shows lifecycle lines, the handler's own logging and its exception with a traceback."""
    err = serve_and_fail(make_broker, redis_url, unique_name)
    assert "INFO     redis_rpc._broker" in err
    assert "Broker started" in err
    assert "handling fail" in err
    assert "Handler " in err
    assert "Traceback (most recent call last)" in err
    assert "ValueError: boom" in err
    assert "Broker closed" in err


@pytest.mark.timeout(PROCESS_TEST_TIMEOUT)
def test_an_applications_own_logging_is_left_alone(make_broker, redis_url, unique_name):
    """When the application configured logging, App.run() adds nothing: every line comes once, in its format."""
    err = serve_and_fail(make_broker, redis_url, unique_name, "custom")
    lines = [line for line in err.splitlines() if "handling fail" in line]
    assert lines == ["CUSTOM handling fail"]
    assert "INFO     redis_rpc" not in err


def test_run_adds_a_handler_only_while_it_runs(make_broker, monkeypatch):
    """With no handler on the root logger, run() logs to stderr at INFO while it runs, then restores both."""
    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", [])
    monkeypatch.setattr(root, "level", logging.WARNING)
    app, seen = App(make_broker()), []

    @app.after_startup
    def look():
        seen.append(([type(h) for h in root.handlers], root.level))
        app.exit()

    app.run()
    assert seen == [([logging.StreamHandler], logging.INFO)]
    assert root.handlers == []
    assert root.level == logging.WARNING
