"""Request/reply latency of redis_rpc over each transport, beside a raw redis-py floor.

One caller thread sends sequential requests to an echo handler and times each
round trip with ``time.perf_counter()``. The floor is redis_rpc's thread shape
in plain redis-py: a server thread BLPOPs a list and PUBLISHes the payload to
the reply channel named in the message, and a listener thread reads a Pub/Sub
subscription and completes the caller's Future. redis_rpc then runs over a
channel, a list and a stream: one ``RedisBroker`` serves echo handlers and a
second one calls ``request()``. All of it shares one private redis-server.

Run from the repository root (``--quick`` takes seconds, the full run a minute)::

    .venv/bin/python -m benchmarks.request_latency [--quick] [--json PATH]
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import statistics
import sys
import threading
import time
from concurrent.futures import Future
from pathlib import Path
from typing import TYPE_CHECKING, Any

import redis

from redis_rpc import RedisBroker
from redis_rpc.testing import RedisServer

if TYPE_CHECKING:
    from collections.abc import Callable

WARMUP = 1_000  # untimed round trips first: connections, pools, caches
REQUESTS = 20_000  # timed round trips per row; enough for a steady p99
QUICK_WARMUP = 100
QUICK_REQUESTS = 1_000
PAYLOAD = b"x" * 64  # a small body: we measure latency, not bandwidth
TIMEOUT = 5.0  # seconds any round trip, start-up or join may take before the run fails
POLL_INTERVAL = 0.1  # seconds each blocking read waits; bounds how long stopping takes
SOCKET_TIMEOUT = 2.0  # above POLL_INTERVAL, so an idle blocking read never times out
CHANNEL, LIST, STREAM = "bench.channel", "bench.list", "bench.stream"
FLOOR_LIST, FLOOR_REPLIES = "bench.floor.requests", "bench.floor.reply."
HEADER = "{:<10}{:>10}{:>10}{:>10}{:>12}{:>11}"
ROW = "{:<10}{:>10}{:>10.3f}{:>10.3f}{:>12.0f}{:>10.2f}x"  # name, requests, p50, p99, rate, ratio


@dataclasses.dataclass(frozen=True)
class Result:
    name: str
    requests: int
    p50_ms: float
    p99_ms: float
    requests_per_s: float


def measure(
    name: str, call: Callable[[bytes], bytes], warmup: int, requests: int
) -> Result:
    """Time *requests* sequential calls of *call* after *warmup* untimed ones."""
    for _ in range(warmup):
        call(PAYLOAD)
    samples = []
    start = time.perf_counter()
    for _ in range(requests):
        sent = time.perf_counter()
        reply = call(PAYLOAD)
        samples.append(time.perf_counter() - sent)
        if reply != PAYLOAD:
            msg = f"{name}: the echo handler answered {reply[:40]!r}"
            raise RuntimeError(msg)
    elapsed = time.perf_counter() - start
    cuts = statistics.quantiles(samples, n=100, method="inclusive")
    return Result(name, requests, cuts[49] * 1e3, cuts[98] * 1e3, requests / elapsed)


class RawFloor:
    """redis_rpc's thread shape in plain redis-py: a BLPOP server and a Pub/Sub listener."""

    def __init__(self, url: str) -> None:
        self._redis = redis.Redis.from_url(url, socket_timeout=SOCKET_TIMEOUT)
        self._stop = threading.Event()
        self._ready = threading.Event()  # set once the reply subscription is confirmed
        self._lock = threading.Lock()  # guards _pending
        self._pending: dict[bytes, Future[bytes]] = {}
        self._keys = itertools.count()
        self._threads = [
            threading.Thread(target=self._serve, name="bench:server", daemon=True),
            threading.Thread(target=self._listen, name="bench:replies", daemon=True),
        ]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()
        if not self._ready.wait(TIMEOUT):
            msg = f"The floor's reply subscription was not up within {TIMEOUT} s."
            raise RuntimeError(msg)

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            if thread.is_alive():
                thread.join(TIMEOUT)
            if thread.is_alive():
                print(f"warning: {thread.name} did not stop", file=sys.stderr)
        self._redis.close()

    def request(self, body: bytes) -> bytes:
        channel = f"{FLOOR_REPLIES}{next(self._keys)}".encode()
        future: Future[bytes] = Future()
        with self._lock:
            self._pending[channel] = future
        try:
            self._redis.rpush(FLOOR_LIST, channel + b" " + body)
            return future.result(TIMEOUT)
        finally:
            with self._lock:
                self._pending.pop(channel, None)

    def _serve(self) -> None:
        while not self._stop.is_set():
            item: Any = self._redis.blpop([FLOOR_LIST], timeout=POLL_INTERVAL)
            if item is not None:
                channel, _, body = item[1].partition(b" ")
                self._redis.publish(channel, body)

    def _listen(self) -> None:
        pubsub = self._redis.pubsub()  # type: ignore[no-untyped-call]
        try:
            pubsub.psubscribe(f"{FLOOR_REPLIES}*")
            while not self._stop.is_set():
                message = pubsub.get_message(timeout=POLL_INTERVAL)
                if message is None:
                    continue
                if message["type"] == "psubscribe":
                    self._ready.set()
                elif message["type"] == "pmessage":
                    with self._lock:
                        future = self._pending.pop(message["channel"], None)
                    if future is not None:
                        future.set_result(message["data"])
        finally:
            pubsub.close()


