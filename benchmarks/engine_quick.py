"""A quick measurement of the pipe: requests/s with 32 caller threads on a list.

Run as ``python -m benchmarks.engine_quick``. It starts a private
redis-server and a redis_rpc echo server process (``benchmarks._servers``,
``max_workers=8``), then lets 32 threads request through one broker for
a few seconds, several rounds, and prints each round's rate and the
median. Run it on two checkouts to compare them; it uses only the public
API, plus the pipe's counters when the checkout has a pipe.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import threading
import time

from redis_rpc import RedisBroker
from redis_rpc.testing import RedisServer

CALLERS = 32
SERVER_WORKERS = 8
ROUNDS = 5
ROUND_SECONDS = 3.0
WARMUP_SECONDS = 1.0
PAYLOAD = b"x" * 64
TIMEOUT = 5.0  # seconds one request may take before the run fails
LIST = "bench.list"  # what benchmarks._servers serves


def run_round(client: RedisBroker, seconds: float) -> float:
    """Requests per second over *seconds*, from CALLERS threads."""
    stop = threading.Event()
    counts = [0] * CALLERS

    def call(n: int) -> None:
        while not stop.is_set():
            client.request(PAYLOAD, list=LIST, timeout=TIMEOUT)
            counts[n] += 1

    threads = [
        threading.Thread(target=call, args=(n,), name=f"bench-caller-{n}")
        for n in range(CALLERS)
    ]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    stop.wait(seconds)
    stop.set()
    for thread in threads:
        thread.join(TIMEOUT * 2)
    return sum(counts) / (time.perf_counter() - started)


def main() -> None:
    with RedisServer() as redis_server:
        server = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "benchmarks._servers",
                "redis_rpc",
                redis_server.url,
                "--max-workers",
                str(SERVER_WORKERS),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert server.stdout is not None
            if server.stdout.readline().strip() != "ready":
                msg = "The echo server did not start."
                raise RuntimeError(msg)
            with RedisBroker(redis_server.url) as client:
                run_round(client, WARMUP_SECONDS)
                rates = []
                for n in range(ROUNDS):
                    rates.append(run_round(client, ROUND_SECONDS))
                    print(f"round {n + 1}: {rates[-1]:,.0f} requests/s")
                print(
                    f"median of {ROUNDS}: {statistics.median(rates):,.0f} requests/s "
                    f"({CALLERS} callers, list, server max_workers={SERVER_WORKERS})"
                )
                pipe = getattr(client._connection, "_pipe", None)
                if pipe is not None:
                    print(
                        f"pipe: {pipe.written:,} calls in {pipe.batches:,} writes "
                        f"({pipe.written / max(1, pipe.batches):.1f} per write)"
                    )
        finally:
            server.terminate()
            try:
                server.wait(TIMEOUT)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait(TIMEOUT)


if __name__ == "__main__":
    main()
