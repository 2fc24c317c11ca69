"""Redis Cluster: request rate with 3 masters against one Redis, and node-to-node traffic per request.

Run as ``python -m benchmarks.cluster [--quick | --smoke]`` from the
repository root. It starts its own servers on free loopback ports
(``tests.cluster_topology.ClusterServers`` and
``redis_rpc.testing.RedisServer``) and stops them at the end.

**Rate.** A cluster of 3 masters (no replicas) and one plain redis-server.
On each, an echo server process (``benchmarks._servers lists``) serves one
list subscriber per list, ``max_workers=8`` each: on the cluster a
``RedisClusterBroker`` with one list on each master, on the single server a
``RedisBroker`` with the same three lists. 32 caller threads in this process
share one broker of the same kind and spread over the three lists (thread
*n* calls list *n* mod 3). Rounds alternate between the two setups, so that
the ratio (rate with 3 masters / rate with 1) compares figures taken
seconds apart. Each round reports requests per second and CPU time per
request of the callers (this process), of the server process and of the
redis-servers (all masters together), from ``/proc``.

**Node-to-node traffic.** A cluster of 3 masters with one replica each, a
``RedisClusterBroker`` server and caller in this process, and requests one
at a time over four paths: (a) a list, with the replies on the caller's
sharded reply channel (the default between redis_rpc peers); (b) the same
with classic replies (the caller's listener is told it has no shard, so its
requests name none, as a FastStream caller's); (c) a classic channel; (d) a
sharded channel (``PubSub(name, sharded=True)``). For each it reports the
Pub/Sub messages the nodes sent each other per request:
``cluster_stats_messages_publish_sent`` and
``cluster_stats_messages_publishshard_sent`` of ``CLUSTER INFO``, summed
over all nodes.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import redis

from benchmarks._servers import POLL_INTERVAL, READY, cpu_seconds
from redis_rpc import PubSub, RedisBroker, RedisClusterBroker
from redis_rpc.testing import RedisServer
from tests.cluster_topology import ClusterServers

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Sequence

MASTERS = 3
CALLERS = 32
SERVER_WORKERS = 8  # max_workers of each list subscriber
PAYLOAD = b"x" * 64  # a small body: we measure requests, not bandwidth
TIMEOUT = 30.0  # seconds one request may take before the run fails: lost, not slow (a machine busy with other suites stalls for seconds)
SERVER_START_TIMEOUT = 30.0  # seconds a server process has to print its ready line
SERVER_STOP_TIMEOUT = 5.0  # seconds a server process has to exit before it is killed
LIST_PREFIX = "bench.cluster.list"
CHANNEL = "bench.cluster.channel"
SHARDED_CHANNEL = "bench.cluster.sharded"
RATE_HEADER = "{:<11}{:>7}{:>10}{:>9}{:>11}{:>10}{:>10}{:>12}"
RATE_ROW = "{:<11}{:>7}{:>10,.0f}{:>9.0f}{:>11.0f}{:>10.0f}{:>10.0f}{:>12.1f}"
TRAFFIC_HEADER = "{:<28}{:>6}{:>10}{:>15}{:>8}"
TRAFFIC_ROW = "{:<28}{:>6}{:>10.2f}{:>15.2f}{:>8.2f}"
BUS_COUNTERS = (
    "cluster_stats_messages_publish_sent",
    "cluster_stats_messages_publishshard_sent",
)


@dataclasses.dataclass(frozen=True)
class Mode:
    rounds: int  # timed rounds of each setup, alternating
    seconds: float  # length of one round
    warmup: float  # untimed seconds of each setup first
    traffic_requests: int  # requests of each node-to-node traffic row


MODES = {
    "full": Mode(rounds=5, seconds=4.0, warmup=1.0, traffic_requests=2_000),
    "quick": Mode(rounds=3, seconds=2.0, warmup=0.5, traffic_requests=500),
    "smoke": Mode(rounds=1, seconds=0.3, warmup=0.1, traffic_requests=20),
}


# -- rate -------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Round:
    setup: str  # "3 masters" or "1 Redis"
    rate: float  # requests per second, all callers together
    caller_us: float  # CPU time per request of this process
    server_us: float  # ... of the server process
    redis_us: float  # ... of the redis-servers together
    calls_per_write: float  # commands per socket write of the caller's pipes

    @property
    def cpu_us(self) -> float:
        return self.caller_us + self.server_us + self.redis_us


class Setup:
    """One side of the comparison: its redis-servers, its echo server process and a caller."""

    def __init__(
        self, name: str, url: str, lists: Sequence[str], redis_pids: Sequence[int]
    ) -> None:
        self.name = name
        self.url = url
        self.lists = list(lists)
        self.redis_pids = list(redis_pids)
        self.cluster = len(redis_pids) > 1
        self.process: subprocess.Popen[str] | None = None
        self.caller: RedisBroker | None = None

    def __enter__(self) -> Setup:
        args = [
            sys.executable,
            "-m",
            "benchmarks._servers",
            "lists",
            self.url,
            "--max-workers",
            str(SERVER_WORKERS),
            "--lists",
            ",".join(self.lists),
        ]
        if self.cluster:
            args.append("--cluster")
        self.process = subprocess.Popen(
            args,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=Path(__file__).resolve().parents[1],
        )
        try:
            _wait_ready(self.process, self.name)
            broker_class = RedisClusterBroker if self.cluster else RedisBroker
            self.caller = broker_class(self.url)
            self.caller.start()
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self.caller is not None:
            self.caller.close()
        if self.process is not None:
            _stop(self.process)

    def requests(self) -> list[Callable[[], object]]:
        """One request function per caller thread, spread over the lists."""
        assert self.caller is not None
        return [
            functools.partial(
                self.caller.request,
                PAYLOAD,
                list=self.lists[n % len(self.lists)],
                timeout=TIMEOUT,
            )
            for n in range(CALLERS)
        ]

    def measure(self, seconds: float) -> Round:
        assert self.process is not None
        pids = [os.getpid(), self.process.pid]
        before = [cpu_seconds(pid) for pid in pids + self.redis_pids]
        calls, writes = self.pipe_counts()
        rate = run_round(self.requests(), seconds)
        after = [cpu_seconds(pid) for pid in pids + self.redis_pids]
        more_calls, more_writes = self.pipe_counts()
        per = 1e6 / max(1.0, rate * seconds)
        used = [(b - a) * per for a, b in zip(before, after, strict=True)]
        batching = (more_calls - calls) / max(1, more_writes - writes)
        return Round(self.name, rate, used[0], used[1], sum(used[2:]), batching)

    def pipe_counts(self) -> tuple[int, int]:
        """Calls and writes so far of the caller's pipes: one per Redis, one per master."""
        # Private attributes, read as benchmarks.engine_quick reads them.
        connection: Any = getattr(self.caller, "_connection", None)
        nodes = getattr(connection, "_nodes", None)
        found: list[Any] = (
            [node.pipe for node in nodes.values()]
            if nodes is not None
            else [getattr(connection, "_pipe", None)]
        )
        pipes = [pipe for pipe in found if pipe is not None]
        return sum(p.written for p in pipes), sum(p.batches for p in pipes)


