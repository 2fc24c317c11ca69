"""Messages: ``RedisMessage``, ``Response``, ``RedisResponse`` and ``build_frame``."""

from __future__ import annotations

import json
import os
import tracemalloc
import uuid

import attrs
import pytest

from redis_rpc import RedisMessage, RedisResponse, Response
from redis_rpc._wire.codec import decode_frame, encode_frame
from redis_rpc._wire.message import (
    _PROTOCOL_HEADERS,
    build_error_frame,
    build_frame,
    error_frame_parts,
    frame_parts,
    new_correlation_id,
)
from redis_rpc.errors import MessageDecodeError, MessageTooLargeError


class TestFromPayload:
    def test_splits_protocol_headers_from_user_headers(self):
        """correlation_id, content-type and reply_to become attributes, not user headers."""
        frame = encode_frame(
            b'{"a":1}',
            {
                "correlation_id": "c-1",
                "content-type": "application/json",
                "reply_to": "inbox",
                "x-user": "u",
            },
        )
        message = RedisMessage.from_payload(frame)
        assert message == RedisMessage(
            body=b'{"a":1}',
            headers={"x-user": "u"},
            correlation_id="c-1",
            reply_to="inbox",
            content_type="application/json",
        )

    def test_missing_protocol_headers_get_defaults(self):
        """A frame without protocol headers has empty ids and no content type."""
        message = RedisMessage.from_payload(encode_frame(b"x", {"k": "v"}))
        assert message.correlation_id == ""
        assert message.reply_to == ""
        assert message.content_type is None
        assert message.headers == {"k": "v"}

    def test_raw_payload(self):
        """A payload that is neither frame nor envelope is a body without headers."""
        message = RedisMessage.from_payload(b"plain")
        assert message == RedisMessage(body=b"plain")

    def test_legacy_envelope_with_non_string_headers(self):
        """Legacy envelope protocol headers are turned into strings; user headers are kept as sent."""
        payload = (
            b'{"data": "7", "headers": {"correlation_id": 42, "reply_to": "r", "n": 1}}'
        )
        message = RedisMessage.from_payload(payload)
        assert message.body == b"7"
        assert message.correlation_id == "42"
        assert message.reply_to == "r"
        assert message.headers == {"n": 1}


def _many_headers_envelope(count: int) -> bytes:
    """A legacy envelope with *count* tiny headers: costly to parse, for its size."""
    headers = ",".join(f'"{n}":{n}' for n in range(count))
    return f'{{"data":"x","headers":{{"reply_to":"r",{headers}}}}}'.encode()


class TestSizeLimit:
    """from_payload(max_size=...) refuses a payload over the limit before any parsing."""

    @pytest.mark.parametrize(
        "payload",
        [
            pytest.param(encode_frame(b"x" * 100, {"reply_to": "r"}), id="frame"),
            pytest.param(
                json.dumps({"data": "x" * 100, "headers": {}}).encode(), id="envelope"
            ),
            pytest.param(b"x" * 200, id="raw"),
        ],
    )
    def test_refused_in_every_format(self, payload):
        """A frame, an envelope or a raw payload one byte over the limit is refused."""
        with pytest.raises(MessageTooLargeError, match="over max_message_size"):
            RedisMessage.from_payload(payload, max_size=len(payload) - 1)
        assert RedisMessage.from_payload(payload, max_size=len(payload)).body

    @pytest.mark.parametrize(
        "payload",
        [
            pytest.param(
                encode_frame(b"x", {"k": "v"})[:25] + b"x" * 100, id="broken-frame"
            ),
            pytest.param(
                _many_headers_envelope(70_000), id="envelope-with-too-many-headers"
            ),
        ],
    )
    def test_size_is_checked_before_the_format(self, payload):
        """An oversized payload that would also fail to parse is refused for its size."""
        with pytest.raises(MessageTooLargeError):
            RedisMessage.from_payload(payload, max_size=100)

    def test_oversized_envelope_is_never_parsed(self):
        """Refusing a large envelope with very many headers allocates next to nothing."""
        payload = _many_headers_envelope(300_000)  # about 4 MB; parsed, about 40 MB
        tracemalloc.start()
        try:
            with pytest.raises(MessageTooLargeError):
                RedisMessage.from_payload(payload, max_size=1024)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert peak < 200_000

    def test_no_limit(self):
        """Without a limit, a large payload is parsed."""
        assert RedisMessage.from_payload(b"x" * 100_000).body == b"x" * 100_000


