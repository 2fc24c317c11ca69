"""Messages as handlers and callers see them: ``RedisMessage``, ``Response``, ``RedisResponse``."""

from __future__ import annotations

import itertools
import json
import math
import os
import re
import threading
import time
import types
from typing import TYPE_CHECKING, Any

import attrs
import cattrs

from redis_rpc._wire import codec, convert
from redis_rpc.errors import (
    MessageTooLargeError,
    OverloadedError,
    RemoteError,
    ValidationError,
)

if TYPE_CHECKING:
    from collections.abc import Mapping

# FastStream's protocol headers.
CORRELATION_ID = "correlation_id"
CONTENT_TYPE = "content-type"
REPLY_TO = "reply_to"
# Ours, which FastStream neither sends nor reads. On a request: the caller
# understands error replies ("1"), and the Unix time after which it stops
# waiting. On a reply: the reply reports a failure; the value is the type name.
ACCEPT_ERRORS = "x-redis-rpc-accept-errors"
DEADLINE = "x-redis-rpc-deadline"
ERROR = "x-redis-rpc-error"
# On a request: random, and echoed by our servers in the reply, which the
# caller drops when the echo differs. On a request, event or reply between
# peers that share a signing_key: the HMAC (see _signing).
NONCE = "x-redis-rpc-nonce"
SIGNATURE = "x-redis-rpc-signature"
# On a request in a Redis Cluster: the caller's sharded reply channel. A
# redis_rpc server sends the reply there with SPUBLISH, so that it reaches
# one shard instead of every node; FastStream servers reply on reply_to.
REPLY_SHARD = "x-redis-rpc-reply-shard"
# On a signed request or event: where its sender addressed it, such as
# "list:orders" (the destination's str()), under the signature, so that a
# copy pushed elsewhere is refused there, and the reply is signed over it.
DESTINATION = "x-redis-rpc-destination"
# On a reply: the server did not run the handler, and why, for a redis_rpc
# caller to raise at once rather than wait out its timeout. One of the
# REFUSED_* codes below; "expired <Unix time>" carries the server's clock.
REFUSED = "x-redis-rpc-refused"
# The signing keys are at fault: the caller has none, the two differ, or
# the server has none. Sent unsigned, since it cannot be signed so that the
# caller verifies it; it says nothing about either key.
REFUSED_CALLER_HAS_NO_KEY = "caller-has-no-key"
REFUSED_KEYS_DIFFER = "keys-differ"
REFUSED_SERVER_HAS_NO_KEY = "server-has-no-key"
KEY_REFUSALS = frozenset(
    (REFUSED_CALLER_HAS_NO_KEY, REFUSED_KEYS_DIFFER, REFUSED_SERVER_HAS_NO_KEY)
)
# The request's deadline had passed by the server's clock when it came to it.
REFUSED_EXPIRED = "expired"
# On a request: the caller fetches its reply from a key should its reply
# subscription drop meanwhile ("1"): our servers then keep the reply under
# kept_key(reply_to) until the caller's deadline (see _client.listener).
KEEP = "x-redis-rpc-keep"
# On a request or event: the handler runs at most once for this key and
# destination within the server's idempotency_ttl; see _server.idempotency.
IDEMPOTENCY_KEY = "x-redis-rpc-idempotency-key"
# On a request: the caller takes a generator handler's items one reply each
# ("1", see broker.stream()). On such a reply: the item's number, from 0;
# on the reply that ends the stream (or the error reply that cuts it short):
# how many items came before it.
STREAM = "x-redis-rpc-stream"
CHUNK = "x-redis-rpc-chunk"
END = "x-redis-rpc-end"
_PROTOCOL_HEADERS = frozenset(
    (
        CORRELATION_ID,
        CONTENT_TYPE,
        REPLY_TO,
        ACCEPT_ERRORS,
        DEADLINE,
        ERROR,
        NONCE,
        SIGNATURE,
        REPLY_SHARD,
        DESTINATION,
        REFUSED,
        KEEP,
        IDEMPOTENCY_KEY,
        STREAM,
        CHUNK,
        END,
    )
)

# Where our callers ask for replies: REPLY_PREFIX, a listener's 32 hex
# digits and a dot, then 32 hex digits of the request's own.
REPLY_PREFIX = "redis_rpc.reply."
_KEPT = re.compile(r"(redis_rpc\.reply\.[0-9a-f]{32}\.)([0-9a-f]{32})")


