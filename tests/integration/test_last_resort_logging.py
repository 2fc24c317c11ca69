"""Our warnings reach stderr in a process that configured no logging, once, and stay out of the way where it did."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import LONG_TIMEOUT, PROCESS_TEST_TIMEOUT, READY_TIMEOUT
from tests.helpers import OutputLines

ROOT = Path(__file__).resolve().parents[2]

# A publish to a port nobody listens on: the pipe warns that it cannot connect.
UNREACHABLE = """
import logging, socket
{setup}
from redis_rpc import RedisBroker
from redis_rpc.errors import RedisConnectionError
with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
broker = RedisBroker(f"redis://127.0.0.1:{{port}}", socket_connect_timeout=1.0)
try:
    broker.publish("x", list="nowhere")
except RedisConnectionError:
    pass
broker.close()
"""
WARNED = "Cannot connect to Redis at 127.0.0.1"


def _run(setup):
    done = subprocess.run(
        [sys.executable, "-c", UNREACHABLE.format(setup=setup)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=READY_TIMEOUT,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stderr


def test_a_warning_reaches_stderr_when_nothing_configured_logging():
    """With no logging set up, as in a web worker, a WARNING of ours is written to stderr with its level, logger and pid."""
    err = _run("")
    lines = [line for line in err.splitlines() if WARNED in line]
    assert len(lines) == 1, err
    assert re.search(
        r"\[\d+\] \[WARNING\] redis_rpc\._io\.pipe: Cannot connect", lines[0]
    )


def test_a_warning_is_not_written_twice_where_the_application_configured_logging():
    """With the root logger configured, a WARNING of ours is written once, by the application's handler."""
    err = _run("logging.basicConfig(format='APP %(levelname)s %(message)s')")
    lines = [line for line in err.splitlines() if WARNED in line]
    assert len(lines) == 1, err
    assert lines[0].startswith("APP WARNING")


def test_a_warning_is_silent_where_the_application_silenced_our_logger():
    """An application that gave our logger a handler of its own, a NullHandler even, hears nothing from the last resort."""
    err = _run("logging.getLogger('redis_rpc').addHandler(logging.NullHandler())")
    assert WARNED not in err


@pytest.mark.timeout(PROCESS_TEST_TIMEOUT)
def test_gunicorn_preload_with_a_serving_broker_says_so(redis_url, unique_name):
    """Under gunicorn --preload, a broker started at import serves from the master, and gunicorn's output says so, though nothing configured logging."""
    pytest.importorskip("gunicorn")
    env = dict(
        os.environ, REDIS_URL=redis_url, PRELOAD_LIST=unique_name, PYTHONUNBUFFERED="1"
    )
    env["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(ROOT), env.get("PYTHONPATH")])
    )
    web = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gunicorn",
            "--preload",
            "--workers",
            "2",
            "--bind",
            "127.0.0.1:0",
            "--no-control-socket",
            "tests.integration.preload_app:application",
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines = OutputLines(web.stdout, "gunicorn")  # type: ignore[arg-type]
    seen: list[str] = []
    try:
        while not any("forked while" in line for line in seen):
            seen.append(lines.next(READY_TIMEOUT))
        warning = next(line for line in seen if "forked while" in line)
        assert "[WARNING] redis_rpc._fork" in warning
        assert "--preload" in warning
    finally:
        web.send_signal(signal.SIGTERM)
        try:
            web.wait(LONG_TIMEOUT)
        except subprocess.TimeoutExpired:
            web.kill()
            web.wait(LONG_TIMEOUT)
        lines.close()
