"""A soak run: many requests, a tenth of them timing out, and nothing may grow.

It starts a private redis-server (``redis_rpc.testing.RedisServer``) and a
server process of its own (this module run with ``--serve``), which answers
list ``soak`` at once and list ``soak:slow`` only after ``SLOW_DELAY``.
``CALLERS`` threads share one ``RedisBroker`` and send ``REQUESTS`` requests
(after a tenth as many to warm up): one in twenty to a channel nobody
listens to, one in twenty to the slow list with a timeout shorter than its
delay, so that its reply arrives late and must be dropped, and the rest to
the fast list. It then checks that:

- no request is left in the reply listener's pending table;
- this process runs as many threads as after the warm-up, and the server
  process no more than its subscribers can start;
- resident memory of both processes grew by less than ``RSS_GROWTH_BOUND``;
- the client's Redis connections (``CLIENT LIST``) are bounded by the
  callers, not the requests, and all are gone after ``close()``.

It prints a report and exits with 0 when every check holds, 1 when one
fails, and 2 when the run could not finish within ``DEADLINE`` seconds.
Run from the repository root (Linux only: it reads ``/proc``)::

    .venv/bin/python -m benchmarks.soak [--requests N] [--callers N]
"""

from __future__ import annotations

import argparse
import itertools
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import redis

from redis_rpc import RedisBroker
from redis_rpc.errors import RequestTimeoutError
from redis_rpc.testing import RedisServer

REQUESTS = 100_000  # about a minute and a half on two busy cores
WARM_UP_SHARE = 10  # a tenth as many first: pools, caches and allocator arenas fill up
CALLERS = 32
LIST = "soak"  # answered at once
SLOW_LIST = "soak:slow"  # answered after SLOW_DELAY
NOBODY = "soak:nobody"  # a channel nobody subscribes to
SLOW_DELAY = 0.03
SLOW_WORKERS = 16
# The timeout of the requests meant to time out; below SLOW_DELAY, so that
# the slow handler's replies always arrive after it.
EXPIRING = 0.01
ANSWER_TIMEOUT = 10.0  # for the requests that should be answered
POLL_INTERVAL = 0.05
# The allocator settles slowly (about 70 bytes per request was measured over
# 100,000, most of it early), but a leaked future, frame or connection per
# request is far more.
RSS_GROWTH_BOUND_FIXED = 4 * 2**20
RSS_GROWTH_BOUND_PER_REQUEST = 128
# The most threads the server process runs: main, stdin watcher, the reply
# listener (start() starts it), two consumers, the writer of replies and
# acks, and the slow subscriber's workers.
SERVER_THREADS = 6 + SLOW_WORKERS
CLIENT_NAME = "soak-client"
DEADLINE = 900.0  # seconds; the run gives up after this, however loaded the machine
SERVER_START_TIMEOUT = 30.0  # a fresh interpreter on a busy machine
SERVER_STOP_TIMEOUT = 10.0
SERVER_LIFETIME = DEADLINE + 60.0  # a safety net: the run always stops it before
READY = "ready"

logger = logging.getLogger("benchmarks.soak")


# -- the server process -----------------------------------------------------------


def serve(url: str) -> None:
    """Answer LIST at once and SLOW_LIST after SLOW_DELAY until stdin closes or SIGTERM."""
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())

    def watch_stdin() -> None:
        # os.read, not sys.stdin: a daemon thread blocked inside a buffered
        # reader at interpreter exit makes CPython abort.
        while os.read(sys.stdin.fileno(), 1024):
            pass
        stop.set()

    threading.Thread(target=watch_stdin, name="soak:stdin", daemon=True).start()
    broker = RedisBroker(url, poll_interval=POLL_INTERVAL)

    @broker.subscriber(list=LIST)
    def echo(body: Any) -> Any:
        return body

    @broker.subscriber(list=SLOW_LIST, max_workers=SLOW_WORKERS)
    def slow(body: Any) -> Any:
        stop.wait(SLOW_DELAY)
        return body

    with broker:
        print(READY, flush=True)
        stop.wait(SERVER_LIFETIME)


