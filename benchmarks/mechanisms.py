"""Each speed mechanism of redis_rpc measured on its own: with it and without, in one run.

A mechanism is kept only if it pays for its complexity: at least 15% more
requests per second, or a 15% lower p50, at some setting (issue 18). The
mechanisms, and how ``benchmarks._toggles`` switches each off:

``inline`` (server)
    A list or stream consumer with several workers runs typically quick
    handlers on its own thread instead of handing each to a worker. Off:
    ``_INLINE_BELOW = 0``. Measured with 8 workers and with 1, where there
    is nothing to hand off, but where turning it off also turns stream
    read-ahead off: that row shows read-ahead, not inline handling, and
    the verdict on inline handling leaves the rows with 1 worker out.
``read_ahead`` (server)
    A stream consumer with one worker and quick handlers reads up to 16
    entries at once. Off: ``READ_AHEAD = 1``.
``ride`` (server)
    Replies and acks produced between two blocking reads go in the same
    write as the next read, not through the pipe one by one. Off:
    ``Owed.reopen()`` does nothing.

Channel subscribers have no fetch loop, so none of these applies to them.
Three mechanisms measured here went for buying less than 15%, two of the
callers' and a packer of Redis' protocol (``benchmarks/README.rst`` has
their figures).

Everything runs against a private redis-server. The echo server runs in a
process of its own (``benchmarks._servers redis_rpc``), started afresh for
each round, with ``REDIS_RPC_BENCH_OFF`` naming what it switches off; the
callers share one ``RedisBroker`` in this process. Rounds alternate on and
off (on first in even rounds, off first in odd ones), and each figure is
the median of its rounds: requests per second from 32 caller threads, and
the p50 of one.

Run from the repository root::

    .venv/bin/python -m benchmarks.mechanisms [--quick | --smoke] [--only NAME,...] [--json PATH]

The full run takes several minutes, ``--quick`` a minute or two,
``--smoke`` (for the test suite) seconds.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from benchmarks._servers import POLL_INTERVAL
from benchmarks._toggles import OFF
from benchmarks.request_latency import (
    ServerProcess,
    check_reply,
    percentiles_ms,
    redis_rpc_calls,
    run_threads,
)
from redis_rpc import RedisBroker
from redis_rpc.testing import RedisServer

if TYPE_CHECKING:
    from collections.abc import Callable

CALLERS = 32  # caller threads of the rate; the p50 is of one caller
KEEP_AT = 1.15  # issue 18: a mechanism buying less than 15% everywhere goes


@dataclasses.dataclass(frozen=True)
class Mechanism:
    name: str  # as benchmarks._toggles knows it
    transports: tuple[str, ...]
    workers: tuple[int, ...]  # max_workers of the echo subscribers, one setting each


MECHANISMS = (
    Mechanism("inline", ("list", "stream"), (8, 1)),
    Mechanism("read_ahead", ("stream",), (1,)),
    Mechanism("ride", ("list", "stream"), (8, 1)),
)


@dataclasses.dataclass(frozen=True)
class Mode:
    rounds: int  # of each state, on and off, interleaved
    warmup: int  # untimed requests from the 32 callers first
    rate_requests: int  # timed, from 32 callers
    p50_requests: int  # timed, from one caller


MODES = {
    "full": Mode(rounds=5, warmup=300, rate_requests=8_000, p50_requests=1_000),
    "quick": Mode(rounds=3, warmup=100, rate_requests=2_000, p50_requests=300),
    "smoke": Mode(rounds=1, warmup=10, rate_requests=64, p50_requests=10),
}


def timed_run(
    call: Callable[[bytes], bytes], callers: int, requests: int
) -> tuple[float, list[float]]:
    """Seconds *requests* from *callers* threads took, and each one's round trip."""
    samples: list[float] = []  # list.append is atomic under the GIL

    def timed(body: bytes) -> None:
        sent = time.perf_counter()
        reply = call(body)
        samples.append(time.perf_counter() - sent)
        check_reply("echo", reply)

    return run_threads(call, callers, requests, timed), samples


def measure(
    url: str, mechanism: Mechanism, workers: int, off: bool, mode: Mode
) -> dict[str, tuple[float, float]]:
    """One round: (requests/s from 32 callers, p50 ms of one) per transport."""
    # Empty when on, so that the server never inherits a switch from here.
    env = {OFF: mechanism.name if off else ""}
    results = {}
    with (
        ServerProcess("redis_rpc", url, workers, env=env),
        RedisBroker(url, poll_interval=POLL_INTERVAL) as client,
    ):
        calls = redis_rpc_calls(client)
        for transport in mechanism.transports:
            call = calls[transport]
            run_threads(call, CALLERS, mode.warmup, None)
            elapsed, _ = timed_run(call, CALLERS, mode.rate_requests)
            _, samples = timed_run(call, 1, mode.p50_requests)
            results[transport] = (
                mode.rate_requests / elapsed,
                percentiles_ms(samples)[0],
            )
    return results


