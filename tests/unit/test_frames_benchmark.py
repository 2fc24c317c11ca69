"""The frames benchmark runs end to end; it needs no Redis.

Benchmarks are not timed tests: nothing here asserts on a number, only that
the script finishes and prints a figure for every step.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(60)
def test_smoke_run_prints_every_step():
    """The smallest run exits cleanly and prints the caller's and the server's path, per step and per request."""
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.frames", "--smoke"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=50,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    figures = dict(re.findall(r"^  (\S.*?)\s+([\d.]+) us$", done.stdout, re.MULTILINE))
    for step in (
        "correlation id",
        "frame: build and sign",
        "check_reply",
        "request() outside Redis",
        "run (all of it)",
        "check_request",
        "read one pmessage (python parser)",
        "a handled message (started + finished)",
        "a request (requested)",
    ):
        assert float(figures[step]) > 0, done.stdout
