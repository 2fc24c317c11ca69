"""Authentication between redis_rpc peers that share a key: HMAC-SHA256 over each frame.

Anyone who may push to a request list or stream, or publish to a channel,
can send a request, and anyone who learns a reply channel can answer on it.
Peers given the same ``signing_key`` sign every frame they send and refuse
frames that do not verify. The MAC covers a purpose tag (request or reply),
every header but the signature itself in a fixed order (sorted by name, so
the order on the wire does not matter), the body, and for a reply the nonce
and the destination of the request it answers: a reply cannot pass for a
request, a request cannot be redirected to another reply channel
(``reply_to`` is a header), its deadline cannot be extended, and a reply
captured earlier does not verify for another request. A signed request or
event names its destination (``list:orders``) in a header under the MAC,
which the server compares with its own, so that a copy pushed into another
service's list or stream, or published to another channel, is refused
there, and the reply is signed over that destination too, so that a caller
never takes an answer from a destination it did not address. A result sent
to the ``reply_to`` of a request without a nonce (``publish(reply_to=...)``,
where nobody waits in ``request()``) is signed as an event, for the
subscribers of that channel. Everything here is a pure function of its
arguments.
"""

from __future__ import annotations

import hmac
import struct
from typing import TYPE_CHECKING, Any

import attrs

from redis_rpc._wire import codec
from redis_rpc._wire.message import (
    DESTINATION,
    KEY_REFUSALS,
    NONCE,
    REFUSED,
    REFUSED_CALLER_HAS_NO_KEY,
    REFUSED_KEYS_DIFFER,
    SIGNATURE,
)
from redis_rpc.errors import MessageDecodeError, SetupError

if TYPE_CHECKING:
    from collections.abc import Mapping

# HMAC-SHA256 gains nothing from a key longer than its 64-byte block, and a
# key shorter than 16 bytes (128 bits) could be guessed.
MIN_KEY_BYTES = 16

# The version is part of every MAC, so that a future encoding cannot be
# confused with this one. Replies are at v2 since they cover the request's
# destination as well as its nonce.
_REQUEST = b"redis_rpc signature v1: request\n"
_REPLY = b"redis_rpc signature v2: reply\n"
_LENGTH = struct.Struct(">Q")
_REPLY_CHECKED = (NONCE, REFUSED, SIGNATURE)


@attrs.frozen
class Problem:
    """Why an incoming request or event fails verification.

    Attributes:
        reason: For the log line, such as ``"it is not signed"``.
        refusal: The ``REFUSED`` code to answer its caller with, when the
            signing keys are at fault, which the caller should hear of at
            once; ``""`` when it gets no answer (its ``reply_to`` is as
            untrusted as the rest of it, and a copy sent elsewhere, or a
            tampered frame, deserves none).
    """

    reason: str
    refusal: str = ""


def coerce_key(key: object) -> bytes | None:
    """Check a ``signing_key`` option and return it as bytes (a ``str`` as UTF-8).

    Takes any object, because users may pass one that their type checker missed.

    Raises:
        SetupError: It is neither bytes nor str, or shorter than ``MIN_KEY_BYTES``.
    """
    if key is None:
        return None
    if isinstance(key, str):
        key = key.encode()
    if not isinstance(key, bytes):
        msg = f"signing_key must be bytes or str, not {type(key).__name__}."
        raise SetupError(msg)
    if len(key) < MIN_KEY_BYTES:
        msg = f"signing_key is {len(key)} bytes long; use at least {MIN_KEY_BYTES} random bytes, such as secrets.token_bytes(32)."
        raise SetupError(msg)
    return key


def signature(
    key: bytes,
    body: bytes,
    headers: Mapping[str, Any],
    *,
    reply_to_nonce: str | None = None,
    reply_to_destination: str = "",
) -> str:
    """The MAC of a frame, as 64 hex digits.

    *reply_to_nonce* is ``None`` for a request or an event, and for a reply
    the nonce of the request it answers (``""`` when that carried none),
    whose ``DESTINATION`` is *reply_to_destination*. The ``SIGNATURE``
    header itself is left out.

    Raises:
        TypeError: A header name or value is not a ``str`` (only a legacy
            JSON envelope can hold one, and we never sign those).
    """
    # Each field is preceded by its length, so that no two different inputs
    # give the same bytes. They are gathered and hashed in one call: one
    # update() per field would cost more than the hash of a small frame.
    pack = _LENGTH.pack
    parts = [_REQUEST if reply_to_nonce is None else _REPLY]
    if reply_to_nonce is not None:
        raw, where = reply_to_nonce.encode(), reply_to_destination.encode()
        parts += (pack(len(raw)), raw, pack(len(where)), where)
    names = sorted(name for name in headers if name != SIGNATURE)
    parts.append(pack(len(names)))
    for name in names:
        value = headers[name]
        if not isinstance(name, str) or not isinstance(value, str):
            msg = f"Header {name!r} is not a str, so it cannot be signed."
            raise TypeError(msg)
        raw_name, raw_value = name.encode(), value.encode()
        parts += (pack(len(raw_name)), raw_name, pack(len(raw_value)), raw_value)
    parts += (pack(len(body)), body)
    return hmac.digest(key, b"".join(parts), "sha256").hex()


