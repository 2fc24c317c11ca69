"""Request/reply latency, throughput and cost of redis_rpc, a raw redis-py floor and FastStream.

Everything runs against one private redis-server. Each server runs in a
process of its own (``benchmarks._servers``): the floor (redis-py threads
that BLPOP and PUBLISH), a ``redis_rpc.RedisBroker`` serving an echo
handler on a channel, a list and a stream, and a FastStream
``RedisBroker`` serving the same three, when FastStream is installed.

Every server is measured at two settings in the same run, so that each
ratio compares figures taken minutes apart:

``default``
    Every server as it comes: redis_rpc's and FastStream's subscribers
    without ``max_workers`` (one message at a time each), the floor's
    server on one thread.
``8 workers``
    ``max_workers=8`` on every redis_rpc and FastStream subscriber, and 8
    threads in the floor's server (``--workers N`` changes the 8).

Callers run in this process. The floor and redis_rpc rows use 1, 8 and 32
threads sharing one client; FastStream's use 1, 8 and 32 coroutines on one
asyncio event loop (its client is asyncio only). Each row reports p50, p99,
requests per second, Redis connections opened per 1,000 requests (from
``INFO stats`` ``total_connections_received``), CPU time per request of the
callers' process (``getrusage()``), the server process and redis-server
(``/proc/PID/stat``), and ratios to the floor and to FastStream at the same
setting.

Then, once and against redis_rpc only, with the server of the last
setting measured: many caller threads (256 and 1,000) on one broker with
default settings, counting errors rather than stopping at the first, with
the Redis connections each side holds at the peak; a memory and thread
check over many requests from 32 threads, a tenth of them to a handler
that outlasts their timeout; and the start of a broker with 5,000 channel
subscribers, in a process of its own. A table of the targets of issue 23
ends the report, each PASS or MISS.

Run from the repository root::

    .venv/bin/python -m benchmarks.request_latency [--quick | --smoke] [--no-hiredis]
        [--json PATH] [--workers N] [--settings both|default|workers]

With both settings the full run takes about ten minutes, ``--quick`` a
minute or two, ``--smoke`` (for the test suite) under a minute. ``--no-hiredis`` runs every process of the
benchmark as if hiredis were not installed.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import dataclasses
import datetime
import importlib
import importlib.metadata
import itertools
import json
import logging
import os
import platform
import queue
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

from benchmarks import NO_HIREDIS
from benchmarks._servers import (
    CHANNEL,
    FLOOR_LIST,
    FLOOR_SEPARATOR,
    LIST,
    MANY_CHANNELS,
    POLL_INTERVAL,
    READY,
    SLOW_CHANNEL,
    SLOW_TIMEOUT,
    SOCKET_TIMEOUT,
    STARTED,
    STREAM,
    cpu_seconds,
    redis_connections,
    rss_mb,
    thread_count,
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
    warmup_per_caller: int  # ... at least this many per caller
    sequential: int  # timed requests in a row with one caller
    concurrent: int  # timed requests in a row with several callers, shared out
    leak_requests: int  # requests of the memory and thread check
    many_callers: tuple[int, ...]  # caller threads of the many-callers rows
    many_per_caller: int  # requests each of those threads sends
    channel_subscribers: int  # channel subscribers of the start-up check


MODES = {
    "full": Mode(
        warmup=500,
        warmup_per_caller=10,
        sequential=3_000,
        concurrent=10_000,
        leak_requests=100_000,
        many_callers=(256, 1_000),
        many_per_caller=10,
        channel_subscribers=5_000,
    ),
    "quick": Mode(
        warmup=100,
        warmup_per_caller=10,
        sequential=400,
        concurrent=1_500,
        leak_requests=10_000,
        many_callers=(256, 1_000),
        many_per_caller=3,
        channel_subscribers=5_000,
    ),
    "smoke": Mode(
        warmup=10,
        warmup_per_caller=1,
        sequential=30,
        concurrent=96,
        leak_requests=500,
        many_callers=(64,),
        many_per_caller=2,
        channel_subscribers=50,
    ),
}
CALLERS = (1, 8, 32)  # caller threads (or FastStream coroutines) per row
SERVER_WORKERS = 8  # max_workers of the second setting: enough to keep 32 callers busy
PAYLOAD = b"x" * 64  # a small body: we measure latency, not bandwidth
TIMEOUT = 5.0  # seconds any round trip or start-up may take before the run fails
MANY_TIMEOUT = 30.0  # request()'s default timeout: the many-callers rows queue up
MANY_START_TIMEOUT = 60.0  # seconds 1,000 threads have to start and meet
SAMPLE_EVERY = 0.05  # seconds between connection and thread samples
SERVER_START_TIMEOUT = 20.0  # seconds a server process has to print its ready line
SERVER_STOP_TIMEOUT = 5.0  # seconds a server process has to exit before it is killed
# The channels server imports, declares thousands of subscribers, then starts
# them within start_timeout (10 s by default): a loaded machine needs margin.
CHANNELS_START_TIMEOUT = 90.0
CHANNELS_STOP_TIMEOUT = 30.0
DEFAULT_START_TIMEOUT = 10.0  # RedisBroker's start_timeout, the goal of that check
ROW_TIMEOUT = 600.0  # seconds one row may take in all: a hang must still end
SLOW_EVERY = 10  # every 10th leak-check request goes to the slow handler
LEAK_CALLERS = 32
LEAK_SAMPLES = 10  # memory and thread samples across the leak check
TRANSPORTS = ("channel", "list", "stream")
FLOOR_REPLIES = "bench.floor.reply."
DEFAULT = "default"  # the name of the setting where every server is as it comes
SETTINGS = ("both", DEFAULT, "workers")  # choices of --settings
# Targets of issue 23, each a ratio within one run.
P50_GOAL = 1.1  # one caller's p50 over the floor's, at each setting
DEFAULT_RATE_GOAL = 1.5  # default, 32 callers: rate over the floor's with 32 callers
WORKERS_RATE_GOAL = 3.0  # N workers, 32 callers: rate over the floor's with 1 caller
FASTSTREAM_RATE_GOAL = 10.0  # N workers, 32 callers: rate over FastStream's best
CPU_GOAL_US = 150.0  # 32 callers: CPU per request of callers, server and Redis together
# A broker may hold a few connections of its own (commands, Pub/Sub, an admin
# one) plus one per blocking read, whatever its callers.
CONNECTIONS_CONSTANT = 4
SERVER_BLOCKING_READS = 2  # the echo server's list and stream subscribers
CHANNEL_START_THREADS = 64  # "a bounded number": far below one per subscriber

HEADER = "{:<11}{:<8}{:>4}{:>7}{:>9}{:>9}{:>7}{:>9}{:>7}{:>16}{:>10}{:>11}{:>9}"
ROW = "{:<11}{:<8}{:>4}{:>7}{:>9.3f}{:>9.3f}{:>7.0f}{:>9.2f}{:>7.0f}{:>16}{:>10}{:>11}{:>9}"
HEADER_NAMES = (
    "name",
    "via",
    "n",
    "reqs",
    "p50_ms",
    "p99_ms",
    "req/s",
    "conn/1k",
    "cpu_us",
    "c/s/r_us",
    "p50/floor",
    "rate/floor",
    "rate/FS",
)
MANY_HEADER = "{:<8}{:>6}{:>7}{:>7}{:>9}{:>9}{:>7}{:>9}{:>9}{:>9}{:>7}"
MANY_ROW = "{:<8}{:>6}{:>7}{:>7}{:>9}{:>9}{:>7.0f}{:>9}{:>9}{:>9}{:>7.0f}"
MANY_NAMES = (
    "via",
    "n",
    "reqs",
    "errors",
    "p50_ms",
    "p99_ms",
    "req/s",
    "conn_cli",
    "conn_srv",
    "threads",
    "cpu_us",
)


@dataclasses.dataclass(frozen=True)
class Setting:
    """How many messages each server handles at once."""

    name: str  # "default" or "8 workers": names its table, rows and targets
    # max_workers of every redis_rpc and FastStream subscriber, and threads of
    # the floor's server; 1 is every server's default.
    workers: int

    @property
    def is_default(self) -> bool:
        return self.workers == 1

    def describe(self) -> str:
        if self.is_default:
            return (
                "every server as it comes: redis_rpc and FastStream subscribers "
                "without max_workers (one message at a time each), "
                "the floor's server on one thread"
            )
        return (
            f"max_workers={self.workers} on every redis_rpc and FastStream "
            f"subscriber, {self.workers} threads in the floor's server"
        )


def chosen_settings(choice: str, workers: int) -> list[Setting]:
    """The settings *choice* (one of SETTINGS) names, the default one first."""
    settings = []
    if choice in ("both", DEFAULT):
        settings.append(Setting(DEFAULT, 1))
    if choice in ("both", "workers"):
        settings.append(Setting(f"{workers} workers", workers))
    return settings


@dataclasses.dataclass(frozen=True)
class Result:
    setting: str  # the name of the Setting its servers ran at
    name: str  # floor, redis_rpc or faststream
    transport: str
    callers: int
    requests: int
    p50_ms: float
    p99_ms: float
    requests_per_s: float
    connections_per_1k: float
    cpu_caller_us: float  # CPU time per request of this process (the callers)
    cpu_server_us: float  # ... of the server process
    cpu_redis_us: float  # ... of redis-server

    @property
    def cpu_us(self) -> float:
        return self.cpu_caller_us + self.cpu_server_us + self.cpu_redis_us


# -- timing -------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Snapshot:
    """Counters read before and after a measured phase."""

    connections: int  # total_connections_received of redis-server
    caller_s: float  # CPU seconds of this process
    server_s: float  # ... of the server process being measured
    redis_s: float  # ... of redis-server


@dataclasses.dataclass(frozen=True)
class Cost:
    """What a phase used, per request."""

    connections_per_1k: float
    caller_us: float
    server_us: float
    redis_us: float

    @property
    def cpu_us(self) -> float:
        return self.caller_us + self.server_us + self.redis_us

    def split(self) -> str:
        return f"{self.caller_us:.0f}/{self.server_us:.0f}/{self.redis_us:.0f}"


class Probe:
    """Reads what Redis, this process and the server process have used.

    Redis connections opened come from ``INFO stats`` over one connection
    that stays open; CPU time from ``getrusage()`` here and from
    ``/proc/PID/stat`` for the server and redis-server (whose pid ``INFO``
    gives). Both count every thread of the process.
    """

    def __init__(self, url: str) -> None:
        self._redis = redis.Redis.from_url(url, socket_timeout=TIMEOUT)
        info: Any = self._redis.info("server")
        self.redis_pid = int(info["process_id"])
        self.port = int(info["tcp_port"])
        self.server_pid: int | None = None  # set while a server process runs

    def snapshot(self) -> Snapshot:
        stats: Any = self._redis.info("stats")
        usage = resource.getrusage(resource.RUSAGE_SELF)
        server = 0.0 if self.server_pid is None else cpu_seconds(self.server_pid)
        return Snapshot(
            int(stats["total_connections_received"]),
            usage.ru_utime + usage.ru_stime,
            server,
            cpu_seconds(self.redis_pid),
        )

    def close(self) -> None:
        self._redis.close()


def cost(before: Snapshot, after: Snapshot, requests: int) -> Cost:
    per = 1e6 / max(1, requests)
    return Cost(
        (after.connections - before.connections) * 1000 / max(1, requests),
        (after.caller_s - before.caller_s) * per,
        (after.server_s - before.server_s) * per,
        (after.redis_s - before.redis_s) * per,
    )


def warmup_count(mode: Mode, callers: int) -> int:
    """Enough untimed requests for every caller to have several in flight at once,
    so that connection pools have grown to size before the timed part."""
    return max(mode.warmup, mode.warmup_per_caller * callers)


def percentiles_ms(samples: list[float]) -> tuple[float, float]:
    """p50 and p99 of *samples* (seconds), in milliseconds."""
    if len(samples) == 1:
        return samples[0] * 1e3, samples[0] * 1e3
    cuts = statistics.quantiles(samples, n=100, method="inclusive")
    return cuts[49] * 1e3, cuts[98] * 1e3


def summarise(
    setting: Setting,
    name: str,
    transport: str,
    callers: int,
    samples: list[float],
    elapsed: float,
    used: Cost,
) -> Result:
    p50, p99 = percentiles_ms(samples)
    return Result(
        setting.name,
        name,
        transport,
        callers,
        len(samples),
        p50,
        p99,
        len(samples) / elapsed,
        used.connections_per_1k,
        used.caller_us,
        used.server_us,
        used.redis_us,
    )


def progress(result: Result) -> Result:
    """Say on stderr that a row is done; the table comes at the end, on stdout."""
    print(
        f"  {result.setting}: {result.name} {result.transport} x{result.callers}: "
        f"p50 {result.p50_ms:.3f} ms, {result.requests_per_s:.0f}/s, "
        f"{result.cpu_us:.0f} us CPU per request",
        file=sys.stderr,
        flush=True,
    )
    return result


def check_reply(name: str, reply: bytes) -> None:
    if reply != PAYLOAD:
        msg = f"{name}: the echo handler answered {reply[:40]!r}"
        raise RuntimeError(msg)


def measure_threads(
    setting: Setting,
    name: str,
    transport: str,
    call: CallFunc,
    callers: int,
    mode: Mode,
    probe: Probe,
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

    before = probe.snapshot()
    elapsed = run_threads(call, callers, requests, timed)
    used = cost(before, probe.snapshot(), requests)
    return progress(
        summarise(setting, name, transport, callers, samples, elapsed, used)
    )


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

    def __init__(
        self,
        kind: str,
        url: str,
        max_workers: int,
        *,
        subscribers: int = 0,
        start_timeout: float = SERVER_START_TIMEOUT,
        stop_timeout: float = SERVER_STOP_TIMEOUT,
        env: dict[str, str] | None = None,
    ) -> None:
        """*env*: variables added to this process's environment for the server's."""
        self.kind = kind
        self._env = None if env is None else {**os.environ, **env}
        self._args = [
            sys.executable,
            "-m",
            "benchmarks._servers",
            kind,
            url,
            "--max-workers",
            str(max_workers),
            "--subscribers",
            str(subscribers),
        ]
        self._start_timeout = start_timeout
        self._stop_timeout = stop_timeout
        self._process: subprocess.Popen[str] | None = None
        self._stopped = (0.0, False)  # what stop() returned
        self.pid = 0
        self.started: dict[str, Any] | None = None  # the channels server's report

    def __enter__(self) -> ServerProcess:
        self._process = subprocess.Popen(
            self._args,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=Path(__file__).resolve().parents[1],
            env=self._env,
        )
        self.pid = self._process.pid
        try:
            self._wait_ready()
        except BaseException:
            self.stop(self._stop_timeout)
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _wait_ready(self) -> None:
        assert self._process is not None
        assert self._process.stdout is not None
        lines: queue.Queue[str | None] = queue.Queue()
        stdout = self._process.stdout

        def read() -> None:
            # Reads to the end, so that a chatty server never blocks on a full pipe.
            for line in stdout:
                lines.put(line.strip())
            lines.put(None)

        threading.Thread(
            target=read, name=f"bench:{self.kind}:stdout", daemon=True
        ).start()
        deadline = time.monotonic() + self._start_timeout
        while True:
            try:
                line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                msg = f"The {self.kind} server was not ready within {self._start_timeout} s."
                raise RuntimeError(msg) from None
            if line is None:
                msg = f"The {self.kind} server exited before it was ready."
                raise RuntimeError(msg)
            if line == READY:
                return
            if line.startswith(STARTED):
                self.started = json.loads(line[len(STARTED) :])
                if self.started is not None and self.started["error"]:
                    raise RuntimeError(self.started["error"])

    def stop(self, timeout: float | None = None) -> tuple[float, bool]:
        """Close its stdin and SIGTERM it; kill it if it does not exit in time.

        Returns the seconds it took to exit and whether it had to be killed.
        """
        process, self._process = self._process, None
        if process is None:  # stopped already, when it failed to get ready
            return self._stopped
        self._stopped = self._stop(process, timeout or self._stop_timeout)
        return self._stopped

    def _stop(
        self, process: subprocess.Popen[str], timeout: float
    ) -> tuple[float, bool]:
        began = time.perf_counter()
        if process.stdin is not None:
            process.stdin.close()
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            print(f"warning: the {self.kind} server had to be killed", file=sys.stderr)
            process.kill()
            process.wait(SERVER_STOP_TIMEOUT)
            return time.perf_counter() - began, True
        return time.perf_counter() - began, False


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


def redis_rpc_calls(
    client: RedisBroker, timeout: float = TIMEOUT
) -> dict[str, CallFunc]:
    return {
        "channel": lambda b: client.request(b, CHANNEL, timeout=timeout).body,
        "list": lambda b: client.request(b, list=LIST, timeout=timeout).body,
        "stream": lambda b: client.request(b, stream=STREAM, timeout=timeout).body,
    }


def measure_floor(url: str, mode: Mode, probe: Probe, setting: Setting) -> list[Result]:
    with (
        ServerProcess("floor", url, setting.workers) as server,
        FloorClient(url) as client,
    ):
        probe.server_pid = server.pid
        try:
            return [
                measure_threads(
                    setting, "floor", "list", client.request, n, mode, probe
                )
                for n in CALLERS
            ]
        finally:
            probe.server_pid = None


def measure_redis_rpc(
    url: str, mode: Mode, probe: Probe, setting: Setting
) -> list[Result]:
    with ServerProcess("redis_rpc", url, setting.workers) as server:
        probe.server_pid = server.pid
        try:
            with RedisBroker(url, poll_interval=POLL_INTERVAL) as client:
                return [
                    measure_threads(
                        setting, "redis_rpc", transport, call, n, mode, probe
                    )
                    for transport, call in redis_rpc_calls(client).items()
                    for n in CALLERS
                ]
        finally:
            probe.server_pid = None


def measure_structure(
    url: str, mode: Mode, probe: Probe, setting: Setting
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The leak check and the many-callers rows, against a redis_rpc server at *setting*.

    They check how the library holds up (errors, connections, memory,
    threads), not how fast it is, so one setting is enough.
    """
    with ServerProcess("redis_rpc", url, setting.workers) as server:
        probe.server_pid = server.pid
        try:
            with RedisBroker(url, poll_interval=POLL_INTERVAL) as client:
                # Pools and threads up to size first, as the timed rows have.
                warm = redis_rpc_calls(client)["list"]
                run_threads(warm, LEAK_CALLERS, warmup_count(mode, LEAK_CALLERS), None)
                leaks = check_leaks(client, mode.leak_requests, probe)
            many = measure_many_callers(url, mode, probe, server.pid)
        finally:
            probe.server_pid = None
    for entry in [*many, leaks]:
        entry["server_setting"] = setting.name
    return many, leaks


