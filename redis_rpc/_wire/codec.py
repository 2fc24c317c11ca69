"""Frame and body encoding: FastStream's ``BinaryMessageFormatV1`` and its fallbacks.

A frame is::

    magic(8) version(u16=1) headers_start(u32) data_start(u32)
    count(u16) {key_len(u16) key value_len(u16) value}* body

with every integer big-endian and every length a byte count. Readers also
accept FastStream's legacy JSON envelope ``{"data": ..., "headers": ...}``
and, failing both, treat the whole payload as a body without headers.

Nothing here limits a payload's size: callers check it first (``check_size``
in ``_message``), because parsing a large envelope costs many times its size
in memory. What a payload within the limit may hold is bounded as in the frame
format, whichever format it came in: at most 65,535 headers, each key and
value at most 65,535 bytes of UTF-8.
"""

from __future__ import annotations

import json
import struct
from typing import TYPE_CHECKING, Any

from redis_rpc.errors import MessageDecodeError

if TYPE_CHECKING:
    from collections.abc import Collection, Mapping

MAGIC = b"\x89BIN\r\n\x1a\n"
VERSION = 1
_PREFIX = struct.Struct(">8sHII")  # magic, version, headers_start, data_start
_U16 = struct.Struct(">H")
_HEADERS_START = _PREFIX.size  # 18: the header count follows the fixed prefix
_MAX_U16 = 0xFFFF
_PREFIX_AND_COUNT = struct.Struct(">8sHIIH")  # the prefix, then the header count

TEXT = "text/plain"
JSON = "application/json"

# Header names as a frame holds them (length, then UTF-8): the same few names
# recur in every frame. Bounded, so that varied names cannot grow it for ever.
_PACKED_KEYS: dict[str, bytes] = {}
_MAX_PACKED_KEYS, _MAX_PACKED_KEY_BYTES = 256, 64


def encode_frame(body: bytes, headers: Mapping[str, Any]) -> bytes:
    """Pack *body* and *headers* into one binary frame.

    Raises:
        TypeError: A header key or value is not a ``str``.
        ValueError: More than 65,535 headers, or a key or value longer than 65,535 bytes.
    """
    count = len(headers)
    if count > _MAX_U16:
        msg = f"A frame holds at most {_MAX_U16} headers; got {count}."
        raise ValueError(msg)
    # One pass, no helper calls: this runs twice per request and once per reply.
    parts = [b""]  # the prefix and count go here once the headers' length is known
    size = 0
    pack = _U16.pack
    for key, value in headers.items():
        packed_key = _PACKED_KEYS.get(key)
        if packed_key is None:
            packed_key = _pack_text(key, key)
            if (
                len(_PACKED_KEYS) < _MAX_PACKED_KEYS
                and len(packed_key) <= _MAX_PACKED_KEY_BYTES
            ):
                _PACKED_KEYS[key] = packed_key  # a lost race stores the same bytes
        if not isinstance(value, str):
            msg = f"Header {key!r} must map a str to a str, not {type(value).__name__}; convert it before sending."
            raise TypeError(msg)
        raw = value.encode()
        length = len(raw)
        if length > _MAX_U16:
            msg = f"Header {key[:40]!r} is {length} bytes long; the frame format allows at most {_MAX_U16}."
            raise ValueError(msg)
        parts += (packed_key, pack(length), raw)
        size += len(packed_key) + 2 + length
    parts[0] = _PREFIX_AND_COUNT.pack(
        MAGIC, VERSION, _HEADERS_START, _HEADERS_START + 2 + size, count
    )
    parts.append(body)
    return b"".join(parts)


def _pack_text(text: object, key: object) -> bytes:
    """*text* as its UTF-8 length and bytes, for header *key*."""
    if not isinstance(text, str):
        msg = f"Header {key!r} must map a str to a str, not {type(text).__name__}; convert it before sending."
        raise TypeError(msg)
    raw = text.encode()
    if len(raw) > _MAX_U16:
        msg = f"Header {text[:40]!r} is {len(raw)} bytes long; the frame format allows at most {_MAX_U16}."
        raise ValueError(msg)
    return _U16.pack(len(raw)) + raw