def run(url: str, mechanisms: list[Mechanism], mode: Mode) -> list[dict[str, object]]:
    """Every round of *mechanisms*; one row per mechanism, setting and transport."""
    rows = []
    for mechanism in mechanisms:
        for workers in mechanism.workers:
            rounds: dict[bool, list[dict[str, tuple[float, float]]]] = {
                False: [],
                True: [],
            }
            for n in range(mode.rounds):
                for off in (False, True) if n % 2 == 0 else (True, False):
                    got = measure(url, mechanism, workers, off, mode)
                    rounds[off].append(got)
                    print(
                        f"  {mechanism.name} w{workers} round {n + 1} "
                        f"{'off' if off else 'on'}: "
                        + ", ".join(
                            f"{via} {rate:.0f}/s p50 {p50:.3f} ms"
                            for via, (rate, p50) in got.items()
                        ),
                        file=sys.stderr,
                        flush=True,
                    )
            for transport in mechanism.transports:
                on = [r[transport] for r in rounds[False]]
                off_ = [r[transport] for r in rounds[True]]
                rate_on = statistics.median(rate for rate, _ in on)
                rate_off = statistics.median(rate for rate, _ in off_)
                p50_on = statistics.median(p50 for _, p50 in on)
                p50_off = statistics.median(p50 for _, p50 in off_)
                rows.append(
                    {
                        "mechanism": mechanism.name,
                        "transport": transport,
                        "workers": workers,
                        "callers": CALLERS,
                        "rate_on": rate_on,
                        "rate_off": rate_off,
                        "rate_ratio": rate_on / rate_off,
                        "p50_on_ms": p50_on,
                        "p50_off_ms": p50_off,
                        "p50_ratio": p50_off / p50_on,  # above 1: faster with it
                        "rounds_on": on,
                        "rounds_off": off_,
                    }
                )
    return rows


def verdicts(rows: list[dict[str, object]]) -> dict[str, str]:
    """KEEP where on/off reaches 1.15 in rate or p50 at some setting, per mechanism."""
    best: dict[str, tuple[float, str]] = {}
    for row in rows:
        if row["mechanism"] == "inline" and row["workers"] == 1:
            continue  # nothing to hand off: read-ahead (stream) or noise (list)
        for key, what in (("rate_ratio", "rate"), ("p50_ratio", "p50")):
            value = float(row[key])  # type: ignore[arg-type]
            where = f"{row['transport']} w{row['workers']} {what}"
            name = str(row["mechanism"])
            if name not in best or value > best[name][0]:
                best[name] = (value, where)
    return {
        name: ("KEEP" if value >= KEEP_AT else "below 15%")
        + f" (best {value:.2f}x: {where})"
        for name, (value, where) in best.items()
    }


def report(rows: list[dict[str, object]]) -> dict[str, str]:
    head = "{:<11}{:<8}{:>3}{:>5}{:>9}{:>9}{:>7}{:>9}{:>9}{:>7}"
    print()
    print(
        head.format(
            "mechanism",
            "via",
            "w",
            "n",
            "on/s",
            "off/s",
            "ratio",
            "p50 on",
            "off",
            "ratio",
        )
    )
    line = "{:<11}{:<8}{:>3}{:>5}{:>9.0f}{:>9.0f}{:>6.2f}x{:>9.3f}{:>9.3f}{:>6.2f}x"
    for r in rows:
        print(
            line.format(
                r["mechanism"],
                r["transport"],
                r["workers"],
                r["callers"],
                r["rate_on"],
                r["rate_off"],
                r["rate_ratio"],
                r["p50_on_ms"],
                r["p50_off_ms"],
                r["p50_ratio"],
            )
        )
    print(
        f"\nrates: requests/s from {CALLERS} callers; p50: ms of one caller; "
        "ratios: on/off rate, off/on p50 (above 1: the mechanism helps)"
    )
    for r in rows:
        if (r["mechanism"], r["transport"], r["workers"]) == ("inline", "list", 1):
            print(
                "inline list w1 switches nothing (one worker handles inline anyway, "
                "and lists do not read ahead): its ratios show this run's noise"
            )
    found = verdicts(rows)
    for name, verdict in found.items():
        print(f"verdict {name}: {verdict}")
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="small counts, minutes")
    size.add_argument("--smoke", action="store_true", help="tiny counts, seconds")
    parser.add_argument("--only", metavar="NAME[,NAME]", help="these mechanisms only")
    parser.add_argument("--json", metavar="PATH", help="also write the numbers here")
    args = parser.parse_args(argv)
    names = [m.name for m in MECHANISMS]
    only = args.only.split(",") if args.only else names
    if unknown := set(only) - set(names):
        parser.error(f"unknown mechanism(s) {sorted(unknown)}; known: {names}")
    mode_name = "quick" if args.quick else "smoke" if args.smoke else "full"
    mode = MODES[mode_name]
    began, load_start = time.perf_counter(), os.getloadavg()
    print(
        f"{mode_name} run, {mode.rounds} round(s) on and off each, "
        f"{os.cpu_count()} CPUs; load average at start "
        + " ".join(f"{load:.2f}" for load in load_start),
        flush=True,
    )
    with RedisServer() as server:
        rows = run(server.url, [m for m in MECHANISMS if m.name in only], mode)
    found = report(rows)
    load_end = os.getloadavg()
    print(
        "load average at end "
        + " ".join(f"{load:.2f}" for load in load_end)
        + f"; the run took {time.perf_counter() - began:.0f} s"
    )
    if args.json:
        summary = {
            "mode": mode_name,
            "counts": dataclasses.asdict(mode),
            "load_average": {"start": load_start, "end": load_end},
            "rows": rows,
            "verdicts": found,
        }
        Path(args.json).write_text(json.dumps(summary, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