def kept_key(reply_to: str) -> str | None:
    """The key that keeps the reply to *reply_to*, or None when it is not one of our callers' channels.

    On the slot of the caller's listener in a Redis Cluster (its prefix is
    the hash tag), and in our namespace alone: a request cannot have a
    server write to a key of its choosing.
    """
    found = _KEPT.fullmatch(reply_to)
    if found is None:
        return None
    return "{" + found.group(1) + "}" + found.group(2)


class Cancellation:
    """Whether the caller of a request has given up on it: ``RedisMessage.cancelled``.

    Set once the caller's deadline has passed, or once it cancelled the
    request (``Future.cancel()`` on ``broker.submit()``, or closing the
    iterator of ``broker.stream()``). A long handler may look now and then,
    and stop early. Safe to use from any thread.
    """

    __slots__ = ("_deadline", "_event")

    # Guards creating an event: most messages are never waited on.
    _creating = threading.Lock()

    def __init__(self, deadline: float | None = None) -> None:
        self._deadline = deadline  # time.time() after which the caller has left
        self._event: threading.Event | None = None

    def __repr__(self) -> str:
        return f"<Cancellation {'set' if self.is_set() else 'clear'}>"

    def is_set(self) -> bool:
        """Whether the caller has given up."""
        event = self._event
        if event is not None and event.is_set():
            return True
        return self._deadline is not None and time.time() >= self._deadline

    def wait(self, timeout: float | None = None) -> bool:
        """Wait up to *timeout* seconds (``None``: until it happens) for the caller to give up; whether it has."""
        if self._deadline is not None:
            left = self._deadline - time.time()
            timeout = left if timeout is None else min(timeout, left)
        if timeout is not None and timeout <= 0:
            return self.is_set()
        self._own_event().wait(timeout)
        return self.is_set()

    def set(self) -> None:
        """The caller cancelled: tell whoever looks, or waits."""
        self._own_event().set()

    def _own_event(self) -> threading.Event:
        event = self._event
        if event is None:
            with self._creating:
                if self._event is None:
                    self._event = threading.Event()
                event = self._event
        return event


# Used only by messages built outside a broker; never mutated.
_DEFAULT_CONVERTER = convert.make_converter()
# The path of a message without path parameters: shared, so read-only.
_NO_PATH: Mapping[str, str] = types.MappingProxyType({})


