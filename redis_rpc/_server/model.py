"""The records the server side passes around: what was declared, the broker's policy, a delivery, what its processing decided."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Protocol

import attrs

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from redis_rpc._hooks import Hook
    from redis_rpc._io.commands import Command
    from redis_rpc._server.handler import Handler
    from redis_rpc._wire.schemas import Destination


@attrs.frozen
class Subscriber:
    """A handler registered for one source, as declared by ``@broker.subscriber``."""

    source: Destination
    handler: Handler
    no_reply: bool
    max_workers: int
    publishers: tuple[Destination, ...] = ()
    # Sees each result built for a publisher: TestRedisBroker's publisher mocks.
    observe: Callable[[Command], object] | None = None


@attrs.frozen
class Policy:
    """What the broker decides for all its subscribers."""

    max_message_size: int | None = None
    send_tracebacks: bool = False
    # Incoming requests and events must be signed with it, and all we send is.
    signing_key: bytes | None = attrs.field(default=None, kw_only=True, repr=False)
    # Run around every handler call; see _hooks.
    hooks: tuple[Hook, ...] = attrs.field(default=(), kw_only=True)
    # Whether replies may go to a caller's sharded reply channel (a cluster).
    cluster: bool = attrs.field(default=False, kw_only=True)
    # Seconds the reply of a keyed message is kept, for its duplicates.
    idempotency_ttl: float = attrs.field(default=86_400.0, kw_only=True)


@attrs.frozen
class Delivery:
    """One message taken out of Redis, and how to acknowledge it, if at all.

    Attributes:
        payload: The message as stored.
        ack: The command that settles it once it is done with, if any.
        where: Where to find it again in a log line, such as ``"entry 1-0"``.
        deliveries: How many times it has been handed to a consumer, this one included.
        path: The values of the channel template's placeholders, if any
            (see ``RedisMessage.path``).
        slot: Whether it holds one of its consumer's worker slots; one read
            ahead of the free workers (``ListSub(prefetch=...)``) takes one
            before it starts.
        channel: For a pattern subscriber, the channel the message arrived
            on; ``""`` for any other.
    """

    payload: bytes
    ack: Command | None = None
    where: str = ""
    deliveries: int = 1
    path: Mapping[str, str] | None = None
    slot: bool = True
    channel: str = ""


class Settlement(Protocol):
    """What a transport does with a message that failed; lists and streams differ."""

    def can_retry(self, delivery: Delivery) -> bool:
        """Whether leaving *delivery* unsettled gets it delivered again."""

    def dead_letter(self, delivery: Delivery, error: BaseException) -> list[Command]:
        """The commands that set aside a message that will never succeed."""


class AckOnly:
    """The settlement of a transport that keeps nothing to retry: a failed message is only acknowledged."""

    def can_retry(self, delivery: Delivery) -> bool:
        return False

    def dead_letter(self, delivery: Delivery, error: BaseException) -> list[Command]:
        return [] if delivery.ack is None else [delivery.ack]


@attrs.frozen
class Processed:
    """What ``Processor.run()`` decided for one message.

    Attributes:
        commands: What to send, in order.
        atomic: Whether they must run as one transaction (a dead letter
            and its acknowledgement).
        outcome: For the counters: ``"handled"``, ``"failed"``,
            ``"rejected"`` (unreadable or invalid), ``"refused"`` (bad
            signature), ``"expired"`` (its caller had stopped waiting),
            ``"cancelled"`` (its caller cancelled it), ``"shed"`` (its
            caller would stop waiting before the handler typically ends) or
            ``"replayed"`` (a duplicate of a keyed message, answered with
            the stored reply).
        dead: Whether it moved to a dead-letter list or stream.
        seconds: Spent in the handler.
        reply_by: The Unix time until which the caller waits for the
            reply, when it said (its deadline); ``None`` otherwise.
    """

    commands: list[Command]
    atomic: bool = False
    outcome: str = "rejected"
    dead: bool = False
    seconds: float = 0.0
    reply_by: float | None = None

    def send_by(self) -> float | None:
        """The ``time.monotonic()`` time until which sending the commands is of use to the caller; ``None`` when unknown.

        A reply must not be given up sooner, whatever befell this process
        meanwhile (a stall longer than ``socket_timeout``, say): the caller
        still waits for it.
        """
        if self.reply_by is None:
            return None
        return time.monotonic() + (self.reply_by - time.time())
