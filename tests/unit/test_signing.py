"""Signing and checking frames: which requests and replies verify, without a server."""

from __future__ import annotations

import pytest

from redis_rpc import RedisBroker
from redis_rpc._wire.codec import decode_frame, encode_frame
from redis_rpc._wire.message import (
    DESTINATION,
    NONCE,
    REFUSED,
    SIGNATURE,
    build_frame,
)
from redis_rpc._wire.signing import (
    MIN_KEY_BYTES,
    Problem,
    check_reply,
    check_request,
    coerce_key,
    sign_frame,
    signature,
    signed_frame,
)
from redis_rpc.errors import SetupError

KEY = b"k" * 32
OTHER_KEY = b"o" * 32
NONCE_VALUE = "ab" * 16
WHERE = "list:orders"


def _request(key=KEY, **headers):
    frame = build_frame(
        {"n": 1},
        correlation_id="cid",
        reply_to="redis_rpc.reply.x.y",
        headers={
            "x-redis-rpc-deadline": "100.000",
            NONCE: NONCE_VALUE,
            DESTINATION: WHERE,
            **headers,
        },
    )
    return sign_frame(frame, key)


def _reply(key=KEY, nonce=NONCE_VALUE, body="pong", destination=WHERE):
    return sign_frame(
        build_frame(body, correlation_id="cid"),
        key,
        reply_to_nonce=nonce,
        reply_to_destination=destination,
    )


def _why(payload, key=KEY, destination=WHERE):
    """The reason check_request() gives, or None."""
    problem = check_request(payload, key, destination)
    return None if problem is None else problem.reason


def _tamper(frame, **changes):
    """Re-encode *frame* with some headers changed, keeping its signature."""
    body, headers = decode_frame(frame)
    body = changes.pop("body", body)
    headers.update(changes)
    return encode_frame(body, headers)


class TestKeys:
    def test_str_key_is_utf8(self):
        """A str key is used as its UTF-8 bytes."""
        assert coerce_key("é" * MIN_KEY_BYTES) == ("é" * MIN_KEY_BYTES).encode()

    def test_no_key_means_no_signing(self):
        """None stays None: nothing is signed or checked."""
        assert coerce_key(None) is None

    @pytest.mark.parametrize("key", [b"", b"x" * (MIN_KEY_BYTES - 1), "short"])
    def test_short_key_is_refused(self, key):
        """A key under 16 bytes raises SetupError."""
        with pytest.raises(SetupError, match="at least 16"):
            coerce_key(key)

    def test_key_of_other_type_is_refused(self):
        """A key that is neither bytes nor str raises SetupError."""
        with pytest.raises(SetupError, match="bytes or str"):
            coerce_key(12345678901234567890)

    def test_broker_checks_its_key(self):
        """RedisBroker(signing_key=...) refuses a short key at construction."""
        with pytest.raises(SetupError):
            RedisBroker("redis://127.0.0.1:1", signing_key=b"short")

    def test_broker_repr_hides_key(self):
        """The key appears in neither the broker's nor its policy's repr."""
        broker = RedisBroker("redis://127.0.0.1:1", signing_key=KEY)
        assert "kkkk" not in repr(broker)
        assert "kkkk" not in repr(broker._policy)


class TestSignature:
    def test_header_order_does_not_matter(self):
        """The MAC is the same whatever order the headers come in."""
        headers = {"a": "1", "b": "2", "c": "3"}
        backwards = dict(reversed(list(headers.items())))
        assert signature(KEY, b"x", headers) == signature(KEY, b"x", backwards)

    def test_signature_header_is_left_out(self):
        """A frame's own signature header does not feed its MAC."""
        assert signature(KEY, b"x", {"a": "1"}) == signature(
            KEY, b"x", {"a": "1", SIGNATURE: "anything"}
        )

    def test_fields_cannot_be_shifted(self):
        """Moving bytes between a header's name and value, or into the body, changes the MAC."""
        base = signature(KEY, b"", {"ab": "c"})
        assert base != signature(KEY, b"", {"a": "bc"})
        assert base != signature(KEY, b"c", {"ab": ""})

    def test_request_and_reply_differ(self):
        """The same bytes signed as a request and as a reply give different MACs."""
        headers = {"a": "1"}
        assert signature(KEY, b"x", headers) != signature(
            KEY, b"x", headers, reply_to_nonce=""
        )

    def test_non_string_header_cannot_be_signed(self):
        """A header value that is not a str (a legacy envelope's) raises TypeError."""
        with pytest.raises(TypeError):
            signature(KEY, b"x", {"n": 1})


