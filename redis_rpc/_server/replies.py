"""What a subscriber sends back for a message: its reply or error reply, kept replies, results for publishers, stream chunks.

The processing of a message (``_server.process``) decides what happened;
``Replier`` turns it into commands: frames built, signed and size-checked,
addressed to the caller's reply channel (or its sharded reply channel in a
cluster), the reply kept under the caller's key when it asked, and the
results sent on to the subscriber's ``@broker.publisher`` destinations.
"""

from __future__ import annotations

import logging
import time
import traceback
import types
from typing import TYPE_CHECKING, Any

import attrs

from redis_rpc._hooks import Event, around
from redis_rpc._io.commands import Publish, Set, send_command
from redis_rpc._wire.message import (
    CHUNK,
    CORRELATION_ID,
    DESTINATION,
    END,
    KEY_REFUSALS,
    NONCE,
    RedisResponse,
    Response,
    check_size,
    error_frame_parts,
    frame_parts,
    kept_key,
    refusal_frame_parts,
)
from redis_rpc._wire.schemas import PubSub
from redis_rpc._wire.signing import signed_frame

if TYPE_CHECKING:
    from collections.abc import Mapping

    from redis_rpc._io.commands import Command
    from redis_rpc._server.model import Policy, Subscriber
    from redis_rpc._wire.message import RedisMessage

logger = logging.getLogger(__name__)

# What hooks add to a reply when there are none, or when none added anything.
NO_HEADERS: Mapping[str, str] = types.MappingProxyType({})
# The longest a reply is kept for its caller, in seconds: the caller's
# deadline, unless it waits longer or for ever.
KEEP_MAX = 3600.0


@attrs.frozen
class Streamed:
    """A generator handler's result once its items went out one reply each: how many."""

    items: int


