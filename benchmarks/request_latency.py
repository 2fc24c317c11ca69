"""Request/reply latency and throughput of redis_rpc, a raw redis-py floor and FastStream.

Everything runs against one private redis-server. Each server runs in a
process of its own (``benchmarks._servers``): the floor (one redis-py thread
per worker that BLPOPs and PUBLISHes), a ``redis_rpc.RedisBroker`` serving
an echo handler on a channel, a list and a stream, and a FastStream
``RedisBroker`` serving the same three, when FastStream is installed.

Callers run in this process. The floor and redis_rpc rows use 1, 8 and 32
threads sharing one client; FastStream's use 1, 8 and 32 coroutines on one
asyncio event loop (its client is asyncio only). Each row reports p50, p99,
requests per second, Redis connections opened per 1,000 requests (from
``INFO stats`` ``total_connections_received``), and ratios to the floor and
to FastStream. A last check sends many requests from 32 threads, a tenth of
them to a handler that outlasts their timeout, and samples this process's
memory and thread count along the way.

Run from the repository root::

    .venv/bin/python -m benchmarks.request_latency [--quick | --smoke] [--json PATH]

``--quick`` takes about half a minute, ``--smoke`` (for the test suite) a
few seconds, and the full run a few minutes.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import datetime
import itertools
import json
import logging
import os
import platform
import resource
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import Future
from pathlib import Path
from typing import TYPE_CHECKING, Any

import redis

from benchmarks._servers import (
    CHANNEL,
    FLOOR_LIST,
    FLOOR_SEPARATOR,
    LIST,
    POLL_INTERVAL,
    READY,
    SLOW_CHANNEL,
    SLOW_TIMEOUT,
    SOCKET_TIMEOUT,
    STREAM,
)
from redis_rpc import RedisBroker
from redis_rpc.errors import RequestTimeoutError
from redis_rpc.testing import RedisServer

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    CallFunc = Callable[[bytes], bytes]


@dataclasses.dataclass(frozen=True)
class Mode:
    """How many requests each part of a run sends."""

    warmup: int  # untimed requests per row first: connections, pools, caches
    sequential: int  # timed requests in a row with one caller
    concurrent: int  # timed requests in a row with several callers, shared out
    leak_requests: int  # requests of the memory and thread check


MODES = {
    "full": Mode(
        warmup=500, sequential=3_000, concurrent=10_000, leak_requests=100_000
    ),
    "quick": Mode(warmup=100, sequential=400, concurrent=1_500, leak_requests=10_000),
    "smoke": Mode(warmup=20, sequential=50, concurrent=160, leak_requests=1_000),
}
CALLERS = (1, 8, 32)  # caller threads (or FastStream coroutines) per row
SERVER_WORKERS = 8  # max_workers of each server: enough to keep 32 callers busy
PAYLOAD = b"x" * 64  # a small body: we measure latency, not bandwidth
TIMEOUT = 5.0  # seconds any round trip or start-up may take before the run fails
SERVER_START_TIMEOUT = 20.0  # seconds a server process has to print its ready line
SERVER_STOP_TIMEOUT = 5.0  # seconds a server process has to exit before it is killed
ROW_TIMEOUT = 600.0  # seconds one row may take in all: a hang must still end
WARMUP_PER_CALLER = 10
SLOW_EVERY = 10  # every 10th leak-check request goes to the slow handler
LEAK_CALLERS = 32
LEAK_SAMPLES = 10  # memory and thread samples across the leak check
TRANSPORTS = ("channel", "list", "stream")
FLOOR_REPLIES = "bench.floor.reply."

HEADER = "{:<11}{:<8}{:>4}{:>8}{:>9}{:>9}{:>9}{:>8}{:>10}{:>11}{:>9}"
ROW = "{:<11}{:<8}{:>4}{:>8}{:>9.3f}{:>9.3f}{:>9.0f}{:>8.2f}{:>10}{:>11}{:>9}"
HEADER_NAMES = (
    "name",
    "via",
    "n",
    "reqs",
    "p50_ms",
    "p99_ms",
    "req/s",
    "conn/1k",
    "p50/floor",
    "rate/floor",
    "rate/FS",
)


@dataclasses.dataclass(frozen=True)
class Result:
    name: str  # floor, redis_rpc or faststream
    transport: str
    callers: int
    requests: int
    p50_ms: float
    p99_ms: float
    requests_per_s: float
    connections_per_1k: float


# -- timing -------------------------------------------------------------------


class ConnectionCounter:
    """Reads ``total_connections_received`` over one connection that stays open."""

    def __init__(self, url: str) -> None:
        self._redis = redis.Redis.from_url(url, socket_timeout=TIMEOUT)

    def total(self) -> int:
        stats: Any = self._redis.info("stats")
        return int(stats["total_connections_received"])

    def close(self) -> None:
        self._redis.close()


def warmup_count(mode: Mode, callers: int) -> int:
    """Enough untimed requests for every caller to have several in flight at once,
    so that connection pools have grown to size before the timed part."""
    return max(mode.warmup, WARMUP_PER_CALLER * callers)


def summarise(
    name: str,
    transport: str,
    callers: int,
    samples: list[float],
    elapsed: float,
    connections: int,
) -> Result:
    cuts = statistics.quantiles(samples, n=100, method="inclusive")
    return Result(
        name,
        transport,
        callers,
        len(samples),
        cuts[49] * 1e3,
        cuts[98] * 1e3,
        len(samples) / elapsed,
        connections * 1000 / len(samples),
    )


def progress(result: Result) -> Result:
    """Say on stderr that a row is done; the table comes at the end, on stdout."""
    print(
        f"  {result.name} {result.transport} x{result.callers}: "
        f"p50 {result.p50_ms:.3f} ms, {result.requests_per_s:.0f}/s",
        file=sys.stderr,
        flush=True,
    )
    return result


def check_reply(name: str, reply: bytes) -> None:
    if reply != PAYLOAD:
        msg = f"{name}: the echo handler answered {reply[:40]!r}"
        raise RuntimeError(msg)


def measure_threads(
    name: str,
    transport: str,
    call: CallFunc,
    callers: int,
    mode: Mode,
    counter: ConnectionCounter,
) -> Result:
    """Time *call* from *callers* threads at once, after an untimed warm-up."""
    requests = mode.sequential if callers == 1 else mode.concurrent
    run_threads(call, callers, warmup_count(mode, callers), None)
    samples: list[float] = []  # list.append is atomic under the GIL

    def timed(body: bytes) -> None:
        sent = time.perf_counter()
        reply = call(body)
        samples.append(time.perf_counter() - sent)
        check_reply(name, reply)

    before = counter.total()
    elapsed = run_threads(call, callers, requests, timed)
    connections = counter.total() - before
    return progress(summarise(name, transport, callers, samples, elapsed, connections))


def run_threads(
    call: CallFunc, callers: int, requests: int, each: Callable[[bytes], None] | None
) -> float:
    """Send *requests* in all from *callers* threads; return the seconds it took.

    *each* sends one request and checks it; ``None`` means plain ``call()``.
    """
    send = each if each is not None else call
    shares = [requests // callers + (i < requests % callers) for i in range(callers)]
    start = threading.Barrier(callers + 1, timeout=TIMEOUT)
    errors: list[BaseException] = []

    def work(share: int) -> None:
        try:
            start.wait()
            for _ in range(share):
                send(PAYLOAD)
        except BaseException as exc:  # noqa: BLE001 - re-raised by the main thread
            errors.append(exc)

    threads = [
        threading.Thread(target=work, args=(share,), name=f"bench:caller_{n}")
        for n, share in enumerate(shares)
    ]
    for thread in threads:
        thread.start()
    start.wait()
    began = time.perf_counter()
    for thread in threads:
        thread.join(ROW_TIMEOUT)
    elapsed = time.perf_counter() - began
    if any(thread.is_alive() for thread in threads):
        msg = f"Callers still running after {ROW_TIMEOUT} s."
        raise RuntimeError(msg)
    if errors:
        raise errors[0]
    return elapsed


# -- servers --------------------------------------------------------------------


class ServerProcess:
    """One ``benchmarks._servers`` process; ``with`` waits for ready and stops it."""

    def __init__(self, kind: str, url: str, max_workers: int) -> None:
        self.kind = kind
        self._args = [
            sys.executable,
            "-m",
            "benchmarks._servers",
            kind,
            url,
            "--max-workers",
            str(max_workers),
        ]
        self._process: subprocess.Popen[str] | None = None

    def __enter__(self) -> ServerProcess:
        self._process = subprocess.Popen(
            self._args,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=Path(__file__).resolve().parents[1],
        )
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _wait_ready(self) -> None:
        assert self._process is not None
        assert self._process.stdout is not None
        ready: Future[bool] = Future()
        stdout = self._process.stdout

        def read() -> None:
            # Reads to the end, so that a chatty server never blocks on a full pipe.
            for line in stdout:
                if line.strip() == READY and not ready.done():
                    ready.set_result(True)
            if not ready.done():
                ready.set_result(False)

        threading.Thread(
            target=read, name=f"bench:{self.kind}:stdout", daemon=True
        ).start()
        if not ready.result(SERVER_START_TIMEOUT):
            msg = f"The {self.kind} server exited before it was ready."
            raise RuntimeError(msg)

    def stop(self) -> None:
        """Close its stdin and SIGTERM it; kill it if it does not exit in time."""
        process, self._process = self._process, None
        if process is None:
            return
        if process.stdin is not None:
            process.stdin.close()
        process.terminate()
        try:
            process.wait(SERVER_STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            print(f"warning: the {self.kind} server had to be killed", file=sys.stderr)
            process.kill()
            process.wait(SERVER_STOP_TIMEOUT)


# -- callers --------------------------------------------------------------------


class FloorClient:
    """The floor's caller side: RPUSH, and one listener thread completing futures."""

    def __init__(self, url: str) -> None:
        self._redis = redis.Redis.from_url(url, socket_timeout=SOCKET_TIMEOUT)
        self._stop = threading.Event()
        self._ready = threading.Event()  # set once the reply subscription is confirmed
        self._lock = threading.Lock()  # guards _pending
        self._pending: dict[bytes, Future[bytes]] = {}
        self._keys = itertools.count()  # next() is atomic under the GIL
        self._thread = threading.Thread(
            target=self._listen, name="bench:floor:replies", daemon=True
        )

    def __enter__(self) -> FloorClient:
        self._thread.start()
        if not self._ready.wait(TIMEOUT):
            self.__exit__()
            msg = f"The floor's reply subscription was not up within {TIMEOUT} s."
            raise RuntimeError(msg)
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(TIMEOUT)
        if self._thread.is_alive():
            print("warning: the floor's listener did not stop", file=sys.stderr)
        self._redis.close()

    def request(self, body: bytes) -> bytes:
        channel = f"{FLOOR_REPLIES}{next(self._keys)}".encode()
        future: Future[bytes] = Future()
        with self._lock:
            self._pending[channel] = future
        try:
            self._redis.rpush(FLOOR_LIST, channel + FLOOR_SEPARATOR + body)
            return future.result(TIMEOUT)
        finally:
            with self._lock:
                self._pending.pop(channel, None)

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