def measure_faststream(
    url: str, mode: Mode, probe: Probe, setting: Setting
) -> list[Result]:
    with ServerProcess("faststream", url, setting.workers) as server:
        probe.server_pid = server.pid
        try:
            return asyncio.run(
                asyncio.wait_for(
                    faststream_rows(url, mode, probe, setting), ROW_TIMEOUT
                )
            )
        finally:
            probe.server_pid = None


async def faststream_rows(
    url: str, mode: Mode, probe: Probe, setting: Setting
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
                        setting, "faststream", transport, call, n, mode, probe
                    )
                )
    return results


TARGETS = {"channel": CHANNEL, "list": LIST, "stream": STREAM}


async def measure_coroutines(
    setting: Setting,
    name: str,
    transport: str,
    call: Callable[[bytes], Awaitable[bytes]],
    callers: int,
    mode: Mode,
    probe: Probe,
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
    before = probe.snapshot()
    elapsed = await run(requests, timed=True)
    used = cost(before, probe.snapshot(), requests)
    return progress(
        summarise(setting, name, transport, callers, samples, elapsed, used)
    )


# -- many callers ------------------------------------------------------------------


class PeakSampler:
    """Samples, every SAMPLE_EVERY seconds, the Redis connections this process and
    the server hold and this process's library threads; keeps the highest."""

    def __init__(self, port: int, server_pid: int, own_connections: int) -> None:
        self._port = port
        self._server_pid = server_pid
        self._own = own_connections  # the benchmark's own, before the broker
        self._stop = threading.Event()
        self.client_connections = 0
        self.server_connections = 0
        self.threads = 0
        self._thread = threading.Thread(
            target=self._run, name="bench:sampler", daemon=True
        )

    def __enter__(self) -> PeakSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(TIMEOUT)
        self.sample()  # and once more at the end, however short the phase

    def _run(self) -> None:
        while not self._stop.wait(SAMPLE_EVERY):
            self.sample()

    def sample(self) -> None:
        mine = redis_connections(os.getpid(), self._port) - self._own
        self.client_connections = max(self.client_connections, mine)
        theirs = redis_connections(self._server_pid, self._port)
        self.server_connections = max(self.server_connections, theirs)
        self.threads = max(self.threads, library_threads())


def error_kind(exc: BaseException) -> str:
    """The exception's type and the start of its message, to count alike errors."""
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text[:80]}"


