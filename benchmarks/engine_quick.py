"""A quick measurement of the pipe: requests/s with 32 caller threads on a list.

Run as ``python -m benchmarks.engine_quick [--workers N]``. It starts a
private redis-server and a redis_rpc echo server process
(``benchmarks._servers``, ``max_workers=8`` unless told), then lets 32
threads request through one broker for a few seconds, several rounds, and
prints each round's rate, the CPU time per request of the callers' process
and of the server's, and the median rate. Run it on two checkouts to
compare them; it uses only the public API, plus the pipe's counters when
the checkout has a pipe.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import threading
import time

from benchmarks._servers import cpu_seconds
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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.engine_quick")
    parser.add_argument("--workers", type=int, default=SERVER_WORKERS)
    workers = parser.parse_args(argv).workers
    with RedisServer() as redis_server:
        server = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "benchmarks._servers",
                "redis_rpc",
                redis_server.url,
                "--max-workers",
                str(workers),
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
                    ours, theirs = cpu_seconds(os.getpid()), cpu_seconds(server.pid)
                    rates.append(run_round(client, ROUND_SECONDS))
                    requests = rates[-1] * ROUND_SECONDS
                    ours = (cpu_seconds(os.getpid()) - ours) / requests
                    theirs = (cpu_seconds(server.pid) - theirs) / requests
                    print(
                        f"round {n + 1}: {rates[-1]:,.0f} requests/s, CPU per request:"
                        f" callers {ours * 1e6:.0f} us, server {theirs * 1e6:.0f} us"
                    )
                print(
                    f"median of {ROUNDS}: {statistics.median(rates):,.0f} requests/s "
                    f"({CALLERS} callers, list, server max_workers={workers})"
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
