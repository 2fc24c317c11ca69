"""RedisClusterBroker under a steady request load while the cluster changes under it.

Each test takes a cluster of its own (``fresh_cluster``), puts a list, a
stream, a classic and a sharded channel on every master, and has caller
threads send requests to all of them while a master fails over, is killed,
or a slot moves. Every request is counted: answered, or failed with one of
the library's clear errors, and never later than its timeout allows. After
the event every destination answers again within ``RECOVERY_TIMEOUT``, and
the brokers report healthy with no consumer left in error.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from typing import Any

import attrs
import pytest

from redis_rpc import PubSub, RedisClusterBroker, StreamSub
from redis_rpc._io.cluster import slot_of
from redis_rpc._server.channels import ChannelConsumer
from redis_rpc.errors import (
    NoSubscriberError,
    RedisCommandError,
    RedisConnectionError,
    RequestTimeoutError,
)
from tests.conftest import LONG_TIMEOUT, POLL_INTERVAL, PROCESS_TEST_TIMEOUT
from tests.helpers import wait_for

pytestmark = pytest.mark.timeout(PROCESS_TEST_TIMEOUT)
logger = logging.getLogger(__name__)

# Caller threads of the load, and each request's timeout.
CALLERS = 8
REQUEST_TIMEOUT = 3.0
# How late past its timeout a request may return on a busy machine.
LATE_MARGIN = 2.0
# How soon after an event every destination must answer again.
RECOVERY_TIMEOUT = 15.0
# Answers the load must have had before an event, so that it is in full swing.
WARM_ANSWERS = 100
# The errors a caller may see while the cluster changes: each says what happened.
CLEAR_ERRORS = (
    RedisConnectionError,
    RedisCommandError,
    RequestTimeoutError,
    NoSubscriberError,
)
TRANSPORTS = ("list", "stream", "channel", "sharded channel")


@attrs.frozen
class Target:
    """One destination of the load: a transport and a key on one master's slot."""

    transport: str
    name: str

    def source(self) -> dict[str, Any]:
        """subscriber() keywords."""
        if self.transport == "stream":
            return {"stream": StreamSub(self.name, group="g")}
        if self.transport == "sharded channel":
            return {"channel": PubSub(self.name, sharded=True)}
        return {self.transport: self.name}

    def destination(self) -> dict[str, Any]:
        """request() keywords."""
        if self.transport == "sharded channel":
            return {"channel": PubSub(self.name, sharded=True)}
        return {self.transport: self.name}


@attrs.define
class Call:
    target: Target
    started: float
    ended: float
    error: BaseException | None


class Load:
    """Caller threads that send requests round-robin to every target and record each call."""

    def __init__(self, caller: RedisClusterBroker, targets: list[Target]) -> None:
        self.caller = caller
        self.targets = targets
        self.calls: list[Call] = []  # appended by the callers; list.append is atomic
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(
                target=self._run, args=(n,), name=f"test-load-{n}", daemon=True
            )
            for n in range(CALLERS)
        ]

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        deadline = time.monotonic() + REQUEST_TIMEOUT + LONG_TIMEOUT
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        stuck = [t.name for t in self._threads if t.is_alive()]
        assert not stuck, f"caller threads stuck in request(): {stuck}"

    def _run(self, n: int) -> None:
        turn = n
        while not self._stop.is_set():
            target = self.targets[turn % len(self.targets)]
            turn += 1
            body = f"{target.name}/{turn}"
            started = time.monotonic()
            error: BaseException | None = None
            try:
                reply = self.caller.request(
                    body, **target.destination(), timeout=REQUEST_TIMEOUT
                )
                if reply.decode() != body:
                    error = AssertionError(f"{body!r} answered with {reply.decode()!r}")
            except BaseException as exc:  # noqa: BLE001 - each is counted and judged
                error = exc
            self.calls.append(Call(target, started, time.monotonic(), error))
            if error is not None:
                time.sleep(0.01)  # do not spin on a destination that is down

    def answered(self, since: float = 0.0) -> int:
        return sum(c.error is None and c.started >= since for c in self.calls)

    def recovered(self, since: float) -> dict[Target, float] | None:
        """Per target, seconds from *since* to the first answer to a request started after it; None until all have one."""
        first: dict[Target, float] = {}
        for call in list(self.calls):
            if call.error is None and call.started >= since:
                first.setdefault(call.target, call.ended - since)
        return first if len(first) == len(self.targets) else None

    def summary(self) -> dict[str, int]:
        counts: collections.Counter[str] = collections.Counter()
        for call in self.calls:
            if call.error is None:
                counts["answered"] += 1
            else:
                reason = getattr(call.error, "reason", "")
                kind = type(call.error).__name__ + (f"({reason})" if reason else "")
                counts[f"{call.target.transport}: {kind}"] += 1
        return dict(counts)

    def check(self) -> None:
        """Every call was answered or failed clearly, none later than its timeout allows."""
        unclear = [c for c in self.calls if c.error is not None]
        unclear = [c for c in unclear if not isinstance(c.error, CLEAR_ERRORS)]
        assert not unclear, f"requests failed without a clear error: {unclear[:5]}"
        late = [
            c for c in self.calls if c.ended - c.started > REQUEST_TIMEOUT + LATE_MARGIN
        ]
        assert not late, f"requests returned past their timeout: {late[:5]}"