class Replier:
    """Builds what one subscriber sends; safe to use from any number of threads at once.

    Args:
        subscriber: Who replies, and where its results also go.
        policy: The broker's limits, signing key and topology.
        name: Names the subscriber in log lines.
    """

    def __init__(self, subscriber: Subscriber, policy: Policy, *, name: str) -> None:
        self.subscriber = subscriber
        self._policy = policy
        self.name = name

    def error(
        self, message: RedisMessage, error: BaseException, *, end: int | None = None
    ) -> list[Command]:
        """An error reply, if the caller understands one; FastStream callers get none.

        *end*: for a streamed reply cut short, how many items went before it.
        """
        if (
            not (message.reply_to and message.accepts_errors)
            or self.subscriber.no_reply
        ):
            return []
        limit = self._policy.max_message_size
        tb = traceback.format_exc() if self._policy.send_tracebacks else None
        for brief in (False, True):  # say less rather than nothing, but never too much
            try:
                data, headers = error_frame_parts(
                    error,
                    correlation_id=message.correlation_id,
                    traceback=None if brief else tb,
                    brief=brief,
                )
                if end is not None:
                    headers[END] = str(end)
                frame = signed_frame(
                    data,
                    headers,
                    self._policy.signing_key,
                    reply_to_nonce=message.nonce or None,
                    reply_to_destination=message.destination,
                )
            except (TypeError, ValueError):  # a header the frame format cannot hold
                continue
            if limit is None or len(frame) <= limit:
                return self.reply(message, frame)
        logger.warning(
            "%s could not fit an error reply to %r within max_message_size",
            self.name,
            message.correlation_id[:100],
        )
        return []

    def outgoing(
        self,
        message: RedisMessage,
        result: Any,
        extra_headers: Mapping[str, str] = NO_HEADERS,
    ) -> list[Command]:
        """The reply and the results for publishers; *extra_headers* are the hooks'.

        The result of a streamed reply (``Streamed``) is the reply that ends
        the stream; its items went to the publishers already.
        """
        if isinstance(result, Streamed):
            return self.answer(
                message,
                b"",
                {CORRELATION_ID: message.correlation_id, END: str(result.items)},
            )
        response = result if isinstance(result, Response) else Response(result)
        commands = self.events(message, response, extra_headers)
        if not message.reply_to or self.subscriber.no_reply:
            return commands
        if self._policy.hooks:  # a span for sending it, as FastStream makes
            sending = Event(
                "reply",
                f"channel:{message.reply_to}",
                dict(extra_headers),
                response.correlation_id or message.correlation_id,
            )
            return commands + around(
                self._policy.hooks,
                sending,
                lambda: self.answer(
                    message, *self.result_parts(message, response, sending.headers)
                ),
            )
        return commands + self.answer(
            message, *self.result_parts(message, response, extra_headers)
        )

    def chunk(
        self,
        message: RedisMessage,
        number: int,
        item: Any,
        extra_headers: Mapping[str, str],
    ) -> list[Command]:
        """Item *number* (from 0) of a streamed reply, and its results for publishers."""
        response = item if isinstance(item, Response) else Response(item)
        data, headers = self.result_parts(message, response, extra_headers)
        headers[CHUNK] = str(number)
        return self.events(message, response, extra_headers) + self.answer(
            message, data, headers
        )

    def events(
        self,
        message: RedisMessage,
        response: Response,
        extra_headers: Mapping[str, str],
    ) -> list[Command]:
        """The results for the subscriber's publishers: new events, with no nonce, signed as events."""
        if not self.subscriber.publishers:
            return []
        maxlen = response.maxlen if isinstance(response, RedisResponse) else None
        key = self._policy.signing_key
        data, headers = self.result_parts(message, response, extra_headers)
        event, sent = b"", []
        for dest in self.subscriber.publishers:
            if key is not None or not event:  # signed: each names its destination
                addressed = dict(headers)
                if key is not None:
                    addressed[DESTINATION] = str(dest)
                event = signed_frame(data, addressed, key)
                check_size(event, self._policy.max_message_size, "The handler's result")
            sent.append(send_command(dest, event, maxlen))
        if self.subscriber.observe is not None:
            for command in sent:
                self.subscriber.observe(command)
        return sent

    def answer(
        self, message: RedisMessage, data: bytes, headers: dict[str, str]
    ) -> list[Command]:
        """The commands that send the reply *data* with *headers* (taken over) to *message*'s caller.

        The reply echoes the request's nonce, and is signed over it.
        """
        key = self._policy.signing_key
        if message.nonce:
            headers[NONCE] = message.nonce
        elif key is not None:
            # Without a nonce nobody waits in request(): the result of a
            # publish(reply_to=...) is an event for that channel's subscribers.
            headers[DESTINATION] = str(PubSub(message.reply_to, pattern=False))
        frame = signed_frame(
            data,
            headers,
            key,
            # Without a key, a user header named like the signature stays.
            reply_to_nonce=(message.nonce or None) if key is not None else None,
            reply_to_destination=message.destination,
        )
        check_size(frame, self._policy.max_message_size, "The handler's result")
        return self.reply(message, frame)

    def refusal(self, message: RedisMessage, refused: str) -> list[Command]:
        """A reply saying that the handler was not run, and why (a ``REFUSED`` value), to a caller that understands one.

        It is an error reply too, which older redis_rpc callers raise as
        ``RemoteError``. A refusal that blames the keys goes unsigned (the
        caller could not verify it anyway); one that does not is signed as
        any reply.
        """
        if not (message.reply_to and message.accepts_errors and message.nonce) or (
            self.subscriber.no_reply
        ):
            return []
        data, headers = refusal_frame_parts(refused, message.correlation_id)
        frame = signed_frame(
            data,
            headers,
            None if refused in KEY_REFUSALS else self._policy.signing_key,
            reply_to_nonce=message.nonce,
            reply_to_destination=message.destination,
        )
        return self.reply(message, frame)

    def reply(self, message: RedisMessage, frame: bytes) -> list[Command]:
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

    def result_parts(
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
