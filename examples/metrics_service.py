"""A service whose metrics Prometheus scrapes from http://localhost:9464/metrics.

Run it with ``python examples/metrics_service.py`` once ``redis-rpc[prometheus]``
is installed; ``REDIS_URL`` and ``METRICS_PORT`` change where it connects and
where it serves the metrics.
"""

from __future__ import annotations

import os

from prometheus_client import start_http_server

from redis_rpc import App, RedisBroker
from redis_rpc.prometheus import PrometheusHook

REDIS_URL = os.environ.get("REDIS_URL", "redis://localhost:6379")
# 9464 is the port exporters in Python commonly take; any free port will do.
METRICS_PORT = int(os.environ.get("METRICS_PORT", "9464"))

broker = RedisBroker(REDIS_URL, hooks=[PrometheusHook(app_name="squares")])
app = App(broker)


@broker.subscriber(list="squares")
def square(n: int) -> int:
    return n * n


@app.on_startup
def serve_metrics() -> None:
    # A daemon thread answering GET /metrics from prometheus_client's default registry.
    start_http_server(METRICS_PORT)


if __name__ == "__main__":
    app.run()
