"""The benchmark scripts run end to end against a private redis-server.

Benchmarks are not timed tests: nothing here asserts on a number, only that
the scripts finish and print their reports, and that the latency benchmark
writes JSON holding the same rows as its tables, at both of its settings.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import PROCESS_TEST_TIMEOUT

ROOT = Path(__file__).resolve().parents[2]
# The smoke run takes about 20 s on two cores with a load average of 5, but it
# starts seven server processes and FastStream opens a connection per
# request: before it measured two settings, with three suites sharing two
# cores, it already took over a minute.
BENCHMARK_TIMEOUT = 240
HEADER = [
    "name",
    "via",
    "n",
    "reqs",
    "p50_ms",
    "p99_ms",
    "req/s",
    "conn/1k",
    "cpu_us",
    "c/s/r_us",
    "p50/floor",
    "rate/floor",
    "rate/FS",
]
SETTINGS = ["default", "8 workers"]
# FastStream is in the test extra, so its rows are expected too.
ROWS = {
    (name, via, callers)
    for name, transports in [
        ("floor", ["list"]),
        ("redis_rpc", ["channel", "list", "stream"]),
        ("faststream", ["channel", "list", "stream"]),
    ]
    for via in transports
    for callers in ["1", "8", "32"]
}


# redis_server for conftest's rule: skip without redis-server locally, fail in CI.
@pytest.mark.usefixtures("redis_server")
@pytest.mark.timeout(BENCHMARK_TIMEOUT + 30)
def test_smoke_benchmark_prints_its_tables_and_writes_json(tmp_path):
    """The smallest benchmark run exits cleanly, prints a table of every row with its ratios for each setting, checks the targets of each, and writes it all as JSON."""
    out = tmp_path / "bench.json"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.request_latency",
            "--smoke",
            "--json",
            str(out),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=BENCHMARK_TIMEOUT,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    lines = [line.split() for line in done.stdout.splitlines() if line.strip()]
    assert lines.count(HEADER) == len(SETTINGS), done.stdout
    # Each table follows the line that names its setting.
    printed: dict[str, set[tuple[str, ...]]] = {}
    rows: set[tuple[str, ...]] | None = None  # of the table being read
    for line in done.stdout.splitlines():
        words = line.split()
        if line.startswith('Setting "'):
            rows = printed.setdefault(line.split('"')[1], set())
        elif rows is not None and len(words) == len(HEADER):
            rows.add(tuple(words[:3]))
        elif rows and not words:
            rows = None  # the blank line after a table
    assert list(printed) == SETTINGS, done.stdout
    for table in printed.values():
        assert table >= ROWS, done.stdout
    assert "Targets" in done.stdout
    verdicts = [words[-1] for words in lines if words[-1] in {"PASS", "MISS"}]
    assert verdicts, done.stdout

    summary = json.loads(out.read_text())
    assert summary["mode"] == "smoke"
    hiredis = importlib.util.find_spec("hiredis") is not None
    assert (summary["hiredis"] is not None) == hiredis
    assert [s["name"] for s in summary["settings"]] == SETTINGS
    written = {
        (row["setting"], row["name"], row["transport"], str(row["callers"]))
        for row in summary["results"]
    }
    assert written == {(setting, *row) for setting in SETTINGS for row in ROWS}
    for row in summary["results"]:
        assert row["p50_ms"] > 0
        assert row["p50_ms"] <= row["p99_ms"]
        assert row["requests_per_s"] > 0
        assert row["p50_vs_floor"] > 0
        # CPU clocks tick at 10 ms, so one side may read zero in a tiny run.
        sides = [row["cpu_caller_us"], row["cpu_server_us"], row["cpu_redis_us"]]
        assert min(sides) >= 0
        assert row["cpu_us"] == pytest.approx(sum(sides))
        assert row["cpu_us"] > 0
    many = summary["many_callers"]
    assert {(row["transport"], row["callers"]) for row in many} == {
        (via, 64) for via in ["channel", "list", "stream"]
    }
    for row in many:
        assert row["server_setting"] == SETTINGS[-1]
        assert row["answered"] + row["errors"] == row["requests"]
        assert row["client_connections_peak"] >= 0
        assert row["server_connections_peak"] > 0  # the server reads blocking
    start = summary["channel_start"]
    assert start["subscribers"] == 50
    assert (start["error"] is None) == ("threads" in start), start
    leaks = summary["leak_check"]
    assert leaks["server_setting"] == SETTINGS[-1]
    # A slow reply counts as answered when its caller thread was descheduled
    # for longer than the handler took, which a busy machine does.
    slow = leaks["timed_out"] + leaks["slow_answered_in_time"]
    assert slow == leaks["requests"] // 10
    assert len(leaks["rss_mb"]) == len(leaks["threads"]) == 10
    # The speed targets at each setting, the others once.
    assert {c["setting"] for c in summary["targets"]} == {*SETTINGS, None}
    for c in summary["targets"]:
        assert c["target"].startswith(f"{c['setting']}, ") == (c["setting"] is not None)


@pytest.mark.usefixtures("redis_server")
@pytest.mark.timeout(PROCESS_TEST_TIMEOUT)
def test_small_soak_run_passes_its_checks():
    """A small soak run exits 0 after printing every check it makes as passed."""
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.soak",
            "--requests",
            "400",
            "--callers",
            "4",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=PROCESS_TEST_TIMEOUT - 10,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    checks = [line for line in done.stdout.splitlines() if line[:4] in ("ok  ", "FAIL")]
    assert len(checks) >= 10, done.stdout
    assert all(line.startswith("ok  ") for line in checks), done.stdout
    assert "no pending requests" in done.stdout


@pytest.mark.usefixtures("redis_server")
@pytest.mark.timeout(PROCESS_TEST_TIMEOUT)
def test_engine_quick_measures_the_broker_and_the_lean_caller():
    """engine_quick --caller both prints a rate and CPU per request for each caller, round by round."""
    pytest.importorskip("hiredis")  # the lean caller reads with it
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.engine_quick",
            "--smoke",
            "--caller",
            "both",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=PROCESS_TEST_TIMEOUT - 10,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    for name in ("broker", "lean"):
        assert re.search(
            rf"^round 1, {name}: [\d,]+ requests/s, CPU per request: callers \d+ us,"
            r" server \d+ us$",
            done.stdout,
            re.MULTILINE,
        ), done.stdout
        assert f"median of 1, {name}:" in done.stdout


def test_no_hiredis_variable_hides_hiredis_from_benchmark_processes():
    """With REDIS_RPC_BENCH_NO_HIREDIS=1 a benchmark process runs redis-py as if hiredis were not installed."""
    pytest.importorskip("hiredis")
    probe = "import benchmarks, redis.utils; print(redis.utils.HIREDIS_AVAILABLE)"
    answers = {}
    for value in ["0", "1"]:
        done = subprocess.run(
            [sys.executable, "-c", probe],
            cwd=ROOT,
            env={**os.environ, "REDIS_RPC_BENCH_NO_HIREDIS": value},
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        answers[value] = done.stdout.strip()
    assert answers == {"0": "True", "1": "False"}


@pytest.mark.usefixtures("redis_server")
@pytest.mark.timeout(PROCESS_TEST_TIMEOUT)
def test_cluster_benchmark_compares_rates_and_counts_node_traffic():
    """benchmarks.cluster --smoke prints both setups' rates and their ratio, and the bus messages of each path, with sharded paths broadcasting nothing."""
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.cluster", "--smoke"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=PROCESS_TEST_TIMEOUT - 10,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    for setup in ("3 masters", "1 Redis"):
        assert re.search(
            rf"^{setup} +1 +[\d,]+ +\d+ +\d+ +\d+ +\d+ +\d+\.\d$",
            done.stdout,
            re.MULTILINE,
        ), done.stdout
    assert re.search(
        r"^ratio, rate with 3 masters / rate with 1: \d+\.\d\d$",
        done.stdout,
        re.MULTILINE,
    ), done.stdout
    paths = {
        match["path"]: (float(match["publish"]), float(match["shard"]))
        for match in re.finditer(
            r"^(?P<path>\([a-d]\) [a-z ,]+?) +\d+ +(?P<publish>[\d.]+) +(?P<shard>[\d.]+) +[\d.]+$",
            done.stdout,
            re.MULTILINE,
        )
    }
    assert len(paths) == 4, done.stdout
    # Counts of messages, not timings: a classic PUBLISH goes to every node,
    # and the sharded paths (replies to our callers, sharded channels) to none
    # but the replicas of one master.
    assert paths["(a) list, sharded replies"][0] == 0, done.stdout
    assert paths["(d) sharded channel"][0] == 0, done.stdout
    assert paths["(b) list, classic replies"][0] > 0, done.stdout
    assert paths["(c) classic channel"][0] > 0, done.stdout