def decode_frame(data: bytes) -> tuple[bytes, dict[str, str]]:
    """Unpack a binary frame into its body and headers.

    Raises:
        MessageDecodeError: *data* is not a well-formed version 1 frame.
    """
    end = len(data)
    if end < _PREFIX.size:
        msg = f"A frame needs at least {_PREFIX.size} bytes; got {end}."
        raise MessageDecodeError(msg)
    magic, version, offset, data_start = _PREFIX.unpack_from(data)
    if magic != MAGIC or version != VERSION:
        msg = "The payload does not start with a version 1 binary frame prefix."
        raise MessageDecodeError(msg)
    if data_start > end:
        msg = f"The frame's body starts at byte {data_start}, past its end ({end})."
        raise MessageDecodeError(msg)
    # One loop without helper calls: this runs on every message and every reply.
    unpack = _U16.unpack_from
    headers: dict[str, str] = {}
    start = offset
    try:
        (count,) = unpack(data, offset)
        offset += 2
        for _ in range(count):
            start = offset
            (length,) = unpack(data, start)
            offset = start + 2 + length
            if offset > end:
                break
            key = data[start + 2 : offset].decode()
            start = offset
            (length,) = unpack(data, start)
            offset = start + 2 + length
            if offset > end:
                break
            headers[key] = data[start + 2 : offset].decode()
        else:
            return data[data_start:], headers
    except struct.error:
        msg = f"The frame ends inside a length field at byte {start}."
        raise MessageDecodeError(msg + _hint(data, data_start)) from None
    except UnicodeDecodeError as exc:
        msg = f"A header at byte {start} is not valid UTF-8."
        raise MessageDecodeError(msg + _hint(data, data_start)) from exc
    msg = f"A header at byte {start} claims {offset - start - 2} bytes, past the frame's end."
    raise MessageDecodeError(msg + _hint(data, data_start))


def _hint(data: bytes, data_start: int) -> str:
    """The likely cause of a broken frame whose headers are not all ASCII, or nothing."""
    # Length fields are bytes of any value: only whole UTF-8 characters count.
    if data[_PREFIX.size : data_start].decode(errors="ignore").isascii():
        return ""
    return (
        " Its headers hold non-ASCII characters, and FastStream's framing writes"
        " each header's length as its number of characters, not of bytes, so"
        " such a header from a FastStream sender comes out cut short; keep the"
        " header values that FastStream sends ASCII."
    )


def frame_headers(data: bytes, keys: Collection[str]) -> dict[str, str]:
    """Read only the headers named *keys* from a binary frame, leaving its body alone.

    For a payload too large to parse: it can still be answered on its
    ``reply_to``. Other headers are skipped without being decoded or copied.
    A payload that is not a well-formed frame gives no headers.
    """
    if len(data) < _PREFIX.size or not data.startswith(MAGIC):
        return {}
    _, version, offset, data_start = _PREFIX.unpack_from(data)
    if version != VERSION or data_start > len(data):
        return {}
    wanted = {key.encode(): key for key in keys}
    lengths = {len(key) for key in wanted}
    found: dict[str, str] = {}
    unpack, end = _U16.unpack_from, len(data)
    try:
        (count,) = unpack(data, offset)
        offset += 2
        for _ in range(count):
            (key_length,) = unpack(data, offset)
            key_end = offset + 2 + key_length
            value_end = key_end + 2 + unpack(data, key_end)[0]
            if value_end > end:
                return {}
            if key_length in lengths and (
                name := wanted.get(data[offset + 2 : key_end])
            ):
                found[name] = data[key_end + 2 : value_end].decode()
            offset = value_end
    except (struct.error, UnicodeDecodeError):
        return {}
    return found


def decode_payload(data: bytes) -> tuple[bytes, dict[str, Any]]:
    """Read any payload FastStream may send: a frame, the legacy envelope, or raw bytes.

    What is neither a frame nor an envelope is a raw body. An envelope's
    header values may be ``str``, ``int``, ``float``, ``bool`` or ``None``,
    as FastStream 0.5 wrote them; they are handed over as they are.

    Check *data*'s size before calling this: an envelope is parsed whole.

    Raises:
        MessageDecodeError: *data* starts like a frame but is not a valid
            one (truncated, or lying about its lengths). FastStream would
            hand such bytes to the handler as a raw body; we refuse them.
            Or *data* is an envelope whose headers the frame format could
            not carry: too many, too long, or a value that is an array or
            an object.
    """
    if data.startswith(MAGIC):
        return decode_frame(data)
    if data[:1] == b"{":
        try:
            envelope = json.loads(data)
            if isinstance(envelope, dict) and isinstance(
                envelope.get("headers", {}), dict
            ):
                body = envelope["data"].encode()
                return body, _check_envelope_headers(envelope.get("headers", {}))
        except (ValueError, RecursionError, KeyError, AttributeError) as exc:
            if isinstance(exc, MessageDecodeError):
                raise
            # Not an envelope (a lone surrogate in "data" is a UnicodeError, a ValueError).
    return data, {}


