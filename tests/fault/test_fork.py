"""A broker created before os.fork() works in the child on its own connections and listener."""

from __future__ import annotations

import json
import logging
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from redis_rpc import RedisBroker
from redis_rpc.errors import BrokerStateError
from tests.conftest import (
    LONG_TIMEOUT,
    POLL_INTERVAL,
    PROCESS_TEST_TIMEOUT,
    SHORT_TIMEOUT,
)
from tests.fault.conftest import our_threads

ROOT = Path(__file__).resolve().parents[2]

# Python 3.12 warns about fork() in a process with threads; forking one is the point.
pytestmark = pytest.mark.filterwarnings(
    "ignore:This process .* is multi-threaded:DeprecationWarning"
)


def pid_echo(body):
    return {"pid": os.getpid(), "body": body}


def run_in_child(check):
    """Fork; in the child, run *check()* and send back its JSON result; return it in the parent."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never return into pytest
        code = 1
        try:
            os.close(read)
            result = check()
            os.write(write, json.dumps(result).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write)
    chunks, deadline = [], time.monotonic() + LONG_TIMEOUT
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([read], [], [], 0.1)
            if ready:
                if not (chunk := os.read(read, 65536)):
                    break  # the child closed its end: it has exited
                chunks.append(chunk)
        else:
            os.kill(pid, signal.SIGKILL)
            pytest.fail("the child did not finish in time")
    finally:
        os.close(read)
        status = reap(pid)
    assert os.waitstatus_to_exitcode(status) == 0, "the child failed"
    return json.loads(b"".join(chunks))


def reap(pid):
    """Wait for child *pid* to exit, SIGKILLing it after LONG_TIMEOUT; return its wait status."""
    deadline = time.monotonic() + LONG_TIMEOUT
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return status
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            return os.waitpid(pid, 0)[1]  # SIGKILL cannot be ignored: it ends at once
        time.sleep(0.01)  # waitpid() has no timeout; poll the child


def test_forked_child_gets_fresh_connections_and_listener(own_server, raw, unique_name):
    """A broker that served and requested before fork() requests in the child on new connections, and the parent goes on."""
    broker = RedisBroker(own_server.url, poll_interval=POLL_INTERVAL)
    broker.subscriber(list=unique_name)(pid_echo)
    with broker:
        parent_pid = os.getpid()
        assert broker.request(1, list=unique_name, timeout=SHORT_TIMEOUT).decode() == {
            "pid": parent_pid,
            "body": 1,
        }
        parent_threads = our_threads()
        parent_listener = broker._listener
        assert parent_listener is not None
        parent_prefix = parent_listener.prefix
        parent_clients = {c["id"] for c in raw.client_list()}

        def check():
            reply = broker.request(2, list=unique_name, timeout=SHORT_TIMEOUT)
            listener = broker._listener
            assert listener is not None
            try:
                broker.start()
                start_error = ""
            except BrokerStateError as exc:
                start_error = str(exc)
            client: Any = broker._backend._client  # type: ignore[attr-defined]
            result = {
                "reply": reply.decode(),
                "fresh_listener": listener.prefix != parent_prefix
                and listener._thread.is_alive(),
                "client_id": str(client.client_id()),
                "start_error": start_error,
                "subscribers": sum(c["psub"] == "1" for c in client.client_list()),
            }
            broker.close()
            return result

        child = run_in_child(check)
        # The parent's consumer answered the child, and the child's reply reached it.
        assert child["reply"] == {"pid": parent_pid, "body": 2}
        assert child["fresh_listener"]
        assert child["client_id"] not in parent_clients
        assert "forked" in child["start_error"]
        assert (
            child["subscribers"] == 2
        )  # the parent's reply subscription and the child's
        # The parent's own threads, connections and listener are untouched.
        assert our_threads() == parent_threads
        assert broker._listener is parent_listener
        assert broker.request(3, list=unique_name, timeout=SHORT_TIMEOUT).decode() == {
            "pid": parent_pid,
            "body": 3,
        }


def test_broker_declared_before_fork_serves_in_the_child(own_server, unique_name):
    """A broker declared at import time, as in a pre-fork server, starts and serves in the child."""
    broker = RedisBroker(own_server.url, poll_interval=POLL_INTERVAL)
    broker.subscriber(list=unique_name)(pid_echo)
    client = RedisBroker(own_server.url, poll_interval=POLL_INTERVAL)
    client.request  # noqa: B018 - created, as pre-fork apps do, but not used yet

    def check():
        with broker:
            reply = client.request("hi", list=unique_name, timeout=SHORT_TIMEOUT)
        client.close()
        return {"reply": reply.decode(), "pid": os.getpid()}

    try:
        child = run_in_child(check)
        assert child["reply"] == {"pid": child["pid"], "body": "hi"}
        assert child["pid"] != os.getpid()
        # The parent never started it, so it may start it too.
        with broker:
            reply = client.request("parent", list=unique_name, timeout=SHORT_TIMEOUT)
            assert reply.decode() == {"pid": os.getpid(), "body": "parent"}
    finally:
        client.close()
        broker.close()


def hookless_fork(url, name, mode):
    """Run tests.fault.hookless_fork against *name*; what its forked child reported."""
    done = subprocess.run(
        [sys.executable, "-m", "tests.fault.hookless_fork", url, name, mode],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=PROCESS_TEST_TIMEOUT - 10,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    child = json.loads(done.stdout.strip().splitlines()[-1])
    assert child["reported"], "no forked child reported, in three attempts"
    assert child["raised"] is None, child["raised"]
    assert child["after"]["body"] == "after"  # the parent's broker is untouched
    return child


@pytest.mark.timeout(PROCESS_TEST_TIMEOUT)
def test_a_fork_that_skipped_the_hooks_fails_the_first_request_at_once(
    own_server, unique_name
):
    """In a child forked without Python's fork hooks from a broker that was used, request() raises BrokerStateError naming the uWSGI fix instead of timing out."""
    server = RedisBroker(own_server.url, poll_interval=POLL_INTERVAL)
    server.subscriber(list=unique_name)(pid_echo)
    with server:
        child = hookless_fork(own_server.url, unique_name, "used")
    assert child["error"] is not None, "the request in the child did not fail"
    assert child["took"] < SHORT_TIMEOUT
    assert "py-call-osafterfork" in child["error"]
    assert "forked from" in child["error"]