class ServerProcess:
    """This module run with ``--serve``; ``with`` waits until it is ready and stops it."""

    def __init__(self, url: str) -> None:
        self.popen = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.soak", "--serve", url],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=Path(__file__).resolve().parents[1],
        )
        self._ready = threading.Event()

    def __enter__(self) -> ServerProcess:
        stdout = self.popen.stdout
        assert stdout is not None

        def read() -> None:
            # Reads to the end, so that the server never blocks on a full pipe.
            for line in stdout:
                if line.strip() == READY:
                    self._ready.set()

        threading.Thread(target=read, name="soak:server-stdout", daemon=True).start()
        deadline = time.monotonic() + SERVER_START_TIMEOUT
        while not self._ready.wait(0.1):
            if self.popen.poll() is not None or time.monotonic() > deadline:
                self.stop()
                msg = f"The soak server did not start within {SERVER_START_TIMEOUT} s."
                raise RuntimeError(msg)
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def stop(self) -> None:
        """Close its stdin and SIGTERM it; kill it if it does not exit in time."""
        if self.popen.stdin is not None:
            self.popen.stdin.close()
        if self.popen.poll() is None:
            self.popen.terminate()
        try:
            self.popen.wait(SERVER_STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            print("warning: the soak server had to be killed", file=sys.stderr)
            self.popen.kill()
            self.popen.wait(SERVER_STOP_TIMEOUT)


# -- measuring ---------------------------------------------------------------------


def rss(pid: int | str = "self") -> int:
    """Resident memory of process *pid*, in bytes."""
    pages = int(Path(f"/proc/{pid}/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE")


def thread_count(pid: int) -> int:
    """Threads of process *pid*."""
    return len(os.listdir(f"/proc/{pid}/task"))


def own_threads() -> int:
    """Python threads of this process: a caller that has been joined no longer counts,
    though the kernel may list it for a moment more while it winds down."""
    return threading.active_count()


class DroppedReplies(logging.Handler):
    """Counts the late replies the reply listener drops."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().startswith("Dropped a reply"):
            self.count += 1  # one listener thread logs these: no race


class Load:
    """Sends numbered requests from caller threads and counts how each ended."""

    def __init__(self, client: RedisBroker, callers: int, deadline: float) -> None:
        self.client = client
        self.callers = callers
        self.deadline = deadline
        self.answered = self.timed_out = 0
        self.errors: list[str] = []
        self._lock = threading.Lock()  # guards answered, timed_out and errors

    def run(self, first: int, end: int) -> bool:
        """Send requests *first* to *end* - 1; False if they did not finish before the deadline."""
        numbers = itertools.count(first)  # next() is atomic under the GIL
        threads = [
            threading.Thread(
                target=self._call,
                args=(numbers, end),
                name=f"soak:caller-{n}",
                daemon=True,  # a stuck caller must not keep the run alive
            )
            for n in range(self.callers)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(max(0.0, self.deadline - time.monotonic()))
        return not any(thread.is_alive() for thread in threads)

    def _call(self, numbers: itertools.count[int], end: int) -> None:
        answered = timed_out = 0
        errors: list[str] = []
        while (n := next(numbers)) < end and time.monotonic() < self.deadline:
            try:
                if n % 20 == 0:  # nobody listens, and the caller waits anyway
                    self.client.request(
                        n, channel=NOBODY, timeout=EXPIRING, fail_fast=False
                    )
                elif n % 20 == 1:  # answered, but too late
                    self.client.request(n, list=SLOW_LIST, timeout=EXPIRING)
                else:
                    reply = self.client.request(n, list=LIST, timeout=ANSWER_TIMEOUT)
                    if reply.decode() != n:
                        errors.append(f"request {n} got {reply.decode()!r}")
                answered += 1
            except RequestTimeoutError:
                timed_out += 1
            except Exception as exc:  # noqa: BLE001 - reported as a failed check
                errors.append(f"request {n}: {type(exc).__name__}: {exc}")
        with self._lock:
            self.answered += answered
            self.timed_out += timed_out
            self.errors += errors


# -- the run -----------------------------------------------------------------------


def soak(url: str, requests: int, callers: int, server: ServerProcess) -> int:
    """Run the load against *url* and check what grew; return the exit status."""
    began = time.monotonic()
    deadline = began + DEADLINE
    warm_up = requests // WARM_UP_SHARE
    dropped, request_logger = (
        DroppedReplies(),
        logging.getLogger("redis_rpc._client.listener"),
    )
    request_logger.addHandler(dropped)
    request_logger.setLevel(logging.DEBUG)
    raw = redis.Redis.from_url(url)
    client = RedisBroker(url, poll_interval=POLL_INTERVAL, client_name=CLIENT_NAME)
    load = Load(client, callers, deadline)
    server_pid = server.popen.pid

    def connections() -> int:
        return sum(c["name"] == CLIENT_NAME for c in raw.client_list())

    try:
        with client:
            finished = load.run(0, warm_up)
            warm = (own_threads(), connections(), rss(), rss(server_pid))
            started = time.monotonic()
            finished = finished and load.run(warm_up, warm_up + requests)
            seconds = time.monotonic() - started
            if finished:
                # The slow list is first in, first out: once a last slow request
                # is answered, every one before it has been handled or skipped.
                client.request("last", list=SLOW_LIST, timeout=ANSWER_TIMEOUT)
            end = (own_threads(), connections(), rss(), rss(server_pid))
            server_threads = thread_count(server_pid)
            pending = client._listener.pending if client._listener else 0
        left = connections()
    finally:
        raw.close()
        request_logger.removeHandler(dropped)
    if not finished:
        print(f"FAILED: the run did not finish within {DEADLINE:.0f} s")
        return 2

    total = warm_up + requests
    nobody = sum(n % 20 == 0 for n in range(total))
    late = sum(n % 20 == 1 for n in range(total))
    bound = RSS_GROWTH_BOUND_FIXED + RSS_GROWTH_BOUND_PER_REQUEST * requests
    growth = (end[2] - warm[2], end[3] - warm[3])
    print(
        f"{requests} requests after {warm_up} to warm up, {callers} callers: "
        f"{seconds:.1f} s, {requests / seconds:.0f} requests/s"
    )
    print(
        f"answered {load.answered}, timed out {load.timed_out}, "
        f"late replies dropped {dropped.count}"
    )
    checks = [
        ("no unexpected errors", not load.errors, f"{len(load.errors)} errors"),
        (
            "every request ended",
            load.answered + load.timed_out == total,
            f"{load.answered + load.timed_out} of {total}",
        ),
        (
            "requests to nobody timed out",
            load.timed_out >= nobody,
            f"{load.timed_out} timed out, {nobody} sent to nobody",
        ),
        (
            "late replies were dropped",
            0 < dropped.count <= late,
            f"{dropped.count} dropped of {late} late",
        ),
        ("no pending requests", pending == 0, f"{pending} pending"),
        ("threads flat", end[0] == warm[0], f"{warm[0]} -> {end[0]}"),
        (
            "server threads bounded",
            server_threads <= SERVER_THREADS,
            f"{server_threads}, at most {SERVER_THREADS}",
        ),
        (
            "connections bounded by callers",
            warm[1] <= end[1] <= callers + 1,
            f"{warm[1]} -> {end[1]}, at most {callers + 1}",
        ),
        ("connections closed", left == 0, f"{left} left after close()"),
        (
            "client memory bounded",
            growth[0] < bound,
            f"grew {growth[0] / 2**20:.1f} MiB, bound {bound / 2**20:.1f} MiB",
        ),
        (
            "server memory bounded",
            growth[1] < bound,
            f"grew {growth[1] / 2**20:.1f} MiB, bound {bound / 2**20:.1f} MiB",
        ),
    ]
    for name, ok, detail in checks:
        print(f"{'ok  ' if ok else 'FAIL'} {name}: {detail}")
    for error in load.errors[:10]:
        print(f"     {error}")
    print(f"took {time.monotonic() - began:.0f} s in all")
    return 0 if all(ok for _, ok, _ in checks) else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--requests",
        type=int,
        default=REQUESTS,
        help=f"requests after the warm-up (default {REQUESTS})",
    )
    parser.add_argument(
        "--callers",
        type=int,
        default=CALLERS,
        help=f"caller threads (default {CALLERS})",
    )
    parser.add_argument("--serve", metavar="URL", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        serve(args.serve)
        return 0
    if not Path("/proc/self/statm").exists():
        print("The soak run reads /proc to measure memory and threads: Linux only.")
        return 2
    if args.requests < 20 or args.callers < 1:
        parser.error("--requests must be at least 20 and --callers at least 1")
    redis_server = RedisServer(startup_timeout=SERVER_START_TIMEOUT)
    redis_server.start()
    try:
        with ServerProcess(redis_server.url) as server:
            return soak(redis_server.url, args.requests, args.callers, server)
    finally:
        redis_server.stop()


if __name__ == "__main__":
    raise SystemExit(main())
