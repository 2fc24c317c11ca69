"""Messages as handlers and callers see them: ``RedisMessage``, ``Response``, ``RedisResponse``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import attrs

from redis_rpc import _codec

if TYPE_CHECKING:
    from collections.abc import Mapping

CORRELATION_ID = "correlation_id"
CONTENT_TYPE = "content-type"
REPLY_TO = "reply_to"
_PROTOCOL_HEADERS = frozenset((CORRELATION_ID, CONTENT_TYPE, REPLY_TO))


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
    """

    body: bytes
    headers: Mapping[str, Any] = attrs.field(factory=dict)
    correlation_id: str = ""
    reply_to: str = ""
    content_type: str | None = None

    @classmethod
    def from_payload(cls, payload: bytes) -> RedisMessage:
        """Parse whatever FastStream may put in Redis; never raises."""
        body, headers = _codec.decode_payload(payload)
        content_type = headers.get(CONTENT_TYPE)
        return cls(
            body=body,
            headers={k: v for k, v in headers.items() if k not in _PROTOCOL_HEADERS},
            correlation_id=str(headers.get(CORRELATION_ID) or ""),
            reply_to=str(headers.get(REPLY_TO) or ""),
            content_type=None if content_type is None else str(content_type),
        )

    def decode(self) -> Any:
        """Return the body as a value, by its content type (see FastStream's decoder).

        Raises:
            MessageDecodeError: The body is not what its content type says.
        """
        return _codec.decode_body(self.body, self.content_type)


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
) -> bytes:
    """Encode *body* with its protocol and user headers, in FastStream's header order.

    Raises:
        TypeError: The body or a header cannot be encoded.
    """
    data, content_type = _codec.encode_body(body)
    all_headers = {CORRELATION_ID: correlation_id}
    if content_type:
        all_headers[CONTENT_TYPE] = content_type
    if reply_to:
        all_headers[REPLY_TO] = reply_to
    if headers:
        all_headers.update(headers)
    return _codec.encode_frame(data, all_headers)