def measure_many_callers(
    url: str, mode: Mode, probe: Probe, server_pid: int
) -> list[dict[str, Any]]:
    """Send requests from hundreds of threads through one broker with default
    settings; count what fails instead of stopping at it."""
    rows = []
    own = redis_connections(os.getpid(), probe.port)
    with RedisBroker(url) as client:
        calls = redis_rpc_calls(client, MANY_TIMEOUT)
        for call in calls.values():
            check_reply("many callers warm-up", call(PAYLOAD))
        for callers in mode.many_callers:
            for transport, call in calls.items():
                with PeakSampler(probe.port, server_pid, own) as peaks:
                    before = probe.snapshot()
                    samples, errors, elapsed = run_many(
                        call, callers, mode.many_per_caller
                    )
                    used = cost(
                        before, probe.snapshot(), callers * mode.many_per_caller
                    )
                p50, p99 = percentiles_ms(samples) if samples else (None, None)
                kinds = collections.Counter(error_kind(exc) for exc in errors)
                row = {
                    "transport": transport,
                    "callers": callers,
                    "requests": callers * mode.many_per_caller,
                    "answered": len(samples),
                    "errors": len(errors),
                    "error_kinds": dict(kinds.most_common(5)),
                    "p50_ms": p50,
                    "p99_ms": p99,
                    "seconds": elapsed,
                    "answered_per_s": len(samples) / elapsed,
                    "client_connections_peak": peaks.client_connections,
                    "server_connections_peak": peaks.server_connections,
                    "library_threads_peak": peaks.threads,
                    "cpu_caller_us": used.caller_us,
                    "cpu_server_us": used.server_us,
                    "cpu_redis_us": used.redis_us,
                }
                rows.append(row)
                print(
                    f"  redis_rpc {transport} x{callers}: {len(errors)} errors of "
                    f"{row['requests']}, {row['answered_per_s']:.0f}/s, "
                    f"{peaks.client_connections} connections",
                    file=sys.stderr,
                    flush=True,
                )
    return rows