def redis_rpc_calls(client: RedisBroker) -> dict[str, CallFunc]:
    return {
        "channel": lambda b: client.request(b, CHANNEL, timeout=TIMEOUT).body,
        "list": lambda b: client.request(b, list=LIST, timeout=TIMEOUT).body,
        "stream": lambda b: client.request(b, stream=STREAM, timeout=TIMEOUT).body,
    }


def measure_floor(
    url: str, mode: Mode, counter: ConnectionCounter, workers: int
) -> list[Result]:
    with ServerProcess("floor", url, workers), FloorClient(url) as client:
        return [
            measure_threads("floor", "list", client.request, n, mode, counter)
            for n in CALLERS
        ]


def measure_redis_rpc(
    url: str, mode: Mode, counter: ConnectionCounter, workers: int
) -> tuple[list[Result], dict[str, Any]]:
    with (
        ServerProcess("redis_rpc", url, workers),
        RedisBroker(url, poll_interval=POLL_INTERVAL) as client,
    ):
        results = [
            measure_threads("redis_rpc", transport, call, n, mode, counter)
            for transport, call in redis_rpc_calls(client).items()
            for n in CALLERS
        ]
        leaks = check_leaks(client, mode.leak_requests, counter)
    return results, leaks


def measure_faststream(
    url: str, mode: Mode, counter: ConnectionCounter, workers: int
) -> list[Result]:
    with ServerProcess("faststream", url, workers):
        return asyncio.run(
            asyncio.wait_for(faststream_rows(url, mode, counter), ROW_TIMEOUT)
        )


