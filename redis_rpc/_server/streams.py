"""Streams: ``XREADGROUP`` through a consumer group, ``XACK`` after the reply.

Every server process that names the same group shares the stream's work,
and each entry is handled by one of them. An entry stays pending (read, not
acknowledged) until its handler succeeds; after ``max_deliveries`` failures
it moves to the dead-letter stream. An entry that can never succeed (an
unreadable frame, a body that does not fit the handler) moves there at once.

Pending entries are handed out again in two ways:

- A dead consumer's, within seconds. Each consumer of ours keeps a key
  ``S:redis_rpc:group:G:alive:C`` alive from the broker's heartbeat thread
  and lists itself in the set ``S:redis_rpc:group:G:consumers`` (for stream
  ``S``, group ``G``, consumer ``C``). Every ``recover_after / 2`` seconds,
  and at least once a second, a consumer looks for listed consumers of its
  group that have neither the key nor read for ``recover_after`` seconds, claims
  their pending entries, and deletes them from the group once they have
  none left (a Lua script, so that check, claim and deletion are atomic).
  Only listed consumers count: one that never beats (FastStream's, an older
  redis_rpc's) cannot be told from a live one with a long handler. The idle
  time costs nothing (a dead consumer has not read since before its key
  expired), and spares a consumer that is reading while its key is missing
  (evicted, or a heartbeat delayed on a busy network).
- Any entry pending for ``claim_idle_time``: whichever consumer looks next
  claims it with ``XAUTOCLAIM`` and handles it again. This retries failed
  handlers, and covers consumers that do not beat.

A group that has to be created, or re-created because it was lost (deleted,
the stream deleted, or Redis restarted empty), starts ``replay_window``
seconds back on the Redis server's clock, and never before the newest entry
this consumer has read: requests sent just before are still answered, old
ones are not handled again.
"""

from __future__ import annotations

import json
import logging
import time
from typing import TYPE_CHECKING

from redis_rpc._io.commands import STREAM_DATA_FIELD, XAck, XAdd
from redis_rpc._io.interfaces import Beat
from redis_rpc._server.fetch import dead_letter_key
from redis_rpc._server.model import Delivery
from redis_rpc._wire.message import describe
from redis_rpc.errors import RedisCommandError

if TYPE_CHECKING:
    from redis_rpc._io.commands import Command
    from redis_rpc._io.interfaces import Backend, Owed, Reader
    from redis_rpc._server.heartbeat import Heartbeat
    from redis_rpc._wire.schemas import StreamSub

logger = logging.getLogger(__name__)

# Look for claimable entries this often at most, and at least this often.
_CLAIM_CHECK_MIN, _CLAIM_CHECK_MAX = 0.05, 5.0
_START = b"0-0"  # the first pending entry; XAUTOCLAIM's cursor when it is done
# XAUTOCLAIM calls per look: each scans up to ten pending entries, and a
# look must not delay reading new entries for long.
_CLAIM_CALLS = 10
# Look for dead consumers at least this often (seconds): a dead consumer's
# entries wait at most recover_after plus this.
_DEAD_CHECK_MAX = 1.0

EntryId = tuple[int, int]  # (milliseconds, sequence number)


def parse_entry_id(entry_id: bytes) -> EntryId:
    """``b"1700000000000-3"`` as ``(1700000000000, 3)``, which sorts as Redis does."""
    ms, _, seq = entry_id.partition(b"-")
    return int(ms), int(seq or 0)


def group_start(
    now_ms: int, replay_window: float | None, last_read: EntryId | None
) -> bytes:
    """The id a created or re-created group starts after.

    Args:
        now_ms: The Redis server's clock, in milliseconds.
        replay_window: Seconds back to start from; ``None`` for the start of the stream.
        last_read: The newest entry this consumer has read, if any; never read again.
    """
    start = (
        (0, 0) if replay_window is None else (now_ms - round(replay_window * 1000), 0)
    )
    start = max(start, (0, 0), last_read or (0, 0))
    return f"{start[0]}-{start[1]}".encode()


