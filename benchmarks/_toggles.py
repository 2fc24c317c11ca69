"""Switches that turn one speed mechanism of redis_rpc off, for ``benchmarks.mechanisms``.

The library never reads these: a benchmark process patches a private
attribute of redis_rpc in itself, before its broker starts. A server
process started with ``REDIS_RPC_BENCH_OFF=inline,ride`` (say) in its
environment calls ``apply_from_env()``; the caller process switches its
own off for a while with ``switched_off()``.
"""

from __future__ import annotations

import contextlib
import os
from typing import TYPE_CHECKING, Any

from redis_rpc._client import listener
from redis_rpc._io.pipe import Pipe
from redis_rpc._server import fetch
from redis_rpc._server.owed import Owed

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator

OFF = "REDIS_RPC_BENCH_OFF"  # the server process's variable: names, comma-separated
SERVER_SIDE = ("inline", "read_ahead", "ride")
CALLER_SIDE = ("own_write", "secrets")

_queued_start = Pipe._start


def _never_reopen(self: Owed) -> None:
    """``Owed.reopen()`` switched off: workers keep sending on their own."""


def _start_queued(self: Pipe, entry: Any, *, own: bool) -> None:
    _queued_start(self, entry, own=False)


class _Urandom:
    """Reply-channel nonces straight from ``os.urandom()``, one system call each."""

    def hex(self, digits: int) -> str:
        return os.urandom((digits + 1) // 2).hex()[:digits]


# name: (object, attribute, value that switches the mechanism off)
_PATCHES: dict[str, tuple[object, str, object]] = {
    # No handler counts as quick: with several workers, each message goes to
    # one; with one, a stream reads no more than one entry ahead either.
    "inline": (fetch, "_INLINE_BELOW", 0.0),
    # A stream consumer with one worker reads one entry at a time.
    "read_ahead": (fetch, "READ_AHEAD", 1),
    # The consumer never collects what its handlers produce between reads:
    # every reply and ack goes through the pipe on its own.
    "ride": (Owed, "reopen", _never_reopen),
    # A request always goes to the pipe's writer thread, even when it is idle.
    "own_write": (Pipe, "_start", _start_queued),
    # One os.urandom() call per reply channel's nonce.
    "secrets": (listener, "_secrets", _Urandom()),
}


@contextlib.contextmanager
def switched_off(names: Iterable[str]) -> Iterator[None]:
    """Switch the mechanisms *names* off in this process until the block ends."""
    patches = [_PATCHES[name] for name in names]
    saved = [(target, attr, getattr(target, attr)) for target, attr, _ in patches]
    try:
        for target, attr, value in patches:
            setattr(target, attr, value)
        yield
    finally:
        for target, attr, value in saved:
            setattr(target, attr, value)


def apply_from_env() -> list[str]:
    """Switch off, for good, what ``REDIS_RPC_BENCH_OFF`` names; return the names."""
    names = [name for name in os.environ.get(OFF, "").split(",") if name]
    for name in names:
        target, attr, value = _PATCHES[name]
        setattr(target, attr, value)
    return names
