"""Several server processes on one stream share the work, stop cleanly on SIGTERM, and take over a killed one's entries."""

from __future__ import annotations

import signal
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import redis

from tests.conftest import LONG_TIMEOUT

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def start_server(redis_url):
    """Start stream servers in their own processes; terminate any left at the end."""
    processes: list[subprocess.Popen[str]] = []

    def start(stream: str, *mode: str) -> subprocess.Popen[str]:
        process = subprocess.Popen(
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
        processes.append(process)
        return process

    yield start
    for process in processes:
        if process.poll() is None:
            process.kill()
            process.wait(LONG_TIMEOUT)
        process.stdout.close()  # type: ignore[union-attr]


def wait_ready(process: subprocess.Popen[str], line: str = "ready") -> None:
    """Block until *process* prints *line*, within LONG_TIMEOUT."""
    with ThreadPoolExecutor(1) as pool:
        printed = pool.submit(process.stdout.readline).result(LONG_TIMEOUT)  # type: ignore[union-attr]
    assert printed.strip() == line


def test_server_processes_share_a_stream(
    make_broker, start_server, unique_name, redis_url
):
    """Two server processes in one consumer group answer every request exactly once."""
    servers = [start_server(unique_name) for _ in range(2)]
    for server in servers:
        wait_ready(server)
    client = make_broker()
    with ThreadPoolExecutor(4) as callers:
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
        server.send_signal(signal.SIGTERM)
    assert [server.wait(LONG_TIMEOUT) for server in servers] == [0, 0]


def test_killed_servers_entry_is_claimed_and_answered(
    make_broker, start_server, unique_name, redis_url
):
    """A server SIGKILLed in the middle of a handler leaves its entry pending; a live
    server of the group claims it after claim_idle_time and every request is answered."""
    doomed = start_server(unique_name, "hang")
    wait_ready(doomed)
    client = make_broker()
    with ThreadPoolExecutor(5) as callers:
        replies = callers.map(
            lambda n: client.request(n, stream=unique_name, timeout=LONG_TIMEOUT),
            range(5),
        )
        wait_ready(doomed, "handling")  # it holds one entry, read but not acknowledged
        doomed.kill()
        assert doomed.wait(LONG_TIMEOUT) == -signal.SIGKILL
        survivor = start_server(unique_name)
        wait_ready(survivor)
        answered = [reply.decode() for reply in replies]
    assert sorted(reply["body"] for reply in answered) == list(range(5))
    assert {reply["pid"] for reply in answered} == {survivor.pid}
    raw = redis.Redis.from_url(redis_url)
    try:
        assert raw.xpending(unique_name, "redis_rpc")["pending"] == 0
    finally:
        raw.close()
    survivor.send_signal(signal.SIGTERM)
    assert survivor.wait(LONG_TIMEOUT) == 0