class TestFromFrameHeaders:
    def test_protocol_headers_only(self):
        """An oversized frame still tells where to reply, without its body or user headers."""
        frame = encode_frame(
            b"x" * 1000,
            {
                "correlation_id": "c-1",
                "reply_to": "inbox",
                "x-redis-rpc-accept-errors": "1",
                "x-user": "u",
            },
        )
        message = RedisMessage.from_frame_headers(frame)
        assert message == RedisMessage(
            body=b"", correlation_id="c-1", reply_to="inbox", accepts_errors=True
        )

    @pytest.mark.parametrize(
        "payload",
        [
            pytest.param(_many_headers_envelope(10), id="envelope"),
            pytest.param(b"raw", id="raw"),
        ],
    )
    def test_nothing_but_a_frame_is_read(self, payload):
        """An envelope or a raw payload gives a message with no one to reply to."""
        assert RedisMessage.from_frame_headers(payload) == RedisMessage(body=b"")


class TestDecode:
    def test_decodes_by_content_type(self):
        """decode() returns the body decoded by its content type."""
        message = RedisMessage(body=b"123", content_type="text/plain")
        assert message.decode() == "123"

    def test_without_content_type_tries_json(self):
        """decode() parses a body without content type as JSON when it is JSON."""
        assert RedisMessage(body=b"123").decode() == 123
        assert RedisMessage(body=b"abc").decode() == b"abc"

    def test_bad_json_raises_decode_error(self):
        """decode() raises MessageDecodeError when a JSON body is not JSON."""
        message = RedisMessage(body=b"{", content_type="application/json")
        with pytest.raises(MessageDecodeError):
            message.decode()

    def test_round_trip_through_build_frame(self):
        """A value sent with build_frame comes back from from_payload().decode()."""
        value = {"items": [1, 2, 3], "name": "ü"}
        frame = build_frame(value, correlation_id="c")
        assert RedisMessage.from_payload(frame).decode() == value

    def test_is_frozen(self):
        """RedisMessage is immutable."""
        message = RedisMessage(body=b"")
        with pytest.raises(attrs.exceptions.FrozenInstanceError):
            message.body = b"x"  # type: ignore[misc]


class TestBuildFrame:
    def test_header_order(self):
        """Headers go out as correlation_id, content-type, reply_to, then user headers."""
        frame = build_frame(
            "hi", correlation_id="c", reply_to="r", headers={"b": "1", "a": "2"}
        )
        body, headers = decode_frame(frame)
        assert body == b"hi"
        assert list(headers.items()) == [
            ("correlation_id", "c"),
            ("content-type", "text/plain"),
            ("reply_to", "r"),
            ("b", "1"),
            ("a", "2"),
        ]

    def test_correlation_id_is_always_sent(self):
        """An empty correlation_id is still written; no content type or reply_to for bytes."""
        _, headers = decode_frame(build_frame(b"raw", correlation_id=""))
        assert headers == {"correlation_id": ""}

    def test_none_body(self):
        """A None body is empty and has no content type."""
        assert decode_frame(build_frame(None, correlation_id="c")) == (
            b"",
            {"correlation_id": "c"},
        )

    def test_json_body(self):
        """A dict body is compact JSON with application/json."""
        body, headers = decode_frame(build_frame({"a": 1}, correlation_id="c"))
        assert body == b'{"a":1}'
        assert headers["content-type"] == "application/json"

    def test_user_headers_override_protocol_headers(self):
        """A user header with a protocol name overrides the protocol value in place."""
        frame = build_frame(
            "x", correlation_id="c", headers={"content-type": "text/markdown"}
        )
        _, headers = decode_frame(frame)
        assert list(headers.items()) == [
            ("correlation_id", "c"),
            ("content-type", "text/markdown"),
        ]

    def test_non_str_header_is_a_type_error(self):
        """A non-str user header value raises TypeError."""
        with pytest.raises(TypeError):
            build_frame("x", correlation_id="c", headers={"n": 1})  # type: ignore[dict-item]

    def test_unencodable_body_is_a_type_error(self):
        """A body that is not JSON-serialisable raises TypeError."""
        with pytest.raises(TypeError):
            build_frame(object(), correlation_id="c")

    def test_is_keyword_only(self):
        """build_frame takes everything but the body by keyword."""
        with pytest.raises(TypeError):
            build_frame("x", "c")  # type: ignore[call-arg]


class TestResponse:
    def test_defaults(self):
        """Response defaults to no body, no headers and no correlation id."""
        response = Response()
        assert response.body is None
        assert response.headers == {}
        assert response.correlation_id is None

    def test_body_is_positional_and_the_rest_keyword_only(self):
        """Response takes the body positionally and headers and correlation_id by keyword."""
        response = Response("b", headers={"k": "v"}, correlation_id="c")
        assert (response.body, response.headers, response.correlation_id) == (
            "b",
            {"k": "v"},
            "c",
        )
        with pytest.raises(TypeError):
            Response("b", {"k": "v"})  # type: ignore[call-arg]

    def test_default_headers_are_not_shared(self):
        """Each Response gets its own default headers mapping."""
        assert Response().headers is not Response().headers

    def test_is_frozen(self):
        """Response is immutable."""
        with pytest.raises(attrs.exceptions.FrozenInstanceError):
            Response().body = 1  # type: ignore[misc]