class TestRequests:
    def test_signed_request_verifies(self):
        """A request signed with the key passes, whatever its headers."""
        assert _why(_request()) is None

    def test_unsigned_request_is_refused(self):
        """A request without a signature fails with a reason."""
        assert _why(_request(key=None)) == "it is not signed"

    def test_other_key_is_refused(self):
        """A request signed with another key fails."""
        assert _why(_request(key=OTHER_KEY)) == "its signature does not verify"

    @pytest.mark.parametrize(
        "change",
        [
            {"body": b'{"n":2}'},
            {"reply_to": "redis_rpc.reply.attacker"},
            {"x-redis-rpc-deadline": "999999.000"},
            {"correlation_id": "other"},
            {"x-extra": "added"},
            {DESTINATION: "list:elsewhere"},
        ],
        ids=[
            "body",
            "reply_to",
            "deadline",
            "correlation_id",
            "added header",
            "destination",
        ],
    )
    def test_tampered_request_is_refused(self, change):
        """Changing the body, the reply channel, the deadline or any header breaks the signature."""
        tampered = _tamper(_request(), **change)
        assert _why(tampered) == "its signature does not verify"

    def test_reply_cannot_pass_as_request(self):
        """A signed reply does not verify as a request."""
        assert _why(_reply()) == "its signature does not verify"

    def test_raw_payload_is_refused(self):
        """A payload that is not a frame has no signature, so it is refused."""
        assert _why(b"just bytes") == "it is not signed"

    def test_broken_frame_is_refused(self):
        """A payload that starts like a frame but is not one is refused with a reason."""
        assert "cannot be read" in (_why(_request()[:25]) or "")

    def test_legacy_envelope_with_odd_header_is_refused(self):
        """A legacy JSON envelope whose headers are not all strings does not verify."""
        payload = b'{"data": "x", "headers": {"n": 1, "x-redis-rpc-signature": "00"}}'
        assert _why(payload) == "its headers cannot be signed"


class TestReplies:
    def test_signed_reply_verifies(self):
        """A reply signed over the request's nonce passes."""
        assert check_reply(_reply(), KEY, NONCE_VALUE, WHERE) is None

    def test_reply_echoes_nonce(self):
        """Sealing a reply adds the request's nonce header, with or without a key."""
        for key in (KEY, None):
            assert decode_frame(_reply(key=key))[1][NONCE] == NONCE_VALUE

    def test_reply_to_other_request_is_refused(self):
        """A genuine signed reply to another request (another nonce) is refused."""
        assert "another request" in (check_reply(_reply(), KEY, "cd" * 16, WHERE) or "")

    def test_reply_with_echo_rewritten_is_refused(self):
        """Rewriting the echoed nonce of a captured reply breaks its signature."""
        replayed = _tamper(_reply(), **{NONCE: "cd" * 16})
        assert (
            check_reply(replayed, KEY, "cd" * 16, WHERE)
            == "its signature does not verify"
        )

    def test_unsigned_reply_is_refused_with_key(self):
        """With a key, an unsigned reply echoing the right nonce is refused."""
        assert (
            check_reply(_reply(key=None), KEY, NONCE_VALUE, WHERE) == "it is not signed"
        )

    def test_reply_without_echo_is_refused_with_key(self):
        """With a key, a reply without the nonce (as FastStream sends) is refused."""
        frame = sign_frame(build_frame("x", correlation_id="c"), KEY)
        assert check_reply(frame, KEY, NONCE_VALUE, WHERE) == (
            "it does not echo the request's nonce"
        )

    def test_request_signature_copied_into_reply_is_refused(self):
        """A reply carrying the request's own signature header does not verify."""
        request_signature = decode_frame(_request())[1][SIGNATURE]
        forged = _tamper(_reply(key=None), **{SIGNATURE: request_signature})
        assert (
            check_reply(forged, KEY, NONCE_VALUE, WHERE)
            == "its signature does not verify"
        )

    def test_other_key_reply_is_refused(self):
        """A reply signed with another key is refused."""
        assert check_reply(_reply(key=OTHER_KEY), KEY, NONCE_VALUE, WHERE) == (
            "its signature does not verify"
        )

    def test_without_key_reply_without_echo_is_taken(self):
        """Without a key, a reply without the nonce header (a FastStream server's) is taken."""
        assert (
            check_reply(build_frame("x", correlation_id="c"), None, NONCE_VALUE) is None
        )

    def test_without_key_mismatching_echo_is_refused(self):
        """Without a key, a reply echoing another nonce is still refused."""
        assert check_reply(_reply(key=None), None, "cd" * 16) is not None

    def test_without_key_unreadable_reply_is_handed_over(self):
        """Without a key, an unreadable reply is handed over, for request() to report."""
        assert check_reply(_reply(key=None)[:25], None, NONCE_VALUE) is None

    def test_with_key_unreadable_reply_is_refused(self):
        """With a key, an unreadable reply is refused like any other unsigned one."""
        assert "cannot be read" in (
            check_reply(_reply()[:25], KEY, NONCE_VALUE, WHERE) or ""
        )


