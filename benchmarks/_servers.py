"""Echo servers for the benchmark, each run in a process of its own.

Run as ``python -m benchmarks._servers KIND URL [--max-workers N]``, where
KIND is one of:

``floor``
    Plain redis-py, the shape every RPC over Redis needs at least: a thread
    BLPOPs a list and PUBLISHes the body to the reply channel that prefixes
    it; N such threads.
``redis_rpc``
    A ``redis_rpc.RedisBroker`` serving ``echo`` on a channel, a list and a
    stream, and ``slow`` (which sleeps past the callers' short timeout) on a
    channel of its own, for the leak check.
``faststream``
    A FastStream ``RedisBroker`` serving ``echo`` on a channel, a list and a
    stream, on one asyncio event loop.

For ``redis_rpc`` and ``faststream``, ``--max-workers N`` with N above 1
is passed as ``max_workers=N`` to each echo subscriber; with 1 (the
default) no ``max_workers`` is passed at all, so each library runs at its
own default.
``channels``
    A ``redis_rpc.RedisBroker`` with ``--subscribers N`` channel subscribers
    (``echo`` on ``bench.many.0`` to ``bench.many.<N-1>``), default settings
    otherwise. Before ``ready`` it prints ``started {json}``: the seconds
    ``start()`` took, or the error it raised (and then exits without
    ``ready``).
``lists``
    ``echo`` on each list of ``--lists A,B,...``, one subscriber each: a
    ``redis_rpc.RedisBroker``, or with ``--cluster`` a
    ``redis_rpc.RedisClusterBroker`` (URL: any node, or several separated
    by commas). The cluster benchmark puts one list on each master.

Before it serves, a server switches off the mechanisms that
``REDIS_RPC_BENCH_OFF`` names (``benchmarks._toggles``).

Each prints ``ready`` on stdout once serving and exits on SIGTERM, on
SIGINT, or when its stdin closes (so it cannot outlive the benchmark).

The functions at the end read a process's CPU time, threads, memory and
Redis connections from ``/proc`` (Linux only); the benchmark uses them on
its own process, on the servers and on redis-server.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
import threading
import time
from typing import TYPE_CHECKING, Any

import redis

from benchmarks._toggles import apply_from_env
from redis_rpc import RedisBroker, RedisClusterBroker

if TYPE_CHECKING:
    from collections.abc import Callable

KINDS = ("floor", "redis_rpc", "faststream", "channels", "lists")
CHANNEL, LIST, STREAM = "bench.channel", "bench.list", "bench.stream"
SLOW_CHANNEL = "bench.slow"  # served by a handler that outlasts SLOW_TIMEOUT
FLOOR_LIST = "bench.floor.requests"  # items are b"<reply channel> <body>"
FLOOR_SEPARATOR = b" "
STREAM_GROUP = "bench"  # FastStream needs a group to share a stream like we do
POLL_INTERVAL = 0.1  # seconds each blocking read waits; bounds how long stopping takes
SOCKET_TIMEOUT = 2.0  # above POLL_INTERVAL, so an idle blocking read never times out
LISTS_SOCKET_TIMEOUT = 10.0  # the lists server's: see serve_lists()
SLOW_TIMEOUT = 0.02  # seconds a leak-check caller waits for the slow handler
SLOW_SLEEP = 0.05  # seconds the slow handler takes: always past SLOW_TIMEOUT
SLOW_WORKERS = 64  # enough sleepers that the slow channel never backs up for long
LIFETIME = 1800.0  # a safety net: the benchmark always stops its servers well before
READY = "ready"
STARTED = "started "  # the channels server's line before ready: a JSON object
MANY_CHANNELS = "bench.many."  # the channels server's channel names, + 0..N-1
ERROR_CHARS = 300  # of the error the channels server reports
TICKS_PER_S = os.sysconf("SC_CLK_TCK")


def echo(body: bytes) -> bytes:
    return body


def slow(body: bytes) -> bytes:
    time.sleep(SLOW_SLEEP)
    return body


def serve_floor(url: str, stop: threading.Event, max_workers: int) -> None:
    """BLPOP and PUBLISH on *max_workers* threads until *stop* is set."""
    client = redis.Redis.from_url(url, socket_timeout=SOCKET_TIMEOUT)

    def serve() -> None:
        while not stop.is_set():
            item: Any = client.blpop([FLOOR_LIST], timeout=POLL_INTERVAL)
            if item is not None:
                channel, _, body = item[1].partition(FLOOR_SEPARATOR)
                client.publish(channel, body)

    threads = [
        threading.Thread(target=serve, name=f"bench:floor:{n}", daemon=True)
        for n in range(max_workers)
    ]
    for thread in threads:
        thread.start()
    client.ping()
    announce()
    stop.wait(LIFETIME)
    stop.set()
    for thread in threads:
        thread.join(2 * POLL_INTERVAL + SOCKET_TIMEOUT)
    client.close()


def serve_redis_rpc(url: str, stop: threading.Event, max_workers: int) -> None:
    broker = RedisBroker(
        url,
        poll_interval=POLL_INTERVAL,
        socket_timeout=SOCKET_TIMEOUT,
        graceful_timeout=SOCKET_TIMEOUT,
    )
    # None is what subscriber() gets when max_workers is left out: the default.
    workers = max_workers if max_workers > 1 else None
    broker.subscriber(CHANNEL, max_workers=workers)(echo)
    broker.subscriber(list=LIST, max_workers=workers)(echo)
    broker.subscriber(stream=STREAM, max_workers=workers)(echo)
    broker.subscriber(SLOW_CHANNEL, max_workers=SLOW_WORKERS)(slow)
    with broker:
        announce()
        stop.wait(LIFETIME)


def serve_faststream(url: str, stop: threading.Event, max_workers: int) -> None:
    import faststream.redis

    async def main() -> None:
        # Messages logged at DEBUG, which its logger drops, as redis_rpc does:
        # FastStream's default INFO line per message would cost it time.
        broker = faststream.redis.RedisBroker(url, log_level=logging.DEBUG)
        concurrency: dict[str, Any] = (
            {"max_workers": max_workers} if max_workers > 1 else {}
        )
        sources: list[dict[str, Any]] = [
            {"channel": CHANNEL},
            {"list": LIST},
            {
                "stream": faststream.redis.StreamSub(
                    STREAM, group=STREAM_GROUP, consumer=f"bench-{os.getpid()}"
                )
            },
        ]
        for source in sources:
            broker.subscriber(**source, **concurrency)(_async_echo)
        await broker.start()
        try:
            announce()
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(None, stop.wait, LIFETIME)
        finally:
            await broker.stop()

    asyncio.run(main())


async def _async_echo(body: bytes) -> bytes:
    return body


def serve_channels(
    url: str, stop: threading.Event, max_workers: int, subscribers: int
) -> None:
    """Time ``start()`` of a broker with *subscribers* channel subscribers."""
    broker = RedisBroker(url, max_workers=max_workers)
    for n in range(subscribers):
        broker.subscriber(f"{MANY_CHANNELS}{n}")(echo)
    began = time.perf_counter()
    try:
        broker.start()
    except Exception as exc:  # noqa: BLE001 - reported, not raised: it is a result
        seconds = time.perf_counter() - began
        error = f"{type(exc).__name__}: {exc}"
        if len(error) > ERROR_CHARS:  # it may name every subscriber that failed
            error = f"{error[:ERROR_CHARS]}... ({len(error)} characters)"
        print(STARTED + json.dumps({"seconds": seconds, "error": error}), flush=True)
        broker.close()
        return
    seconds = time.perf_counter() - began
    print(STARTED + json.dumps({"seconds": seconds, "error": None}), flush=True)
    try:
        announce()
        stop.wait(LIFETIME)
    finally:
        broker.close()


def serve_lists(
    url: str, stop: threading.Event, max_workers: int, lists: list[str], cluster: bool
) -> None:
    broker_class = RedisClusterBroker if cluster else RedisBroker
    broker = broker_class(
        url,
        max_workers=max_workers,
        poll_interval=POLL_INTERVAL,
        # The library's default: a reply that cannot ride with a read (on a
        # cluster, most go to another master's pipe) is dropped if it waits
        # longer than this. With 2 s, one request of a smoke run that shared
        # the cores with three test suites went unanswered, most likely so.
        socket_timeout=LISTS_SOCKET_TIMEOUT,
        graceful_timeout=SOCKET_TIMEOUT,
    )
    for name in lists:
        broker.subscriber(list=name)(echo)
    with broker:
        announce()
        stop.wait(LIFETIME)


def announce() -> None:
    print(READY, flush=True)


def watch_stdin(stop: threading.Event) -> None:
    """Set *stop* once stdin reaches end of file: the benchmark has gone."""
    # os.read, not sys.stdin: a daemon thread blocked inside a buffered reader
    # at interpreter exit makes CPython abort ("could not acquire lock").
    while os.read(sys.stdin.fileno(), 1024):
        pass
    stop.set()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("kind", choices=KINDS)
    parser.add_argument("url")
    parser.add_argument("--max-workers", type=int, default=1)
    parser.add_argument("--subscribers", type=int, default=0, help="channels only")
    parser.add_argument("--lists", default="", help="lists only: A,B,...")
    parser.add_argument(
        "--cluster", action="store_true", help="lists only: a RedisClusterBroker"
    )
    args = parser.parse_args(argv)
    apply_from_env()  # before any broker exists
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    threading.Thread(
        target=watch_stdin, args=(stop,), name="bench:stdin", daemon=True
    ).start()
    serve: dict[str, Callable[[str, threading.Event, int], None]] = {
        "floor": serve_floor,
        "redis_rpc": serve_redis_rpc,
        "faststream": serve_faststream,
        "channels": lambda url, stop, workers: serve_channels(
            url, stop, workers, args.subscribers
        ),
        "lists": lambda url, stop, workers: serve_lists(
            url, stop, workers, args.lists.split(","), args.cluster
        ),
    }
    serve[args.kind](args.url, stop, args.max_workers)
    return 0


# -- what a process uses, from /proc ---------------------------------------------


def cpu_seconds(pid: int) -> float:
    """User plus system CPU seconds *pid* has used so far, all its threads."""
    with open(f"/proc/{pid}/stat") as stat:
        # The command name may hold spaces; the fields after it do not.
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS_PER_S


def thread_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


def rss_mb(pid: int) -> float:
    """Resident memory of *pid* now, in MiB."""
    with open(f"/proc/{pid}/statm") as statm:
        pages = int(statm.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def redis_connections(pid: int, port: int) -> int:
    """TCP connections *pid* holds open to a server on *port* (of any address)."""
    sockets = set()
    fds = f"/proc/{pid}/fd"
    for fd in os.listdir(fds):
        try:
            target = os.readlink(f"{fds}/{fd}")
        except OSError:  # closed since listdir()
            continue
        if target.startswith("socket:["):
            sockets.add(target[len("socket:[") : -1])
    count = 0
    for table in ("tcp", "tcp6"):
        try:
            with open(f"/proc/{pid}/net/{table}") as entries:
                lines = entries.readlines()[1:]
        except FileNotFoundError:  # no IPv6 here
            continue
        for line in lines:
            fields = line.split()
            remote, state, inode = fields[2], fields[3], fields[9]
            established = state == "01"
            if established and int(remote.rsplit(":", 1)[1], 16) == port:
                count += inode in sockets
    return count


if __name__ == "__main__":
    raise SystemExit(main())
