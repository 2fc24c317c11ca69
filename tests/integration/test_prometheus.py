"""redis_rpc.prometheus.PrometheusHook against a real redis-server, and beside FastStream's middleware.

Every test registers its metrics in a fresh ``CollectorRegistry``, so that
counts start from zero and tests do not see each other's series.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import faststream.redis
import pytest
from faststream.redis.prometheus import RedisPrometheusMiddleware
from prometheus_client import CollectorRegistry, Counter

from redis_rpc.errors import RemoteError, RequestTimeoutError
from redis_rpc.prometheus import PrometheusHook
from tests.conftest import LONG_TIMEOUT, READY_TIMEOUT, SHORT_TIMEOUT
from tests.helpers import OutputLines, wait_for

EXAMPLE = Path(__file__).parents[2] / "examples" / "metrics_service.py"

# A request nobody answers waits this long: short, as it is bound to time out.
UNANSWERED = 0.2
COMMON = {"app_name": "faststream", "broker": "redis"}


def value(registry, name, **labels):
    """The sample *name* with *labels* plus app_name and broker, or 0 when there is none."""
    return registry.get_sample_value(name, {**COMMON, **labels}) or 0.0


def processed(registry, handler, status):
    return value(
        registry,
        "faststream_received_processed_messages_total",
        handler=handler,
        status=status,
    )


def test_importing_redis_rpc_never_imports_prometheus_client():
    """prometheus_client is loaded by redis_rpc.prometheus only, never by the package or its testing module."""
    code = (
        "import sys, redis_rpc, redis_rpc.testing, redis_rpc.errors\n"
        "assert 'prometheus_client' not in sys.modules, 'prometheus_client imported'\n"
        "import redis_rpc.prometheus\n"
        "assert 'prometheus_client' in sys.modules\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=READY_TIMEOUT,
        check=False,
    )
    assert done.returncode == 0, done.stderr


def test_publishes_requests_and_processes_are_counted(make_broker, unique_name):
    """Each publish, request and handler call lands in FastStream's metrics, failures and timeouts included."""
    registry = CollectorRegistry()
    broker = make_broker(hooks=[PrometheusHook(registry)])
    ok, bad, nobody = f"{unique_name}-ok", f"{unique_name}-bad", f"{unique_name}-nobody"

    @broker.subscriber(list=ok)
    def double(n: int) -> int:
        return 2 * n

    @broker.subscriber(list=bad)
    def fail(n: int) -> int:
        raise ValueError(n)

    with broker:
        for n in range(3):
            assert broker.request(n, list=ok).decode() == 2 * n
        broker.publish(10, list=ok)
        broker.publish(100, list=ok)  # a body of three bytes
        with pytest.raises(RemoteError):
            broker.request(1, list=bad)
        with pytest.raises(RequestTimeoutError):
            broker.request(1, list=nobody, timeout=UNANSWERED)
        assert wait_for(lambda: processed(registry, ok, "acked") == 5, SHORT_TIMEOUT)

    published = "faststream_published_messages_total"
    assert value(registry, published, destination=ok, status="success") == 5
    assert value(registry, published, destination=ok, status="error") == 0
    assert value(registry, published, destination=bad, status="error") == 1
    assert value(registry, published, destination=nobody, status="error") == 1
    exceptions = "faststream_published_messages_exceptions_total"
    assert (
        value(registry, exceptions, destination=bad, exception_type="RemoteError") == 1
    )
    # The name FastStream's request() gives the same failure.
    assert (
        value(registry, exceptions, destination=nobody, exception_type="TimeoutError")
        == 1
    )
    duration = "faststream_published_messages_duration_seconds"
    assert value(registry, f"{duration}_count", destination=ok) == 5
    assert value(registry, f"{duration}_count", destination=nobody) == 1
    # A request's duration runs until it gave up waiting.
    assert value(registry, f"{duration}_sum", destination=nobody) >= UNANSWERED

    assert value(registry, "faststream_received_messages_total", handler=ok) == 5
    assert value(registry, "faststream_received_messages_total", handler=bad) == 1
    assert processed(registry, ok, "error") == 0
    assert processed(registry, bad, "error") == 1
    assert processed(registry, bad, "acked") == 0
    assert (
        value(
            registry,
            "faststream_received_processed_messages_exceptions_total",
            handler=bad,
            exception_type="ValueError",
        )
        == 1
    )
    handled = "faststream_received_processed_messages_duration_seconds_count"
    assert value(registry, handled, handler=ok) == 5
    assert value(registry, handled, handler=bad) == 1
    size = "faststream_received_messages_size_bytes"
    assert value(registry, f"{size}_count", handler=ok) == 5
    assert (
        value(registry, f"{size}_sum", handler=ok) == 3 * 1 + 2 + 3
    )  # "0" "1" "2" "10" "100"
    assert value(registry, "faststream_received_messages_in_process", handler=ok) == 0


