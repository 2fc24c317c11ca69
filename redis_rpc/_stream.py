"""Stream consumer: ``XREADGROUP`` through a consumer group, ``XACK`` after the reply.

Every server process that names the same group shares the stream's work,
and each entry is handled by one of them. An entry stays pending (read, not
acknowledged) until its handler succeeds. Pending entries idle for
``claim_idle_time`` (their consumer died, or their handler raised and
nobody was told) are claimed with ``XAUTOCLAIM`` by whichever consumer of
the group looks next, and handled again; after ``max_deliveries`` failures
an entry moves to the dead-letter stream. An entry that can never succeed
(an unreadable frame, a body that does not fit the handler) moves there at
once.
"""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING

from redis_rpc._consumer import Consumer, Delivery
from redis_rpc._message import describe
from redis_rpc._redis import STREAM_DATA_FIELD, XAck, XAdd
from redis_rpc._schemas import StreamSub

if TYPE_CHECKING:
    from redis_rpc._redis import Command

# Look for claimable entries this often at most, and at least this often.
_CLAIM_CHECK_MIN, _CLAIM_CHECK_MAX = 0.05, 5.0
_START = b"0-0"  # the first pending entry; XAUTOCLAIM's cursor when it is done
# XAUTOCLAIM calls per look: each scans up to ten pending entries, and a
# look must not delay reading new entries for long.
_CLAIM_CALLS = 10


class StreamConsumer(Consumer):
    """Consumes one stream as one named consumer of its group."""

    _claim_cursor = _START
    _next_claim = 0.0  # time.monotonic() of the next look for claimable entries

    @property
    def _source(self) -> StreamSub:
        source = self.subscriber.source
        # The broker picks the consumer class by the source type.
        assert isinstance(source, StreamSub)
        return source

    def _open(self) -> None:
        source = self._source
        self._connection.ensure_group(source.stream, source.group)

    def _probes(self) -> list[Command]:
        source = self._source
        # Acknowledging an id that was never read changes nothing.
        return [*super()._probes(), XAck(source.stream, source.group, b"0-0")]

    def _fetch(self, timeout: float, count: int) -> list[Delivery]:
        source = self._source
        claimed = self._claim()
        if claimed is not None:
            return [claimed]
        entries = self._connection.xreadgroup(
            source.stream, source.group, source.consumer, timeout, count
        )
        return [self._delivery(*entry, deliveries=1) for entry in entries]

    def _claim(self) -> Delivery | None:
        """Claim one entry pending longer than ``claim_idle_time``, if it is time to look."""
        source = self._source
        now = time.monotonic()
        if source.claim_idle_time is None or now < self._next_claim:
            return None
        for _ in range(_CLAIM_CALLS):
            self._claim_cursor, entry = self._connection.xautoclaim(
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
                self._connection.execute(XAck(source.stream, source.group, entry_id))
                continue
            deliveries = self._connection.deliveries(
                source.stream, source.group, entry_id
            )
            return self._delivery(entry_id, fields, deliveries=max(deliveries, 1))
        # More pending entries to scan: go on from the cursor soon, but not on
        # every fetch, which would slow down reading new entries.
        self._next_claim = now + _CLAIM_CHECK_MIN
        return None

    def _delivery(
        self, entry_id: bytes, fields: dict[bytes, bytes], *, deliveries: int
    ) -> Delivery:
        source = self._source
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

    def _can_retry(self, delivery: Delivery) -> bool:
        source = self._source
        return (
            source.claim_idle_time is not None
            and delivery.deliveries < source.max_deliveries
        )

    def _dead_letter(self, delivery: Delivery, error: BaseException) -> list[Command]:
        """Copy the entry to the dead-letter stream with why it failed, and acknowledge it."""
        source = self._source
        assert isinstance(delivery.ack, XAck)
        reason = f"{type(error).__name__}: {describe(error)}"
        return [
            XAdd(
                source.dead_letter,
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
