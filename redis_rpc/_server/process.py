"""The processing of one message: what to send for it, whatever carried it.

``Processor.run()`` takes a ``Delivery`` (a message as taken out of Redis)
and returns the commands to send: the reply (or an error reply, to a
caller that understands one), the results for ``@broker.publisher``
destinations, the acknowledgement, or a dead letter. In between it checks
the size, parses the frame, checks the signature and the caller's deadline,
works out the handler's arguments and calls the handler inside the hooks.
It sends nothing and owns no thread: the list and stream consumers
(``_server.fetch``), the channel consumers (``_server.channels``) and
``TestRedisBroker`` (``_memory``) each run it and send what it returns
their own way. What a transport does with a failure (retry, dead letter)
is its ``Settlement``'s to say.
"""

from __future__ import annotations

import logging
import threading
import time
import traceback
import types
from typing import TYPE_CHECKING, Any, NoReturn, Protocol

import attrs

from redis_rpc import _context
from redis_rpc._hooks import Event, SubscriberCounter, around
from redis_rpc._io.commands import Publish, RPush, Set, XAdd, send_command
from redis_rpc._server import idempotency
from redis_rpc._wire.codec import MAGIC
from redis_rpc._wire.message import (
    CORRELATION_ID,
    NONCE,
    RedisMessage,
    RedisResponse,
    Response,
    check_size,
    error_frame_parts,
    frame_parts,
    kept_key,
)
from redis_rpc._wire.signing import check_request, signed_frame
from redis_rpc.errors import (
    MessageDecodeError,
    MessageTooLargeError,
    OverloadedError,
    RedisRPCError,
    ValidationError,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from redis_rpc._hooks import Hook
    from redis_rpc._io.commands import Command
    from redis_rpc._io.interfaces import Connection
    from redis_rpc._server.cancel import Cancellations
    from redis_rpc._server.handler import Handler
    from redis_rpc._wire.schemas import Destination

logger = logging.getLogger(__name__)

# What hooks add to a reply when there are none, or when none added anything.
_NO_HEADERS: Mapping[str, str] = types.MappingProxyType({})
# The longest a reply is kept for its caller, in seconds: the caller's
# deadline, unless it waits longer or for ever.
KEEP_MAX = 3600.0


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
    """

    payload: bytes
    ack: Command | None = None
    where: str = ""
    deliveries: int = 1
    path: Mapping[str, str] | None = None
    slot: bool = True


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
    """

    commands: list[Command]
    atomic: bool = False
    outcome: str = "rejected"
    dead: bool = False
    seconds: float = 0.0


class Processor:
    """Processes the messages of one subscriber. Safe to use from any number of threads at once.

    Args:
        subscriber: The handler and what it was declared with.
        policy: The broker's limits, signing key, hooks and topology.
        settlement: What the transport does with a failed message.
        name: Names the subscriber in log lines, as its thread is named.
        cancellations: The requests whose callers cancelled them: a handler
            of one is told (``RedisMessage.cancelled``), and one not
            started yet is skipped.
        connection: Claims the idempotency keys of keyed messages; without
            one, a key is not heeded.
    """

    def __init__(
        self,
        subscriber: Subscriber,
        policy: Policy,
        settlement: Settlement | None = None,
        *,
        name: str,
        cancellations: Cancellations | None = None,
        connection: Connection | None = None,
    ) -> None:
        self.subscriber = subscriber
        self.name = name
        self._policy = policy
        self._settlement = settlement or AckOnly()
        self._cancellations = cancellations
        self._connection = connection
        self.counter = SubscriberCounter()  # read by broker.stats()
        # What each thread running a handler is busy with, by thread id,
        # for the warning about handlers that overrun close(). Each thread
        # writes only its own key.
        self._busy: dict[int, str] = {}

    def busy(self) -> list[str]:
        """What the handlers still running are busy with, one line each."""
        return list(self._busy.values())

    def run(self, delivery: Delivery) -> Processed:
        """Process *delivery* on the calling thread, counting it; never raises but for a bug.

        The thread counts as running this handler meanwhile (see
        ``_context``); what it ran before is restored after, so calls
        nest, as when a handler's own ``request()`` is handled in memory.
        """
        before = _context.enter(
            _context.Running(self, self.subscriber.source, self.subscriber.max_workers)
        )
        self.counter.started()
        done = Processed([])
        try:
            done = self._process(delivery)
            return done
        finally:
            self.counter.finished(done.outcome, dead=done.dead, seconds=done.seconds)
            self._busy.pop(threading.get_ident(), None)
            _context.leave(before)

    def _process(self, delivery: Delivery) -> Processed:
        settle = [] if delivery.ack is None else [delivery.ack]
        handler = self.subscriber.handler
        try:  # the size comes first: an oversized payload is never parsed
            message = RedisMessage.from_payload(
                delivery.payload,
                handler.converter,
                max_size=self._policy.max_message_size,
                path=delivery.path,
            )
        except MessageTooLargeError as exc:
            message = RedisMessage.from_frame_headers(delivery.payload)
            self._log_rejected(delivery, message, exc)
            # With a key, an unverified reply_to gets nothing: it may not be the sender's.
            reply = [] if self._policy.signing_key else self._error_reply(message, exc)
            return self._set_aside(delivery, exc, reply)
        except Exception as exc:  # noqa: BLE001 - unreadable, so no reply_to to answer on
            self._log_rejected(delivery, None, exc)
            return self._set_aside(delivery, exc, [])
        logger.debug("%s received %r", self.name, message)
        key = self._policy.signing_key
        if key is not None and (problem := check_request(delivery.payload, key)):
            # No reply: its reply_to is as untrusted as the rest of it.
            logger.warning(
                "%s refused %s (correlation_id=%r): %s",
                self.name,
                delivery.where or "a message",
                message.correlation_id,
                problem,
            )
            return Processed(settle, outcome="refused")
        if message.deadline is not None and message.deadline < time.time():
            logger.warning(
                "%s skipped %s (correlation_id=%r): its caller stopped waiting %.3f s ago",
                self.name,
                delivery.where or "a request",
                message.correlation_id,
                time.time() - message.deadline,
            )
            return Processed(settle, outcome="expired")
        if (shed := self._shed(message)) is not None:
            logger.info(
                "%s shed %s (correlation_id=%r): %s",
                self.name,
                delivery.where or "a request",
                message.correlation_id,
                shed,
            )
            return Processed(self._error_reply(message, shed) + settle, outcome="shed")
        try:
            args, kwargs = handler.arguments(message)
        except (MessageDecodeError, MessageTooLargeError, ValidationError) as exc:
            self._log_rejected(delivery, message, exc)
            if self._policy.hooks:  # FastStream counts it as a process that failed
                self._failed_process(message, exc)
            return self._set_aside(delivery, exc, self._error_reply(message, exc))
        cancellations, reply_to = self._cancellations, message.reply_to
        if cancellations is None or not reply_to:
            return self._keyed(delivery, message, args, kwargs, settle)
        if not cancellations.start(reply_to, message.cancelled):
            logger.info(
                "%s skipped %s (correlation_id=%r): its caller cancelled it",
                self.name,
                delivery.where or "a request",
                message.correlation_id,
            )
            return Processed(settle, outcome="cancelled")
        try:
            return self._keyed(delivery, message, args, kwargs, settle)
        finally:
            cancellations.finish(reply_to)

    def _keyed(
        self,
        delivery: Delivery,
        message: RedisMessage,
        args: list[Any],
        kwargs: dict[str, Any],
        settle: list[Command],
    ) -> Processed:
        """Run the handler at most once per idempotency key (see ``_server.idempotency``)."""
        connection = self._connection
        if not message.idempotency_key or connection is None:
            return self._call(delivery, message, args, kwargs, settle)
        try:
            claim = idempotency.claim(
                connection,
                str(self.subscriber.source),
                message,
                ttl=self._policy.idempotency_ttl,
            )
        except RedisRPCError as exc:  # left unsettled: delivered again, if it can be
            logger.warning(
                "%s could not claim idempotency key %r of %s: %s",
                self.name,
                message.idempotency_key[:100],
                delivery.where or "a message",
                exc,
            )
            return Processed([], outcome="failed")
        if claim is None:
            logger.warning(
                "%s skipped %s (correlation_id=%r): its caller stopped waiting while another handler had its idempotency key",
                self.name,
                delivery.where or "a request",
                message.correlation_id,
            )
            return Processed(settle, outcome="expired")
        if not claim.run:  # a duplicate: the stored reply, under its own correlation id
            replied = bool(message.reply_to) and not self.subscriber.no_reply
            reply = (
                self._answer(
                    message,
                    claim.data,
                    {**claim.headers, CORRELATION_ID: message.correlation_id},
                )
                if replied
                else []
            )
            return Processed(reply + settle, outcome="replayed")
        done = self._call(delivery, message, args, kwargs, settle, claim=claim)
        if done.outcome != "handled":  # stores nothing: a retry runs again
            try:
                connection.post(
                    [claim.release()], what=f"the idempotency record of {self.name}"
                )
            except RedisRPCError as exc:
                logger.warning(
                    "%s could not free its idempotency record: %s", self.name, exc
                )
        return done

    def _shed(self, message: RedisMessage) -> OverloadedError | None:
        """Why to refuse *message* at once: its caller would stop waiting before the handler typically ends.

        Only for a subscriber that sheds load (``max_queued``), and only
        once the handler's typical run time is known.
        """
        source = self.subscriber.source
        typical = self.counter.typical
        if (
            getattr(source, "max_queued", None) is None
            or not message.accepts_errors  # FastStream callers are never refused
            or message.deadline is None
            or not typical
        ):
            return None
        left = message.deadline - time.time()
        if left >= typical:
            return None
        msg = f"{source} sheds the request: its caller stops waiting in {max(left, 0.0):.3f} s, and its handler typically takes {typical:.3f} s."
        return OverloadedError(msg, destination=str(source), retry_after=typical)

    def _call(
        self,
        delivery: Delivery,
        message: RedisMessage,
        args: list[Any],
        kwargs: dict[str, Any],
        settle: list[Command],
        *,
        claim: idempotency.Claim | None = None,
    ) -> Processed:
        """Call the handler inside the hooks, and build what it produced.

        With a *claim*, the reply is stored in its record, ahead of the reply.
        """
        handler = self.subscriber.handler
        _context.handling(message)  # for request() from inside the handler
        self._busy[threading.get_ident()] = (
            f"handler {handler.name} on {delivery.where or self.subscriber.source}"
            f" (correlation_id={message.correlation_id[:100]!r}, since {time.strftime('%H:%M:%S')})"
        )
        began = time.monotonic()
        seconds: float | None = None  # in the handler; None while it runs
        reply_headers: dict[str, str] = {}
        result: Any = None  # the handler's, once it returned

        def call() -> list[Command]:
            nonlocal seconds, result
            result = handler.func(*args, **kwargs)
            seconds = time.monotonic() - began
            return self._outgoing(message, result, reply_headers)

        try:
            if self._policy.hooks:
                # The reply is built inside the hooks, so that its span is the handler's child.
                event = self._event(message, reply_headers)
                commands = around(self._policy.hooks, event, call)
            else:
                commands = call()
            assert seconds is not None  # set once the handler returned
            if claim is not None:  # stored before any of the commands is sent
                self._store(message, claim, result, reply_headers)
            return Processed(commands + settle, outcome="handled", seconds=seconds)
        except BaseException as exc:  # even SystemExit must not end the thread
            if seconds is None:  # the handler raised, not _outgoing()
                seconds = time.monotonic() - began
            logger.exception(
                "Handler %s failed on %s from %s (correlation_id=%r, delivery %d)",
                handler.name,
                delivery.where or "a message",
                self.subscriber.source,
                message.correlation_id,
                delivery.deliveries,
            )
            reply = self._error_reply(message, exc)
            if reply:  # the caller has its answer: retrying would help nobody
                return Processed(reply + settle, outcome="failed", seconds=seconds)
            if self._settlement.can_retry(delivery):  # left unsettled, to come again
                return Processed([], outcome="failed", seconds=seconds)
            done = self._set_aside(delivery, exc, [])
            return attrs.evolve(done, outcome="failed", seconds=seconds)

    def _store(
        self,
        message: RedisMessage,
        claim: idempotency.Claim,
        result: Any,
        extra_headers: Mapping[str, str],
    ) -> None:
        """Store the reply in the claimed record before anything is sent, waiting for Redis.

        A server that dies once it stored, before it acknowledged the
        message, leaves a duplicate delivery the stored reply, and no
        second run.
        """
        response = result if isinstance(result, Response) else Response(result)
        data, headers = self._result_parts(message, response, extra_headers)
        assert self._connection is not None  # a claim was made through it
        try:
            stored = self._connection.execute(
                claim.store(data, headers, self._policy.idempotency_ttl)
            )
        except RedisRPCError as exc:
            logger.warning(
                "%s could not store the reply of idempotency key %r, so a duplicate would run the handler again: %s",
                self.name,
                message.idempotency_key[:100],
                exc,
            )
            return
        if not stored:
            logger.warning(
                "%s ran past the claim of idempotency key %r: another server may have run the handler too",
                self.name,
                message.idempotency_key[:100],
            )

    def _set_aside(
        self, delivery: Delivery, error: BaseException, reply: list[Command]
    ) -> Processed:
        """*reply*, then the transport's dead letter for a message that will never succeed."""
        dead_letter = self._settlement.dead_letter(delivery, error)
        dead = any(isinstance(c, (RPush, XAdd)) for c in dead_letter)
        return Processed(reply + dead_letter, atomic=True, dead=dead)

    def _event(self, message: RedisMessage, reply_headers: dict[str, str]) -> Event:
        """The hooks' event for processing *message*."""
        return Event(
            "process",
            str(self.subscriber.source),
            dict(message.headers),
            message.correlation_id,
            message,
            reply_headers=reply_headers,
        )

    def _failed_process(self, message: RedisMessage, error: Exception) -> None:
        """Have the hooks see a process of *message* that failed with *error* before the handler."""

        def fail() -> NoReturn:
            raise error

        try:
            around(self._policy.hooks, self._event(message, {}), fail)
        except Exception as exc:  # error itself, or a hook's own failure
            if exc is not error:
                logger.exception("%s: a hook failed", self.name)

    def _log_rejected(
        self, delivery: Delivery, message: RedisMessage | None, error: Exception
    ) -> None:
        # What it starts with, printable; a frame's own bytes say nothing to a reader.
        if message is not None:
            shown = message.body
        elif delivery.payload.startswith(MAGIC):
            shown = b""
        else:
            shown = delivery.payload
        logger.warning(
            "%s rejected %s (correlation_id=%r, %d bytes%s): %s",
            self.name,
            delivery.where or "a message",
            "" if message is None else message.correlation_id[:100],
            len(delivery.payload),
            f", body {_excerpt(shown)}" if shown else "",
            error,
        )

    def _error_reply(
        self, message: RedisMessage, error: BaseException
    ) -> list[Command]:
        """An error reply, if the caller understands one; FastStream callers get none."""
        if (
            not (message.reply_to and message.accepts_errors)
            or self.subscriber.no_reply
        ):
            return []
        limit = self._policy.max_message_size
        tb = traceback.format_exc() if self._policy.send_tracebacks else None
        for brief in (False, True):  # say less rather than nothing, but never too much
            try:
                frame = signed_frame(
                    *error_frame_parts(
                        error,
                        correlation_id=message.correlation_id,
                        traceback=None if brief else tb,
                        brief=brief,
                    ),
                    self._policy.signing_key,
                    reply_to_nonce=message.nonce or None,
                )
            except (TypeError, ValueError):  # a header the frame format cannot hold
                continue
            if limit is None or len(frame) <= limit:
                return self._reply(message, frame)
        logger.warning(
            "%s could not fit an error reply to %r within max_message_size",
            self.name,
            message.correlation_id[:100],
        )
        return []

    def _outgoing(
        self,
        message: RedisMessage,
        result: Any,
        extra_headers: Mapping[str, str] = _NO_HEADERS,
    ) -> list[Command]:
        """The reply and the results for publishers; *extra_headers* are the hooks'."""
        reply = bool(message.reply_to) and not self.subscriber.no_reply
        if not (reply or self.subscriber.publishers):
            return []
        response = result if isinstance(result, Response) else Response(result)
        maxlen = response.maxlen if isinstance(response, RedisResponse) else None
        key = self._policy.signing_key
        commands: list[Command] = []
        if self.subscriber.publishers:  # new events: no nonce, signed as events
            event = signed_frame(
                *self._result_parts(message, response, extra_headers), key
            )
            check_size(event, self._policy.max_message_size, "The handler's result")
            sent = [
                send_command(dest, event, maxlen) for dest in self.subscriber.publishers
            ]
            if self.subscriber.observe is not None:
                for command in sent:
                    self.subscriber.observe(command)
            commands += sent
        if reply and self._policy.hooks:  # a span for sending it, as FastStream makes
            sending = Event(
                "reply",
                f"channel:{message.reply_to}",
                dict(extra_headers),
                response.correlation_id or message.correlation_id,
            )
            commands += around(
                self._policy.hooks,
                sending,
                lambda: self._reply_to(message, response, sending.headers),
            )
        elif reply:
            commands += self._reply_to(message, response, extra_headers)
        return commands

    def _reply_to(
        self,
        message: RedisMessage,
        response: Response,
        extra_headers: Mapping[str, str],
    ) -> list[Command]:
        """The commands that send *response* back to *message*'s caller; *extra_headers* are the hooks'."""
        return self._answer(
            message, *self._result_parts(message, response, extra_headers)
        )

    def _answer(
        self, message: RedisMessage, data: bytes, headers: dict[str, str]
    ) -> list[Command]:
        """The commands that send the reply *data* with *headers* (taken over) to *message*'s caller.

        The reply echoes the request's nonce, and is signed over it.
        """
        key = self._policy.signing_key
        if message.nonce:
            headers[NONCE] = message.nonce
        # Without a nonce nobody waits in request(): the result of a
        # publish(reply_to=...) is an event for that channel's subscribers.
        frame = signed_frame(
            data,
            headers,
            key,
            # Without a key, a user header named like the signature stays.
            reply_to_nonce=(message.nonce or None) if key is not None else None,
        )
        check_size(frame, self._policy.max_message_size, "The handler's result")
        return self._reply(message, frame)

    def _reply(self, message: RedisMessage, frame: bytes) -> list[Command]:
        """The commands that send *frame* back to *message*'s caller.

        In a cluster, a redis_rpc caller's sharded reply channel gets it,
        prefixed by the reply channel, which says who waits for it. A
        caller that asked for it (``keep``) also finds it under its kept
        key until its deadline, written first: a reply that its lost
        subscription missed is there by the time it could look.
        """
        if message.reply_shard and self._policy.cluster:
            data = message.reply_to.encode() + b" " + frame
            publish = Publish(message.reply_shard, data, sharded=True)
        else:
            publish = Publish(message.reply_to, frame)
        key = kept_key(message.reply_to) if message.keep else None
        if key is None:
            return [publish]
        left = KEEP_MAX if message.deadline is None else message.deadline - time.time()
        if left <= 0:  # its caller has stopped waiting
            return [publish]
        return [Set(key, frame, max(1, round(min(left, KEEP_MAX) * 1000))), publish]

    def _result_parts(
        self,
        message: RedisMessage,
        response: Response,
        extra_headers: Mapping[str, str],
    ) -> tuple[bytes, dict[str, str]]:
        return frame_parts(
            response.body,
            correlation_id=response.correlation_id or message.correlation_id,
            headers={**extra_headers, **response.headers}
            if extra_headers
            else response.headers,
            converter=self.subscriber.handler.converter,
        )


def _excerpt(data: bytes, limit: int = 40) -> str:
    """The start of *data* for a log line: quoted and escaped as by ``ascii()``, at most *limit* characters and ``...``."""
    whole = data[: limit + 1].decode(errors="replace")
    text = whole[:limit]
    while len(ascii(text)) > limit:  # escapes lengthen it; a rejected message is rare
        text = text[:-1]
    return ascii(text) + ("..." if len(text) < len(whole) else "")
