"""Authentication between redis_rpc peers that share a key: HMAC-SHA256 over each frame.

Anyone who may push to a request list or stream, or publish to a channel,
can send a request, and anyone who learns a reply channel can answer on it.
Peers given the same ``signing_key`` sign every frame they send and refuse
frames that do not verify. The MAC covers a purpose tag (request or reply),
every header but the signature itself in a fixed order (sorted by name, so
the order on the wire does not matter), the body, and for a reply the nonce
its request carried: a reply cannot pass for a request, a request cannot be
redirected to another reply channel (``reply_to`` is a header), its deadline
cannot be extended, and a reply captured earlier does not verify for another
request. A result sent to the ``reply_to`` of a request without a nonce
(``publish(reply_to=...)``, where nobody waits in ``request()``) is signed
as an event, for the subscribers of that channel. Everything here is a pure
function of its arguments.
"""

from __future__ import annotations

import hmac
import struct
from typing import TYPE_CHECKING, Any

from redis_rpc._wire import codec
from redis_rpc._wire.message import NONCE, SIGNATURE
from redis_rpc.errors import MessageDecodeError, SetupError

if TYPE_CHECKING:
    from collections.abc import Mapping

# HMAC-SHA256 gains nothing from a key longer than its 64-byte block, and a
# key shorter than 16 bytes (128 bits) could be guessed.
MIN_KEY_BYTES = 16

# The version is part of every MAC, so that a future encoding cannot be
# confused with this one.
_REQUEST = b"redis_rpc signature v1: request\n"
_REPLY = b"redis_rpc signature v1: reply\n"
_LENGTH = struct.Struct(">Q")
_NONCE_ONLY = (NONCE,)


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
) -> str:
    """The MAC of a frame, as 64 hex digits.

    *reply_to_nonce* is ``None`` for a request or an event, and for a reply
    the nonce of the request it answers (``""`` when that carried none).
    The ``SIGNATURE`` header itself is left out.

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
        raw = reply_to_nonce.encode()
        parts += (pack(len(raw)), raw)
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
    frame: bytes, key: bytes | None, *, reply_to_nonce: str | None = None
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
    return signed_frame(body, headers, key, reply_to_nonce=reply_to_nonce)


def signed_frame(
    body: bytes,
    headers: dict[str, str],
    key: bytes | None,
    *,
    reply_to_nonce: str | None = None,
) -> bytes:
    """Encode a frame as ``sign_frame(encode_frame(body, headers), ...)`` would, encoding it once.

    Takes over *headers*, a new dict (``_message.frame_parts()`` makes one).

    Raises:
        TypeError, ValueError: A header cannot be encoded.
    """
    if key is not None or reply_to_nonce:
        headers.pop(SIGNATURE, None)
        if reply_to_nonce:
            headers[NONCE] = reply_to_nonce
        if key is not None:
            headers[SIGNATURE] = signature(
                key, body, headers, reply_to_nonce=reply_to_nonce
            )
    return codec.encode_frame(body, headers)


def check_request(payload: bytes, key: bytes) -> str | None:
    """Why an incoming request or event fails verification with *key*, or ``None`` when it passes."""
    try:
        body, headers = codec.decode_payload(payload)
    except MessageDecodeError as exc:
        return f"it cannot be read ({exc})"
    return _check(key, body, headers, None)


def check_reply(payload: bytes, key: bytes | None, nonce: str) -> str | None:
    """Why a reply must not be taken as the answer to the request that carried *nonce*, or ``None``.

    A reply that echoes a different nonce is refused. Without a *key*, a
    reply without the nonce header is accepted, because FastStream servers
    do not echo it; so is one we cannot read, which ``request()`` then
    reports as a ``MessageDecodeError``. With a *key*, a reply must carry
    the nonce and a valid signature.
    """
    if key is None and payload.startswith(codec.MAGIC):
        # Only the nonce matters here, and a frame yields it without decoding
        # the rest; a broken frame gives no headers, as the full parse would.
        echoed = codec.frame_headers(payload, _NONCE_ONLY).get(NONCE)
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
    return _check(key, body, headers, nonce)


def _check(
    key: bytes, body: bytes, headers: Mapping[str, Any], nonce: str | None
) -> str | None:
    given = headers.get(SIGNATURE)
    if given is None:
        return "it is not signed"
    if not isinstance(given, str):
        return "its signature is not a string"
    try:
        expected = signature(key, body, headers, reply_to_nonce=nonce)
    except TypeError:
        return "its headers cannot be signed"
    # Compared in constant time, so that timing does not reveal the valid MAC.
    if not hmac.compare_digest(given.encode(), expected.encode()):
        return "its signature does not verify"
    return None
