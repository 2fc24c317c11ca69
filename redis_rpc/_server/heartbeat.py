"""Heartbeats: one thread per broker refreshes the keys that show its consumers are alive.

A consumer that holds messages in Redis (a reliable list's processing list,
the pending entries of a stream group) shows that it is alive with a key
that expires unless refreshed; once the key is gone, other consumers take
its messages over. The keys are refreshed on a thread of their own, not on
the consumer threads, because with ``max_workers=1`` the handler runs on the
consumer thread: a long handler of a live process must not look dead.

One thread per broker beats for all its consumers in one pipeline, rather
than one thread per consumer: a broker with many subscribers would
otherwise hold as many threads and pool connections, all doing the same
thing at the same moment. The thread starts with the first registration,
so a broker without such consumers runs none.
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING

from redis_rpc.errors import RedisRPCError

if TYPE_CHECKING:
    from redis_rpc._io.interfaces import Admin, Beat

logger = logging.getLogger(__name__)

# A key is refreshed at least this many times per time to live, so that a
# slow round trip or two never lets it expire under a live consumer...
_BEATS_PER_TTL = 3
# ...and at least this often (seconds), so that a long time to live does not
# leave a new consumer unregistered for long.
_MAX_INTERVAL = 1.0


class Heartbeat:
    """Refreshes the heartbeat keys of a broker's consumers on the thread ``redis_rpc:heartbeat``.

    Safe to use from any number of threads at once.
    """

    def __init__(self, admin: Admin) -> None:
        self._admin = admin
        self._lock = threading.Lock()  # guards _beats and _thread
        self._beats: dict[object, Beat] = {}
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()

    def __repr__(self) -> str:
        running = self._thread is not None and self._thread.is_alive()
        return f"<Heartbeat {'running' if running else 'idle'} keys={len(self._beats)}>"

    def register(self, owner: object, beat: Beat) -> None:
        """Refresh *beat* from now on, in place of the one *owner* registered before.

        Beats once before returning, so the key exists when this returns.

        Raises:
            RedisRPCError: The first beat failed; nothing was registered.
        """
        self._admin.heartbeat([beat])
        with self._lock:
            self._beats[owner] = beat
            thread = None
            if self._thread is None and not self._stopping.is_set():
                thread = self._thread = threading.Thread(
                    target=self._run, name="redis_rpc:heartbeat", daemon=True
                )
        if thread is not None:
            thread.start()

    def stop(self, timeout: float) -> bool:
        """Stop beating; True if the thread ended within *timeout* seconds.

        The keys are left to expire by themselves: a handler that overran
        the broker's ``graceful_timeout`` keeps its messages that long.
        """
        self._stopping.set()
        with self._lock:
            thread = self._thread
        if thread is None:
            return True
        thread.join(timeout)
        return not thread.is_alive()

    def _run(self) -> None:
        failing = False
        while True:
            with self._lock:
                ttls = [beat.ttl for beat in self._beats.values()]
            if self._stopping.wait(
                min([_MAX_INTERVAL, *(ttl / _BEATS_PER_TTL for ttl in ttls)])
            ):
                return
            with self._lock:
                beats = list(self._beats.values())
            try:
                self._admin.heartbeat(beats)
            # The thread must outlive any error, or every consumer looks dead.
            except Exception as exc:
                if not failing:
                    logger.warning(
                        "Could not refresh the heartbeat of %d consumer(s); retrying: %s",
                        len(beats),
                        exc,
                        exc_info=not isinstance(exc, RedisRPCError),
                    )
                    failing = True
            else:
                if failing:
                    logger.info("Heartbeats are refreshed again")
                    failing = False
