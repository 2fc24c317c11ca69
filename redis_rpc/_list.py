"""List consumer: ``BLPOP`` from the left of a list that producers ``RPUSH`` to.

By default a popped item is gone from Redis (at most once), which is why the
consume loop only pops when a worker is free to start on it at once.

In reliable mode (at least once) each item is moved with ``BLMOVE`` into a
processing list of its consumer and removed with ``LREM``, in the same round
trip as the reply, after the handler finished. An item that fails with no
caller to tell, or can never succeed, moves to the dead-letter list instead. For list ``L`` and a consumer
id ``C`` the keys are:

- ``L:redis_rpc:consumers``: a set of the ids that may hold items of ``L``;
- ``L:redis_rpc:processing:C``: the items ``C`` took and has not finished;
- ``L:redis_rpc:alive:C``: ``C``'s heartbeat, which expires after
  ``recover_after`` seconds unless the broker's heartbeat thread refreshes
  it (a thread of its own, so that a long handler on the consumer thread
  does not make ``C`` look dead).

On start, and every ``recover_after`` seconds, a consumer moves the processing
list of every registered consumer without a heartbeat back to the head of
``L`` (a Lua script, so that check and move are one atomic step). A consumer
takes a new id each time it (re)connects, so an item whose ``BLMOVE`` answer
was lost with a connection is recovered the same way as a dead consumer's.
"""

from __future__ import annotations

import logging
import os
import socket
import time
import uuid
from typing import TYPE_CHECKING

from redis_rpc._consumer import Consumer, Delivery
from redis_rpc._heartbeat import Beat
from redis_rpc._redis import LRem, RPush
from redis_rpc._schemas import ListSub
from redis_rpc.errors import RedisCommandError

if TYPE_CHECKING:
    from redis_rpc._redis import Command

logger = logging.getLogger(__name__)


class ListConsumer(Consumer):
    """Consumes one list, first in, first out; reliably when its ``ListSub`` says so."""

    # State of the consumer thread alone; each instance sets its own copies.
    _id = ""  # this connection's consumer id; set by _open() in reliable mode
    _batching = True  # whether Redis has BLMPOP, until it says otherwise
    _next_recovery = 0.0  # time.monotonic() of the next recovery

    @property
    def _source(self) -> ListSub:
        source = self.subscriber.source
        # The broker picks the consumer class by the source type.
        assert isinstance(source, ListSub)
        return source

    def _key(self, kind: str, consumer: str = "") -> str:
        return self._connection.companion(
            self._source.list,
            f":redis_rpc:{kind}" + (f":{consumer}" if consumer else ""),
        )

    def _open(self) -> None:
        if not self._source.reliable:
            self._connection.ping()
            return
        self._id = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._beat()
        self._recover()

    def _step(self) -> None:
        if self._source.reliable and time.monotonic() >= self._next_recovery:
            self._recover()
        super()._step()

    def _fetch(self, timeout: float, count: int) -> list[Delivery]:
        source = self._source
        if source.reliable:  # BLMOVE moves one item at a time
            processing = self._key("processing", self._id)
            payload = self._reads().blmove(
                source.list, processing, timeout, owed=self._owed
            )
            return (
                []
                if payload is None
                else [Delivery(payload, LRem(processing, payload))]
            )
        if count > 1 and self._batching:
            try:
                payloads = self._reads().blmpop(
                    source.list, timeout, count, owed=self._owed
                )
            except RedisCommandError as exc:  # Redis before 7.0 has no BLMPOP
                if "unknown command" not in str(exc).lower():
                    raise
                self._batching = False
            else:
                return [Delivery(payload) for payload in payloads]
        payload = self._reads().blpop(source.list, timeout, owed=self._owed)
        return [] if payload is None else [Delivery(payload)]

    def _dead_letter(self, delivery: Delivery, error: BaseException) -> list[Command]:
        """In reliable mode, move the item out of the processing list to the dead-letter list."""
        if delivery.ack is None:  # popped: nothing is left in Redis to move
            return []
        return [RPush(self._dead_letter_key(), delivery.payload), delivery.ack]

    def _beat(self) -> None:
        """Have the heartbeat thread keep this id alive, in place of the previous one."""
        heartbeat = self._heartbeat
        assert heartbeat is not None, (
            "the broker gives reliable list consumers a heartbeat"
        )
        heartbeat.register(
            self,
            Beat(
                alive=self._key("alive", self._id),
                ttl=self._source.recover_after,
                registry=self._key("consumers"),
                member=self._id,
            ),
        )

    def _recover(self) -> None:
        """Hand the in-flight items of every consumer that has died back to the list."""
        source = self._source
        for member in self._connection.members(self._key("consumers")):
            if member == self._id:
                continue
            moved = self._connection.requeue_if_dead(
                alive=self._key("alive", member),
                processing=self._key("processing", member),
                source=source.list,
                registry=self._key("consumers"),
                member=member,
            )
            if moved:
                logger.warning(
                    "%s moved %d unfinished item(s) of dead consumer %s back to the list",
                    self.name,
                    moved,
                    member,
                )
        self._next_recovery = time.monotonic() + source.recover_after