@attrs.frozen
class RedisMessage:
    """A message read from Redis: a request a handler receives, or a reply a caller gets.

    Immutable, so it may be shared between threads.

    Attributes:
        body: The raw body bytes.
        headers: The user headers only; the protocol fields are the attributes below.
        correlation_id: The correlation id, ``""`` when the sender set none.
        reply_to: The channel the sender waits on for a reply, ``""`` for none.
        content_type: How the body is encoded, such as ``"text/plain"``, or ``None``.
        deadline: The Unix time (``time.time()``) after which the caller
            stops waiting, or ``None`` when it did not say (FastStream
            callers never do).
        accepts_errors: Whether the sender understands error replies;
            redis_rpc callers do, FastStream callers do not.
        nonce: The random value a redis_rpc caller put on its request,
            which our reply echoes; ``""`` when there is none.
        path: The values of the placeholders of the subscriber's channel
            template, taken from the channel the message arrived on:
            ``{"level": "info"}`` for ``logs.info`` and ``logs.{level}``.
            Empty for any other subscriber, or a channel that does not fit.
        destination: Where the sender of a signed request or event
            addressed it, such as ``"list:orders"``; ``""`` when unsigned.
        refused: On a reply, why the server did not run the handler (a
            signing key missing or different, or the deadline passed);
            ``""`` for a real reply.
        signed: Whether it carried a signature, verified or not.
        idempotency_key: The key the sender gave (``request(...,
            idempotency_key=...)``): the handler runs at most once for it,
            and a duplicate gets the stored reply. ``""`` for none.
        cancelled: Set once the caller has given up on the request: its
            deadline passed, or it cancelled (see ``Cancellation``). A
            handler that takes a ``RedisMessage`` may check it to stop early.
    """

    body: bytes
    headers: Mapping[str, Any] = attrs.field(factory=dict)
    correlation_id: str = ""
    reply_to: str = ""
    content_type: str | None = None
    deadline: float | None = None
    # What an error reply reports: the remote exception's type name.
    accepts_errors: bool = False
    _error: str | None = attrs.field(default=None, repr=False, alias="error")
    _converter: cattrs.Converter = attrs.field(
        default=_DEFAULT_CONVERTER, eq=False, repr=False, alias="converter"
    )
    # Left out of repr: with it, anyone who reads a debug log could answer the request.
    nonce: str = attrs.field(default="", repr=False)
    path: Mapping[str, str] = _NO_PATH
    # The caller's sharded reply channel, in a Redis Cluster; see REPLY_SHARD.
    reply_shard: str = attrs.field(default="", repr=False)
    # Where a signed request or event was addressed, "" if it did not say;
    # see DESTINATION.
    destination: str = attrs.field(default="", repr=False)
    # On a reply: why the server did not run the handler, "" when it did; see REFUSED.
    refused: str = attrs.field(default="", repr=False)
    # Whether it carried a signature, verified or not.
    signed: bool = attrs.field(default=False, repr=False)
    # Whether the caller fetches its reply from kept_key(reply_to) if need be; see KEEP.
    keep: bool = attrs.field(default=False, repr=False)
    idempotency_key: str = ""
    # Whether the caller takes the items of a generator handler one reply each; see STREAM.
    streams: bool = attrs.field(default=False, repr=False)
    cancelled: Cancellation = attrs.field(eq=False, repr=False)

    @cancelled.default
    def _deadline_passes(self) -> Cancellation:
        return Cancellation(self.deadline)

    @classmethod
    def from_payload(
        cls,
        payload: bytes,
        converter: cattrs.Converter = _DEFAULT_CONVERTER,
        *,
        max_size: int | None = None,
        path: Mapping[str, str] | None = None,
    ) -> RedisMessage:
        """Parse whatever FastStream may put in Redis.

        *converter* is what ``decode(SomeType)`` will use, and *path* the
        message's ``path``. A payload longer than *max_size* bytes is
        refused before any parsing: a JSON envelope costs many times its
        size in memory to parse.

        Raises:
            MessageTooLargeError: *payload* is longer than *max_size*.
            MessageDecodeError: *payload* starts like a binary frame but is
                not one, or is an envelope whose headers a frame could not hold.
        """
        check_size(payload, max_size, "The message")
        body, headers = codec.decode_payload(payload)
        return cls._from_parts(body, headers, converter, path)

    @classmethod
    def from_frame_headers(cls, payload: bytes) -> RedisMessage:
        """Read only the protocol headers of a binary frame; the body is left empty.

        For a payload too large to parse, so that its sender can still get an
        error reply. An envelope or raw payload is not parsed at all and gives
        a message without headers, so without anyone to reply to.
        """
        return cls._from_parts(b"", codec.frame_headers(payload, _PROTOCOL_HEADERS))

    @classmethod
    def _from_parts(
        cls,
        body: bytes,
        headers: dict[str, Any],
        converter: cattrs.Converter = _DEFAULT_CONVERTER,
        path: Mapping[str, str] | None = None,
    ) -> RedisMessage:
        """Build a message from a body and a new *headers* dict, which it takes over."""
        # Popping the protocol headers leaves the user's: no second dict, no filter pass.
        pop = headers.pop
        correlation_id = pop(CORRELATION_ID, None)
        reply_to = pop(REPLY_TO, None)
        content_type = pop(CONTENT_TYPE, None)
        deadline = pop(DEADLINE, None)
        accept_errors = pop(ACCEPT_ERRORS, None)
        error = pop(ERROR, None)
        nonce = pop(NONCE, None)
        reply_shard = pop(REPLY_SHARD, None)
        destination = pop(DESTINATION, None)
        refused = pop(REFUSED, None)
        signed = pop(SIGNATURE, None) is not None
        keep = pop(KEEP, None)
        idempotency_key = pop(IDEMPOTENCY_KEY, None)
        streams = pop(STREAM, None)
        pop(CHUNK, None)  # a streamed reply's place: stream() has put it in order
        pop(END, None)
        return cls(
            body=body,
            headers=headers,
            correlation_id=str(correlation_id or ""),
            reply_to=str(reply_to or ""),
            content_type=None if content_type is None else str(content_type),
            deadline=None if deadline is None else _parse_deadline(deadline),
            accepts_errors=accept_errors == "1",
            error=None if error is None else str(error),
            converter=converter,
            nonce=str(nonce or ""),
            path=_NO_PATH if path is None else path,
            reply_shard=str(reply_shard or ""),
            destination=str(destination or ""),
            refused=str(refused or ""),
            signed=signed,
            keep=keep == "1",
            idempotency_key=str(idempotency_key or ""),
            streams=streams == "1",
        )

    def decode(
        self, into: Any = None, converter: cattrs.Converter | None = None
    ) -> Any:
        """Return the body as a value: by its content type, then structured *into* a type.

        Without *into*, ``text/plain`` gives a ``str``, JSON gives what
        ``json.loads()`` does, and anything else the bytes (FastStream's
        rules). With *into*, that value is structured by the broker's
        converter (or *converter*): ``decode(Item)``, ``decode(list[int])``.
        An empty body without a content type counts as ``None``; ``bytes``
        gives the raw body.

        Raises:
            MessageDecodeError: The body is not what its content type says.
            ValidationError: The value does not fit *into*; ``errors`` names each field.
        """
        if into is bytes:
            return self.body
        value = codec.decode_body(self.body, self.content_type)
        if into is None:
            return value
        if not self.body and self.content_type is None:
            value = None
        return convert.structure(converter or self._converter, value, into)

    @property
    def remote_error(self) -> RemoteError | None:
        """For an error reply, the failure it reports, as the ``RemoteError`` that ``request()`` raises; ``None`` otherwise.

        ``broker.gather()`` returns error replies among the others: this
        tells them apart.
        """
        details = self.error_details()
        if details is None:
            return None
        return RemoteError(**details, correlation_id=self.correlation_id)

    def error_details(self) -> dict[str, Any] | None:
        """What an error reply reports, as ``RemoteError``'s keywords; ``None`` for a normal reply.

        Only strings are taken from the wire, whatever else the body holds.
        """
        if self._error is None:
            return None
        try:
            details = json.loads(self.body)
        except (ValueError, RecursionError):
            details = None
        if not isinstance(details, dict):
            details = {"message": self.body.decode(errors="replace")}
        # A field that is not a string is ignored, not turned into one: a
        # forged reply must not choose what a type name or message holds.
        type_name, message = details.get("type"), details.get("message")
        errors, traceback = details.get("errors"), details.get("traceback")
        return {
            "type_name": type_name
            if isinstance(type_name, str) and type_name
            else self._error,
            "remote_message": message if isinstance(message, str) else "",
            "errors": [e for e in errors if isinstance(e, str)]
            if isinstance(errors, list)
            else [],
            "traceback": traceback if isinstance(traceback, str) else None,
        }