def run_round(requests: Sequence[Callable[[], object]], seconds: float) -> float:
    """Requests per second over *seconds*, one thread per function of *requests*."""
    stop = threading.Event()
    counts = [0] * len(requests)
    errors: list[BaseException] = []

    def call(n: int) -> None:
        try:
            while not stop.is_set():
                requests[n]()
                counts[n] += 1
        except BaseException as exc:  # noqa: BLE001 - re-raised by the main thread
            errors.append(exc)

    threads = [
        threading.Thread(target=call, args=(n,), name=f"bench:caller_{n}")
        for n in range(len(requests))
    ]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    stop.wait(seconds)
    stop.set()
    for thread in threads:
        thread.join(2 * TIMEOUT)
    elapsed = time.perf_counter() - started
    if any(thread.is_alive() for thread in threads):
        msg = f"Callers still running {2 * TIMEOUT} s after the round ended."
        raise RuntimeError(msg)
    if errors:
        raise errors[0]
    return sum(counts) / elapsed


def _wait_ready(process: subprocess.Popen[str], name: str) -> None:
    """Wait, bounded, for the server process's ready line."""
    assert process.stdout is not None
    lines: list[str] = []
    reader = threading.Thread(
        target=lambda: lines.append(
            process.stdout.readline() if process.stdout else ""
        ),
        name="bench:ready",
        daemon=True,
    )
    reader.start()
    reader.join(SERVER_START_TIMEOUT)
    if not lines or lines[0].strip() != READY:
        msg = f"The {name} echo server did not start within {SERVER_START_TIMEOUT} s."
        raise RuntimeError(msg)


