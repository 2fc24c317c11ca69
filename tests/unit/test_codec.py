"""Frame and body encoding: ``redis_rpc._wire.codec`` against WIRE.md §1, §3 and §4."""

from __future__ import annotations

import contextlib
import json
import struct
import tracemalloc

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from redis_rpc import RedisMessage
from redis_rpc._wire import codec as _codec
from redis_rpc._wire.codec import (
    MAGIC,
    decode_body,
    decode_frame,
    decode_payload,
    encode_body,
    encode_frame,
    frame_headers,
)
from redis_rpc.errors import MessageDecodeError

# WIRE.md §1: body "Hi!", correlation_id=abc, content-type=text/plain.
# (WIRE.md calls it a 66-byte frame, but its bytes add up to 70.)
WORKED_EXAMPLE = (
    bytes.fromhex("89 42 49 4e 0d 0a 1a 0a 00 01 00 00 00 12 00 00 00 43 00 02")
    + b"\x00\x0ecorrelation_id\x00\x03abc"
    + b"\x00\x0ccontent-type\x00\x0atext/plain"
    + b"Hi!"
)
WORKED_HEADERS = {"correlation_id": "abc", "content-type": "text/plain"}
SMALLEST_FRAME = (
    b"\x89BIN\r\n\x1a\n\x00\x01\x00\x00\x00\x12\x00\x00\x00\x14\x00\x00hello"
)

# Enough examples to shake out edge cases, few enough to run in about a second.
PROPERTY_SETTINGS = settings(max_examples=200, deadline=None)


def _frame(
    *,
    magic: bytes = MAGIC,
    version: int = 1,
    headers_start: int = 18,
    data_start: int | None = None,
    rest: bytes = b"\x00\x00",
) -> bytes:
    """Build a frame by hand, so tests can corrupt any one field."""
    if data_start is None:
        data_start = 18 + len(rest)
    return struct.pack(">8sHII", magic, version, headers_start, data_start) + rest


class TestEncodeFrame:
    def test_matches_the_worked_example(self):
        """encode_frame reproduces WIRE.md's worked example byte for byte."""
        frame = encode_frame(b"Hi!", WORKED_HEADERS)
        assert frame == WORKED_EXAMPLE
        assert len(frame) == 70

    def test_smallest_frame(self):
        """A frame without headers is the 20-byte prefix followed by the body."""
        assert encode_frame(b"hello", {}) == SMALLEST_FRAME

    def test_both_offsets_are_set(self):
        """headers_start is 18 and data_start points just past the headers."""
        frame = encode_frame(b"body", {"k": "v"})
        _, _, headers_start, data_start = struct.unpack_from(">8sHII", frame)
        assert headers_start == 18
        assert data_start == 18 + 2 + (2 + 1) + (2 + 1)
        assert frame[data_start:] == b"body"

    def test_header_lengths_count_bytes_not_characters(self):
        """Non-ASCII header keys and values are prefixed with their UTF-8 byte length."""
        frame = encode_frame(b"", {"clé": "日本"})
        assert frame[20:] == b"\x00\x04cl\xc3\xa9\x00\x06\xe6\x97\xa5\xe6\x9c\xac"

    def test_character_counted_header_names_faststreams_framing(self):
        """A frame whose header length counts characters, as FastStream writes it, fails with a hint at that cause."""
        key, value = b"x-note", "café".encode()
        headers = b"\x00\x01" + struct.pack(">H", len(key)) + key
        headers += struct.pack(">H", len("café")) + value  # 4 characters, 5 bytes
        frame = MAGIC + struct.pack(">HII", 1, 18, 18 + len(headers)) + headers + b"hi"
        with pytest.raises(MessageDecodeError) as info:
            decode_frame(frame)
        assert str(info.value).startswith("A header at byte ")
        assert "number of characters, not of bytes" in str(info.value)

    def test_ascii_frame_errors_carry_no_faststream_hint(self):
        """A broken frame whose headers are all ASCII is not blamed on FastStream's framing."""
        frame = MAGIC + struct.pack(">HII", 1, 18, 28) + b"\x00\x01\x00\xc8x-note"
        with pytest.raises(MessageDecodeError) as info:
            decode_frame(frame)
        assert "past the frame's end" in str(info.value)
        assert "FastStream" not in str(info.value)

    def test_non_str_header_value_is_a_type_error(self):
        """A header value that is not a str raises TypeError."""
        with pytest.raises(TypeError, match="str"):
            encode_frame(b"", {"attempt": 3})

    def test_non_str_header_key_is_a_type_error(self):
        """A header key that is not a str raises TypeError."""
        with pytest.raises(TypeError):
            encode_frame(b"", {b"key": "value"})  # type: ignore[dict-item]

    def test_oversized_header_is_a_value_error(self):
        """A header value longer than 65,535 bytes raises ValueError."""
        with pytest.raises(ValueError, match="65535"):
            encode_frame(b"", {"big": "x" * 0x10000})

    def test_too_many_headers_is_a_value_error(self):
        """More than 65,535 headers raises ValueError, as the docstring promises."""
        with pytest.raises(ValueError):  # noqa: PT011 - the message is not the point
            encode_frame(b"", {str(i): "" for i in range(0x10000)})


