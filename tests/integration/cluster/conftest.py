"""Redis Cluster fixtures: a shared cluster for ordinary tests, fresh ones for destructive tests.

``redis_cluster`` (module scope) is 3 masters with one replica each, shared by
the tests of a module: they must leave its topology as they found it, and take
their keys from ``unique_name`` (hash tags included) rather than flushing.

Tests that change the topology (``failover()``, ``kill_master()``,
``migrate_slot()``) take ``fresh_cluster`` (the same shape, for that test
alone) or call ``make_cluster(masters=..., replicas=...)`` for another shape;
every cluster they get is stopped after the test, also when it fails. Each
costs about 2 s to start (a master reports ``cluster_state:ok`` no sooner), so
mark such tests ``@pytest.mark.timeout(PROCESS_TEST_TIMEOUT)``.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator

import pytest

from tests.cluster_topology import ClusterServers

MakeCluster = Callable[..., ClusterServers]


def _require_redis_server() -> None:
    """Skip without redis-server, except under CI, which must fail rather than hide a suite."""
    if shutil.which("redis-server") is None:
        if os.environ.get("CI"):
            pytest.fail(
                "redis-server is not on PATH, and CI must not skip integration tests."
            )
        pytest.skip("redis-server is not on PATH")


@pytest.fixture(scope="module")
def redis_cluster() -> Iterator[ClusterServers]:
    """A 3-master cluster with one replica each, shared by a module's tests, which must not change its topology."""
    _require_redis_server()
    with ClusterServers(masters=3, replicas=1) as cluster:
        yield cluster


@pytest.fixture
def make_cluster() -> Iterator[MakeCluster]:
    """Start clusters of any shape for one test (``make_cluster(masters=3, replicas=1)``); all are stopped after it."""
    _require_redis_server()
    clusters: list[ClusterServers] = []

    def make(**options: object) -> ClusterServers:
        cluster = ClusterServers(**options)  # type: ignore[arg-type]
        clusters.append(cluster)  # before start(), which stops what it began on failure
        cluster.start()
        return cluster

    yield make
    for cluster in clusters:
        cluster.stop()


@pytest.fixture
def fresh_cluster(make_cluster: MakeCluster) -> ClusterServers:
    """A 3-master cluster with one replica each for this test alone, free to fail over, kill and reshard."""
    return make_cluster(masters=3, replicas=1)
