"""``Cancellations``: the requests whose callers gave up, as the servers of one broker know them.

A notice (``_wire.cancel``) names a request by its reply channel. If a
handler of this broker is running it, its message's ``cancelled`` is set
at once; if not yet, the request is remembered for a while, and skipped
without running when it is fetched (acknowledged, as a request whose
deadline passed is). A server that was not listening when the notice went
out runs the request all the same: notices are not stored in Redis.
"""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from redis_rpc._wire.message import Cancellation

# How long a notice for a request not started yet is remembered, and how
# many at most: a request is rarely fetched long after its caller gave up,
# and one fetched later than this runs as if never cancelled.
REMEMBER = 300.0
MAX_REMEMBERED = 10_000


class Cancellations:
    """What a broker's servers know of cancelled requests. Safe to use from any thread."""

    def __init__(self) -> None:
        # Guards _running and _early.
        self._lock = threading.Lock()
        # The cancellations of the messages whose handlers run, by reply channel.
        self._running: dict[str, Cancellation] = {}
        # Requests cancelled before they ran: reply channel -> forgotten at.
        self._early: dict[str, float] = {}
        self.received = 0  # notices heard, for stats

    def cancel(self, reply_to: str) -> None:
        """A notice came for the request answered on *reply_to*."""
        now = time.monotonic()
        with self._lock:
            self.received += 1
            running = self._running.get(reply_to)
            if running is None:
                if len(self._early) >= MAX_REMEMBERED:
                    self._early = {k: t for k, t in self._early.items() if t > now}
                if len(self._early) < MAX_REMEMBERED:
                    self._early[reply_to] = now + REMEMBER
        if running is not None:
            running.set()

    def start(self, reply_to: str, cancellation: Cancellation) -> bool:
        """The handler of the request answered on *reply_to* starts; False if it was cancelled already."""
        with self._lock:
            until = self._early.pop(reply_to, None)
            if until is not None and until > time.monotonic():
                return False
            self._running[reply_to] = cancellation
            return True

    def finish(self, reply_to: str) -> None:
        """The handler of the request answered on *reply_to* has returned."""
        with self._lock:
            self._running.pop(reply_to, None)