class TestDecodeFrame:
    def test_worked_example(self):
        """decode_frame reads WIRE.md's worked example back into body and headers."""
        assert decode_frame(WORKED_EXAMPLE) == (b"Hi!", WORKED_HEADERS)

    def test_smallest_frame(self):
        """decode_frame reads a frame without headers."""
        assert decode_frame(SMALLEST_FRAME) == (b"hello", {})

    def test_round_trip_with_non_ascii_headers(self):
        """Non-ASCII headers survive an encode/decode round trip."""
        headers = {"ключ": "значение", "emoji": "🙂🙃", "": ""}
        assert decode_frame(encode_frame(b"\x00\xff", headers)) == (
            b"\x00\xff",
            headers,
        )

    def test_header_order_is_kept(self):
        """Headers come back in the order they were written."""
        headers = {"z": "1", "a": "2", "m": "3"}
        _, decoded = decode_frame(encode_frame(b"", headers))
        assert list(decoded) == ["z", "a", "m"]

    @pytest.mark.parametrize("length", range(18))
    def test_truncated_prefix(self, length):
        """A payload shorter than the fixed prefix raises MessageDecodeError."""
        with pytest.raises(MessageDecodeError):
            decode_frame(WORKED_EXAMPLE[:length])

    @pytest.mark.parametrize("length", range(18, 67))
    def test_truncated_inside_headers(self, length):
        """A frame cut anywhere before its body raises MessageDecodeError."""
        with pytest.raises(MessageDecodeError):
            decode_frame(WORKED_EXAMPLE[:length])

    def test_header_length_past_the_end(self):
        """A header length that runs past the frame's end raises MessageDecodeError."""
        rest = b"\x00\x01\x00\x05abc"
        with pytest.raises(MessageDecodeError, match="past"):
            decode_frame(_frame(rest=rest))

    def test_value_length_past_the_end(self):
        """A header value length that runs past the frame's end raises MessageDecodeError."""
        rest = b"\x00\x01\x00\x01k\xff\xffv"
        with pytest.raises(MessageDecodeError):
            decode_frame(_frame(rest=rest))

    def test_count_larger_than_the_headers(self):
        """A header count larger than the headers present raises MessageDecodeError."""
        rest = b"\x00\x02\x00\x01k\x00\x01v"
        with pytest.raises(MessageDecodeError):
            decode_frame(_frame(rest=rest))

    def test_headers_start_past_the_end(self):
        """A headers_start offset past the frame's end raises MessageDecodeError."""
        with pytest.raises(MessageDecodeError):
            decode_frame(_frame(headers_start=1000))

    @pytest.mark.parametrize(
        "rest",
        [b"\x00\x01\x00\x02\xc3\x28\x00\x00", b"\x00\x01\x00\x01k\x00\x01\xff"],
        ids=["key", "value"],
    )
    def test_non_utf8_header(self, rest):
        """A header key or value that is not UTF-8 raises MessageDecodeError."""
        with pytest.raises(MessageDecodeError, match="UTF-8"):
            decode_frame(_frame(rest=rest))

    def test_data_start_past_the_end(self):
        """A data_start offset past the frame's end raises MessageDecodeError."""
        with pytest.raises(MessageDecodeError, match="past"):
            decode_frame(_frame(data_start=21))

    def test_wrong_magic(self):
        """A frame with the wrong magic raises MessageDecodeError."""
        with pytest.raises(MessageDecodeError):
            decode_frame(_frame(magic=b"\x89BIN\r\n\x1a\x0b"))

    @pytest.mark.parametrize("version", [0, 2, 0xFFFF])
    def test_wrong_version(self, version):
        """A frame with a version other than 1 raises MessageDecodeError."""
        with pytest.raises(MessageDecodeError):
            decode_frame(_frame(version=version))


