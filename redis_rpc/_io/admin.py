"""``RedisAdmin``: the commands that manage consumers, for one server or a cluster.

Heartbeats, the recovery scripts and consumer groups: each call borrows a
connection of redis-py's client for its own round trip (a ``Redis``, or a
``RedisCluster``, which routes each by its keys). They are rare and never
on the path of a request, so they go around the pipe, one at a time: two
threads calling at once (the heartbeat and a consumer's look for dead
peers) would make the client's pool open a connection more for good.
"""

from __future__ import annotations

import contextlib
import threading
from typing import TYPE_CHECKING, Any, cast

from redis_rpc._io.errors import map_errors
from redis_rpc._io.scripts import CLAIM_FROM_DEAD, REQUEUE_IF_DEAD
from redis_rpc.errors import RedisCommandError, RedisConnectionError

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Sequence

    import redis
    import redis.cluster

    from redis_rpc._io.interfaces import Beat


class RedisAdmin:
    """Implements ``_io.interfaces.Admin`` over a redis-py client. Safe to use from any number of threads.

    Args:
        client: Returns the client; a cluster's is created on first use.
        address: Where Redis is, for messages.
        socket_timeout: The client's: how long one call may take, and so
            how long the next waits for its turn.
    """

    def __init__(
        self,
        client: Callable[[], redis.Redis | redis.cluster.RedisCluster],
        address: str,
        *,
        socket_timeout: float,
    ) -> None:
        self._client = client
        self._address = address
        # How long a call waits for its turn: one call takes at most socket_timeout.
        self._turn = min(socket_timeout, threading.TIMEOUT_MAX)
        self._lock = threading.Lock()  # held for one call
        # Registered with the client on first use, by script body.
        self._scripts: dict[str, Any] = {}

    @contextlib.contextmanager
    def _calling(self) -> Iterator[None]:
        """One call at a time, its redis-py errors translated.

        Raises:
            RedisConnectionError: The call before did not finish within
                ``socket_timeout``; this one was not sent.
        """
        if not self._lock.acquire(timeout=self._turn):
            msg = f"Redis at {self._address} did not finish the management call before this one within {self._turn} s; this one was not sent."
            raise RedisConnectionError(msg, reason="timeout")
        try:
            with map_errors(self._address):
                yield
        finally:
            self._lock.release()

    def _script(self, body: str) -> Any:
        script = self._scripts.get(body)
        if script is None:
            script = self._scripts[body] = self._client().register_script(body)
        return script

    def after_fork(self) -> None:
        """Forget the scripts, registered with a client that a forked child may replace, and the parent's lock."""
        self._lock = threading.Lock()
        self._scripts = {}

    def heartbeat(self, beats: Sequence[Beat]) -> None:
        """Refresh every heartbeat key in *beats*, and list each consumer in its registry."""
        with self._calling():
            pipe = self._client().pipeline(transaction=False)
            for beat in beats:
                pipe.set(beat.alive, 1, px=max(1, round(beat.ttl * 1000)))
                pipe.sadd(beat.registry, beat.member)
            pipe.execute()

    def members(self, key: str) -> list[str]:
        """The members of set *key*, decoded."""
        with self._calling():
            found = cast("set[bytes]", self._client().smembers(key))
        return sorted(m.decode(errors="replace") for m in found)

    def requeue_if_dead(
        self, *, alive: str, processing: str, source: str, registry: str, member: str
    ) -> int | None:
        """Unless key *alive* exists, move list *processing* back to the head of *source*.

        Returns:
            How many items moved, or None when *member* is alive.
        """
        with self._calling():
            moved = int(
                self._script(REQUEUE_IF_DEAD)(
                    keys=[alive, processing, source, registry], args=[member]
                )
            )
        return None if moved < 0 else moved

    def server_time_ms(self) -> int:
        """The Redis server's clock, in milliseconds since the epoch: the time stream ids count."""
        with self._calling():
            seconds, microseconds = self._client().time()
        return seconds * 1000 + microseconds // 1000

    def create_group(self, stream: str, group: str, start: bytes) -> bool:
        """Create consumer *group* on *stream* (and the stream), to read the entries after *start*.

        Returns:
            False if the group exists already; it is left as it is.
        """
        try:
            with self._calling():
                self._client().xgroup_create(stream, group, id=start, mkstream=True)
        except RedisCommandError as exc:
            if exc.reason != "busy_group":
                raise
            return False
        return True

    def consumer_idle_times(self, stream: str, group: str) -> dict[str, float]:
        """Each consumer of *group* and the seconds since it last read or claimed."""
        with self._calling():
            consumers: Any = self._client().xinfo_consumers(stream, group)
        return {
            cast("bytes", c["name"]).decode(errors="replace"): int(c["idle"]) / 1000
            for c in consumers
        }

    def claim_from_dead(
        self,
        *,
        stream: str,
        group: str,
        consumer: str,
        dead: str,
        alive: str,
        registry: str,
        count: int,
    ) -> list[tuple[bytes, dict[bytes, bytes], int]] | None:
        """Unless key *alive* exists, claim for *consumer* up to *count* entries pending for *dead*.

        When *dead* has no pending entry left it is deleted from the group
        and from set *registry* instead.

        Returns:
            None when *dead* is alive after all; otherwise the claimed
            entries, each with its fields and how many times it has been
            delivered, this time included (empty once *dead* is deleted).
        """
        with self._calling():
            answer: Any = self._script(CLAIM_FROM_DEAD)(
                keys=[stream, alive, registry], args=[group, dead, consumer, count]
            )
        if answer is None:
            return None
        return [
            (
                cast("bytes", entry_id),
                dict(zip(fields[::2], fields[1::2], strict=True)),
                int(deliveries),
            )
            for entry_id, fields, deliveries in answer
        ]

    def xautoclaim(
        self, stream: str, group: str, consumer: str, min_idle: float, start: bytes
    ) -> tuple[bytes, tuple[bytes, dict[bytes, bytes] | None] | None]:
        """Claim for *consumer* the first entry from *start* on pending for *min_idle* seconds.

        Returns the cursor to continue from (``b"0-0"`` after the last
        pending entry) and the claimed entry, if any; its fields are
        ``None`` when it was deleted from the stream meanwhile.
        """
        with self._calling():
            answer: Any = self._client().xautoclaim(
                stream,
                group,
                consumer,
                min_idle_time=max(0, round(min_idle * 1000)),
                start_id=start,
                count=1,
            )
        cursor, entries = answer[0], answer[1]
        if not entries:
            return cursor, None
        entry_id, fields = entries[0]
        return cursor, (cast("bytes", entry_id), fields or None)

    def deliveries(self, stream: str, group: str, entry_id: bytes) -> int:
        """How many times *entry_id* has been delivered in *group*; 0 if it is not pending."""
        with self._calling():
            pending: Any = self._client().xpending_range(
                stream, group, min=entry_id, max=entry_id, count=1
            )
        return int(pending[0]["times_delivered"]) if pending else 0