# The type an error reply names when a server shed the request (see
# OverloadedError): qualified, so that no handler's exception can be taken
# for it.
OVERLOADED = "redis_rpc.OverloadedError"

# Error replies stay small: a runaway message or traceback is cut.
_MESSAGE_CHARS, _TRACEBACK_CHARS, _BRIEF_CHARS, _MAX_ERRORS = 2_000, 20_000, 200, 50


def _text(value: object) -> str:
    try:
        return value if isinstance(value, str) else repr(value)
    except Exception:  # noqa: BLE001 - any user __repr__ may fail
        return f"<{type(value).__name__}>"


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _parse_deadline(value: Any) -> float | None:
    try:
        deadline = float(value)
    except (TypeError, ValueError, OverflowError):  # an int too large for a float
        return None
    return deadline if math.isfinite(deadline) else None


@attrs.frozen
class Response:
    """What a handler may return to set the reply's headers and correlation id.

    Args:
        body: The reply body: ``None``, ``bytes``, ``str`` or a JSON-serialisable value.
        headers: User headers to send with the reply.
        correlation_id: Replaces the request's correlation id in the reply.
    """

    body: Any = None
    headers: Mapping[str, str] = attrs.field(factory=dict, kw_only=True)
    correlation_id: str | None = attrs.field(default=None, kw_only=True)


