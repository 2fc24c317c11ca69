"""Benchmarks, run as ``python -m benchmarks.<name>``; never collected by pytest.

With ``REDIS_RPC_BENCH_NO_HIREDIS=1`` in the environment, every benchmark
process runs as if hiredis were not installed: this package is imported
before any of its modules, so before redis-py (or redis_rpc) looks for it.
"""

from __future__ import annotations

import os
import sys

NO_HIREDIS = "REDIS_RPC_BENCH_NO_HIREDIS"

if os.environ.get(NO_HIREDIS) == "1":
    # None in sys.modules makes every later ``import hiredis`` raise ImportError.
    sys.modules["hiredis"] = None  # type: ignore[assignment]