def run_many(
    call: CallFunc, callers: int, per_caller: int
) -> tuple[list[float], list[BaseException], float]:
    """Send *per_caller* requests from each of *callers* threads, all at once.

    Returns the round-trip times of the answered ones, the errors of the
    others (a thread that could not start counts as one per request it owed)
    and the seconds it all took.
    """
    samples: list[float] = []  # list.append is atomic under the GIL
    errors: list[BaseException] = []
    start = threading.Barrier(callers + 1, timeout=MANY_START_TIMEOUT)

    def work() -> None:
        try:
            start.wait()
        except threading.BrokenBarrierError:
            return
        for _ in range(per_caller):
            sent = time.perf_counter()
            try:
                reply = call(PAYLOAD)
            except Exception as exc:  # noqa: BLE001 - counted: errors are the result
                errors.append(exc)
                continue
            if reply == PAYLOAD:
                samples.append(time.perf_counter() - sent)
            else:
                errors.append(RuntimeError(f"a wrong reply: {reply[:40]!r}"))

    threads = []
    for n in range(callers):
        thread = threading.Thread(target=work, name=f"bench:caller_{n}")
        try:
            thread.start()
        except RuntimeError as exc:  # "can't start new thread": the OS said no
            errors.extend([exc] * per_caller * (callers - n))
            start.abort()
            break
        threads.append(thread)
    # Broken when a thread could not start: those that did return at once.
    with contextlib.suppress(threading.BrokenBarrierError):
        start.wait()
    began = time.perf_counter()
    deadline = time.monotonic() + ROW_TIMEOUT
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    elapsed = time.perf_counter() - began
    if any(thread.is_alive() for thread in threads):
        msg = f"Callers still running after {ROW_TIMEOUT} s."
        raise RuntimeError(msg)
    return samples, errors, elapsed


