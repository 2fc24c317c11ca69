"""Pub/Sub consumer: ``SUBSCRIBE``, or ``PSUBSCRIBE`` for a pattern.

Pub/Sub keeps nothing: a message published while no consumer is subscribed
is lost, and one that arrives while every worker is busy waits in the
socket until a slot frees up.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from redis_rpc._consumer import Consumer, Delivery
from redis_rpc._schemas import PubSub

if TYPE_CHECKING:
    from redis_rpc._redis import Subscription
    from redis_rpc._schemas import PubSub


class ChannelConsumer(Consumer):
    """Consumes one channel or pattern; its thread owns the subscription."""

    @property
    def _source(self) -> PubSub:
        source = self.subscriber.source
        # The broker picks the consumer class by the source type.
        assert isinstance(source, PubSub)
        return source

    _subscription: Subscription | None = None

    def _open(self) -> None:
        source = self._source
        self._subscription = self._connection.subscription()
        # Confirming may take a while on a loaded server; allow several polls.
        self._subscription.subscribe(
            source.channel, pattern=source.pattern, timeout=10 * self._poll_interval
        )

    def _fetch(self, timeout: float, count: int) -> list[Delivery]:
        # One at a time: messages not read yet wait in the socket anyway.
        assert self._subscription is not None
        message = self._subscription.get_message(timeout)
        return [] if message is None else [Delivery(message[1])]

    def _close(self) -> None:
        if self._subscription is not None:
            self._subscription.close()
            self._subscription = None