def test_in_process_gauge_counts_running_handlers(make_broker, unique_name):
    """The in-process gauge is 1 while a handler runs, and 0 once it returned."""
    registry = CollectorRegistry()
    broker = make_broker(hooks=[PrometheusHook(registry)])
    started, release = threading.Event(), threading.Event()

    @broker.subscriber(list=unique_name)
    def slow() -> None:
        started.set()
        release.wait(LONG_TIMEOUT)

    gauge = "faststream_received_messages_in_process"
    with broker:
        broker.publish(None, list=unique_name)
        assert started.wait(SHORT_TIMEOUT)
        assert value(registry, gauge, handler=unique_name) == 1
        release.set()
        assert wait_for(lambda: processed(registry, unique_name, "acked") == 1)
    assert value(registry, gauge, handler=unique_name) == 0


def test_app_name_prefix_and_custom_labels(make_broker, unique_name):
    """app_name, metrics_prefix and custom labels, fixed or taken from the event, show in every sample."""
    registry = CollectorRegistry()
    hook = PrometheusHook(
        registry,
        app_name="orders",
        metrics_prefix="rpc",
        custom_labels={"env": "test", "kind": lambda event: event.kind},
    )
    broker = make_broker(hooks=[hook])

    @broker.subscriber(channel=unique_name)
    def echo(body: str) -> str:
        return body

    with broker:
        broker.request("hi", channel=unique_name)
        broker.publish("hi", channel=unique_name)
        labels = {"app_name": "orders", "broker": "redis", "env": "test"}
        assert wait_for(
            lambda: (
                registry.get_sample_value(
                    "rpc_received_processed_messages_total",
                    {
                        **labels,
                        "kind": "process",
                        "handler": unique_name,
                        "status": "acked",
                    },
                )
                == 2
            )
        )
    sent = {**labels, "destination": unique_name, "status": "success"}
    assert (
        registry.get_sample_value(
            "rpc_published_messages_total", {**sent, "kind": "request"}
        )
        == 1
    )
    assert (
        registry.get_sample_value(
            "rpc_published_messages_total", {**sent, "kind": "publish"}
        )
        == 1
    )
    assert (
        registry.get_sample_value("faststream_published_messages_total", sent) is None
    )


def test_hooks_on_one_registry_share_its_metrics(make_broker, unique_name):
    """Two hooks on one registry count into the same series; a metric of that name with other labels is refused."""
    registry = CollectorRegistry()
    first = make_broker(hooks=[PrometheusHook(registry)])
    second = make_broker(hooks=[PrometheusHook(registry)])
    with first, second:
        first.publish(1, list=unique_name)
        second.publish(2, list=unique_name)
    assert (
        value(
            registry,
            "faststream_published_messages_total",
            destination=unique_name,
            status="success",
        )
        == 2
    )

    with pytest.raises(ValueError, match="faststream_received_messages_total"):
        PrometheusHook(registry, custom_labels={"env": "test"})
    other = CollectorRegistry()
    Counter("faststream_received_messages_total", "Something else.", registry=other)
    with pytest.raises(ValueError, match="other labels"):
        PrometheusHook(other)


def test_custom_labels_cannot_take_the_hook_labels():
    """A custom label named like one the hook sets itself is refused at once."""
    with pytest.raises(ValueError, match="status"):
        PrometheusHook(CollectorRegistry(), custom_labels={"status": "x"})


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_example_service_serves_metrics(make_broker, redis_url, raw):
    """examples/metrics_service.py answers a request, and its /metrics page then counts it."""
    raw.delete("squares")
    port = free_port()
    env = {**os.environ, "REDIS_URL": redis_url, "METRICS_PORT": str(port)}
    service = subprocess.Popen(
        [sys.executable, str(EXAMPLE)],
        env=env,
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
    )
    assert service.stderr is not None
    lines = OutputLines(service.stderr, "metrics-service-output")
    try:
        while "Broker started" not in lines.next(READY_TIMEOUT):
            pass
        caller = make_broker()
        with caller:
            assert caller.request(7, list="squares").decode() == 49
        with urllib.request.urlopen(
            f"http://127.0.0.1:{port}/metrics", timeout=LONG_TIMEOUT
        ) as response:
            page = response.read().decode()
    finally:
        service.send_signal(signal.SIGTERM)
        try:
            service.wait(READY_TIMEOUT)
        finally:
            if service.poll() is None:
                service.kill()
                service.wait(LONG_TIMEOUT)
            lines.close()
    assert service.returncode == 0, lines.rest()
    processed_line = (
        'faststream_received_processed_messages_total{app_name="squares",'
        'broker="redis",handler="squares",status="acked"} 1.0'
    )
    assert processed_line in page.splitlines()


