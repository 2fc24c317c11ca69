"""``Watch``: one thread per broker that relieves consumer threads stuck in an inline handler.

A list or stream consumer with several workers runs typically quick
handlers on its own thread, batch by batch, instead of handing each
message to a worker: a hand-off costs more than such a handler (measured
with ``benchmarks/mechanisms.py``: 1.2x to 1.4x the rate at 8 workers).
Should one of those handlers take longer than ``TICK``, the rest of the
batch would wait behind it and nothing would be fetched: the watch then
has the consumer hand the rest to its workers and the fetching to a new
thread (``FetchingConsumer.relieve()``), within one to two ticks. Its thread
runs only while some consumer handles inline.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Protocol

logger = logging.getLogger(__name__)


class Relievable(Protocol):
    """A consumer that handles inline: ``FetchingConsumer``."""

    name: str

    @property
    def inline_since(self) -> float:
        """When the inline handler now running started (``time.monotonic()``); 0.0 when none is."""

    def relieve(self, since: float) -> None:
        """Take the fetching away from the thread in the handler that started at *since*."""


class Watch:
    """Watches consumers for inline handlers that overrun; thread ``redis_rpc:watch``.

    ``add()`` before the consumers start; ``poke()`` and ``stop()`` from any thread.
    """

    # Seconds an inline handler may run before its consumer is relieved:
    # several times the interpreter's switch interval (5 ms), so that a quick
    # handler that merely waited for the interpreter lock is left alone.
    TICK = 0.02
    _IDLE_CHECK = 1.0  # seconds between checks for stop() while nothing runs inline

    def __init__(self) -> None:
        self._consumers: list[Relievable] = []
        self._busy = threading.Event()  # some consumer may be handling inline
        self._stopping = threading.Event()
        self._lock = threading.Lock()  # guards _thread
        self._thread: threading.Thread | None = None

    def add(self, consumer: Relievable) -> None:
        """Watch *consumer* too; only before its thread starts."""
        self._consumers.append(consumer)

    def poke(self) -> None:
        """Say that a consumer is handling inline: the watch looks until none is."""
        if self._busy.is_set():
            return
        with self._lock:
            if self._thread is None and not self._stopping.is_set():
                self._thread = threading.Thread(
                    target=self._run, name="redis_rpc:watch", daemon=True
                )
                self._thread.start()
        self._busy.set()

    def stop(self, timeout: float) -> bool:
        """Stop watching; True if the thread ended within *timeout* seconds."""
        self._stopping.set()
        self._busy.set()
        with self._lock:
            thread = self._thread
        if thread is not None:
            thread.join(timeout)
        return thread is None or not thread.is_alive()

    def _run(self) -> None:
        while not self._stopping.is_set():
            if not self._busy.wait(self._IDLE_CHECK):
                continue
            self._stopping.wait(self.TICK)
            if not self._look():
                self._busy.clear()
                if self._look():  # one began between the look and the clear
                    self._busy.set()

    def _look(self) -> bool:
        """Relieve the consumers stuck for a tick; whether any handles inline."""
        now, inline = time.monotonic(), False
        for consumer in self._consumers:
            since = consumer.inline_since
            if since:
                inline = True
                if now - since >= self.TICK:
                    try:
                        consumer.relieve(since)
                    except Exception:  # the watch must outlive any error
                        logger.exception("Could not relieve %s", consumer.name)
        return inline
