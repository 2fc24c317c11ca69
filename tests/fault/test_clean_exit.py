"""Stuck handlers do not outlive close(): it returns in time, names them, and the process exits."""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import threading
import time

from tests.conftest import LONG_TIMEOUT, POLL_INTERVAL, SHORT_TIMEOUT
from tests.fault.conftest import ROOT
from tests.fault.stuck_server import GRACEFUL_TIMEOUT

# close() may overrun graceful_timeout by about two poll intervals; the rest
# is room for a loaded machine to schedule the process's last steps.
EXIT_BOUND = GRACEFUL_TIMEOUT + LONG_TIMEOUT


def test_stuck_handlers_do_not_keep_the_process_alive(own_server, raw, unique_name):
    """After SIGTERM, App.run() returns and the process exits although both handlers never return."""
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.fault.stuck_server", own_server.url, unique_name],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        assert process.stdout.readline().strip() == "ready"
        raw.rpush(unique_name, b"first", b"second")
        stuck = {process.stdout.readline().strip() for _ in range(2)}
        assert stuck == {"stuck first", "stuck second"}
        signalled = time.monotonic()
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=EXIT_BOUND)
        elapsed = time.monotonic() - signalled
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate(timeout=LONG_TIMEOUT)
    assert process.returncode == 0, err
    assert out.strip() == "closed"
    assert elapsed < EXIT_BOUND


def test_close_returns_in_time_and_names_the_stuck_handlers(
    make_broker, unique_name, raw, caplog
):
    """close() returns within graceful_timeout plus a small bound and warns about each stuck handler and its message."""
    broker = make_broker(max_workers=3, graceful_timeout=0.3)
    release, started = threading.Event(), threading.Semaphore(0)

    @broker.subscriber(list=unique_name)
    def never_returns(body: str) -> None:
        started.release()
        release.wait(LONG_TIMEOUT * 3)

    broker.start()
    for index in range(2):
        broker.publish(f"body-{index}", list=unique_name, correlation_id=f"cid-{index}")
    assert started.acquire(timeout=LONG_TIMEOUT)
    assert started.acquire(timeout=LONG_TIMEOUT)
    caplog.set_level(logging.WARNING, logger="redis_rpc")
    begun = time.monotonic()
    broker.close()
    elapsed = time.monotonic() - begun
    release.set()
    # graceful_timeout, then at most about two poll intervals to stop reading.
    assert elapsed < 0.3 + 2 * POLL_INTERVAL + SHORT_TIMEOUT
    warnings = [
        r.getMessage() for r in caplog.records if "graceful_timeout" in r.getMessage()
    ]
    assert len(warnings) == 1
    assert warnings[0].count("never_returns") == 2
    assert "'cid-0'" in warnings[0]
    assert "'cid-1'" in warnings[0]
