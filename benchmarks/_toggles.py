"""Switches that turn one speed mechanism of a redis_rpc server off, for ``benchmarks.mechanisms``.

The library never reads these: a server process started with
``REDIS_RPC_BENCH_OFF=inline,ride`` (say) in its environment calls
``apply_from_env()``, which patches a private attribute of redis_rpc in
that process before its broker starts.
"""

from __future__ import annotations

import os

from redis_rpc._server import fetch
from redis_rpc._server.owed import Owed

OFF = "REDIS_RPC_BENCH_OFF"  # the server process's variable: names, comma-separated


def _never_reopen(self: Owed) -> None:
    """``Owed.reopen()`` switched off: workers keep sending on their own."""


# name: (object, attribute, value that switches the mechanism off)
PATCHES: dict[str, tuple[object, str, object]] = {
    # No handler counts as quick: with several workers, each message goes to
    # one; with one, a stream reads no more than one entry ahead either.
    "inline": (fetch, "_INLINE_BELOW", 0.0),
    # A stream consumer with one worker reads one entry at a time.
    "read_ahead": (fetch, "READ_AHEAD", 1),
    # The consumer never collects what its handlers produce between reads:
    # every reply and ack goes through the pipe on its own.
    "ride": (Owed, "reopen", _never_reopen),
}


def apply_from_env() -> list[str]:
    """Switch off, for good, what ``REDIS_RPC_BENCH_OFF`` names; return the names."""
    names = [name for name in os.environ.get(OFF, "").split(",") if name]
    for name in names:
        target, attr, value = PATCHES[name]
        setattr(target, attr, value)
    return names
