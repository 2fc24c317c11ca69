"""A server process stopped longer than its socket_timeout still sends the replies it owed, while their callers wait."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest

from redis_rpc import RedisBroker
from tests.conftest import LONG_TIMEOUT, POLL_INTERVAL, READY_TIMEOUT
from tests.fault.conftest import ROOT
from tests.fault.stall_server import HANDLERS, SOCKET_TIMEOUT
from tests.helpers import Callers, OutputLines

# Redis holds every client this long: the first reply's answer waits, so
# the other replies queue behind it. Below the server's socket_timeout.
PAUSE = 1.5
# The server process stays stopped this long after its replies queued:
# past socket_timeout, the bound replies had before.
STALL = SOCKET_TIMEOUT + 1.5
# The callers wait this long: well past the stall.
CALLER_TIMEOUT = STALL + LONG_TIMEOUT


@pytest.mark.timeout(90)
def test_channel_replies_queued_before_a_stall_reach_their_callers(
    own_server, raw, unique_name
):
    """Channel replies waiting in a server's pipe when the process is stopped for longer than socket_timeout are sent once it resumes, since their callers still wait."""
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.fault.stall_server", own_server.url, unique_name],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdin is not None
    assert process.stdout is not None
    stdin = process.stdin
    lines = OutputLines(process.stdout, "stall_server")
    caller = RedisBroker(own_server.url, poll_interval=POLL_INTERVAL)

    def release(count):
        stdin.write("release\n" * count)
        stdin.flush()

    try:
        assert lines.next(READY_TIMEOUT) == "ready"
        with Callers(HANDLERS, timeout=CALLER_TIMEOUT + LONG_TIMEOUT) as pool:
            futures = [
                pool.submit(caller.request, n, unique_name, timeout=CALLER_TIMEOUT)
                for n in range(HANDLERS)
            ]
            handling = sorted(lines.next(LONG_TIMEOUT) for _ in range(HANDLERS))
            assert handling == [f"handling {n}" for n in range(HANDLERS)]
            raw.client_pause(int(PAUSE * 1000), all=True)
            release(1)
            assert lines.next(LONG_TIMEOUT) == "written"
            release(HANDLERS - 1)
            assert lines.next(LONG_TIMEOUT) == "queued"
            process.send_signal(signal.SIGSTOP)
            try:
                time.sleep(STALL)  # the stall itself is what is tested
            finally:
                process.send_signal(signal.SIGCONT)
            replies = [f.result(CALLER_TIMEOUT).decode() for f in futures]
        assert replies == list(range(HANDLERS))
    finally:
        caller.close()
        process.send_signal(signal.SIGCONT)
        process.terminate()
        try:
            process.wait(LONG_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(LONG_TIMEOUT)
        stdin.close()
        lines.close()
