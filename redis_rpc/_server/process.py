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

import collections.abc
import logging
import threading
import time
from typing import TYPE_CHECKING, Any, NoReturn

import attrs

from redis_rpc import _context
from redis_rpc._hooks import Event, SubscriberCounter, around, tell_dropped
from redis_rpc._io.commands import RPush, XAdd
from redis_rpc._server import idempotency
from redis_rpc._server.model import AckOnly, Processed
from redis_rpc._server.replies import Replier, Streamed
from redis_rpc._wire.codec import MAGIC
from redis_rpc._wire.message import (
    CORRELATION_ID,
    REFUSED_EXPIRED,
    REFUSED_SERVER_HAS_NO_KEY,
    RedisMessage,
    Response,
)
from redis_rpc._wire.schemas import PubSub
from redis_rpc._wire.signing import Problem, check_request
from redis_rpc.errors import (
    MessageDecodeError,
    MessageTooLargeError,
    OverloadedError,
    RedisRPCError,
    ValidationError,
)

if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping

    from redis_rpc._io.commands import Command
    from redis_rpc._io.interfaces import Connection
    from redis_rpc._server.cancel import Cancellations
    from redis_rpc._server.model import Delivery, Policy, Settlement, Subscriber

logger = logging.getLogger(__name__)


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
        self._replies = Replier(subscriber, policy, name=name)
        self.counter = SubscriberCounter()  # read by broker.stats()
        # What each thread running a handler is busy with, by thread id,
        # for the warning about handlers that overrun close(). Each thread
        # writes only its own key.
        self._busy: dict[int, str] = {}

    def busy(self) -> list[str]:
        """What the handlers still running are busy with, one line each."""
        return list(self._busy.values())

    def dropped(self, count: int) -> None:
        """Count *count* messages dropped unhandled, and tell the hooks that count drops."""
        self.counter.dropped(count)
        if self._policy.hooks:
            tell_dropped(self._policy.hooks, str(self.subscriber.source), count)

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
            reply = (
                [] if self._policy.signing_key else self._replies.error(message, exc)
            )
            return self._set_aside(delivery, exc, reply)
        except Exception as exc:  # noqa: BLE001 - unreadable, so no reply_to to answer on
            self._log_rejected(delivery, None, exc)
            return self._set_aside(delivery, exc, [])
        logger.debug("%s received %r", self.name, message)
        key = self._policy.signing_key
        if key is not None:
            problem = check_request(delivery.payload, key, self._destination(delivery))
        elif message.signed and message.nonce:
            # Its caller takes signed replies only, which we cannot make.
            problem = Problem(
                "it is signed, and this server has no signing_key to check it or to sign the reply",
                REFUSED_SERVER_HAS_NO_KEY,
            )
        else:
            problem = None
        if problem is not None:
            logger.warning(
                "%s refused %s (correlation_id=%r): %s",
                self.name,
                delivery.where or "a message",
                message.correlation_id,
                problem.reason,
            )
            # Only a refusal that blames the keys is answered, unsigned:
            # otherwise reply_to is as untrusted as the rest of the message.
            refusal = (
                self._replies.refusal(message, problem.refusal)
                if problem.refusal
                else []
            )
            return Processed(
                refusal + settle, outcome="refused", reply_by=message.deadline
            )
        now = time.time()
        if message.deadline is not None and message.deadline < now:
            logger.warning(
                "%s skipped %s (correlation_id=%r): its caller stopped waiting %.3f s ago",
                self.name,
                delivery.where or "a request",
                message.correlation_id,
                now - message.deadline,
            )
            # The caller hears of it, in case it still waits: it then knows
            # that the clocks of its host and ours differ.
            notice = self._replies.refusal(message, f"{REFUSED_EXPIRED} {now:.3f}")
            return Processed(notice + settle, outcome="expired")
        if (shed := self._shed(message)) is not None:
            logger.info(
                "%s shed %s (correlation_id=%r): %s",
                self.name,
                delivery.where or "a request",
                message.correlation_id,
                shed,
            )
            return Processed(
                self._replies.error(message, shed) + settle,
                outcome="shed",
                reply_by=message.deadline,
            )
        try:
            args, kwargs = handler.arguments(message)
        except (MessageDecodeError, MessageTooLargeError, ValidationError) as exc:
            self._log_rejected(delivery, message, exc)
            if self._policy.hooks:  # FastStream counts it as a process that failed
                self._failed_process(message, exc)
            done = self._set_aside(delivery, exc, self._replies.error(message, exc))
            return attrs.evolve(done, reply_by=message.deadline)
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
        # A streamed reply cannot be stored whole: its key is not heeded.
        if not message.idempotency_key or message.streams or connection is None:
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
                self._replies.answer(
                    message,
                    claim.data,
                    {**claim.headers, CORRELATION_ID: message.correlation_id},
                )
                if replied
                else []
            )
            return Processed(
                reply + settle, outcome="replayed", reply_by=message.deadline
            )
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
        streamed = [0]  # items of a generator handler sent one reply each so far
        result: Any = None  # the handler's, once it returned

        def call() -> list[Command]:
            nonlocal seconds, result
            result = handler.func(*args, **kwargs)
            if isinstance(result, collections.abc.Iterator):  # a generator handler
                result = self._items(message, result, reply_headers, streamed)
            seconds = time.monotonic() - began
            return self._replies.outgoing(message, result, reply_headers)

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
            return Processed(
                commands + settle,
                outcome="handled",
                seconds=seconds,
                reply_by=message.deadline,
            )
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
            reply = self._replies.error(
                message, exc, end=streamed[0] if message.streams else None
            )
            if reply:  # the caller has its answer: retrying would help nobody
                return Processed(
                    reply + settle,
                    outcome="failed",
                    seconds=seconds,
                    reply_by=message.deadline,
                )
            if self._settlement.can_retry(delivery):  # left unsettled, to come again
                return Processed([], outcome="failed", seconds=seconds)
            done = self._set_aside(delivery, exc, [])
            return attrs.evolve(done, outcome="failed", seconds=seconds)

    def _items(
        self,
        message: RedisMessage,
        items: Iterator[Any],
        extra_headers: Mapping[str, str],
        streamed: list[int],
    ) -> Any:
        """A generator handler's items: one reply each, sent as they come, to a caller that streams.

        Any other caller (``request()``, a FastStream caller, a
        ``publish()``) gets one reply, the list of every item. Between
        items, a stream whose caller gave up is cut short, and the
        generator closed. *streamed* counts the items sent.
        """
        connection = self._connection
        if not (
            message.streams
            and message.reply_to
            and not self.subscriber.no_reply
            and connection is not None
        ):
            return list(items)
        try:
            for item in items:
                if message.cancelled.is_set():
                    break
                connection.post(
                    self._replies.chunk(message, streamed[0], item, extra_headers),
                    what=f"a streamed reply of {self.name}",
                )
                streamed[0] += 1
        finally:
            close = getattr(items, "close", None)
            if close is not None:
                close()
        return Streamed(streamed[0])

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
        data, headers = self._replies.result_parts(message, response, extra_headers)
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

    def _destination(self, delivery: Delivery) -> str:
        """Where *delivery* was read from, as its sender names it (``str()`` of a destination)."""
        source = self.subscriber.source
        if delivery.channel and isinstance(source, PubSub):
            return str(PubSub(delivery.channel, sharded=source.sharded, pattern=False))
        return str(source)

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


def _excerpt(data: bytes, limit: int = 40) -> str:
    """The start of *data* for a log line: quoted and escaped as by ``ascii()``, at most *limit* characters and ``...``."""
    whole = data[: limit + 1].decode(errors="replace")
    text = whole[:limit]
    while len(ascii(text)) > limit:  # escapes lengthen it; a rejected message is rare
        text = text[:-1]
    return ascii(text) + ("..." if len(text) < len(whole) else "")
