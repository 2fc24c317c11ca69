"""List consumer: ``BLPOP`` from the left of a list that producers ``RPUSH`` to.

A popped item is gone from Redis, which is why the consume loop only pops
when a worker is free to start on it at once.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from redis_rpc._consumer import Consumer, Delivery

if TYPE_CHECKING:
    from redis_rpc._schemas import ListSub


class ListConsumer(Consumer):
    """Consumes one list, first in, first out."""

    def _open(self) -> None:
        self._connection.ping()

    def _fetch(self, timeout: float) -> Delivery | None:
        source: ListSub = self.subscriber.source  # type: ignore[assignment]
        payload = self._connection.blpop(source.list, timeout)
        return None if payload is None else Delivery(payload)