def sign_frame(
    frame: bytes,
    key: bytes | None,
    *,
    reply_to_nonce: str | None = None,
    reply_to_destination: str = "",
) -> bytes:
    """Return *frame* with the nonce of the request it answers and, given a *key*, a signature.

    The nonce header is added to a reply when *reply_to_nonce* is not empty.
    Without a key and without a nonce to add, *frame* comes back as it is.

    Raises:
        MessageDecodeError: *frame* is not a binary frame (we only sign our own).
        TypeError, ValueError: A header cannot be encoded.
    """
    if key is None and not reply_to_nonce:
        return frame
    body, headers = codec.decode_frame(frame)
    return signed_frame(
        body,
        headers,
        key,
        reply_to_nonce=reply_to_nonce,
        reply_to_destination=reply_to_destination,
    )


def signed_frame(
    body: bytes,
    headers: dict[str, str],
    key: bytes | None,
    *,
    reply_to_nonce: str | None = None,
    reply_to_destination: str = "",
) -> bytes:
    """Encode a frame as ``sign_frame(encode_frame(body, headers), ...)`` would, encoding it once.

    Takes over *headers*, a new dict (``_message.frame_parts()`` makes one).
    A request or event to be signed carries its ``DESTINATION`` already; a
    reply is signed over *reply_to_destination*, its request's.

    Raises:
        TypeError, ValueError: A header cannot be encoded.
    """
    if key is not None or reply_to_nonce:
        headers.pop(SIGNATURE, None)
        if reply_to_nonce:
            headers[NONCE] = reply_to_nonce
        if key is not None:
            headers[SIGNATURE] = signature(
                key,
                body,
                headers,
                reply_to_nonce=reply_to_nonce,
                reply_to_destination=reply_to_destination,
            )
    return codec.encode_frame(body, headers)


def check_request(payload: bytes, key: bytes, destination: str) -> Problem | None:
    """Why an incoming request or event fails verification with *key* at *destination*, or ``None`` when it passes.

    *destination* is where it was read from, as its sender would have named
    it (``list:orders``, ``channel:logs.info``); a signed frame that names
    another, or none, is refused, since it was copied from elsewhere or sent
    by a redis_rpc that did not name it.
    """
    try:
        body, headers = codec.decode_payload(payload)
    except MessageDecodeError as exc:
        return Problem(f"it cannot be read ({exc})")
    problem = _check(key, body, headers, None, "")
    if problem is not None:
        return problem
    addressed = headers.get(DESTINATION)
    if addressed is None:
        return Problem(
            "it does not name its destination (sent by an earlier redis_rpc?)"
        )
    if addressed != destination:
        return Problem(
            f"it was addressed to {str(addressed)[:200]!r}, not to {destination!r}: a copy of another destination's message"
        )
    return None


def check_reply(
    payload: bytes, key: bytes | None, nonce: str, destination: str = ""
) -> str | None:
    """Why a reply must not be taken as the answer to the request that carried *nonce* to *destination*, or ``None``.

    A reply that echoes a different nonce is refused. Without a *key*, a
    reply without the nonce header is accepted, because FastStream servers
    do not echo it; so is one we cannot read, which ``request()`` then
    reports as a ``MessageDecodeError``. With a *key*, a reply must carry
    the nonce and a valid signature over it and *destination*, unless it is
    a refusal that blames the keys, which a server cannot sign so that we
    verify it: such a refusal is taken, for ``request()`` to raise, never
    to return.
    """
    if key is None and payload.startswith(codec.MAGIC):
        # Only the nonce matters here, and a frame yields it without decoding
        # the rest; a broken frame gives no headers, as the full parse would.
        echoed = codec.frame_headers(payload, _REPLY_CHECKED).get(NONCE)
        if echoed is not None and echoed != nonce:
            return "it answers another request (its nonce does not match)"
        return None
    try:
        body, headers = codec.decode_payload(payload)
    except MessageDecodeError as exc:
        return None if key is None else f"it cannot be read ({exc})"
    echoed = headers.get(NONCE)
    if echoed is not None and echoed != nonce:
        return "it answers another request (its nonce does not match)"
    if key is None:
        return None
    if echoed is None:
        return "it does not echo the request's nonce"
    if SIGNATURE not in headers and headers.get(REFUSED) in KEY_REFUSALS:
        return None
    problem = _check(key, body, headers, nonce, destination)
    return None if problem is None else problem.reason


def _check(
    key: bytes,
    body: bytes,
    headers: Mapping[str, Any],
    nonce: str | None,
    destination: str,
) -> Problem | None:
    given = headers.get(SIGNATURE)
    if given is None:
        return Problem("it is not signed", REFUSED_CALLER_HAS_NO_KEY)
    if not isinstance(given, str):
        return Problem("its signature is not a string")
    try:
        expected = signature(
            key,
            body,
            headers,
            reply_to_nonce=nonce,
            reply_to_destination=destination,
        )
    except TypeError:
        return Problem("its headers cannot be signed")
    # Compared in constant time, so that timing does not reveal the valid MAC.
    if not hmac.compare_digest(given.encode(), expected.encode()):
        # Another key, or a frame changed on the way; the caller is told the
        # former, which is all it could do something about.
        return Problem("its signature does not verify", REFUSED_KEYS_DIFFER)
    return None
