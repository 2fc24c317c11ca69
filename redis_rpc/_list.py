"""List consumer: ``BLPOP`` from the left of a list that producers ``RPUSH`` to.

A popped item is gone from Redis, which is why the consume loop only pops
when a worker is free to start on it at once.
"""

from __future__ import annotations

from redis_rpc._consumer import Consumer, Delivery
from redis_rpc._schemas import ListSub


class ListConsumer(Consumer):
    """Consumes one list, first in, first out."""

    @property
    def _source(self) -> ListSub:
        source = self.subscriber.source
        # The broker picks the consumer class by the source type.
        assert isinstance(source, ListSub)
        return source

    def _open(self) -> None:
        self._connection.ping()

    def _fetch(self, timeout: float) -> Delivery | None:
        source = self._source
        payload = self._connection.blpop(source.list, timeout)
        return None if payload is None else Delivery(payload)
