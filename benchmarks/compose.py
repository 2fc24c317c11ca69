"""What submit(), gather() and stream() buy: concurrency from one thread, and their overhead.

Run as ``python -m benchmarks.compose [--smoke]``. It starts a private
redis-server and serves, in this process, a list subscriber whose handler
sleeps 0.2 s on 8 workers, an echo list subscriber, a generator handler
and four channel subscribers (four brokers, as four processes would be).
It prints:

- ``fan-out``: 40 ``submit()``s of the 0.2 s handler from one thread,
  waited for together; the ideal is 40 x 0.2 s / 8 workers = 1.0 s, the
  same 40 ``request()``s one after another take 8 s;
- ``in flight``: 5,000 ``submit()``s to the echo handler from one thread,
  their rate over that of ``request()`` from one thread, and the threads
  the caller's process had at the peak (a thread per call would show
  thousands);
- ``gather``: the median time of ``gather()`` over four subscribers
  against ``request()`` to one;
- ``stream``: the median time per item of a 100-item ``stream()``
  against one ``request()``.

Every figure but the first is a ratio within this run; nothing is asserted.
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time
from concurrent.futures import wait

from redis_rpc import RedisBroker
from redis_rpc.testing import RedisServer

HANDLER_SECONDS = 0.2
WORKERS = 8
FAN_OUT = 40


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny counts")
    args = parser.parse_args(argv)
    in_flight = 200 if args.smoke else 5_000
    rounds = 5 if args.smoke else 50

    with RedisServer() as redis_server:
        url = redis_server.url
        server = RedisBroker(url)
        others = [RedisBroker(url) for _ in range(3)]

        @server.subscriber(list="bench:slow", max_workers=WORKERS)
        def slow(body: bytes) -> bytes:
            time.sleep(HANDLER_SECONDS)
            return body

        @server.subscriber(list="bench:echo", max_workers=WORKERS)
        def echo(body: bytes) -> bytes:
            return body

        @server.subscriber(list="bench:items")
        def items(n: int):
            yield from range(n)

        for broker in [server, *others]:
            broker.subscriber("bench:all")(echo)

        client = RedisBroker(url)
        with server, others[0], others[1], others[2], client:
            client.request(b"warm", list="bench:echo")
            # 1. fan-out from one thread
            started = time.perf_counter()
            futures = [
                client.submit(b"x", list="bench:slow", timeout=30)
                for _ in range(FAN_OUT)
            ]
            wait(futures, timeout=60)
            fan_out = time.perf_counter() - started
            assert all(f.result() for f in futures)
            ideal = FAN_OUT * HANDLER_SECONDS / WORKERS
            print(
                f"fan-out   {FAN_OUT} submit() of a {HANDLER_SECONDS} s handler on {WORKERS} workers: "
                f"{fan_out:.2f} s (ideal {ideal:.2f} s, sequential request() {FAN_OUT * HANDLER_SECONDS:.1f} s)"
            )

            # 2. thousands in flight
            peak = [threading.active_count()]
            started = time.perf_counter()
            futures = []
            for _ in range(in_flight):
                futures.append(client.submit(b"x", list="bench:echo", timeout=60))
                if len(futures) % 500 == 0:
                    peak.append(threading.active_count())
            wait(futures, timeout=120)
            submit_rate = in_flight / (time.perf_counter() - started)
            assert all(f.result() for f in futures)
            started = time.perf_counter()
            count = in_flight // 5
            for _ in range(count):
                client.request(b"x", list="bench:echo")
            request_rate = count / (time.perf_counter() - started)
            print(
                f"in flight {in_flight} submit() from one thread: {submit_rate:,.0f} req/s, "
                f"{submit_rate / request_rate:.2f}x one thread's request() ({request_rate:,.0f} req/s); "
                f"threads at the peak {max(peak)}"
            )

            # 3. gather over four subscribers against one request
            gathers, requests = [], []
            for _ in range(rounds):
                t0 = time.perf_counter()
                replies = client.gather(b"x", "bench:all", timeout=10)
                gathers.append(time.perf_counter() - t0)
                assert len(replies) == 4
                t0 = time.perf_counter()
                client.request(b"x", list="bench:echo")
                requests.append(time.perf_counter() - t0)
            g, r = statistics.median(gathers), statistics.median(requests)
            print(
                f"gather    4 subscribers: p50 {g * 1e3:.2f} ms, {g / r:.2f}x one request() ({r * 1e3:.2f} ms)"
            )

            # 4. per item of a stream against one request
            per_item = []
            for _ in range(max(1, rounds // 5)):
                t0 = time.perf_counter()
                n = sum(1 for _ in client.stream(100, list="bench:items"))
                per_item.append((time.perf_counter() - t0) / n)
            s = statistics.median(per_item)
            print(
                f"stream    100 items: {s * 1e3:.3f} ms per item, {s / r:.2f}x one request()"
            )


if __name__ == "__main__":
    main()