class TestRedisResponse:
    def test_defaults(self):
        """RedisResponse is a Response whose maxlen defaults to None."""
        response = RedisResponse()
        assert isinstance(response, Response)
        assert response.body is None
        assert response.headers == {}
        assert response.correlation_id is None
        assert response.maxlen is None

    def test_maxlen_is_keyword_only(self):
        """RedisResponse takes maxlen only by keyword."""
        assert RedisResponse("b", maxlen=10).maxlen == 10
        with pytest.raises(TypeError):
            RedisResponse("b", {}, None, 10)  # type: ignore[call-arg]


class TestErrorFrames:
    def test_long_message_and_traceback_are_cut(self):
        """An error reply carries at most 2,000 characters of message and the last 20,000 of traceback."""
        frame = build_error_frame(
            ValueError("x" * 5_000), correlation_id="c", traceback="t" * 50_000 + "END"
        )
        details = RedisMessage.from_payload(frame).error_details()
        assert details is not None
        assert len(details["remote_message"]) == 2_000
        assert details["remote_message"].endswith("...")
        assert len(details["traceback"]) == 20_000
        assert details["traceback"].endswith("END")

    def test_brief_frame_keeps_type_and_start_of_message(self):
        """A brief error reply, for a small max_message_size, keeps the type and 200 characters."""
        frame = build_error_frame(
            KeyError("k" * 1_000), correlation_id="c", traceback="tb", brief=True
        )
        assert len(frame) < 400
        details = RedisMessage.from_payload(frame).error_details()
        assert details is not None
        assert details["type_name"] == "KeyError"
        assert len(details["remote_message"]) == 200
        assert details["traceback"] is None

    def test_exception_whose_str_raises_is_described(self):
        """An exception whose __str__ raises still makes an error reply."""

        class OddError(Exception):
            def __str__(self):
                raise RuntimeError

        details = RedisMessage.from_payload(
            build_error_frame(OddError(), correlation_id="c")
        ).error_details()
        assert details is not None
        assert details["remote_message"] == "<OddError whose str() failed>"


class TestCorrelationIds:
    def test_ids_are_unique_and_shaped_like_uuid4(self):
        """Generated correlation ids never repeat and parse as version 4 UUIDs, as FastStream's do."""
        ids = [new_correlation_id() for _ in range(10_000)]
        assert len(set(ids)) == len(ids)
        parsed = uuid.UUID(ids[0])
        assert (parsed.version, parsed.variant) == (4, uuid.RFC_4122)
        assert str(parsed) == ids[0]

    @pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
    def test_forked_child_draws_other_ids(self):
        """A forked child does not hand out the ids its parent goes on to hand out."""
        new_correlation_id()
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: report its next ids, and leave at once
            try:
                os.write(
                    write_end,
                    " ".join(new_correlation_id() for _ in range(3)).encode(),
                )
            finally:
                os._exit(0)
        os.close(write_end)
        try:
            with os.fdopen(read_end, "rb") as pipe:
                child = set(pipe.read().decode().split())
        finally:
            os.waitpid(pid, 0)
        parent = {new_correlation_id() for _ in range(3)}
        assert len(child) == 3
        assert not child & parent
        # Another random prefix, not merely another counter value.
        assert {i[:24] for i in child}.isdisjoint({i[:24] for i in parent})


class TestFrameParts:
    def test_frame_parts_encode_to_build_frame(self):
        """Encoding frame_parts() gives build_frame()'s bytes, and a headers dict of its own."""
        user = {"x-user": "u"}
        data, headers = frame_parts(
            {"a": 1}, correlation_id="c", reply_to="r", headers=user
        )
        expected = build_frame({"a": 1}, correlation_id="c", reply_to="r", headers=user)
        assert encode_frame(data, headers) == expected
        headers["x-user"] = "changed"
        assert user == {"x-user": "u"}

    def test_error_frame_parts_encode_to_build_error_frame(self):
        """Encoding error_frame_parts() gives build_error_frame()'s bytes."""
        error = ValueError("bad")
        assert encode_frame(
            *error_frame_parts(error, correlation_id="c", traceback="tb")
        ) == build_error_frame(error, correlation_id="c", traceback="tb")


def test_from_payload_leaves_protocol_headers_out_of_user_headers():
    """Every protocol header, ours and FastStream's, becomes an attribute or is dropped, never a user header."""
    headers = dict.fromkeys(sorted(_PROTOCOL_HEADERS), "1") | {"x-user": "u"}
    message = RedisMessage.from_payload(encode_frame(b"", headers))
    assert message.headers == {"x-user": "u"}