@pytest.mark.timeout(PROCESS_TEST_TIMEOUT)
def test_an_unused_broker_works_in_a_child_forked_without_the_hooks(
    own_server, unique_name
):
    """A broker created at import and never used before a hookless fork (uWSGI's defaults) answers in the child."""
    server = RedisBroker(own_server.url, poll_interval=POLL_INTERVAL)
    server.subscriber(list=unique_name)(pid_echo)
    with server:
        child = hookless_fork(own_server.url, unique_name, "unused")
    assert child["error"] is None, child["error"]
    assert child["body"]["body"] == "child"


@pytest.mark.timeout(60)
def test_forking_a_serving_broker_warns_once_in_the_parent(
    own_server, unique_name, caplog
):
    """A process that forks while a broker serves logs one warning: the consumers stay in the parent."""
    server = RedisBroker(own_server.url, poll_interval=POLL_INTERVAL)
    server.subscriber(list=unique_name)(pid_echo)
    idle = RedisBroker(
        own_server.url, poll_interval=POLL_INTERVAL
    )  # started, serves nothing
    with server, idle, caplog.at_level(logging.WARNING, logger="redis_rpc"):
        assert run_in_child(lambda: {"ok": True}) == {"ok": True}
        assert run_in_child(lambda: {"ok": True}) == {"ok": True}
    warnings = [
        record.getMessage()
        for record in caplog.records
        if "forked while" in record.getMessage()
    ]
    assert len(warnings) == 1, warnings
    assert "post_fork" in warnings[0]