@pytest.fixture
def brokers(fresh_cluster):
    """A server with a list, a stream, a classic and a sharded channel on every master, and a caller through another node."""
    masters = fresh_cluster.masters()
    (replica,) = fresh_cluster.replicas_of(masters[2])
    server = RedisClusterBroker(
        masters[0].url, poll_interval=POLL_INTERVAL, max_workers=4
    )
    caller = RedisClusterBroker(replica.url, poll_interval=POLL_INTERVAL)
    targets = [
        Target(transport, fresh_cluster.key_on(master, transport.replace(" ", "-")))
        for master in masters
        for transport in TRANSPORTS
    ]
    for target in targets:

        @server.subscriber(**target.source())
        def echo(body):
            return body

    try:
        server.start()
        yield server, caller, targets
    finally:
        caller.close()
        server.close()


def under_load(caller, targets, event, name):
    """Run *event* under load; check every call and the recovery; return the load's summary."""
    with Load(caller, targets) as load:
        assert wait_for(lambda: load.answered() >= WARM_ANSWERS, LONG_TIMEOUT)
        began = time.monotonic()
        event()
        ended = time.monotonic()
        recovered = wait_for(lambda: load.recovered(ended), RECOVERY_TIMEOUT, 0.05)
        assert recovered, (
            f"not every destination answered within {RECOVERY_TIMEOUT} s of the {name}: "
            f"{sorted({c.target.name for c in load.calls if c.started >= ended and c.error is None})}; "
            f"{load.summary()}"
        )
    load.check()
    summary = load.summary()
    logger.info(
        "%s: event %.1f s, recovery %.2f s (slowest), %s",
        name,
        ended - began,
        max(recovered.values()),
        summary,
    )
    return summary


def assert_healthy(*brokers):
    """Each broker's ping() turns healthy, with no consumer, hub or listener left in
    error, and every one of their threads still running."""
    for broker in brokers:
        assert wait_for(lambda broker=broker: broker.ping(), RECOVERY_TIMEOUT, 0.1), (
            broker.ping().problems
        )
        serving = broker._serving
        consumers = serving.consumers if serving is not None else []
        hub = serving.hub if serving is not None else None
        parts = [*consumers, hub, broker._listener]
        parts = [p for p in parts if p is not None]
        assert wait_for(
            lambda parts=parts: all(p.error is None for p in parts), LONG_TIMEOUT
        ), [p.error for p in parts if p.error is not None]
        # Channel consumers have no thread: the hub's lines read for them.
        threads = [c._fetcher for c in consumers if not isinstance(c, ChannelConsumer)]
        if broker._listener is not None:
            threads.append(broker._listener._thread)
        if hub is not None:
            threads += [line.thread for line in hub._lines.values()]
        assert all(t.is_alive() for t in threads), [
            t.name for t in threads if not t.is_alive()
        ]


def test_graceful_failover_under_load(fresh_cluster, brokers):
    """A master's graceful failover (CLUSTER FAILOVER on its replica) under load:
    every request is answered or fails clearly in time, and all answer again."""
    server, caller, targets = brokers
    master = fresh_cluster.masters()[1]
    under_load(caller, targets, lambda: fresh_cluster.failover(master), "failover")
    assert_healthy(server, caller)


def test_killed_master_under_load(fresh_cluster, brokers):
    """SIGKILL of the master the server was started with, under load, then its
    restart: every request is answered or fails clearly in time, and all answer again."""
    server, caller, targets = brokers
    master = fresh_cluster.masters()[0]
    under_load(caller, targets, lambda: fresh_cluster.kill_master(master), "kill")
    under_load(caller, targets, lambda: fresh_cluster.restart(master), "restart")
    assert_healthy(server, caller)


def test_slot_migrations_under_load(fresh_cluster, brokers):
    """The slots of a list, a stream, a sharded channel and the caller's reply
    channel each move to another master under load, and every destination keeps answering."""
    server, caller, targets = brokers
    masters = fresh_cluster.masters()

    def moved(key):
        source = fresh_cluster.node_for_key(key)
        to = next(m for m in masters if m.node_id != source.node_id)
        return lambda: fresh_cluster.migrate_slot(slot_of(key), to)

    by_transport = {t.transport: t for t in targets}
    for transport in ("list", "stream", "sharded channel"):
        key = by_transport[transport].name
        under_load(caller, targets, moved(key), f"migration of a {transport}'s slot")
    shard = caller._listener.shard
    under_load(caller, targets, moved(shard), "migration of the reply shard's slot")
    assert_healthy(server, caller)


def test_sharded_subscriber_follows_a_slot_that_moved_unseen(fresh_cluster):
    """A sharded channel whose slot moved after the broker read the slot map, so that
    its SSUBSCRIBE is refused with MOVED, is subscribed on the new owner."""
    masters = fresh_cluster.masters()
    name = fresh_cluster.key_on(masters[0], "sharded")
    server = RedisClusterBroker(masters[0].url, poll_interval=POLL_INTERVAL)
    caller = RedisClusterBroker(masters[2].url, poll_interval=POLL_INTERVAL)

    @server.subscriber(channel=PubSub(name, sharded=True))
    def echo(body):
        return body

    try:
        server.publish("warm-up", list=name)  # reads the slot map
        fresh_cluster.migrate_slot(slot_of(name), masters[1])
        server.start()
        reply = caller.request("x", PubSub(name, sharded=True), timeout=REQUEST_TIMEOUT)
        assert reply.decode() == "x"
    finally:
        caller.close()
        server.close()