async def faststream_rows(
    url: str, mode: Mode, counter: ConnectionCounter
) -> list[Result]:
    import faststream.redis

    results = []
    async with faststream.redis.RedisBroker(url, log_level=logging.DEBUG) as client:
        for transport in TRANSPORTS:

            async def call(body: bytes, transport: str = transport) -> bytes:
                target: dict[str, Any] = {transport: TARGETS[transport]}
                reply = await client.request(body, **target, timeout=TIMEOUT)
                return bytes(reply.body)

            for n in CALLERS:
                results.append(
                    await measure_coroutines(
                        "faststream", transport, call, n, mode, counter
                    )
                )
    return results


TARGETS = {"channel": CHANNEL, "list": LIST, "stream": STREAM}


async def measure_coroutines(
    name: str,
    transport: str,
    call: Callable[[bytes], Awaitable[bytes]],
    callers: int,
    mode: Mode,
    counter: ConnectionCounter,
) -> Result:
    """Time *call* from *callers* coroutines on this loop, after an untimed warm-up."""
    requests = mode.sequential if callers == 1 else mode.concurrent
    samples: list[float] = []

    async def work(share: int, timed: bool) -> None:
        for _ in range(share):
            sent = time.perf_counter()
            reply = await call(PAYLOAD)
            if timed:
                samples.append(time.perf_counter() - sent)
            check_reply(name, reply)

    async def run(total: int, timed: bool) -> float:
        shares = [total // callers + (i < total % callers) for i in range(callers)]
        began = time.perf_counter()
        await asyncio.gather(*(work(share, timed) for share in shares))
        return time.perf_counter() - began

    await run(warmup_count(mode, callers), timed=False)
    # INFO is a quick blocking call; it runs between the timed parts only.
    before = counter.total()
    elapsed = await run(requests, timed=True)
    connections = counter.total() - before
    return progress(summarise(name, transport, callers, samples, elapsed, connections))


# -- memory and threads ----------------------------------------------------------


def rss_mb() -> float:
    """This process's resident memory now, in MiB."""
    with open("/proc/self/statm") as statm:
        pages = int(statm.read().split()[1])
    return pages * resource.getpagesize() / 2**20


def library_threads() -> int:
    """Threads alive now, leaving out the benchmark's own callers."""
    return sum(not t.name.startswith("bench:caller") for t in threading.enumerate())


def check_leaks(
    client: RedisBroker, requests: int, counter: ConnectionCounter
) -> dict[str, Any]:
    """Send *requests* from 32 threads, every 10th timing out; sample memory and threads."""
    calls = redis_rpc_calls(client)
    sequence = itertools.count()  # next() is atomic under the GIL
    step = max(1, requests // LEAK_SAMPLES)
    samples: list[tuple[int, float, int]] = []
    timeouts = itertools.count()
    answered_early = itertools.count()

    def one(body: bytes) -> None:
        n = next(sequence)
        if n % step == 0:
            samples.append((n, rss_mb(), library_threads()))
        if n % SLOW_EVERY == SLOW_EVERY - 1:
            try:
                client.request(body, SLOW_CHANNEL, timeout=SLOW_TIMEOUT)
            except RequestTimeoutError:
                next(timeouts)
                return
            # Cannot happen: the handler sleeps past the timeout. Counted, not
            # raised, so that a bug it reveals does not cost the whole run.
            next(answered_early)
            return
        check_reply("leak check", calls["list"](body))

    before = counter.total()
    elapsed = run_threads(lambda b: b, LEAK_CALLERS, requests, one)
    connections = counter.total() - before
    samples.sort()
    return {
        "requests": requests,
        "callers": LEAK_CALLERS,
        "timed_out": next(timeouts),
        "slow_answered_in_time": next(answered_early),
        "seconds": elapsed,
        "connections_per_1k": connections * 1000 / requests,
        "rss_mb": [round(rss, 1) for _, rss, _ in samples],
        "threads": [threads for _, _, threads in samples],
        "pending_requests_after": repr(client),
    }


# -- report ----------------------------------------------------------------------


def ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def report(results: list[Result]) -> list[dict[str, Any]]:
    """Print the table; return its rows as dicts, ratios included."""
    by_key = {(r.name, r.transport, r.callers): r for r in results}
    floor = {r.callers: r for r in results if r.name == "floor"}
    floor_rate = floor[1].requests_per_s
    rows = []
    print(HEADER.format(*HEADER_NAMES))
    for r in results:
        p50_vs_floor = r.p50_ms / floor[r.callers].p50_ms
        rate_vs_floor = r.requests_per_s / floor_rate
        # The floor is a list round trip, so it is set beside FastStream's list row.
        fs = by_key.get(("faststream", r.transport, r.callers))
        rate_vs_fs = None if fs is None else r.requests_per_s / fs.requests_per_s
        print(
            ROW.format(
                r.name,
                r.transport,
                r.callers,
                r.requests,
                r.p50_ms,
                r.p99_ms,
                r.requests_per_s,
                r.connections_per_1k,
                ratio(p50_vs_floor),
                ratio(rate_vs_floor),
                ratio(rate_vs_fs),
            )
        )
        rows.append(
            dataclasses.asdict(r)
            | {
                "p50_vs_floor": p50_vs_floor,
                "rate_vs_floor_sequential": rate_vs_floor,
                "rate_vs_faststream": rate_vs_fs,
            }
        )
    return rows


def targets(results: list[Result], leaks: dict[str, Any]) -> list[dict[str, Any]]:
    """Print each of the issue's targets with the ratio it came out as."""
    by_key = {(r.name, r.transport, r.callers): r for r in results}
    floor = by_key[("floor", "list", 1)]
    fs_best = max(
        (r.requests_per_s for r in results if r.name == "faststream"), default=None
    )
    checks: list[dict[str, Any]] = []

    def check(target: str, value: float | None, op: str, goal: float) -> None:
        met = None if value is None else value >= goal if op == ">=" else value <= goal
        checks.append(
            {"target": target, "value": value, "op": op, "goal": goal, "met": met}
        )

    for transport in TRANSPORTS:
        ours = by_key[("redis_rpc", transport, 1)]
        fs = by_key.get(("faststream", transport, 1))
        check(
            f"{transport}: p50, 1 caller / floor's",
            ours.p50_ms / floor.p50_ms,
            "<=",
            1.25,
        )
        fs_p50 = None if fs is None else fs.p50_ms / ours.p50_ms
        check(f"{transport}: FastStream's p50, 1 caller / ours", fs_p50, ">=", 5.0)
    for transport in TRANSPORTS:
        rate = by_key[("redis_rpc", transport, max(CALLERS))].requests_per_s
        check(
            f"{transport}: rate, 32 callers / floor's, 1 caller",
            rate / floor.requests_per_s,
            ">=",
            3.0,
        )
        vs_fs = None if fs_best is None else rate / fs_best
        check(f"{transport}: rate, 32 callers / FastStream's best", vs_fs, ">=", 10.0)
    # One connection per request would read 1,000; a pool that grows by one
    # connection under a new peak of concurrency stays far below 1.
    worst = max(r.connections_per_1k for r in results if r.name == "redis_rpc")
    check("connections per 1,000 requests, worst row", worst, "<=", 1.0)
    check(
        "leak check: connections per 1,000 requests",
        leaks["connections_per_1k"],
        "<=",
        1.0,
    )
    # Flat: once the first tenth has filled the pools, memory moves by less
    # than allocator noise (5 MiB) and the thread count does not move at all.
    rss, threads = leaks["rss_mb"][1:], leaks["threads"][1:]
    check(
        "leak check: RSS growth after the first tenth, MiB", rss[-1] - rss[0], "<=", 5.0
    )
    check(
        "leak check: thread count range after the first tenth",
        float(max(threads) - min(threads)),
        "<=",
        0.0,
    )
    print()
    print("Targets")
    for c in checks:
        verdict = {True: "met", False: "MISSED", None: "n/a"}[c["met"]]
        value = "-" if c["value"] is None else f"{c['value']:.2f}"
        print(f"  {c['target']:<52}{value:>8}  goal {c['op']} {c['goal']:<5} {verdict}")
    print(
        f"  leak check: {leaks['requests']} requests from {leaks['callers']} threads, "
        f"{leaks['timed_out']} timed out "
        f"({leaks['slow_answered_in_time']} slow ones answered in time), "
        f"in {leaks['seconds']:.1f} s; "
        f"RSS MiB {leaks['rss_mb']}; threads {leaks['threads']}"
    )
    return checks


def faststream_installed() -> bool:
    try:
        import faststream.redis  # noqa: F401 - only asking whether it imports
    except ImportError:
        return False
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="small counts, ~30 s")
    size.add_argument("--smoke", action="store_true", help="tiny counts, seconds")
    parser.add_argument("--json", metavar="PATH", help="also write the numbers here")
    parser.add_argument(
        "--workers",
        type=int,
        default=SERVER_WORKERS,
        help=f"max_workers of every server (default {SERVER_WORKERS})",
    )
    args = parser.parse_args(argv)
    mode_name = "quick" if args.quick else "smoke" if args.smoke else "full"
    mode = MODES[mode_name]
    began = time.perf_counter()
    server = RedisServer()
    counter: ConnectionCounter | None = None
    try:
        server.start()
        counter = ConnectionCounter(server.url)
        print(
            f"{mode_name} run: {mode.sequential} timed requests with 1 caller, "
            f"{mode.concurrent} with several, after {mode.warmup} warm-up; "
            f"servers with max_workers={args.workers}",
            flush=True,
        )
        results = measure_floor(server.url, mode, counter, args.workers)
        ours, leaks = measure_redis_rpc(server.url, mode, counter, args.workers)
        results += ours
        if faststream_installed():
            results += measure_faststream(server.url, mode, counter, args.workers)
        else:
            print("FastStream is not installed: pip install -e '.[bench]'")
    finally:
        if counter is not None:
            counter.close()
        server.stop()
    print()
    rows = report(results)
    checks = targets(results, leaks)
    seconds = time.perf_counter() - began
    print(f"\n{mode_name} run took {seconds:.0f} s")
    if args.json:
        summary = {
            "mode": mode_name,
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(
                timespec="seconds"
            ),
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
            "server_max_workers": args.workers,
            "payload_bytes": len(PAYLOAD),
            "counts": dataclasses.asdict(mode),
            "results": rows,
            "targets": checks,
            "leak_check": leaks,
            "seconds": seconds,
        }
        Path(args.json).write_text(json.dumps(summary, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