@attrs.frozen
class RedisResponse(Response):
    """A :class:`Response` that also trims stream destinations.

    Args:
        maxlen: When the result is also published to a stream (by
            ``@broker.publisher(stream=...)``), trim that stream to about
            this many entries (``XADD MAXLEN ~``). Replies themselves always
            go over Pub/Sub, where it has no effect.
    """

    maxlen: int | None = attrs.field(default=None, kw_only=True)


def build_frame(
    body: Any,
    *,
    correlation_id: str,
    reply_to: str = "",
    headers: Mapping[str, str] | None = None,
    converter: cattrs.Converter = _DEFAULT_CONVERTER,
) -> bytes:
    """Encode *body* with its protocol and user headers, in FastStream's header order.

    A body that is not ``None``, ``bytes`` or ``str`` is unstructured by
    *converter* first, so attrs classes, dataclasses and datetimes become JSON.

    Raises:
        TypeError: The body or a header cannot be encoded.
    """
    return codec.encode_frame(
        *frame_parts(
            body,
            correlation_id=correlation_id,
            reply_to=reply_to,
            headers=headers,
            converter=converter,
        )
    )


def frame_parts(
    body: Any,
    *,
    correlation_id: str,
    reply_to: str = "",
    headers: Mapping[str, str] | None = None,
    converter: cattrs.Converter = _DEFAULT_CONVERTER,
) -> tuple[bytes, dict[str, str]]:
    """What ``build_frame()`` encodes: the body bytes, and a new dict of all the headers.

    For a sender that signs the frame: it signs these, then encodes once.

    Raises:
        TypeError: The body cannot be encoded.
    """
    if body is None or isinstance(body, (bytes, str)):
        data, content_type = codec.encode_body(body)
    else:  # always JSON, even when it unstructures to a str (a datetime, an enum)
        data, content_type = codec.encode_json(convert.unstructure(converter, body))
    all_headers = {CORRELATION_ID: correlation_id}
    if content_type:
        all_headers[CONTENT_TYPE] = content_type
    if reply_to:
        all_headers[REPLY_TO] = reply_to
    if headers:
        all_headers.update(headers)
    return data, all_headers


def new_correlation_id() -> str:
    """A correlation id for a message sent without one: unique, shaped like a UUID 4, not secret.

    A random prefix per process and a counter: several times cheaper than
    ``uuid.uuid4()``. Replies are routed by their random channel, never by
    correlation id, so it needs no secrecy; the prefix is drawn again in a
    forked child, so parent and child never hand out the same id.
    """
    return f"{_id_prefix}{next(_id_counter) & 0xFFFFFFFFFFFF:012x}"


def _new_id_prefix() -> None:
    global _id_prefix, _id_counter
    # 20 of a UUID's 32 hex digits, the version and variant among them: 74 random bits.
    digits = os.urandom(10).hex()
    _id_prefix = (
        f"{digits[:8]}-{digits[8:12]}-4{digits[13:16]}-"
        f"{'89ab'[int(digits[16], 16) & 3]}{digits[17:20]}-"
    )
    _id_counter = itertools.count()  # next() on it is atomic under the GIL


_id_prefix, _id_counter = "", itertools.count()
_new_id_prefix()
os.register_at_fork(after_in_child=_new_id_prefix)


def describe(error: BaseException) -> str:
    """``str(error)``, even for an exception whose ``__str__`` raises."""
    try:
        return str(error)
    except Exception:  # noqa: BLE001 - any user __str__ may fail
        return f"<{type(error).__name__} whose str() failed>"


def build_error_frame(
    error: BaseException,
    *,
    correlation_id: str,
    traceback: str | None = None,
    brief: bool = False,
) -> bytes:
    """Encode an error reply: a JSON body describing *error*, flagged by the ``ERROR`` header.

    See ``error_frame_parts()``.
    """
    return codec.encode_frame(
        *error_frame_parts(
            error, correlation_id=correlation_id, traceback=traceback, brief=brief
        )
    )


def retry_after(reply: RedisMessage) -> float | None:
    """The ``retry_after`` hint of an error reply that shed a request, if it holds a sensible one."""
    try:
        details = json.loads(reply.body)
    except (ValueError, RecursionError):
        return None
    hint = details.get("retry_after") if isinstance(details, dict) else None
    if isinstance(hint, bool) or not isinstance(hint, (int, float)):
        return None
    return float(hint) if math.isfinite(hint) and hint >= 0 else None