class TestDecodePayload:
    def test_binary_frame(self):
        """A well-formed frame is read as a frame."""
        assert decode_payload(WORKED_EXAMPLE) == (b"Hi!", WORKED_HEADERS)

    def test_legacy_envelope(self):
        """The legacy 0.5 JSON envelope gives its data, UTF-8 encoded, and its headers."""
        payload = json.dumps(
            {"data": "héllo", "headers": {"correlation_id": "1", "attempt": 2}}
        ).encode()
        assert decode_payload(payload) == (
            "héllo".encode(),
            {"correlation_id": "1", "attempt": 2},
        )

    def test_legacy_envelope_without_headers(self):
        """A legacy envelope without a headers field has no headers."""
        assert decode_payload(b'{"data": "x"}') == (b"x", {})

    @pytest.mark.parametrize(
        "payload",
        [
            b'{"data": 1, "headers": {}}',
            b'{"data": "x", "headers": []}',
            b'{"headers": {}}',
            b'{"data": "x"',
            b'{"\xff": 1}',
            b"[1, 2]",
        ],
    )
    def test_near_envelopes_are_raw_bodies(self, payload):
        """JSON that is not a well-formed envelope is a raw body without headers."""
        assert decode_payload(payload) == (payload, {})

    @pytest.mark.parametrize("payload", [b"", b"hello", b"\x00\xff", b"123"])
    def test_raw_bytes(self, payload):
        """A payload that is neither a frame nor an envelope is the whole body."""
        assert decode_payload(payload) == (payload, {})

    def test_broken_frame_is_refused(self):
        """A payload with the magic but a broken frame raises, rather than pass as a raw body."""
        with pytest.raises(MessageDecodeError, match="past its end"):
            decode_payload(WORKED_EXAMPLE[:30])

    def test_envelope_with_lone_surrogate_does_not_raise(self):
        """An envelope whose data holds a lone surrogate escape does not raise."""
        payload = b'{"data": "\\ud800", "headers": {}}'
        body, _ = decode_payload(payload)
        assert isinstance(body, bytes)

    def test_deeply_nested_json_does_not_raise(self):
        """A deeply nested JSON payload is a raw body, not a RecursionError."""
        payload = b'{"data": ' + b"[" * 100_000
        assert decode_payload(payload) == (payload, {})


class TestEnvelopeBounds:
    """The legacy envelope's headers are bounded as a frame's are."""

    @staticmethod
    def envelope(headers):
        return json.dumps({"data": "x", "headers": headers}).encode()

    @pytest.mark.parametrize(
        "value", ["s", "", 7, -(2**63), 1.5, True, False, None], ids=repr
    )
    def test_flat_values_are_kept_as_sent(self, value):
        """Strings, numbers, booleans and null header values are handed over unchanged."""
        assert decode_payload(self.envelope({"k": value})) == (b"x", {"k": value})

    @pytest.mark.parametrize("value", [[1, 2], {"a": 1}, []], ids=repr)
    def test_nested_values_are_refused(self, value):
        """An array or object as a header value is refused: a frame cannot carry it."""
        with pytest.raises(MessageDecodeError, match="header 'k' holds a"):
            decode_payload(self.envelope({"k": value}))

    def test_most_headers_a_frame_holds(self):
        """An envelope with 65,535 headers is read."""
        headers = {str(n): "" for n in range(0xFFFF)}
        assert len(decode_payload(self.envelope(headers))[1]) == 0xFFFF

    def test_too_many_headers(self):
        """An envelope with more than 65,535 headers is refused."""
        headers = {str(n): "" for n in range(0x10000)}
        with pytest.raises(MessageDecodeError, match="65536 headers"):
            decode_payload(self.envelope(headers))

    @pytest.mark.parametrize(
        "headers",
        [
            pytest.param({"k" * 0x10000: "v"}, id="long-key"),
            pytest.param({"k": "v" * 0x10000}, id="long-value"),
            pytest.param({"k": "é" * 0x8000}, id="long-value-in-utf8-bytes"),
        ],
    )
    def test_long_headers(self, headers):
        """A key or value over 65,535 bytes of UTF-8 is refused."""
        with pytest.raises(MessageDecodeError, match="over 65535 bytes"):
            decode_payload(self.envelope(headers))

    def test_longest_header_a_frame_holds(self):
        """A key and a value of exactly 65,535 bytes each are read."""
        headers = {"k" * 0xFFFF: "v" * 0xFFFF}
        assert decode_payload(self.envelope(headers))[1] == headers

    def test_lone_surrogate_in_a_header(self):
        """A header that is not valid Unicode is refused."""
        with pytest.raises(MessageDecodeError, match="not valid Unicode"):
            decode_payload(b'{"data": "x", "headers": {"k": "\\ud800"}}')


