"""The latency benchmark script runs end to end against a private redis-server."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
HEADER = ["name", "requests", "p50", "ms", "p99", "ms", "requests/s", "p50/floor"]


# redis_server for conftest's rule: skip without redis-server locally, fail in CI.
@pytest.mark.usefixtures("redis_server")
@pytest.mark.timeout(90)
def test_quick_benchmark_prints_floor_and_every_transport():
    """The quick benchmark exits cleanly and prints the floor, channel, list and stream rows."""
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.request_latency", "--quick"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    lines = [line.split() for line in done.stdout.splitlines() if line.strip()]
    assert HEADER in lines, done.stdout
    names = {words[0] for words in lines}
    assert {"floor", "channel", "list", "stream"} <= names, done.stdout