def _check_envelope_headers(headers: dict[str, Any]) -> dict[str, Any]:
    """Hold envelope headers to the frame format's bounds; return them unchanged."""
    if len(headers) > _MAX_U16:
        msg = f"The envelope has {len(headers)} headers; at most {_MAX_U16} are allowed, as in a frame."
        raise MessageDecodeError(msg)
    for key, value in headers.items():
        # JSON keys are always strings; only these value types are flat text in a frame.
        if value is None or isinstance(value, (bool, int, float)):
            text = str(value)
        elif isinstance(value, str):
            text = value
        else:
            msg = f"The envelope's header {key[:40]!r} holds a {type(value).__name__}; header values must be strings, numbers, booleans or null."
            raise MessageDecodeError(msg)
        for part in (key, text):
            if _utf8_length(part) > _MAX_U16:
                msg = f"The envelope's header {key[:40]!r} is over {_MAX_U16} bytes long, the most a frame allows."
                raise MessageDecodeError(msg)
    return headers


def _utf8_length(text: str) -> int:
    try:
        return len(text.encode())
    except UnicodeEncodeError as exc:  # a lone surrogate, which JSON can spell
        msg = "An envelope header is not valid Unicode."
        raise MessageDecodeError(msg) from exc


def encode_body(value: Any) -> tuple[bytes, str | None]:
    """Turn a handler's or caller's value into body bytes and a content type.

    Raises:
        TypeError: *value* is not ``None``, ``bytes``, ``str`` or JSON-serialisable.
    """
    if value is None:
        return b"", None
    if isinstance(value, bytes):
        return value, None
    if isinstance(value, str):
        return value.encode(), TEXT
    return encode_json(value)


def encode_json(value: Any) -> tuple[bytes, str]:
    """Encode *value* as compact JSON, with its content type.

    Raises:
        TypeError: *value* is not JSON-serialisable.
        ValueError: *value* holds NaN or an infinity, which JSON cannot.
    """
    try:
        # Standard JSON has no NaN nor infinities: FastStream, pydantic and
        # other languages' parsers refuse what Python would write for them.
        return json.dumps(value, separators=(",", ":"), allow_nan=False).encode(), JSON
    except (TypeError, ValueError) as exc:
        error = exc
    if isinstance(error, ValueError) and _with_nan(value):
        msg = "Cannot send NaN or an infinity: standard JSON has no such numbers, and other peers could not read them; send None, or a string, instead."
        raise ValueError(msg) from None
    msg = f"Cannot send a {type(value).__name__}: a body must be None, bytes, str or JSON-serialisable."
    raise TypeError(msg) from error


def _with_nan(value: Any) -> bool:
    """Whether *value* is JSON but for a NaN or an infinity in it; only called after a failure."""
    try:
        json.dumps(value, separators=(",", ":"))
    except (TypeError, ValueError):
        return False
    return True


def decode_body(body: bytes, content_type: str | None) -> Any:
    """Turn body bytes back into a value, as FastStream's default decoder does.

    ``text/plain`` gives ``str``; ``application/json*`` gives the parsed
    JSON; another content type gives the bytes; without a content type the
    body is parsed as JSON when it is JSON, else returned as bytes.

    Raises:
        MessageDecodeError: The content type promises text or JSON that the body is not.
    """
    if content_type is None:
        if not body or _cannot_be_json(body):
            return body
        try:
            return json.loads(body)
        except (ValueError, RecursionError):  # ValueError covers UnicodeDecodeError
            return body
    try:
        if content_type == TEXT:
            return body.decode()
        if content_type.startswith(JSON):
            return json.loads(body)
    except (ValueError, RecursionError) as exc:
        msg = f"The body does not match its content type {content_type!r}: {exc}"
        raise MessageDecodeError(msg) from exc
    return body


# What JSON text may start with, after optional whitespace: json.loads() also
# reads NaN and Infinity. Any other first byte makes it fail, unless the bytes
# are UTF-16 or UTF-32, which json.loads() detects by a BOM or by zero bytes
# among the first four.
_JSON_FIRST_BYTES = frozenset(b' \t\n\r{["-0123456789tfnNI')
_BOM_FIRST_BYTES = frozenset(b"\xef\xfe\xff")


def _cannot_be_json(body: bytes) -> bool:
    """Whether ``json.loads(body)`` is sure to fail, told from its first bytes.

    A failed parse costs an exception, and first a UTF-8 decoding of the
    whole body: a large binary or text body skips both.
    """
    first = body[0]
    return (
        first not in _JSON_FIRST_BYTES
        and first not in _BOM_FIRST_BYTES
        and 0 not in body[:4]
    )