@pytest.mark.usefixtures("redis_server")
@pytest.mark.timeout(PROCESS_TEST_TIMEOUT)
def test_compose_benchmark_prints_each_of_its_measures():
    """benchmarks.compose --smoke prints its fan-out, in-flight, gather and stream lines."""
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.compose", "--smoke"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=PROCESS_TEST_TIMEOUT - 10,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    for line in (
        r"fan-out +40 submit\(\) of a 0\.2 s handler on 8 workers: \d+\.\d\d s \(ideal 1\.00 s,.*",
        r"in flight 200 submit\(\) from one thread: [\d,]+ req/s, \d+\.\d\dx one thread's request\(\).*",
        r"gather +4 subscribers: p50 \d+\.\d\d ms, \d+\.\d\dx one request\(\).*",
        r"stream +100 items: \d+\.\d{3} ms per item, \d+\.\d\dx one request\(\)",
    ):
        assert re.search(rf"^{line}$", done.stdout, re.MULTILINE), done.stdout


# The smoke run takes about 15 s on two idle cores; it starts fourteen
# server processes, each importing redis_rpc, which a loaded machine slows.
MECHANISMS_TIMEOUT = 180


@pytest.mark.usefixtures("redis_server")
@pytest.mark.timeout(MECHANISMS_TIMEOUT + 30)
def test_mechanisms_benchmark_measures_each_mechanism_on_and_off():
    """benchmarks.mechanisms --smoke prints a row with on/off ratios for each mechanism and setting, and a verdict per mechanism."""
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.mechanisms", "--smoke"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=MECHANISMS_TIMEOUT,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    rows = {
        (match["name"], match["via"], match["workers"])
        for match in re.finditer(
            r"^(?P<name>[a-z_]+) +(?P<via>channel|list|stream) +(?P<workers>\d+) +32"
            r" +\d+ +\d+ +\d+\.\d\dx +\d+\.\d{3} +\d+\.\d{3} +\d+\.\d\dx$",
            done.stdout,
            re.MULTILINE,
        )
    }
    # Every mechanism is a list or stream consumer's.
    expected = {
        *(
            (name, via, w)
            for name in ("inline", "ride")
            for via in ("list", "stream")
            for w in "18"
        ),
        ("read_ahead", "stream", "1"),
    }
    assert rows == expected, done.stdout
    for name in ("inline", "read_ahead", "ride"):
        assert re.search(
            rf"^verdict {name}: (KEEP|below 15%) \(best \d+\.\d\dx: ",
            done.stdout,
            re.MULTILINE,
        ), done.stdout
    assert done.stdout.count("load average at") == 2, done.stdout
