"""Frame and body encoding: FastStream's ``BinaryMessageFormatV1`` and its fallbacks.

A frame is::

    magic(8) version(u16=1) headers_start(u32) data_start(u32)
    count(u16) {key_len(u16) key value_len(u16) value}* body

with every integer big-endian and every length a byte count. Readers also
accept FastStream's legacy JSON envelope ``{"data": ..., "headers": ...}``
and, failing both, treat the whole payload as a body without headers.
"""

from __future__ import annotations

import json
import struct
from typing import TYPE_CHECKING, Any

from redis_rpc.errors import MessageDecodeError

if TYPE_CHECKING:
    from collections.abc import Mapping

MAGIC = b"\x89BIN\r\n\x1a\n"
VERSION = 1
_PREFIX = struct.Struct(">8sHII")  # magic, version, headers_start, data_start
_U16 = struct.Struct(">H")
_HEADERS_START = _PREFIX.size  # 18: the header count follows the fixed prefix
_MAX_U16 = 0xFFFF

TEXT = "text/plain"
JSON = "application/json"


def encode_frame(body: bytes, headers: Mapping[str, Any]) -> bytes:
    """Pack *body* and *headers* into one binary frame.

    Raises:
        TypeError: A header key or value is not a ``str``.
        ValueError: More than 65,535 headers, or a key or value longer than 65,535 bytes.
    """
    if len(headers) > _MAX_U16:
        msg = f"A frame holds at most {_MAX_U16} headers; got {len(headers)}."
        raise ValueError(msg)
    parts = [_U16.pack(len(headers))]
    for key, value in headers.items():
        for text in (key, value):
            if not isinstance(text, str):
                msg = f"Header {key!r} must map a str to a str, not {type(text).__name__}; convert it before sending."
                raise TypeError(msg)
            raw = text.encode()
            if len(raw) > _MAX_U16:
                msg = f"Header {key[:40]!r} is {len(raw)} bytes long; the frame format allows at most {_MAX_U16}."
                raise ValueError(msg)
            parts += (_U16.pack(len(raw)), raw)
    encoded_headers = b"".join(parts)
    data_start = _HEADERS_START + len(encoded_headers)
    return b"".join(
        (
            _PREFIX.pack(MAGIC, VERSION, _HEADERS_START, data_start),
            encoded_headers,
            body,
        )
    )


def decode_frame(data: bytes) -> tuple[bytes, dict[str, str]]:
    """Unpack a binary frame into its body and headers.

    Raises:
        MessageDecodeError: *data* is not a well-formed version 1 frame.
    """
    if len(data) < _PREFIX.size:
        msg = f"A frame needs at least {_PREFIX.size} bytes; got {len(data)}."
        raise MessageDecodeError(msg)
    magic, version, offset, data_start = _PREFIX.unpack_from(data)
    if magic != MAGIC or version != VERSION:
        msg = "The payload does not start with a version 1 binary frame prefix."
        raise MessageDecodeError(msg)
    if data_start > len(data):
        msg = (
            f"The frame's body starts at byte {data_start}, past its end ({len(data)})."
        )
        raise MessageDecodeError(msg)
    count, offset = _read_u16(data, offset), offset + 2
    headers: dict[str, str] = {}
    for _ in range(count):
        key, offset = _read_text(data, offset)
        value, offset = _read_text(data, offset)
        headers[key] = value
    return data[data_start:], headers


def _read_u16(data: bytes, offset: int) -> int:
    if offset + 2 > len(data):
        msg = f"The frame ends inside a length field at byte {offset}."
        raise MessageDecodeError(msg)
    return int(_U16.unpack_from(data, offset)[0])


def _read_text(data: bytes, offset: int) -> tuple[str, int]:
    length = _read_u16(data, offset)
    start, end = offset + 2, offset + 2 + length
    if end > len(data):
        msg = f"A header at byte {offset} claims {length} bytes, past the frame's end."
        raise MessageDecodeError(msg)
    try:
        return data[start:end].decode(), end
    except UnicodeDecodeError as exc:
        msg = f"A header at byte {offset} is not valid UTF-8."
        raise MessageDecodeError(msg) from exc


def decode_payload(data: bytes) -> tuple[bytes, dict[str, Any]]:
    """Read any payload FastStream may send: a frame, the legacy envelope, or raw bytes.

    What is neither a frame nor an envelope is a raw body.

    Raises:
        MessageDecodeError: *data* starts like a frame but is not a valid
            one (truncated, or lying about its lengths). FastStream would
            hand such bytes to the handler as a raw body; we refuse them.
    """
    if data.startswith(MAGIC):
        return decode_frame(data)
    if data[:1] == b"{":
        try:
            envelope = json.loads(data)
            if isinstance(envelope, dict) and isinstance(
                envelope.get("headers", {}), dict
            ):
                return envelope["data"].encode(), envelope.get("headers", {})
        except (ValueError, RecursionError, KeyError, AttributeError):
            pass  # not an envelope (a lone surrogate in "data" is a UnicodeError, a ValueError)
    return data, {}


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
    """
    try:
        return json.dumps(value, separators=(",", ":")).encode(), JSON
    except (TypeError, ValueError) as exc:
        msg = f"Cannot send a {type(value).__name__}: a body must be None, bytes, str or JSON-serialisable."
        raise TypeError(msg) from exc


def decode_body(body: bytes, content_type: str | None) -> Any:
    """Turn body bytes back into a value, as FastStream's default decoder does.

    ``text/plain`` gives ``str``; ``application/json*`` gives the parsed
    JSON; another content type gives the bytes; without a content type the
    body is parsed as JSON when it is JSON, else returned as bytes.

    Raises:
        MessageDecodeError: The content type promises text or JSON that the body is not.
    """
    if content_type is None:
        if not body:
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