# -- many channel subscribers ----------------------------------------------------


def measure_channel_start(url: str, subscribers: int, probe: Probe) -> dict[str, Any]:
    """Start a broker with *subscribers* channel subscribers in a process of its own;
    time ``start()``, count its threads and connections, check it answers."""
    server = ServerProcess(
        "channels",
        url,
        1,
        subscribers=subscribers,
        start_timeout=CHANNELS_START_TIMEOUT,
        stop_timeout=CHANNELS_STOP_TIMEOUT,
    )
    result: dict[str, Any] = {
        "setting": DEFAULT,  # its broker's: every option at its default
        "subscribers": subscribers,
        "start_timeout": DEFAULT_START_TIMEOUT,
    }
    try:
        server.__enter__()
    except RuntimeError as exc:
        result["error"] = str(exc)
    else:
        result["error"] = None
        result["threads"] = thread_count(server.pid)
        result["connections"] = redis_connections(server.pid, probe.port)
        result["rss_mb"] = round(rss_mb(server.pid), 1)
        # The first and the last subscribers answer: all of them are up.
        with RedisBroker(url, poll_interval=POLL_INTERVAL) as client:
            for n in (0, subscribers - 1):
                sent = time.perf_counter()
                reply = client.request(PAYLOAD, f"{MANY_CHANNELS}{n}", timeout=TIMEOUT)
                check_reply("channel start", reply.body)
                result[f"request_{n}_ms"] = (time.perf_counter() - sent) * 1e3
    finally:
        started = server.started or {}
        result["start_seconds"] = started.get("seconds")
        stop_seconds, killed = server.stop()
        result["stop_seconds"] = stop_seconds
        result["stop_killed"] = killed
    seconds = result["start_seconds"]
    print(
        f"  redis_rpc start with {subscribers} channel subscribers: "
        + ("-" if seconds is None else f"{seconds:.2f} s")
        + ("" if result["error"] is None else ", failed"),
        file=sys.stderr,
        flush=True,
    )
    return result


