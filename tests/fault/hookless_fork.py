"""A caller that forks through libc, skipping Python's fork hooks, as uWSGI does by default.

Run as ``python -m tests.fault.hookless_fork URL LIST [used|unused]``.
With ``used`` (the default) it makes one request to *LIST* (which the test
serves), so that its reply listener and writer threads are up; with
``unused`` the broker is only created, as a module does at import. Then it
forks with ``fork()`` from libc, which runs none of the handlers of
``os.register_at_fork()``. The child makes a request and reports what
happened; the parent prints that report as one JSON line and exits 0.

It runs in a process of its own, with no thread of its own busy at the
fork: a libc fork taken while another thread waits for the interpreter
lock can leave the child waiting for that thread for ever, which says
nothing about the broker. Should a child hang all the same, it is killed
and the fork tried again.
"""

from __future__ import annotations

import ctypes
import json
import os
import select
import signal
import sys
import time

from redis_rpc import RedisBroker
from redis_rpc.errors import BrokerStateError

ATTEMPTS = 3
CHILD_TIMEOUT = 10.0  # seconds a child may take to report
REQUEST_TIMEOUT = 5.0
SETTLE = 0.05  # seconds for the broker's threads to go back to waiting


def child(broker: RedisBroker, name: str, write: int) -> None:
    """In the child: request, and report how it went; never returns."""
    code = 1
    try:
        started = time.monotonic()
        error = raised = body = None
        try:
            body = broker.request("child", list=name, timeout=REQUEST_TIMEOUT).decode()
        except BrokerStateError as exc:
            error = str(exc)
        except Exception as exc:  # noqa: BLE001 - reported: the test says what was wrong
            raised = repr(exc)
        report = {
            "error": error,
            "raised": raised,
            "body": body,
            "took": time.monotonic() - started,
        }
        os.write(write, json.dumps(report).encode())
        code = 0
    finally:
        os._exit(code)


def attempt(broker: RedisBroker, name: str) -> dict[str, object] | None:
    """Fork once; the child's report, or None if it did not report in time."""
    read, write = os.pipe()
    time.sleep(SETTLE)
    # PyDLL keeps the interpreter lock across the call, so that the child
    # starts out holding it, as after os.fork().
    pid = int(ctypes.PyDLL(None).fork())
    if pid == 0:
        os.close(read)
        child(broker, name, write)
    os.close(write)
    chunks: list[bytes] = []
    deadline = time.monotonic() + CHILD_TIMEOUT
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([read], [], [], 0.1)
            if ready:
                if not (chunk := os.read(read, 65536)):
                    break
                chunks.append(chunk)
        else:
            os.kill(pid, signal.SIGKILL)
    finally:
        os.close(read)
        os.waitpid(pid, 0)
    return json.loads(b"".join(chunks)) if chunks else None


def main(url: str, name: str, mode: str) -> None:
    # Few wake-ups of its own threads between requests: a long poll interval.
    broker = RedisBroker(url, poll_interval=5.0, socket_timeout=10.0)
    if mode == "used":
        broker.request("warm", list=name, timeout=REQUEST_TIMEOUT)
    for _ in range(ATTEMPTS):
        report = attempt(broker, name)
        if report is not None:
            report |= {"reported": True, "after": _after(broker, name)}
            print(json.dumps(report), flush=True)  # noqa: T201 - the test reads it
            return
    print(json.dumps({"reported": False}), flush=True)  # noqa: T201 - the test reads it


def _after(broker: RedisBroker, name: str) -> object:
    """The parent's broker still works after the fork."""
    return broker.request("after", list=name, timeout=REQUEST_TIMEOUT).decode()


if __name__ == "__main__":
    main(*sys.argv[1:3], *(sys.argv[3:] or ["used"]))
