"""Stream consumer: ``XREADGROUP`` through a consumer group, ``XACK`` after the reply.

Every server process that names the same group shares the stream's work,
and each entry is handled by one of them. An entry whose handler raised is
not acknowledged, so it stays in the group's pending list.
"""

from __future__ import annotations

import json

from redis_rpc._consumer import Consumer, Delivery
from redis_rpc._redis import STREAM_DATA_FIELD, XAck
from redis_rpc._schemas import StreamSub


class StreamConsumer(Consumer):
    """Consumes one stream as one named consumer of its group."""

    @property
    def _source(self) -> StreamSub:
        source = self.subscriber.source
        # The broker picks the consumer class by the source type.
        assert isinstance(source, StreamSub)
        return source

    def _open(self) -> None:
        source = self._source
        self._connection.ensure_group(source.stream, source.group)

    def _fetch(self, timeout: float) -> Delivery | None:
        source = self._source
        entry = self._connection.xreadgroup(
            source.stream, source.group, source.consumer, timeout
        )
        if entry is None:
            return None
        entry_id, fields = entry
        payload = fields.get(STREAM_DATA_FIELD)
        if payload is None:
            # Not written by FastStream or us: hand over all fields as JSON, as FastStream does.
            payload = json.dumps(
                {
                    k.decode(errors="replace"): v.decode(errors="replace")
                    for k, v in fields.items()
                }
            ).encode()
        return Delivery(payload, XAck(source.stream, source.group, entry_id))
