"""Several server processes on one stream share the work, stop cleanly on SIGTERM, and take over a killed one's entries."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest
import redis

from tests.conftest import (
    LONG_TIMEOUT,
    PROCESS_TEST_TIMEOUT,
    READY_TIMEOUT,
    SHORT_TIMEOUT,
)
from tests.helpers import Callers, OutputLines

ROOT = Path(__file__).resolve().parents[2]
# A request that a server process started after it answers: it waits for the start.
ANSWER_TIMEOUT = READY_TIMEOUT + LONG_TIMEOUT


class StreamServer:
    """A running ``tests.integration.stream_server``; a daemon thread collects what it prints."""

    def __init__(self, redis_url: str, stream: str, *mode: str) -> None:
        self.popen = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.integration.stream_server",
                redis_url,
                stream,
                *mode,
            ],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.pid = self.popen.pid
        self.lines = OutputLines(self.popen.stdout, "stream_server")  # type: ignore[arg-type]

    def wait_ready(self, line: str = "ready") -> None:
        """Block until the process prints *line*, within READY_TIMEOUT."""
        assert self.lines.next(READY_TIMEOUT) == line

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
        self.popen.wait(LONG_TIMEOUT)
        self.lines.close()


@pytest.fixture
def start_server(redis_url):
    """Start stream servers in their own processes; kill any left at the end."""
    processes: list[StreamServer] = []

    def start(stream: str, *mode: str) -> StreamServer:
        process = StreamServer(redis_url, stream, *mode)
        processes.append(process)
        return process

    yield start
    for process in processes:
        process.stop()


@pytest.mark.timeout(PROCESS_TEST_TIMEOUT)
def test_server_processes_share_a_stream(
    make_broker, start_server, unique_name, redis_url
):
    """Two server processes in one consumer group answer every request exactly once."""
    servers = [start_server(unique_name) for _ in range(2)]
    for server in servers:
        server.wait_ready()
    client = make_broker()
    with Callers(4) as callers:
        replies = list(
            callers.map(
                lambda n: client.request(
                    n, stream=unique_name, timeout=LONG_TIMEOUT
                ).decode(),
                range(60),
            )
        )
    assert [reply["body"] for reply in replies] == list(range(60))
    assert {reply["pid"] for reply in replies} == {server.pid for server in servers}
    raw = redis.Redis.from_url(redis_url)
    try:
        assert raw.xpending(unique_name, "redis_rpc")["pending"] == 0
        assert raw.xlen(unique_name) == 60
    finally:
        raw.close()
    for server in servers:
        server.popen.send_signal(signal.SIGTERM)
    assert [server.popen.wait(LONG_TIMEOUT) for server in servers] == [0, 0]


@pytest.mark.timeout(PROCESS_TEST_TIMEOUT)
def test_killed_servers_entry_is_claimed_and_answered(
    make_broker, start_server, unique_name, redis_url
):
    """A server SIGKILLed in the middle of a handler leaves its entry pending; a live
    server of the group claims it after claim_idle_time and every request is answered."""
    doomed = start_server(unique_name, "hang")
    doomed.wait_ready()
    client = make_broker()
    with Callers(5, timeout=ANSWER_TIMEOUT + SHORT_TIMEOUT) as callers:
        replies = callers.map(
            lambda n: client.request(n, stream=unique_name, timeout=ANSWER_TIMEOUT),
            range(5),
        )
        doomed.wait_ready("handling")  # it holds one entry, read but not acknowledged
        doomed.popen.kill()
        assert doomed.popen.wait(LONG_TIMEOUT) == -signal.SIGKILL
        survivor = start_server(unique_name)
        survivor.wait_ready()
        answered = [reply.decode() for reply in replies]
    assert sorted(reply["body"] for reply in answered) == list(range(5))
    assert {reply["pid"] for reply in answered} == {survivor.pid}
    raw = redis.Redis.from_url(redis_url)
    try:
        assert raw.xpending(unique_name, "redis_rpc")["pending"] == 0
    finally:
        raw.close()
    survivor.popen.send_signal(signal.SIGTERM)
    assert survivor.popen.wait(LONG_TIMEOUT) == 0
