"""Which handler the calling thread is running, and on what message.

A handler may call ``request()`` itself: the request then never waits past
the deadline of the message being handled, and refuses to call the
handler's own single-worker subscriber (see ``_client.request``); and
``close()`` refuses to run inside a handler of its own broker. Both ask
here. The processing of a message (``_server.process``) says what it runs.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

import attrs

if TYPE_CHECKING:
    from collections.abc import Collection

    from redis_rpc._wire.message import RedisMessage
    from redis_rpc._wire.schemas import Destination


@attrs.frozen
class Running:
    """A handler being run: whose it is, its source and workers, and the message once parsed."""

    owner: object  # the processor of the handler's subscriber
    source: Destination
    max_workers: int
    message: RedisMessage | None = None


class _Local(threading.local):
    running: Running | None = None


_local = _Local()


def enter(running: Running) -> Running | None:
    """Mark the thread as running *running*; returns what it ran before, for ``leave()``."""
    before = _local.running
    _local.running = running
    return before


def handling(message: RedisMessage) -> None:
    """Say which message the thread's handler is running on."""
    running = _local.running
    if running is not None:
        _local.running = attrs.evolve(running, message=message)


def leave(before: Running | None) -> None:
    """Restore what ``enter()`` returned: calls nest when handlers run in memory."""
    _local.running = before


def current() -> Running | None:
    """The handler this thread runs, once its message is parsed; None outside handlers."""
    running = _local.running
    return running if running is not None and running.message is not None else None


def in_handler(owners: Collection[object]) -> bool:
    """Whether the calling thread runs a handler of one of *owners*."""
    running = _local.running
    return running is not None and running.owner in owners