# -- memory and threads ----------------------------------------------------------


def library_threads() -> int:
    """Threads alive now, leaving out the main thread and the benchmark's own."""
    main = threading.main_thread()
    return sum(
        not (t is main or t.name.startswith("bench:")) for t in threading.enumerate()
    )


def check_leaks(client: RedisBroker, requests: int, probe: Probe) -> dict[str, Any]:
    """Send *requests* from 32 threads, every 10th timing out; sample memory and threads."""
    calls = redis_rpc_calls(client)
    sequence = itertools.count()  # next() is atomic under the GIL
    step = max(1, requests // LEAK_SAMPLES)
    samples: list[tuple[int, float, int]] = []
    timeouts = itertools.count()
    answered_early = itertools.count()
    me = os.getpid()

    def one(body: bytes) -> None:
        n = next(sequence)
        if n % step == 0:
            samples.append((n, rss_mb(me), library_threads()))
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

    before = probe.snapshot()
    elapsed = run_threads(lambda b: b, LEAK_CALLERS, requests, one)
    used = cost(before, probe.snapshot(), requests)
    samples.sort()
    return {
        "requests": requests,
        "callers": LEAK_CALLERS,
        "timed_out": next(timeouts),
        "slow_answered_in_time": next(answered_early),
        "seconds": elapsed,
        "connections_per_1k": used.connections_per_1k,
        "rss_mb": [round(rss, 1) for _, rss, _ in samples],
        "threads": [threads for _, _, threads in samples],
        "pending_requests_after": repr(client),
    }


# -- report ----------------------------------------------------------------------


def ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def report(setting: Setting, results: list[Result]) -> list[dict[str, Any]]:
    """Print the table of *setting*; return its rows as dicts, ratios included.

    Every ratio compares rows of this setting only.
    """
    results = [r for r in results if r.setting == setting.name]
    by_key = {(r.name, r.transport, r.callers): r for r in results}
    floor = {r.callers: r for r in results if r.name == "floor"}
    floor_rate = floor[1].requests_per_s
    rows = []
    print()
    print(f'Setting "{setting.name}": {setting.describe()}')
    print()
    print(HEADER.format(*HEADER_NAMES))
    for r in results:
        p50_vs_floor = r.p50_ms / floor[r.callers].p50_ms
        rate_vs_floor = r.requests_per_s / floor_rate
        # The floor is a list round trip, so it is set beside FastStream's list row.
        fs = by_key.get(("faststream", r.transport, r.callers))
        rate_vs_fs = None if fs is None else r.requests_per_s / fs.requests_per_s
        split = f"{r.cpu_caller_us:.0f}/{r.cpu_server_us:.0f}/{r.cpu_redis_us:.0f}"
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
                r.cpu_us,
                split,
                ratio(p50_vs_floor),
                ratio(rate_vs_floor),
                ratio(rate_vs_fs),
            )
        )
        rows.append(
            dataclasses.asdict(r)
            | {
                "cpu_us": r.cpu_us,
                "p50_vs_floor": p50_vs_floor,
                "rate_vs_floor_sequential": rate_vs_floor,
                "rate_vs_faststream": rate_vs_fs,
            }
        )
    return rows


