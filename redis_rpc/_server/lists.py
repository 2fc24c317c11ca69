"""Lists: ``BLPOP`` from the left of a list that producers ``RPUSH`` to.

By default a popped item is gone from Redis (at most once), which is why the
consume loop only pops when a worker is free to start on it at once.
``ListSource`` is a list's side of a ``FetchingConsumer``.

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

from redis_rpc._io.commands import LRem, RPush
from redis_rpc._io.interfaces import Beat
from redis_rpc._server.fetch import dead_letter_key
from redis_rpc._server.model import Delivery
from redis_rpc.errors import RedisCommandError

if TYPE_CHECKING:
    from redis_rpc._io.commands import Command
    from redis_rpc._io.interfaces import Backend, Owed, Reader
    from redis_rpc._server.heartbeat import Heartbeat
    from redis_rpc._wire.schemas import ListSub

logger = logging.getLogger(__name__)


class ListSource:
    """Takes the items of one list, first in, first out; reliably when its ``ListSub`` says so.

    Implements ``_server.fetch.Source``; used by its consumer's thread alone.

    Args:
        source: The list and how it is consumed.
        backend: Where the list is.
        heartbeat: Keeps this consumer's id alive, in reliable mode.
        name: For log lines.
    """

    def __init__(
        self, source: ListSub, backend: Backend, heartbeat: Heartbeat, *, name: str
    ) -> None:
        self._source = source
        self._backend = backend
        self._heartbeat = heartbeat
        self._name = name
        self.key = source.list
        self.prefetch = source.prefetch
        self.keeps_read = False  # an item read is gone from Redis
        self._id = ""  # this connection's consumer id; set by open() in reliable mode
        self._batching = True  # whether Redis has BLMPOP, until it says otherwise
        self._next_recovery = 0.0  # time.monotonic() of the next recovery

    def _key(self, kind: str, consumer: str = "") -> str:
        return self._backend.companion(
            self._source.list,
            f":redis_rpc:{kind}" + (f":{consumer}" if consumer else ""),
        )

    def open(self) -> None:
        if not self._source.reliable:
            self._backend.ping()
            return
        self._id = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._beat()
        self._recover()

    def maintain(self) -> None:
        if self._source.reliable and time.monotonic() >= self._next_recovery:
            self._recover()

    def probes(self) -> list[Command]:
        return []

    def fetch(
        self, reader: Reader, owed: Owed, timeout: float, count: int
    ) -> list[Delivery]:
        source = self._source
        if source.reliable:  # BLMOVE moves one item at a time
            processing = self._key("processing", self._id)
            payload = reader.blmove(source.list, processing, timeout, owed=owed)
            return (
                []
                if payload is None
                else [Delivery(payload, LRem(processing, payload))]
            )
        if count > 1 and self._batching:
            try:
                payloads = reader.blmpop(source.list, timeout, count, owed=owed)
            except RedisCommandError as exc:  # Redis before 7.0 has no BLMPOP
                if exc.reason != "unknown_command":
                    raise
                self._batching = False
            else:
                return [Delivery(payload) for payload in payloads]
        payload = reader.blpop(source.list, timeout, owed=owed)
        return [] if payload is None else [Delivery(payload)]

    def can_retry(self, delivery: Delivery) -> bool:
        return False

    def dead_letter(self, delivery: Delivery, error: BaseException) -> list[Command]:
        """In reliable mode, move the item out of the processing list to the dead-letter list."""
        if delivery.ack is None:  # popped: nothing is left in Redis to move
            return []
        key = dead_letter_key(self._backend, self._source)
        return [RPush(key, delivery.payload), delivery.ack]

    def _beat(self) -> None:
        """Have the heartbeat thread keep this id alive, in place of the previous one."""
        self._heartbeat.register(
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
        admin = self._backend.admin
        for member in admin.members(self._key("consumers")):
            if member == self._id:
                continue
            moved = admin.requeue_if_dead(
                alive=self._key("alive", member),
                processing=self._key("processing", member),
                source=source.list,
                registry=self._key("consumers"),
                member=member,
            )
            if moved:
                logger.warning(
                    "%s moved %d unfinished item(s) of dead consumer %s back to the list",
                    self._name,
                    moved,
                    member,
                )
        self._next_recovery = time.monotonic() + source.recover_after