class TestFrameHeaders:
    """Only the named headers of a frame are read, for payloads too large to parse."""

    def test_reads_only_the_named_headers(self):
        """The named headers come back, others are skipped."""
        frame = encode_frame(
            b"body", {"correlation_id": "c", "x": "y", "reply_to": "r", "é": "ü"}
        )
        assert frame_headers(frame, ["reply_to", "correlation_id", "absent"]) == {
            "reply_to": "r",
            "correlation_id": "c",
        }

    def test_does_not_decode_the_other_headers(self):
        """A header not asked for is not decoded, so invalid UTF-8 there does not matter."""
        frame = _frame(rest=b"\x00\x02\x00\x01\xff\x00\x01\xfe\x00\x01k\x00\x01v")
        assert frame_headers(frame, ["k"]) == {"k": "v"}

    @pytest.mark.parametrize(
        "payload",
        [
            pytest.param(b"", id="empty"),
            pytest.param(b"raw body", id="raw"),
            pytest.param(b'{"data": "x", "headers": {"reply_to": "r"}}', id="envelope"),
            pytest.param(WORKED_EXAMPLE[:30], id="cut"),
            pytest.param(_frame(version=2), id="version-2"),
            pytest.param(_frame(data_start=10_000), id="data-start-past-the-end"),
            pytest.param(
                _frame(rest=b"\x00\x01\x00\x01k\x00\x09v"), id="value-past-the-end"
            ),
            pytest.param(
                _frame(rest=b"\x00\x01\x00\x01k\x00\x01\xff"), id="non-utf8-value"
            ),
        ],
    )
    def test_no_headers_from_anything_but_a_frame(self, payload):
        """An envelope, raw bytes or a broken frame give no headers at all."""
        assert frame_headers(payload, ["k", "reply_to"]) == {}

    def test_body_is_not_copied(self):
        """Reading the headers of a frame with a large body allocates far less than the body."""
        frame = encode_frame(b"x" * 20_000_000, {"reply_to": "r"})
        tracemalloc.start()
        try:
            assert frame_headers(frame, ["reply_to"]) == {"reply_to": "r"}
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert peak < 100_000


class TestEncodeBody:
    @pytest.mark.parametrize(
        ("value", "expected"),
        [
            (None, (b"", None)),
            (b"\x00raw", (b"\x00raw", None)),
            (b"", (b"", None)),
            ("héllo", ("héllo".encode(), "text/plain")),
            ("", (b"", "text/plain")),
            ({"a": [1, 2]}, (b'{"a":[1,2]}', "application/json")),
            ([1, "x"], (b'[1,"x"]', "application/json")),
            (123, (b"123", "application/json")),
            (1.5, (b"1.5", "application/json")),
            (True, (b"true", "application/json")),
        ],
    )
    def test_table(self, value, expected):
        """encode_body follows WIRE.md §3: bytes as is, str as text, the rest as compact JSON."""
        assert encode_body(value) == expected

    @pytest.mark.parametrize("value", [object(), {1, 2}, {"a": b"bytes"}])
    def test_not_json_serialisable(self, value):
        """A value that is not None, bytes, str or JSON-serialisable raises TypeError."""
        with pytest.raises(TypeError, match="JSON-serialisable"):
            encode_body(value)

    def test_circular_structure(self):
        """A self-referencing list raises TypeError, not ValueError."""
        looped: list[object] = []
        looped.append(looped)
        with pytest.raises(TypeError):
            encode_body(looped)


