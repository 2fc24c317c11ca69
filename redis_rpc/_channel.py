"""Pub/Sub consumer: ``SUBSCRIBE``, or ``PSUBSCRIBE`` for a pattern.

Pub/Sub keeps nothing: a message published while no consumer is subscribed
is lost, and one that arrives while every worker is busy waits in the
socket until a slot frees up.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from redis_rpc._consumer import Consumer, Delivery

if TYPE_CHECKING:
    from redis_rpc._redis import Subscription
    from redis_rpc._schemas import PubSub


class ChannelConsumer(Consumer):
    """Consumes one channel or pattern; its thread owns the subscription."""

    _subscription: Subscription | None = None

    def _open(self) -> None:
        source: PubSub = self.subscriber.source  # type: ignore[assignment]
        self._subscription = self._connection.subscription()
        # Confirming may take a while on a loaded server; allow several polls.
        self._subscription.subscribe(
            source.channel, pattern=source.pattern, timeout=10 * self._poll_interval
        )

    def _fetch(self, timeout: float) -> Delivery | None:
        assert self._subscription is not None
        message = self._subscription.get_message(timeout)
        return None if message is None else Delivery(message[1])

    def _close(self) -> None:
        if self._subscription is not None:
            self._subscription.close()
            self._subscription = None
