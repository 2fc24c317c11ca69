"""Idempotency keys: a keyed handler runs once per destination and key, and duplicates get its reply."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from redis_rpc import StreamSub
from redis_rpc.errors import RemoteError, SetupError
from tests.conftest import LONG_TIMEOUT, PROCESS_TEST_TIMEOUT, READY_TIMEOUT
from tests.helpers import Callers, OutputLines, wait_for

ROOT = Path(__file__).resolve().parents[2]
DUPLICATES = 8


class KeyedServer:
    """A running ``tests.integration.keyed_server``."""

    def __init__(self, redis_url: str, name: str, *mode: str) -> None:
        self.popen = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.integration.keyed_server",
                redis_url,
                name,
                f"{name}-stream",
                *mode,
            ],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.lines = OutputLines(self.popen.stdout, "keyed_server")  # type: ignore[arg-type]

    def wait_ready(self) -> None:
        assert self.lines.next(READY_TIMEOUT) == "ready"

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
        self.popen.wait(LONG_TIMEOUT)
        self.lines.close()


@pytest.fixture
def start_server(redis_url):
    """Start keyed servers in their own processes; kill any left at the end."""
    processes: list[KeyedServer] = []

    def start(name: str, *mode: str) -> KeyedServer:
        process = KeyedServer(redis_url, name, *mode)
        processes.append(process)
        return process

    yield start
    for process in processes:
        process.stop()


@pytest.mark.timeout(PROCESS_TEST_TIMEOUT)
def test_duplicates_across_two_server_processes_run_the_handler_once(
    make_broker, start_server, raw, unique_name
):
    """Eight concurrent requests and a late one with the same key run the handler once, and all get its reply."""
    servers = [start_server(unique_name) for _ in range(2)]
    for server in servers:
        server.wait_ready()
    client = make_broker()
    with client, Callers(DUPLICATES) as callers:
        calls = [
            callers.submit(
                client.request,
                "pay",
                list=unique_name,
                idempotency_key="order-42",
                timeout=LONG_TIMEOUT,
            )
            for _ in range(DUPLICATES)
        ]
        replies = [call.result(LONG_TIMEOUT).decode() for call in calls]
        late = client.request(
            "pay", list=unique_name, idempotency_key="order-42", timeout=LONG_TIMEOUT
        )
        other = client.request(
            "pay", list=unique_name, idempotency_key="order-43", timeout=LONG_TIMEOUT
        )
    assert all(reply == replies[0] for reply in replies)
    assert late.decode() == replies[0]
    assert other.decode()["run"] != replies[0]["run"]
    assert int(raw.get(f"{unique_name}:runs")) == 2
    # Each duplicate got the reply under its own correlation id.
    assert late.correlation_id != ""


@pytest.mark.timeout(PROCESS_TEST_TIMEOUT)
def test_a_reclaimed_entry_of_a_killed_consumer_does_not_run_again(
    make_broker, start_server, raw, unique_name
):
    """A consumer killed after it stored a keyed reply, before its ack: the entry is reclaimed and answered from the store."""
    stream = f"{unique_name}-stream"
    doomed = start_server(unique_name, "die-after-store")
    doomed.wait_ready()
    client = make_broker()
    with client, Callers(1) as callers:
        call = callers.submit(
            client.request,
            "pay",
            stream=StreamSub(stream),
            idempotency_key="order-7",
            timeout=LONG_TIMEOUT,
        )
        assert wait_for(lambda: doomed.popen.poll() is not None, LONG_TIMEOUT)
        survivor = start_server(unique_name)
        survivor.wait_ready()
        reply = call.result(LONG_TIMEOUT).decode()
    assert int(raw.get(f"{unique_name}:runs")) == 1
    assert reply["body"] == "pay"
    assert raw.xinfo_groups(stream)[0]["pending"] == 0


def test_a_failed_keyed_handler_runs_again_on_a_retry(make_broker, unique_name):
    """A keyed handler that raised stores nothing: a retry with the same key runs it again."""
    runs = []
    server = make_broker()

    @server.subscriber(list=unique_name)
    def flaky(body: str) -> str:
        runs.append(body)
        if len(runs) == 1:
            raise ValueError("first try")
        return body

    client = make_broker()
    with server, client:
        with pytest.raises(RemoteError):
            client.request(
                "x", list=unique_name, idempotency_key="k", timeout=LONG_TIMEOUT
            )
        assert (
            client.request(
                "x", list=unique_name, idempotency_key="k", timeout=LONG_TIMEOUT
            ).decode()
            == "x"
        )
        assert (
            client.request(
                "x", list=unique_name, idempotency_key="k", timeout=LONG_TIMEOUT
            ).decode()
            == "x"
        )
    assert runs == ["x", "x"]
    counts = server.stats().subscribers[f"list:{unique_name}"]
    assert (counts.failed, counts.handled, counts.replayed) == (1, 1, 1)


def test_keyed_publishes_run_once(make_broker, unique_name):
    """publish() with an idempotency key has its handler run once, however often it is sent."""
    runs = []
    server = make_broker()

    @server.subscriber(list=unique_name)
    def handle(body: int) -> None:
        runs.append(body)

    client = make_broker()
    with server, client:
        for _ in range(3):
            client.publish(1, list=unique_name, idempotency_key="event-1")
        client.publish(2, list=unique_name, idempotency_key="event-2")
        counts = lambda: server.stats().subscribers[f"list:{unique_name}"]  # noqa: E731
        assert wait_for(lambda: counts().received == 4 and counts().in_flight == 0)
    assert sorted(runs) == [1, 2]
    assert counts().replayed == 2


def test_a_bad_idempotency_key_is_refused(make_broker, unique_name):
    """An empty idempotency key is refused before anything is sent."""
    client = make_broker()
    with pytest.raises(SetupError, match="idempotency_key"):
        client.publish(1, list=unique_name, idempotency_key="")