class TestDecodeBody:
    @pytest.mark.parametrize(
        ("body", "content_type", "expected"),
        [
            (b"h\xc3\xa9", "text/plain", "hé"),
            (b"", "text/plain", ""),
            (b'{"a":1}', "application/json", {"a": 1}),
            (b"[1,2]", "application/json; charset=utf-8", [1, 2]),
            (b"123", "application/octet-stream", b"123"),
            (b"<x/>", "application/xml", b"<x/>"),
            (b"123", None, 123),
            (b'{"a":null}', None, {"a": None}),
            (b'"s"', None, "s"),
            (b"hello", None, b"hello"),
            (b"\xff\xfe", None, b"\xff\xfe"),
            (b"", None, b""),
        ],
    )
    def test_table(self, body, content_type, expected):
        """decode_body follows WIRE.md §3: by content type, else JSON, else bytes."""
        result = decode_body(body, content_type)
        assert result == expected
        assert type(result) is type(expected)

    @pytest.mark.parametrize(
        ("body", "content_type"),
        [
            (b"not json", "application/json"),
            (b"", "application/json"),
            (b"\xff", "application/json"),
            (b"\xff", "text/plain"),
        ],
    )
    def test_body_not_matching_its_content_type(self, body, content_type):
        """A body that is not what its content type promises raises MessageDecodeError."""
        with pytest.raises(MessageDecodeError, match="content type"):
            decode_body(body, content_type)

    def test_deeply_nested_json_without_content_type_is_bytes(self):
        """Without a content type, JSON too deep to parse comes back as bytes."""
        body = b"[" * 100_000
        assert decode_body(body, None) == body

    def test_deeply_nested_json_is_a_decode_error(self):
        """Declared JSON too deep to parse raises MessageDecodeError."""
        with pytest.raises(MessageDecodeError):
            decode_body(b"[" * 100_000, "application/json")

    @pytest.mark.parametrize(
        "value", [b"\x01\x02", b"", "text", {"k": [1, 2.5, None]}, [True], 0]
    )
    def test_round_trip(self, value):
        """decode_body undoes encode_body for bytes, str and JSON values."""
        assert decode_body(*encode_body(value)) == value

    def test_none_comes_back_as_empty_bytes(self):
        """None is sent as an empty body without content type and decodes to empty bytes."""
        assert decode_body(*encode_body(None)) == b""


# Header keys and values: any text (hypothesis leaves out lone surrogates,
# which UTF-8 cannot encode), a few hundred characters at most.
_header_text = st.text(max_size=300)