# The comparison with FastStream: the same traffic through either broker.

# A body that does not fit the handler's int: counted as a failed process, by either.
INVALID = "not a number"


def samples(registry):
    """Every sample as (name, labels) -> value, less the creation timestamps."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for metric in registry.collect()
        for sample in metric.samples
        if not sample.name.endswith("_created")
    }


def label_names(registry):
    """Each metric family's name -> the label names of its samples, less a histogram's "le"."""
    names: dict[str, set[str]] = {}
    for metric in registry.collect():
        family = names.setdefault(metric.name, set())
        for sample in metric.samples:
            family.update(set(sample.labels) - {"le"})
    return names


def faststream_traffic(redis_url, registry, ok, bad, channel, nobody):
    """Run the traffic through a FastStream broker with its Prometheus middleware."""

    async def main():
        broker = faststream.redis.RedisBroker(
            redis_url, middlewares=[RedisPrometheusMiddleware(registry=registry)]
        )

        @broker.subscriber(list=ok)
        async def double(n: int) -> int:
            return 2 * n

        @broker.subscriber(list=bad)
        async def fail(n: int) -> int:
            raise ValueError(n)

        @broker.subscriber(channel=channel)
        async def note(n: int) -> None:
            return None

        await broker.start()
        try:
            for n in range(2):
                reply = await broker.request(n, list=ok, timeout=LONG_TIMEOUT)
                assert await reply.decode() == 2 * n
            await broker.publish(100, list=ok)
            await broker.publish(INVALID, list=ok)
            await broker.publish(1, list=bad)
            await broker.publish(1, channel=channel)
            with pytest.raises(TimeoutError):
                await broker.request(1, list=nobody, timeout=UNANSWERED)
            deadline = time.monotonic() + SHORT_TIMEOUT
            while time.monotonic() < deadline and (
                processed(registry, ok, "acked") < 3
                or processed(registry, ok, "error") < 1
                or processed(registry, bad, "error") < 1
                or processed(registry, channel, "acked") < 1
            ):
                await asyncio.sleep(0.01)
        finally:
            await broker.stop()

    asyncio.run(asyncio.wait_for(main(), 2 * LONG_TIMEOUT))


def our_traffic(make_broker, registry, ok, bad, channel, nobody):
    """Run the same traffic through a broker of ours with PrometheusHook."""
    broker = make_broker(hooks=[PrometheusHook(registry)])

    @broker.subscriber(list=ok)
    def double(n: int) -> int:
        return 2 * n

    @broker.subscriber(list=bad)
    def fail(n: int) -> int:
        raise ValueError(n)

    @broker.subscriber(channel=channel)
    def note(n: int) -> None:
        return None

    with broker:
        for n in range(2):
            assert broker.request(n, list=ok).decode() == 2 * n
        broker.publish(100, list=ok)
        broker.publish(INVALID, list=ok)
        broker.publish(1, list=bad)
        broker.publish(1, channel=channel)
        with pytest.raises(RequestTimeoutError):
            broker.request(1, list=nobody, timeout=UNANSWERED)
        assert wait_for(
            lambda: (
                processed(registry, ok, "acked") == 3
                and processed(registry, ok, "error") == 1
                and processed(registry, bad, "error") == 1
                and processed(registry, channel, "acked") == 1
            )
        )


def test_same_metrics_as_faststream_middleware(redis_url, make_broker, unique_name):
    """The same traffic gives the same metric names, label names, label values and counts as FastStream's middleware."""
    names = (
        f"{unique_name}-ok",
        f"{unique_name}-bad",
        f"{unique_name}-ch",
        f"{unique_name}-nobody",
    )
    theirs, ours = CollectorRegistry(), CollectorRegistry()
    faststream_traffic(redis_url, theirs, *names)
    our_traffic(make_broker, ours, *names)

    # Ours alone: FastStream does not count channel messages dropped unhandled.
    assert label_names(ours).pop("faststream_received_messages_dropped") == set()
    assert {
        name: labels
        for name, labels in label_names(ours).items()
        if name != "faststream_received_messages_dropped"
    } == label_names(theirs)
    theirs_samples, ours_samples = samples(theirs), samples(ours)
    assert ours_samples.keys() == theirs_samples.keys()
    timed = ("_duration_seconds_sum", "_duration_seconds_bucket")
    differ = {
        key: (ours_samples[key], theirs_samples[key])
        for key in ours_samples
        if not key[0].endswith(timed) and ours_samples[key] != theirs_samples[key]
    }
    assert not differ
    # The invalid body, as FastStream counts it: received, failed, and why.
    invalid = (
        "faststream_received_processed_messages_exceptions_total",
        frozenset(
            {**COMMON, "handler": names[0], "exception_type": "ValidationError"}.items()
        ),
    )
    assert ours_samples[invalid] == theirs_samples[invalid] == 1
