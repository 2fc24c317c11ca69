"""Idempotency keys: a keyed message's handler runs at most once, and duplicates get its reply.

A caller that sends ``request(..., idempotency_key="order-42")`` (or
``publish()`` with one) may retry, and a stream entry or a reliable list's
item may be delivered again after a crash: per destination and key, the
handler runs once. Before it runs, the server claims a record in Redis
(one script call, ``scripts.IDEMPOTENCY_CLAIM``); once it returned, its
reply is stored in the record (a second call, waited for before the reply
and the acknowledgement go out) and kept for the broker's
``idempotency_ttl``. A duplicate that comes after gets the stored reply,
under its own correlation id; one that comes while the handler runs waits
for it, polling, until its own caller's deadline. A handler that raised
stores nothing and frees the record: a retry runs again.

The claim lasts the caller's deadline and ``LEASE_MARGIN`` more (``LEASE``
without a deadline): should the server die meanwhile, a duplicate runs the
handler once the claim has run out. A handler that outlives its claim can
run twice.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import TYPE_CHECKING

import attrs

from redis_rpc._io.commands import (
    IdempotencyClaim,
    IdempotencyRelease,
    IdempotencyStore,
)
from redis_rpc._wire.message import CORRELATION_ID

if TYPE_CHECKING:
    from redis_rpc._io.commands import Command
    from redis_rpc._io.interfaces import Connection
    from redis_rpc._wire.message import RedisMessage

# The claim of a handler whose caller set a deadline outlasts it by this much
# (seconds); one without a deadline lasts LEASE.
LEASE_MARGIN = 30.0
LEASE = 300.0
# A duplicate that waits for the handler to finish looks again this often,
# doubling up to the second figure (seconds).
_POLL_FIRST, _POLL_MOST = 0.02, 0.5


@attrs.frozen
class Claim:
    """What the claim of a keyed message found.

    Attributes:
        run: This server runs the handler, and owns the record meanwhile.
        data: The body of the stored reply, when a handler finished with the key.
        headers: That reply's headers, its correlation id left out.
        record: The record's key; ``owner``: who claimed it.
    """

    record: str
    owner: str
    run: bool
    data: bytes = b""
    headers: dict[str, str] = attrs.field(factory=dict)

    def store(self, data: bytes, headers: dict[str, str], ttl: float) -> Command:
        """The command that stores the handler's reply, *data* with *headers*, for *ttl* seconds."""
        kept = {k: v for k, v in headers.items() if k != CORRELATION_ID}
        return IdempotencyStore(
            self.record, self.owner, data, json.dumps(kept), _ms(ttl)
        )

    def release(self) -> Command:
        """The command that frees the record: the handler raised, so a retry runs again."""
        return IdempotencyRelease(self.record, self.owner)


def record_key(destination: str, key: str) -> str:
    """The record of *key* on *destination* (a single key: on one slot of a cluster)."""
    return f"redis_rpc:idempotency:{destination}:{key}"


def claim(
    connection: Connection, destination: str, message: RedisMessage, *, ttl: float
) -> Claim | None:
    """Claim *message*'s key, or wait for the handler that holds it; None once its caller left.

    Raises:
        RedisRPCError: Redis could not be asked; the message is left for
            another delivery, as after any failure of its processing.
    """
    record = record_key(destination, message.idempotency_key)
    owner = uuid.uuid4().hex
    pause = _POLL_FIRST
    while True:
        deadline = message.deadline
        lease = LEASE if deadline is None else deadline - time.time() + LEASE_MARGIN
        found = connection.execute(
            IdempotencyClaim(record, owner, _ms(min(lease, ttl)))
        )
        state = found[0]
        if state == b"run":
            return Claim(record, owner, run=True)
        if state == b"done":
            headers = json.loads(found[2] or b"{}")
            return Claim(
                record, owner, run=False, data=found[1] or b"", headers=headers
            )
        # Another server runs it: wait for its reply, while our caller waits.
        if message.cancelled.wait(pause):
            return None
        pause = min(2 * pause, _POLL_MOST)


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))