class TestProperties:
    @PROPERTY_SETTINGS
    @given(
        body=st.binary(max_size=2000),
        headers=st.dictionaries(_header_text, _header_text, max_size=8),
    )
    def test_frame_round_trip(self, body, headers):
        """decode_frame(encode_frame(body, headers)) gives back body and headers."""
        assert decode_frame(encode_frame(body, headers)) == (body, headers)

    @PROPERTY_SETTINGS
    @given(
        body=st.binary(max_size=200),
        headers=st.dictionaries(_header_text, _header_text, max_size=4),
    )
    def test_payload_reads_frames(self, body, headers):
        """decode_payload reads every frame encode_frame writes."""
        assert decode_payload(encode_frame(body, headers)) == (body, headers)

    @PROPERTY_SETTINGS
    @given(data=st.binary(max_size=300) | st.binary(max_size=300).map(MAGIC.__add__))
    def test_decode_frame_only_raises_decode_errors(self, data):
        """decode_frame on arbitrary bytes either returns or raises MessageDecodeError."""
        try:
            body, headers = decode_frame(data)
        except MessageDecodeError:
            return
        assert isinstance(body, bytes)
        assert all(
            isinstance(k, str) and isinstance(v, str) for k, v in headers.items()
        )

    @PROPERTY_SETTINGS
    @given(
        data=st.binary(max_size=300)
        | st.binary(max_size=300).map(MAGIC.__add__)
        | st.binary(max_size=300).map(b"{".__add__)
    )
    def test_decode_payload_returns_or_raises_ours(self, data):
        """decode_payload on arbitrary bytes returns a body and headers, or raises MessageDecodeError for a broken frame."""
        try:
            body, headers = decode_payload(data)
        except MessageDecodeError:
            assert data.startswith(MAGIC)
        else:
            assert isinstance(body, bytes)
            assert isinstance(headers, dict)

    @PROPERTY_SETTINGS
    @given(
        data=st.binary(min_size=2, max_size=200),
        cut=st.integers(min_value=0, max_value=100),
    )
    def test_corrupted_frame_header_region(self, data, cut):
        """A valid prefix followed by arbitrary bytes never raises anything but MessageDecodeError."""
        frame = encode_frame(b"body", {"k": "v"})[: 18 + cut % 9] + data
        with contextlib.suppress(MessageDecodeError):
            decode_frame(frame)

    @PROPERTY_SETTINGS
    @given(
        body=st.binary(max_size=100),
        headers=st.dictionaries(_header_text, _header_text, max_size=4),
        edits=st.lists(
            st.tuples(
                st.integers(min_value=0), st.integers(0, 255), st.sampled_from("sdi")
            ),
            min_size=1,
            max_size=6,
        ),
    )
    def test_mutated_frames_parse_or_raise_ours(self, body, headers, edits):
        """A valid frame with bytes set, dropped or inserted anywhere parses into a
        message or raises MessageDecodeError, never anything else."""
        data = bytearray(encode_frame(body, {**headers, "x-redis-rpc-deadline": "1.5"}))
        for position, byte, kind in edits:
            index = position % (len(data) + 1)
            if kind == "s" and index < len(data):
                data[index] = byte
            elif kind == "d":
                del data[index : index + 1]
            else:
                data.insert(index, byte)
        try:
            message = RedisMessage.from_payload(bytes(data))
        except MessageDecodeError:
            return
        assert isinstance(message.body, bytes)
        assert message.deadline is None or isinstance(message.deadline, float)


def test_magic_constant():
    """The magic is PNG-style: 0x89, BIN, CR LF, SUB, LF."""
    assert _codec.MAGIC == b"\x89BIN\r\n\x1a\n"
    assert _codec.VERSION == 1


class TestHeaderNameCache:
    def test_names_are_cached_up_to_a_bound(self):
        """Encoding many distinct header names caches only a bounded number of them, and every frame still decodes."""
        for index in range(3 * _codec._MAX_PACKED_KEYS):
            headers = {f"name-{index}": "v", "correlation_id": "c"}
            assert decode_frame(encode_frame(b"b", headers)) == (b"b", headers)
        assert len(_codec._PACKED_KEYS) <= _codec._MAX_PACKED_KEYS

    def test_long_names_are_not_cached(self):
        """A long header name is encoded each time rather than kept for the life of the process."""
        name = "n" * (_codec._MAX_PACKED_KEY_BYTES + 1)
        assert decode_frame(encode_frame(b"", {name: "v"}))[1] == {name: "v"}
        assert name not in _codec._PACKED_KEYS


class TestJsonSniffing:
    @pytest.mark.parametrize(
        "encoding",
        [
            "utf-8",
            "utf-8-sig",
            "utf-16",
            "utf-16-le",
            "utf-16-be",
            "utf-32",
            "utf-32-le",
        ],
    )
    @pytest.mark.parametrize(
        "text", ['[1, "é"]', ' {"a": 1}', "Infinity", "-1", "true"]
    )
    def test_json_in_any_encoding_is_still_parsed(self, text, encoding):
        """A body without a content type is parsed whatever encoding json.loads() detects."""
        assert decode_body(text.encode(encoding), None) == json.loads(text.encode())

    def test_body_that_cannot_be_json_is_not_parsed(self, monkeypatch):
        """A body whose first byte no JSON text starts with comes back as bytes without a parse."""

        def refuse(*args, **kwargs):
            raise AssertionError("json.loads was called")

        monkeypatch.setattr("json.loads", refuse)
        body = b"hello " * 100_000
        assert decode_body(body, None) is body