class StreamSource:
    """Reads one stream as one named consumer of its group.

    Implements ``_server.fetch.Source``; used by its consumer's thread alone.

    Args:
        source: The stream, the group and the consumer's name.
        backend: Where the stream is.
        heartbeat: Keeps this consumer alive in the eyes of the others.
        name: For log lines.
    """

    def __init__(
        self, source: StreamSub, backend: Backend, heartbeat: Heartbeat, *, name: str
    ) -> None:
        self._source = source
        self._backend = backend
        self._admin = backend.admin
        self._heartbeat = heartbeat
        self._name = name
        self.key = source.stream
        self.prefetch = 1
        self.keeps_read = True
        self._claim_cursor = _START
        self._next_claim = (
            0.0  # time.monotonic() of the next look for claimable entries
        )
        self._next_dead_check = (
            0.0  # time.monotonic() of the next look for dead consumers
        )
        self._dead: tuple[
            str, ...
        ] = ()  # dead consumers whose entries are being claimed
        self._claiming: frozenset[str] = frozenset()  # those already logged
        self._last_read: EntryId | None = (
            None  # the newest entry this consumer has read
        )

    def _key(self, kind: str, consumer: str = "") -> str:
        source = self._source
        return self._backend.companion(
            source.stream,
            f":redis_rpc:group:{source.group}:{kind}"
            + (f":{consumer}" if consumer else ""),
        )

    def open(self) -> None:
        source = self._source
        self._ensure_group(lost=False)
        self._heartbeat.register(
            self,
            Beat(
                alive=self._key("alive", source.consumer),
                ttl=source.recover_after,
                registry=self._key("consumers"),
                member=source.consumer,
            ),
        )

    def _ensure_group(self, *, lost: bool) -> None:
        """Create the group unless it exists, from ``replay_window`` back; see the module doc."""
        source = self._source
        start = group_start(
            self._admin.server_time_ms(), source.replay_window, self._last_read
        )
        if not self._admin.create_group(source.stream, source.group, start):
            return
        if lost or self._last_read is not None:
            logger.warning(
                "%s found consumer group %r gone (deleted, or lost by Redis) and created it again, "
                "starting after entry %s: older entries are not handled again",
                self._name,
                source.group,
                start.decode(),
            )
        else:
            logger.info(
                "%s created consumer group %r, starting after entry %s",
                self._name,
                source.group,
                start.decode(),
            )

    def maintain(self) -> None:
        """Nothing between fetches: claims are looked for as part of a fetch."""

    def probes(self) -> list[Command]:
        source = self._source
        # Acknowledging an id that was never read changes nothing.
        return [XAck(source.stream, source.group, b"0-0")]

    def fetch(
        self, reader: Reader, owed: Owed, timeout: float, count: int
    ) -> list[Delivery]:
        source = self._source
        try:
            claimed = self._claim_from_dead(count)
            if claimed:
                return claimed
            retried = self._claim()
            if retried is not None:
                return [retried]
            entries = reader.xreadgroup(
                source.stream,
                source.group,
                source.consumer,
                timeout,
                count,
                owed=owed,
            )
        except RedisCommandError as exc:
            # From XREADGROUP, XAUTOCLAIM, XPENDING and XINFO. XACK answers 0
            # instead, and the reply it goes with is sent anyway: the next
            # read notices.
            if exc.reason != "no_group":
                raise
            self._ensure_group(lost=True)
            return []
        return [self._delivery(*entry, deliveries=1) for entry in entries]

    def _claim_from_dead(self, count: int) -> list[Delivery]:
        """Claim up to *count* entries of dead consumers, if it is time to look."""
        source = self._source
        now = time.monotonic()
        if not self._dead:
            if now < self._next_dead_check:
                return []
            self._next_dead_check = now + min(_DEAD_CHECK_MAX, source.recover_after / 2)
            self._dead = self._find_dead()
        while self._dead:
            dead = self._dead[0]
            claimed = self._admin.claim_from_dead(
                stream=source.stream,
                group=source.group,
                consumer=source.consumer,
                dead=dead,
                alive=self._key("alive", dead),
                registry=self._key("consumers"),
                count=count,
            )
            if claimed:  # more may be left: ask again on the next fetch
                if dead not in self._claiming:
                    self._claiming |= {dead}
                    logger.warning(
                        "%s is taking over the pending entries of consumer %r, whose heartbeat stopped",
                        self._name,
                        dead,
                    )
                return [
                    self._delivery(entry_id, fields, deliveries=deliveries)
                    for entry_id, fields, deliveries in claimed
                ]
            if claimed is not None:
                logger.info(
                    "%s deleted dead consumer %r from group %r",
                    self._name,
                    dead,
                    source.group,
                )
            self._claiming -= {dead}
            self._dead = self._dead[1:]
        return []

    def _find_dead(self) -> tuple[str, ...]:
        """Listed consumers that have not read for ``recover_after`` seconds: maybe dead.

        Whether their heartbeat is gone is checked when their entries are claimed.
        """
        source = self._source
        listed = set(self._admin.members(self._key("consumers")))
        listed.discard(source.consumer)
        if not listed:
            return ()
        idle = self._admin.consumer_idle_times(source.stream, source.group)
        return tuple(
            sorted(
                name
                for name in listed
                # Not in the group at all: it never read, or was deleted.
                if idle.get(name, float("inf")) >= source.recover_after
            )
        )

    def _claim(self) -> Delivery | None:
        """Claim one entry pending longer than ``claim_idle_time``, if it is time to look."""
        source = self._source
        now = time.monotonic()
        if source.claim_idle_time is None or now < self._next_claim:
            return None
        for _ in range(_CLAIM_CALLS):
            self._claim_cursor, entry = self._admin.xautoclaim(
                source.stream,
                source.group,
                source.consumer,
                source.claim_idle_time,
                self._claim_cursor,
            )
            if entry is None:  # nothing (more) to claim: look again later
                if self._claim_cursor == _START:
                    interval = source.claim_idle_time / 2
                    self._next_claim = now + min(
                        max(interval, _CLAIM_CHECK_MIN), _CLAIM_CHECK_MAX
                    )
                    return None
                continue
            entry_id, fields = entry
            if fields is None:  # deleted (or trimmed) while pending: nothing to do
                self._backend.execute(XAck(source.stream, source.group, entry_id))
                continue
            deliveries = self._admin.deliveries(source.stream, source.group, entry_id)
            return self._delivery(entry_id, fields, deliveries=max(deliveries, 1))
        # More pending entries to scan: go on from the cursor soon, but not on
        # every fetch, which would slow down reading new entries.
        self._next_claim = now + _CLAIM_CHECK_MIN
        return None

    def _delivery(
        self, entry_id: bytes, fields: dict[bytes, bytes], *, deliveries: int
    ) -> Delivery:
        read = parse_entry_id(entry_id)
        if self._last_read is None or read > self._last_read:
            self._last_read = read
        return entry_delivery(self._source, entry_id, fields, deliveries=deliveries)

    def can_retry(self, delivery: Delivery) -> bool:
        source = self._source
        return (
            source.claim_idle_time is not None
            and delivery.deliveries < source.max_deliveries
        )

    def dead_letter(self, delivery: Delivery, error: BaseException) -> list[Command]:
        """Copy the entry to the dead-letter stream with why it failed, and acknowledge it."""
        source = self._source
        assert isinstance(delivery.ack, XAck)
        reason = f"{type(error).__name__}: {describe(error)}"
        return [
            XAdd(
                dead_letter_key(self._backend, source),
                delivery.payload,
                extra=(
                    ("error", reason),
                    ("stream", source.stream),
                    ("group", source.group),
                    ("entry_id", delivery.ack.entry_id.decode()),
                    ("deliveries", str(delivery.deliveries)),
                ),
            ),
            delivery.ack,
        ]


def entry_delivery(
    source: StreamSub, entry_id: bytes, fields: dict[bytes, bytes], *, deliveries: int
) -> Delivery:
    """The delivery of the stream entry *entry_id*, with *fields*, read from *source*."""
    payload = fields.get(STREAM_DATA_FIELD)
    if payload is None:
        # Not written by FastStream or us: hand over all fields as JSON, as FastStream does.
        payload = json.dumps(
            {
                k.decode(errors="replace"): v.decode(errors="replace")
                for k, v in fields.items()
            }
        ).encode()
    return Delivery(
        payload,
        ack=XAck(source.stream, source.group, entry_id),
        where=f"entry {entry_id.decode()} of {source}",
        deliveries=deliveries,
    )