def _stop(process: subprocess.Popen[str]) -> None:
    process.terminate()
    try:
        process.wait(SERVER_STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(SERVER_STOP_TIMEOUT)


def redis_pid(client: redis.Redis) -> int:
    return int(client.info("server")["process_id"])


def measure_rate(mode: Mode) -> list[Round]:
    """Alternate rounds between 3 masters and one Redis; return every round."""
    rounds: list[Round] = []
    with (
        ClusterServers(MASTERS, replicas=0) as cluster,
        RedisServer() as single,
    ):
        masters = cluster.masters()
        lists = [cluster.key_on(master, LIST_PREFIX) for master in masters]
        probe = redis.Redis.from_url(single.url, socket_timeout=TIMEOUT)
        try:
            single_pid = redis_pid(probe)
        finally:
            probe.close()
        setups = [
            Setup(
                f"{MASTERS} masters",
                ",".join(cluster.urls),
                lists,
                [redis_pid(master.client) for master in masters],
            ),
            Setup("1 Redis", single.url, lists, [single_pid]),
        ]
        with setups[0], setups[1]:
            for setup in setups:
                run_round(setup.requests(), mode.warmup)
            for n in range(mode.rounds):
                for setup in setups:
                    result = setup.measure(mode.seconds)
                    print(
                        f"round {n + 1}, {result.setup}: {result.rate:,.0f} requests/s, "
                        f"CPU per request: callers {result.caller_us:.0f} us, "
                        f"server {result.server_us:.0f} us, redis {result.redis_us:.0f} us, "
                        f"{result.calls_per_write:.1f} calls per write",
                        file=sys.stderr,
                        flush=True,
                    )
                    rounds.append(result)
    return rounds


def rate_report(rounds: Sequence[Round], mode_name: str) -> Iterator[str]:
    yield (
        f"Rate: {CALLERS} caller threads on one broker, spread over {MASTERS} lists"
        f" (one per master on the cluster), echo server max_workers={SERVER_WORKERS}"
        f" per list, {mode_name} mode"
    )
    yield ""
    yield RATE_HEADER.format(
        "setup",
        "rounds",
        "req/s",
        "cpu_us",
        "callers_us",
        "server_us",
        "redis_us",
        "calls/write",
    )
    medians: dict[str, float] = {}
    for setup in dict.fromkeys(r.setup for r in rounds):
        mine = [r for r in rounds if r.setup == setup]
        medians[setup] = statistics.median(r.rate for r in mine)
        yield RATE_ROW.format(
            setup,
            len(mine),
            medians[setup],
            statistics.median(r.cpu_us for r in mine),
            statistics.median(r.caller_us for r in mine),
            statistics.median(r.server_us for r in mine),
            statistics.median(r.redis_us for r in mine),
            statistics.median(r.calls_per_write for r in mine),
        )
    many, one = medians[f"{MASTERS} masters"], medians["1 Redis"]
    yield ""
    yield f"ratio, rate with {MASTERS} masters / rate with 1: {many / one:.2f}"
    yield (
        "(medians of the rounds; the rounds alternate between the setups. CPU is"
        " per request, user plus system, from /proc: callers = this process,"
        " server = the echo server process, redis = every redis-server of the setup;"
        " calls/write: commands per socket write of the callers' broker.)"
    )


# -- node-to-node traffic -----------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Traffic:
    path: str
    requests: int
    publish: float  # cluster_stats_messages_publish_sent per request, all nodes
    publishshard: float  # cluster_stats_messages_publishshard_sent per request

    @property
    def total(self) -> float:
        return self.publish + self.publishshard


def bus_counters(cluster: ClusterServers) -> tuple[int, int]:
    """The Pub/Sub messages every node has sent on the cluster bus so far, summed."""
    totals = [0, 0]
    for node in cluster.nodes:
        client: Any = node.client  # redis-py leaves execute_command() untyped
        info = _cluster_info(client.execute_command("CLUSTER", "INFO"))
        for n, counter in enumerate(BUS_COUNTERS):
            totals[n] += int(info.get(counter, 0))  # absent until the first one
    return totals[0], totals[1]


def _cluster_info(text: str) -> dict[str, str]:
    fields = (line.split(":", 1) for line in text.splitlines() if ":" in line)
    return {key: value.strip() for key, value in fields}


def measure_traffic(mode: Mode) -> list[Traffic]:
    """Count Pub/Sub messages between nodes per request over four paths."""
    rows: list[Traffic] = []
    with ClusterServers(MASTERS, replicas=1) as cluster:
        urls = cluster.urls
        server = RedisClusterBroker(
            urls, max_workers=SERVER_WORKERS, poll_interval=POLL_INTERVAL
        )
        lists = cluster.key_on(cluster.masters()[0], LIST_PREFIX)
        for source in (
            {"list": lists},
            {"channel": CHANNEL},
            {"channel": PubSub(SHARDED_CHANNEL, sharded=True)},
        ):
            server.subscriber(**source)(_echo)
        paths: list[tuple[str, dict[str, Any], bool]] = [
            ("(a) list, sharded replies", {"list": lists}, True),
            ("(b) list, classic replies", {"list": lists}, False),
            ("(c) classic channel", {"channel": CHANNEL}, True),
            (
                "(d) sharded channel",
                {"channel": PubSub(SHARDED_CHANNEL, sharded=True)},
                True,
            ),
        ]
        with server:
            for path, target, sharded_replies in paths:
                with RedisClusterBroker(urls, poll_interval=POLL_INTERVAL) as caller:
                    if not sharded_replies:
                        # Requests then name no reply shard, as a FastStream caller's.
                        assert caller._listener is not None
                        caller._listener.reply_shard = None
                    caller.request(PAYLOAD, **target, timeout=TIMEOUT)  # warm
                    before = bus_counters(cluster)
                    for _ in range(mode.traffic_requests):
                        reply = caller.request(PAYLOAD, **target, timeout=TIMEOUT)
                        if reply.body != PAYLOAD:
                            msg = (
                                f"{path}: the echo handler answered {reply.body[:40]!r}"
                            )
                            raise RuntimeError(msg)
                    after = bus_counters(cluster)
                n = mode.traffic_requests
                rows.append(
                    Traffic(
                        path,
                        n,
                        (after[0] - before[0]) / n,
                        (after[1] - before[1]) / n,
                    )
                )
                print(f"  {path}: done", file=sys.stderr, flush=True)
    return rows


def _echo(body: bytes) -> bytes:
    return body


def traffic_report(rows: Sequence[Traffic]) -> Iterator[str]:
    yield (
        f"Node-to-node Pub/Sub messages per request: {MASTERS} masters with 1 replica"
        " each (6 nodes), CLUSTER INFO summed over all nodes"
    )
    yield ""
    yield TRAFFIC_HEADER.format("path", "reqs", "publish", "publishshard", "total")
    for row in rows:
        yield TRAFFIC_ROW.format(
            row.path, row.requests, row.publish, row.publishshard, row.total
        )
    yield ""
    yield (
        "(publish: cluster_stats_messages_publish_sent, a classic PUBLISH sent on to"
        " every other node; publishshard: cluster_stats_messages_publishshard_sent,"
        " an SPUBLISH sent on to the replicas of its slot's master.)"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.cluster")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--quick", action="store_true", help="shorter rounds")
    group.add_argument("--smoke", action="store_true", help="tiny, for the tests")
    args = parser.parse_args(argv)
    mode_name = "smoke" if args.smoke else "quick" if args.quick else "full"
    mode = MODES[mode_name]
    print(f"cores: {os.cpu_count()}, load average: {os.getloadavg()[0]:.2f}")
    rounds = measure_rate(mode)
    print()
    for line in rate_report(rounds, mode_name):
        print(line)
    print()
    for line in traffic_report(measure_traffic(mode)):
        print(line)


if __name__ == "__main__":
    main()
