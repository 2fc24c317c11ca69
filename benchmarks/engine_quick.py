"""A quick measurement of the pipe: requests/s with 32 caller threads on a list.

Run as ``python -m benchmarks.engine_quick [--workers N] [--caller broker|lean|both] [--smoke]``.
It starts a private redis-server and a redis_rpc echo server process
(``benchmarks._servers``, ``max_workers=8`` unless told), then lets 32
threads request through one broker for a few seconds, several rounds, and
prints each round's rate, the CPU time per request of the callers' process
and of the server's, and the median rate. Run it on two checkouts to
compare them; it uses only the public API, plus the pipe's counters when
the checkout has a pipe.

``--caller lean`` sends the same frames through ``benchmarks._lean_caller``
instead, the least machinery a caller can have (it needs hiredis): the
yardstick for what ``RedisBroker.request()`` costs beyond its frames.
``--caller both`` alternates the two, round by round.
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable

from benchmarks._lean_caller import LeanCaller
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


def run_round(request: Callable[[], object], seconds: float) -> float:
    """Requests per second over *seconds*, from CALLERS threads calling *request*."""
    stop = threading.Event()
    counts = [0] * CALLERS

    def call(n: int) -> None:
        while not stop.is_set():
            request()
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


def measure(
    name: str, request: Callable[[], object], server_pid: int, seconds: float
) -> float:
    """One round: print its rate and CPU per request of both processes; return the rate."""
    ours, theirs = cpu_seconds(os.getpid()), cpu_seconds(server_pid)
    rate = run_round(request, seconds)
    requests = max(1.0, rate * seconds)
    ours = (cpu_seconds(os.getpid()) - ours) / requests
    theirs = (cpu_seconds(server_pid) - theirs) / requests
    print(
        f"{name}: {rate:,.0f} requests/s, CPU per request:"
        f" callers {ours * 1e6:.0f} us, server {theirs * 1e6:.0f} us"
    )
    return rate


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.engine_quick")
    parser.add_argument("--workers", type=int, default=SERVER_WORKERS)
    parser.add_argument(
        "--caller", choices=("broker", "lean", "both"), default="broker"
    )
    parser.add_argument(
        "--smoke", action="store_true", help="one short round, for the tests"
    )
    args = parser.parse_args(argv)
    rounds, seconds, warmup = (
        (1, 0.3, 0.1) if args.smoke else (ROUNDS, ROUND_SECONDS, WARMUP_SECONDS)
    )
    with RedisServer() as redis_server:
        server = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "benchmarks._servers",
                "redis_rpc",
                redis_server.url,
                "--max-workers",
                str(args.workers),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        lean: LeanCaller | None = None
        try:
            assert server.stdout is not None
            if server.stdout.readline().strip() != "ready":
                msg = "The echo server did not start."
                raise RuntimeError(msg)
            with RedisBroker(redis_server.url) as client:
                callers: dict[str, Callable[[], object]] = {}
                if args.caller in ("broker", "both"):
                    callers["broker"] = functools.partial(
                        client.request, PAYLOAD, list=LIST, timeout=TIMEOUT
                    )
                if args.caller in ("lean", "both"):
                    lean = LeanCaller(redis_server.url)
                    callers["lean"] = functools.partial(
                        lean.request, PAYLOAD, LIST, TIMEOUT
                    )
                rates: dict[str, list[float]] = {name: [] for name in callers}
                for request in callers.values():
                    run_round(request, warmup)
                for n in range(rounds):
                    for name, request in callers.items():
                        rate = measure(
                            f"round {n + 1}, {name}", request, server.pid, seconds
                        )
                        rates[name].append(rate)
                for name, found in rates.items():
                    print(
                        f"median of {rounds}, {name}: {statistics.median(found):,.0f} requests/s "
                        f"({CALLERS} callers, list, server max_workers={args.workers})"
                    )
                pipe = getattr(client._connection, "_pipe", None)
                if pipe is not None and "broker" in callers:
                    print(
                        f"pipe: {pipe.written:,} calls in {pipe.batches:,} writes "
                        f"({pipe.written / max(1, pipe.batches):.1f} per write)"
                    )
        finally:
            if lean is not None:
                lean.close()
            server.terminate()
            try:
                server.wait(TIMEOUT)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait(TIMEOUT)


if __name__ == "__main__":
    main()