def test_sign_frame_without_key_or_nonce_is_identity():
    """With neither a key nor a nonce, sign_frame returns the very same frame."""
    frame = build_frame("x", correlation_id="c")
    assert sign_frame(frame, None) is frame


@pytest.mark.parametrize(
    ("body", "headers", "nonce", "expected"),
    [
        (
            b"body",
            {"correlation_id": "c", "x-h": "é", SIGNATURE: "ignored"},
            "n",
            "b42777f735cfb8a2b7cf267a945982a279fc68d7e85b7dddafd18d8d9e596829",
        ),
        (
            b"",
            {},
            None,
            "66a4394f62273f76f1310e38f118f7eb453590f8cf5f870ed2af10ddfa975c79",
        ),
    ],
    ids=["reply", "empty-request"],
)
def test_signature_is_stable(body, headers, nonce, expected):
    """The MAC of a given frame never changes within its version (requests v1, replies v2), so peers of different releases verify each other."""
    assert (
        signature(KEY, body, headers, reply_to_nonce=nonce, reply_to_destination=WHERE)
        == expected
    )


@pytest.mark.parametrize("key", [KEY, None])
@pytest.mark.parametrize("nonce", [NONCE_VALUE, "", None])
def test_signed_frame_matches_sign_frame(key, nonce):
    """signed_frame() on a frame's parts gives what sign_frame() gives on the encoded frame."""
    headers = {"correlation_id": "c", SIGNATURE: "stale", NONCE: "old", "x-u": "v"}
    expected = sign_frame(encode_frame(b"b", headers), key, reply_to_nonce=nonce)
    assert signed_frame(b"b", dict(headers), key, reply_to_nonce=nonce) == expected


def test_without_key_mismatching_echo_is_refused_even_in_a_broken_frame():
    """Without a key, a frame echoing another nonce is refused even when another of its headers is not UTF-8."""
    frame = encode_frame(b"", {NONCE: "cd" * 16, "x-bad": "v"}).replace(b"v", b"\xff")
    assert "another request" in (check_reply(frame, None, NONCE_VALUE) or "")


class TestDestinations:
    def test_copy_to_another_destination_is_refused_without_answer(self):
        """A signed request read where it was not addressed is refused, and its caller gets no answer."""
        problem = check_request(_request(), KEY, "list:other-service")
        assert problem is not None
        assert "addressed to 'list:orders'" in problem.reason
        assert problem.refusal == ""

    def test_request_without_destination_is_refused(self):
        """A signed request that names no destination (an older sender's) is refused."""
        frame = sign_frame(build_frame("x", correlation_id="c"), KEY)
        problem = check_request(frame, KEY, WHERE)
        assert problem is not None
        assert "does not name its destination" in problem.reason

    def test_reply_for_another_destination_is_refused(self):
        """A reply signed over another destination's request does not verify, though its nonce matches."""
        reply = _reply(destination="list:other-service")
        assert check_reply(reply, KEY, NONCE_VALUE, WHERE) == (
            "its signature does not verify"
        )


class TestRefusals:
    def test_key_problems_are_answered(self):
        """A missing signature and another key's signature are answered with refusals that blame the keys."""
        assert check_request(_request(key=None), KEY, WHERE) == Problem(
            "it is not signed", "caller-has-no-key"
        )
        assert check_request(_request(key=OTHER_KEY), KEY, WHERE) == Problem(
            "its signature does not verify", "keys-differ"
        )

    @pytest.mark.parametrize(
        "code", ["caller-has-no-key", "keys-differ", "server-has-no-key"]
    )
    def test_unsigned_key_refusal_is_taken_by_keyed_caller(self, code):
        """A keyed caller takes an unsigned refusal that blames the keys and echoes its nonce, for request() to raise."""
        refusal = _reply(key=None, body="refused")
        refusal = _tamper(refusal, **{REFUSED: code})
        assert check_reply(refusal, KEY, NONCE_VALUE, WHERE) is None
        assert "another request" in (check_reply(refusal, KEY, "cd" * 16, WHERE) or "")

    def test_unsigned_expiry_notice_is_refused_by_keyed_caller(self):
        """An unsigned refusal that does not blame the keys is dropped by a keyed caller like any unsigned reply."""
        notice = _tamper(_reply(key=None), **{REFUSED: "expired 1.0"})
        assert check_reply(notice, KEY, NONCE_VALUE, WHERE) == "it is not signed"