def report_many(many: list[dict[str, Any]], server: Setting) -> None:
    print()
    print(
        "Many callers: redis_rpc, one broker with default settings; "
        f'the server at setting "{server.name}"'
    )
    print(MANY_HEADER.format(*MANY_NAMES))

    def ms(value: float | None) -> str:
        return "-" if value is None else f"{value:.3f}"

    for row in many:
        cpu = row["cpu_caller_us"] + row["cpu_server_us"] + row["cpu_redis_us"]
        print(
            MANY_ROW.format(
                row["transport"],
                row["callers"],
                row["requests"],
                row["errors"],
                ms(row["p50_ms"]),
                ms(row["p99_ms"]),
                row["answered_per_s"],
                row["client_connections_peak"],
                row["server_connections_peak"],
                row["library_threads_peak"],
                cpu,
            )
        )
        for kind, count in row["error_kinds"].items():
            print(f"    {count} x {kind}")


def report_channel_start(start: dict[str, Any]) -> None:
    print()
    seconds = start["start_seconds"]
    took = "-" if seconds is None else f"{seconds:.2f} s"
    print(
        f"Start with {start['subscribers']} channel subscribers: {took}"
        + (
            f", failed: {start['error']}"
            if start["error"]
            else f"; then {start['threads']} threads, {start['connections']} "
            f"Redis connections, {start['rss_mb']} MiB"
        )
        + f"; stop {start['stop_seconds']:.2f} s"
        + (" (killed)" if start["stop_killed"] else "")
    )