def measure_floor(url: str, warmup: int, requests: int) -> Result:
    floor = RawFloor(url)
    try:
        floor.start()
        return measure("floor", floor.request, warmup, requests)
    finally:
        floor.stop()


def echo(body: bytes) -> bytes:
    return body


def echo_server(url: str) -> RedisBroker:
    """A broker serving ``echo`` on every transport; ``with`` starts and closes it."""
    broker = RedisBroker(url, poll_interval=POLL_INTERVAL, graceful_timeout=TIMEOUT)
    broker.subscriber(CHANNEL)(echo)
    broker.subscriber(list=LIST)(echo)
    broker.subscriber(stream=STREAM)(echo)
    return broker


def measure_redis_rpc(url: str, warmup: int, requests: int) -> list[Result]:
    with echo_server(url), RedisBroker(url, poll_interval=POLL_INTERVAL) as client:
        calls: dict[str, Callable[[bytes], bytes]] = {
            "channel": lambda b: client.request(b, CHANNEL, timeout=TIMEOUT).body,
            "list": lambda b: client.request(b, list=LIST, timeout=TIMEOUT).body,
            "stream": lambda b: client.request(b, stream=STREAM, timeout=TIMEOUT).body,
        }
        return [measure(name, call, warmup, requests) for name, call in calls.items()]


def report(results: list[Result]) -> list[dict[str, Any]]:
    """Print the table and return its rows, each with its p50 relative to the floor."""
    floor_p50 = results[0].p50_ms
    print(
        HEADER.format("name", "requests", "p50 ms", "p99 ms", "requests/s", "p50/floor")
    )
    for r in results:
        print(ROW.format(*dataclasses.astuple(r), r.p50_ms / floor_p50))
    return [
        dataclasses.asdict(r) | {"p50_vs_floor": r.p50_ms / floor_p50} for r in results
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small counts, seconds")
    parser.add_argument("--json", metavar="PATH", help="also write the numbers here")
    args = parser.parse_args(argv)
    warmup, requests = (
        (QUICK_WARMUP, QUICK_REQUESTS) if args.quick else (WARMUP, REQUESTS)
    )
    server = RedisServer()
    try:
        server.start()
        print(f"{requests} timed round trips per row after {warmup} warm-up")
        results = [measure_floor(server.url, warmup, requests)]
        results += measure_redis_rpc(server.url, warmup, requests)
    finally:
        server.stop()
    rows = report(results)
    if args.json:
        summary = {"warmup": warmup, "payload_bytes": len(PAYLOAD), "results": rows}
        Path(args.json).write_text(json.dumps(summary, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
