"""Huge sends in a process of their own, for ``test_huge_send``: what each leaves in memory.

Run as ``python -m tests.fault.huge_send URL``, against a Redis of the
test's own. It prints one JSON object of resident set sizes, in MiB:

``start``
    After connecting, before any big body exists.
``refused_peak_growth``
    How much the peak RSS grew, once the body existed, while a
    ``request()`` of it was refused by the default ``max_message_size``.
``sent_left``
    After a successful ``publish()`` of such a body, the body deleted and
    garbage collected: what the broker still holds of it.
``failed_left``, ``failed_error``
    After a ``publish()`` that Redis broke the connection on (its
    proto-max-bulk-len lowered behind the broker's back), the exception
    kept, the body deleted and garbage collected; and the error's class.
"""

from __future__ import annotations

import gc
import json
import resource
import sys

import redis

from redis_rpc import RedisBroker

SIZE = 100 * 1024 * 1024  # modest: three suites may run at once


def rss() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def peak() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def main(url: str) -> None:
    found: dict[str, object] = {}
    raw = redis.Redis.from_url(url)
    limited = RedisBroker(url, poll_interval=0.05)
    limited.publish("warm", list="huge-send:warm")
    gc.collect()
    found["start"] = start = rss()

    body = b"r" * SIZE
    before = peak()
    try:
        limited.request(body, list="huge-send:refused", timeout=5.0)
    except Exception as exc:  # noqa: BLE001 - reported, not handled
        found["refused_error"] = type(exc).__name__
    found["refused_peak_growth"] = peak() - before
    del body
    limited.close()

    # A fresh broker: its first command goes through the writer thread.
    unlimited = RedisBroker(url, poll_interval=0.05, max_message_size=None)
    body = b"s" * SIZE
    unlimited.publish(body, list="huge-send:sent", timeout=30.0)
    del body
    gc.collect()
    found["sent_left"] = rss() - start
    raw.delete("huge-send:sent")

    # Redis now drops a connection sending this much: the broker learnt the
    # old limit when it connected, so it sends, and the connection breaks.
    raw.config_set("proto-max-bulk-len", "1mb")
    body = b"f" * SIZE
    kept: Exception | None = None
    try:
        unlimited.publish(body, list="huge-send:failed", timeout=30.0)
    except Exception as exc:  # noqa: BLE001 - kept, as a log record or error tracker would
        kept = exc
    found["failed_error"] = type(kept).__name__
    del body
    gc.collect()
    found["failed_left"] = rss() - start
    unlimited.close()
    raw.close()
    print(json.dumps(found))  # noqa: T201 - the test reads it


if __name__ == "__main__":
    main(sys.argv[1])