def targets(
    results: list[Result],
    settings: list[Setting],
    many: list[dict[str, Any]],
    start: dict[str, Any],
    leaks: dict[str, Any],
) -> list[dict[str, Any]]:
    """Print each of the targets with its measured value, PASS or MISS.

    The speed targets are checked at each setting that ran, as ratios to
    rows of the same setting; the others once.
    """
    most = max(CALLERS)
    checks: list[dict[str, Any]] = []

    def check(
        target: str,
        value: float | None,
        op: str,
        goal: float,
        *,
        setting: Setting | None = None,
        failed: bool = False,
    ) -> None:
        met = None if value is None else value >= goal if op == ">=" else value <= goal
        if failed and met is not None:
            met = False  # measured, but what it measured did not work
        if setting is not None:
            target = f"{setting.name}, {target}"
        checks.append(
            {
                "target": target,
                "setting": None if setting is None else setting.name,
                "value": value,
                "op": op,
                "goal": goal,
                "met": met,
            }
        )

    for setting in settings:
        by_key = {
            (r.name, r.transport, r.callers): r
            for r in results
            if r.setting == setting.name
        }
        floor = {n: by_key[("floor", "list", n)] for n in CALLERS}
        fs_best = max(
            (r.requests_per_s for r in by_key.values() if r.name == "faststream"),
            default=None,
        )
        for transport in TRANSPORTS:
            ours = by_key[("redis_rpc", transport, 1)]
            check(
                f"{transport}: p50, 1 caller / floor's",
                ours.p50_ms / floor[1].p50_ms,
                "<=",
                P50_GOAL,
                setting=setting,
            )
        for transport in TRANSPORTS:
            rate = by_key[("redis_rpc", transport, most)].requests_per_s
            if setting.is_default:
                check(
                    f"{transport}: rate, {most} callers / floor's, {most} callers",
                    rate / floor[most].requests_per_s,
                    ">=",
                    DEFAULT_RATE_GOAL,
                    setting=setting,
                )
                continue
            check(
                f"{transport}: rate, {most} callers / floor's, 1 caller",
                rate / floor[1].requests_per_s,
                ">=",
                WORKERS_RATE_GOAL,
                setting=setting,
            )
            check(
                f"{transport}: rate, {most} callers / FastStream's best",
                None if fs_best is None else rate / fs_best,
                ">=",
                FASTSTREAM_RATE_GOAL,
                setting=setting,
            )
        for transport in TRANSPORTS:
            check(
                f"{transport}: CPU us per request, {most} callers, all sides",
                by_key[("redis_rpc", transport, most)].cpu_us,
                "<=",
                CPU_GOAL_US,
                setting=setting,
            )
    for callers in sorted({row["callers"] for row in many}):
        errors = sum(row["errors"] for row in many if row["callers"] == callers)
        check(f"{callers} callers: errors, all transports", errors, "<=", 0)
    if many:
        check(
            "connections of a calling broker, peak, any callers",
            max(row["client_connections_peak"] for row in many),
            "<=",
            CONNECTIONS_CONSTANT,
        )
        check(
            f"connections of the serving broker, peak ({SERVER_BLOCKING_READS} blocking reads)",
            max(row["server_connections_peak"] for row in many),
            "<=",
            CONNECTIONS_CONSTANT + SERVER_BLOCKING_READS,
        )
    # One connection per request would read 1,000; a pool that grows by one
    # connection under a new peak of concurrency stays far below 1.
    worst = max(r.connections_per_1k for r in results if r.name == "redis_rpc")
    check(
        "connections opened per 1,000 requests, worst row of any setting",
        worst,
        "<=",
        1.0,
    )
    subscribers = start["subscribers"]
    check(
        f"{subscribers} channel subscribers: start, s",
        start["start_seconds"],
        "<=",
        DEFAULT_START_TIMEOUT,
        failed=bool(start["error"]),
    )
    check(
        f"{subscribers} channel subscribers: threads after start",
        start.get("threads"),
        "<=",
        CHANNEL_START_THREADS,
    )
    check(
        f"{subscribers} channel subscribers: connections after start",
        start.get("connections"),
        "<=",
        CONNECTIONS_CONSTANT,
    )
    check(
        "leak check: connections opened per 1,000 requests",
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
        verdict = {True: "PASS", False: "MISS", None: "MISS (not measured)"}[c["met"]]
        value = "-" if c["value"] is None else f"{c['value']:.2f}"
        goal = f"{c['goal']:g}"
        print(f"  {c['target']:<66}{value:>9}  {c['op']} {goal:<6} {verdict}")
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


def hiredis_version() -> str | None:
    """hiredis's version if redis-py can use it in this process, else None."""
    try:
        importlib.import_module("hiredis")
    except ImportError:
        return None
    return importlib.metadata.version("hiredis")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="small counts, minutes")
    size.add_argument("--smoke", action="store_true", help="tiny counts, seconds")
    parser.add_argument("--json", metavar="PATH", help="also write the numbers here")
    parser.add_argument(
        "--no-hiredis",
        action="store_true",
        help="run every process as if hiredis were not installed",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=SERVER_WORKERS,
        help="max_workers of every subscriber, and threads of the floor's server, "
        f"at the second setting (default {SERVER_WORKERS})",
    )
    parser.add_argument(
        "--settings",
        choices=SETTINGS,
        default="both",
        help="measure both settings (the default), or only the default one, "
        "or only the one with --workers",
    )
    args = parser.parse_args(argv)
    if args.workers < 2:
        parser.error("--workers must be at least 2: 1 is the default setting")
    if args.no_hiredis and os.environ.get(NO_HIREDIS) != "1":
        # redis-py is imported already, with hiredis: start again without it.
        # The variable reaches the server processes too.
        os.environ[NO_HIREDIS] = "1"
        rest = sys.argv[1:] if argv is None else argv
        os.execv(sys.executable, [sys.executable, "-m", __spec__.name, *rest])
    mode_name = "quick" if args.quick else "smoke" if args.smoke else "full"
    mode = MODES[mode_name]
    settings = chosen_settings(args.settings, args.workers)
    hiredis = hiredis_version()
    began = time.perf_counter()
    server = RedisServer()
    probe: Probe | None = None
    try:
        server.start()
        probe = Probe(server.url)
        print(
            f"{mode_name} run: {mode.sequential} timed requests with 1 caller, "
            f"{mode.concurrent} with several, after {mode.warmup} warm-up; "
            f"settings {', '.join(s.name for s in settings)}; "
            f"hiredis {hiredis or 'off'}",
            flush=True,
        )
        with_faststream = faststream_installed()
        if not with_faststream:
            print("FastStream is not installed: pip install -e '.[bench]'")
        results: list[Result] = []
        for setting in settings:
            results += measure_floor(server.url, mode, probe, setting)
            results += measure_redis_rpc(server.url, mode, probe, setting)
            if with_faststream:
                results += measure_faststream(server.url, mode, probe, setting)
        # The last setting: with both, the one of --workers, which these
        # phases used before the benchmark had two settings.
        structure_setting = settings[-1]
        many, leaks = measure_structure(server.url, mode, probe, structure_setting)
        start = measure_channel_start(server.url, mode.channel_subscribers, probe)
    finally:
        if probe is not None:
            probe.close()
        server.stop()
    rows = [row for setting in settings for row in report(setting, results)]
    report_many(many, structure_setting)
    report_channel_start(start)
    checks = targets(results, settings, many, start, leaks)
    seconds = time.perf_counter() - began
    print(f"\n{mode_name} run took {seconds:.0f} s")
    if args.json:
        summary = {
            "mode": mode_name,
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(
                timespec="seconds"
            ),
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
            "load_average": os.getloadavg(),
            "hiredis": hiredis,
            "settings": [dataclasses.asdict(setting) for setting in settings],
            "payload_bytes": len(PAYLOAD),
            "counts": dataclasses.asdict(mode),
            "results": rows,
            "many_callers": many,
            "channel_start": start,
            "targets": checks,
            "leak_check": leaks,
            "seconds": seconds,
        }
        Path(args.json).write_text(json.dumps(summary, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
