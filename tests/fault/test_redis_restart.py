"""Redis dies (SIGKILL) under load and comes back on the same port, several times."""

from __future__ import annotations

import itertools
import logging
import threading
import time
from typing import Any

import pytest

from redis_rpc import RedisBroker
from redis_rpc.errors import (
    NoSubscriberError,
    RedisConnectionError,
    RedisRPCError,
    RequestTimeoutError,
)
from tests.conftest import LONG_TIMEOUT, POLL_INTERVAL, SHORT_TIMEOUT
from tests.fault.conftest import our_threads
from tests.helpers import Callers, wait_for

CYCLES = 3
CALLERS = 4
TRANSPORTS = ["channel", "list", "stream"]
# Short, so that a request lost while Redis was away is retried soon.
ATTEMPT_TIMEOUT = 0.5
# How long Redis stays away once everything noticed: retries at 0.1, 0.2 and 0.4 s.
OUTAGE = 0.7
# What the log lines for losing Redis and for being back say.
DOWN = ("lost Redis", "failed, retrying")
UP = ("subscribed again", "consuming again")


def request_until_answered(broker, target):
    """Request until a reply comes, as a user's retry would; fail after LONG_TIMEOUT."""
    deadline = time.monotonic() + LONG_TIMEOUT
    while True:
        try:
            return broker.request("ping", **target, timeout=ATTEMPT_TIMEOUT).decode()
        except (RedisConnectionError, NoSubscriberError, TimeoutError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.01)  # the channel consumer may not have subscribed again yet


@pytest.mark.timeout(60)
def test_broker_rides_out_repeated_crashes(own_server, raw, unique_name, caplog):
    """After each SIGKILL and restart the same threads serve again without help, and each outage is logged once."""
    caplog.set_level(logging.INFO, logger="redis_rpc")
    broker = RedisBroker(own_server.url, poll_interval=POLL_INTERVAL)
    targets: list[dict[str, Any]] = [{t: f"{unique_name}-{t}"} for t in TRANSPORTS]
    # Channel subscribers are read by the broker's one shared channel reader.
    names = ["Reply listener", "redis_rpc:channels"] + [
        f"redis_rpc:{t}:{n}"
        for target in targets
        for t, n in target.items()
        if t != "channel"
    ]
    warm_up = threading.Barrier(2, timeout=SHORT_TIMEOUT)

    for target in targets:

        @broker.subscriber(**target, max_workers=2 if "list" in target else 1)
        def echo(body):
            if body == "warm-up":  # two at once: both list workers exist from now on
                warm_up.wait()
            return body

    def logged(name, kind):
        """How many lines of *name* since the cycle began say one of *kind*: losses at WARNING, recoveries at INFO."""
        level = logging.INFO if kind is UP else logging.WARNING
        return sum(
            r.levelno == level
            and r.getMessage().startswith(name)
            and any(words in r.getMessage() for words in kind)
            for r in caplog.records
        )

    stop_load = threading.Event()
    answered = itertools.count()  # next() is atomic

    def load():
        for target in itertools.cycle(targets):
            if stop_load.is_set():
                return
            try:
                broker.request("load", **target, timeout=ATTEMPT_TIMEOUT)
                next(answered)
            except (RedisRPCError, TimeoutError):
                pass  # expected while Redis is away

    nobody = f"{unique_name}-nobody"
    with broker, Callers(CALLERS + 3) as pool:
        warm = [
            pool.submit(broker.request, "warm-up", **targets[1], timeout=SHORT_TIMEOUT)
            for _ in range(2)
        ]
        assert [w.result(SHORT_TIMEOUT).decode() for w in warm] == ["warm-up"] * 2
        # The shared channel worker is started by the first channel message.
        assert (
            broker.request("one", **targets[0], timeout=SHORT_TIMEOUT).decode() == "one"
        )
        threads = our_threads()
        # listener; channel reader and its one worker; list and stream
        # consumers; the stream consumer's heartbeat; the writer; the watch
        # of inline handlers. The list's quick handler runs on its consumer
        # thread: its workers start only if the watch hands them work.
        served = next(target["list"] for target in targets if "list" in target)
        list_workers = {f"redis_rpc:list:{served}:worker_{n}" for n in range(2)}
        assert len(threads - {t for t in threads if t.name in list_workers}) == 8
        allowed = {t.name.partition("#")[0] for t in threads} | list_workers
        callers = [pool.submit(load) for _ in range(CALLERS)]
        try:
            for cycle in range(CYCLES):
                caplog.clear()
                waiting = pool.submit(
                    broker.request, cycle, list=nobody, timeout=SHORT_TIMEOUT
                )
                assert wait_for(lambda: raw.llen(nobody) == 1, LONG_TIMEOUT)
                own_server.kill()
                # It outlives the lost subscription, and times out at its deadline:
                # nothing answers it, and the restart empties its list.
                with pytest.raises(RequestTimeoutError):
                    waiting.result(LONG_TIMEOUT)
                assert wait_for(
                    lambda: all(logged(n, DOWN) for n in names), LONG_TIMEOUT
                )
                # A caller arriving while the loss is known fails at once, too.
                arrived = time.monotonic()
                with pytest.raises(RedisConnectionError, match="down"):
                    broker.request("late", **targets[1], timeout=LONG_TIMEOUT)
                assert time.monotonic() - arrived < SHORT_TIMEOUT
                time.sleep(OUTAGE)  # the outage itself, long enough for several retries
                own_server.start()
                before = next(answered)
                for target in targets:
                    assert request_until_answered(broker, target) == "ping"
                assert wait_for(
                    lambda before=before: next(answered) > before + 10, LONG_TIMEOUT
                )
                # The same threads, or their successors (name#2, ...).
                now = our_threads()
                names_now = {t.name.partition("#")[0] for t in now}
                assert names_now <= allowed, (cycle, names_now - allowed)
                # One more: a relieved consumer thread finishing its handler.
                assert len(now) <= len(allowed) + 1, f"cycle {cycle}"
                assert wait_for(lambda: all(logged(n, UP) for n in names), LONG_TIMEOUT)
                # One line when each went down, one when it came back; none per retry.
                assert [(logged(n, DOWN), logged(n, UP)) for n in names] == [
                    (1, 1)
                ] * len(names), [r.getMessage() for r in caplog.records]
        finally:
            stop_load.set()
            for caller in callers:
                caller.result(LONG_TIMEOUT)