def error_frame_parts(
    error: BaseException,
    *,
    correlation_id: str,
    traceback: str | None = None,
    brief: bool = False,
) -> tuple[bytes, dict[str, str]]:
    """What ``build_error_frame()`` encodes: a JSON body describing *error*, and a new headers dict.

    Only strings go out: the type's name, the message, the failing fields
    of a validation error, and the traceback when the server opts in. Long
    ones are cut; *brief* cuts the message short and leaves the rest out,
    for a reply that must fit a small ``max_message_size``.
    """
    type_name = (
        OVERLOADED if isinstance(error, OverloadedError) else type(error).__name__
    )
    message = describe(error)
    errors = (
        [_text(e) for e in error.errors] if isinstance(error, ValidationError) else []
    )
    if brief:
        message, errors, traceback = _cut(message, _BRIEF_CHARS), [], None
        correlation_id = _cut(correlation_id, _BRIEF_CHARS)
    details: dict[str, Any] = {
        "type": type_name,
        "message": _cut(message, _MESSAGE_CHARS),
        "errors": errors[:_MAX_ERRORS],
        "traceback": None if traceback is None else traceback[-_TRACEBACK_CHARS:],
    }
    if isinstance(error, OverloadedError) and error.retry_after is not None:
        details["retry_after"] = error.retry_after
    data, content_type = codec.encode_body(details)
    return data, {
        CORRELATION_ID: correlation_id,
        CONTENT_TYPE: content_type or "",
        ERROR: type_name,
    }


# What a refusal says, for redis_rpc callers older than the REFUSED
# header, which raise it as a RemoteError of this type and message.
_REFUSALS = {
    REFUSED_CALLER_HAS_NO_KEY: "This server takes signed requests only, and the request is not signed: give the caller the servers' signing_key.",
    REFUSED_KEYS_DIFFER: "The request's signature does not verify with this server's signing_key: the caller's key differs from the server's.",
    REFUSED_SERVER_HAS_NO_KEY: "The request is signed, and this server has no signing_key to check it or to sign its reply: give the server the callers' signing_key.",
}


def refusal_frame_parts(
    refused: str, correlation_id: str
) -> tuple[bytes, dict[str, str]]:
    """A refusal's body and headers: an error reply flagged ``REFUSED`` *refused*, saying why in words too.

    Callers that read ``REFUSED`` raise what it says; older ones raise the
    error reply as a ``RemoteError``.
    """
    code, _, detail = refused.partition(" ")
    if code == REFUSED_EXPIRED:
        kind = "RequestExpired"
        text = f"The request's deadline had passed by this server's clock (Unix time {detail}), so its handler was not run."
    else:
        kind = "SigningKeyError"
        text = _REFUSALS.get(code, "The request was refused.")
    details: dict[str, Any] = {
        "type": kind,
        "message": text,
        "errors": [],
        "traceback": None,
    }
    data, content_type = codec.encode_body(details)
    return data, {
        CORRELATION_ID: _cut(correlation_id, _BRIEF_CHARS),
        CONTENT_TYPE: content_type or "",
        ERROR: kind,
        REFUSED: refused,
    }


def check_body_size(body: Any, limit: int | None, what: str) -> None:
    """Refuse a ``bytes`` or ``str`` *body* that alone is longer than *limit*, before any copy of it is made.

    A ``str`` of N characters is at least N bytes of UTF-8. Other bodies
    are measured once encoded, by ``check_size()`` on the frame.

    Raises:
        MessageTooLargeError: It is.
    """
    if limit is not None and isinstance(body, (bytes, str)) and len(body) > limit:
        at_least = "at least " if isinstance(body, str) else ""
        msg = f"{what} is {at_least}{len(body)} bytes, over max_message_size ({limit}); send less, or raise the limit on both sides."
        raise MessageTooLargeError(msg)


def check_size(frame: bytes, limit: int | None, what: str) -> None:
    """Refuse *frame* when it is longer than *limit* bytes (``None``: no limit).

    Raises:
        MessageTooLargeError: It is.
    """
    if limit is not None and len(frame) > limit:
        msg = f"{what} is {len(frame)} bytes, over max_message_size ({limit}); send less, or raise the limit on both sides."
        raise MessageTooLargeError(msg)
