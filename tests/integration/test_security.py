"""Who may answer a request, and who may make a server run a handler."""

from __future__ import annotations

import logging
import re
import threading

import pytest

from redis_rpc import ListSub, Path, RedisMessage, RemoteError, StreamSub
from redis_rpc._wire.codec import decode_payload, encode_frame
from redis_rpc._wire.message import NONCE, REPLY_TO, SIGNATURE, build_frame
from redis_rpc._wire.signing import signature
from redis_rpc.errors import SigningKeyError
from tests.conftest import LONG_TIMEOUT, SHORT_TIMEOUT
from tests.helpers import Callers, wait_for

KEY = b"a shared secret of 32 bytes long"
OTHER_KEY = b"another secret, also long enough"
REQUEST_LOG = "redis_rpc._client.listener"
CONSUMER_LOG = "redis_rpc._server.process"
QUEUES = ["list", "stream"]
TRANSPORTS = ["channel", "list", "stream"]


@pytest.fixture
def pool():
    """Threads for callers that block in request() while the test acts."""
    with Callers(2) as callers:
        yield callers


def _target(transport, name):
    return {transport: name}


def _stored_request(raw, transport, name):
    """Read, without taking it, the request waiting in a list or stream: what the attacker sees."""

    def read():
        if transport == "list":
            items = raw.lrange(name, 0, -1)
        else:
            items = [fields[b"__data__"] for _, fields in raw.xrange(name)]
        return items[-1] if items else None

    payload = wait_for(read, LONG_TIMEOUT)
    assert payload is not None, "the request never reached Redis"
    return decode_payload(payload)[1]


def _serve(make_broker, transport, name, body="real", **options):
    """A started server answering *body* on *name*; returns the calls it saw."""
    server = make_broker(**options)
    seen = []

    @server.subscriber(**_target(transport, name))
    def handle(msg: str) -> str:
        seen.append(msg)
        return body

    server.start()
    return seen


def test_reply_channels_are_unpredictable(make_broker, unique_name):
    """Two requests' reply channels share the broker's prefix but no counter: each ends in 128 random bits."""
    server = make_broker()
    channels = []

    @server.subscriber(unique_name)
    def handle(msg: str, message: RedisMessage) -> str:
        channels.append(message.reply_to)
        return msg

    server.start()
    caller = make_broker()
    for body in ("a", "b", "c"):
        assert caller.request(body, unique_name, timeout=LONG_TIMEOUT).decode() == body
    prefix = caller._listener.prefix
    suffixes = [channel.removeprefix(prefix) for channel in channels]
    assert all(channel.startswith(prefix) for channel in channels)
    assert all(re.fullmatch(r"[0-9a-f]{32}", suffix) for suffix in suffixes)
    assert len(set(suffixes)) == 3


def test_forged_reply_on_predicted_channel_is_not_taken(
    make_broker, unique_name, raw, pool
):
    """A client that saw one request's reply channel cannot answer the caller's next request elsewhere."""
    seen_list, hidden_list = f"{unique_name}-seen", f"{unique_name}-hidden"
    caller = make_broker()
    first = pool.submit(caller.request, "one", list=seen_list, timeout=LONG_TIMEOUT)
    observed = _stored_request(raw, "list", seen_list)[REPLY_TO]
    # The next request goes where the attacker cannot look.
    second = pool.submit(caller.request, "two", list=hidden_list, timeout=LONG_TIMEOUT)
    assert wait_for(lambda: raw.llen(hidden_list) == 1, LONG_TIMEOUT)
    prefix, _, suffix = observed.rpartition(".")
    guesses = {f"{prefix}.{n}" for n in range(10)}
    if re.fullmatch(r"[0-9a-f]+", suffix):
        guesses |= {f"{prefix}.{int(suffix, 16) + d:0{len(suffix)}x}" for d in (-1, 1)}
    forged = build_frame("forged", correlation_id="")
    for guess in guesses:
        raw.publish(guess, forged)
    _serve(make_broker, "list", seen_list)
    _serve(make_broker, "list", hidden_list)
    assert first.result(LONG_TIMEOUT).decode() == "real"
    assert second.result(LONG_TIMEOUT).decode() == "real"


def test_reply_echoing_another_nonce_is_dropped(
    make_broker, unique_name, raw, pool, caplog
):
    """Without a key, a reply echoing another request's nonce is dropped, logged once, and the real reply is taken."""
    caplog.set_level(logging.WARNING, logger=REQUEST_LOG)
    caller = make_broker()
    future = pool.submit(
        caller.request,
        "hi",
        list=unique_name,
        correlation_id="c-1",
        timeout=LONG_TIMEOUT,
    )
    headers = _stored_request(raw, "list", unique_name)
    # Like a genuine reply to an earlier request, replayed on this channel.
    stale = build_frame("stale", correlation_id="c-1", headers={NONCE: "0" * 32})
    for _ in range(3):
        raw.publish(headers[REPLY_TO], stale)
    _serve(make_broker, "list", unique_name)
    assert future.result(LONG_TIMEOUT).decode() == "real"
    dropped = [r for r in caplog.records if "Dropped a reply" in r.getMessage()]
    assert len(dropped) == 1
    assert "'c-1'" in dropped[0].getMessage()
    assert "another request" in dropped[0].getMessage()


class TestSigning:
    @pytest.mark.parametrize("transport", TRANSPORTS)
    def test_signed_peers_talk(self, make_broker, unique_name, transport):
        """A caller and a server with the same key exchange requests and replies on every transport."""
        seen = _serve(make_broker, transport, unique_name, signing_key=KEY)
        caller = make_broker(signing_key=KEY)
        reply = caller.request(
            "hi", **_target(transport, unique_name), timeout=LONG_TIMEOUT
        )
        assert reply.decode() == "real"
        assert seen == ["hi"]

    @pytest.mark.parametrize("transport", QUEUES)
    def test_forged_reply_is_ignored_by_keyed_caller(
        self, make_broker, unique_name, raw, pool, caplog, transport
    ):
        """A client that reads a signed request and answers it first, copying what it can, is ignored."""
        caplog.set_level(logging.WARNING, logger=REQUEST_LOG)
        caller = make_broker(signing_key=KEY)
        future = pool.submit(
            caller.request,
            "hi",
            **_target(transport, unique_name),
            correlation_id="c-2",
            timeout=LONG_TIMEOUT,
        )
        headers = _stored_request(raw, transport, unique_name)
        copied = {NONCE: headers[NONCE]}
        forgeries = [
            build_frame("forged", correlation_id="c-2", headers=copied),
            build_frame(
                "forged",
                correlation_id="c-2",
                headers={**copied, SIGNATURE: headers[SIGNATURE]},
            ),
        ]
        wrong = {"correlation_id": "c-2", "content-type": "text/plain", **copied}
        wrong[SIGNATURE] = signature(
            OTHER_KEY, b"forged", wrong, reply_to_nonce=headers[NONCE]
        )
        forgeries.append(build_frame("forged", correlation_id="c-2", headers=wrong))
        for forged in forgeries:
            raw.publish(headers[REPLY_TO], forged)
        _serve(make_broker, transport, unique_name, signing_key=KEY)
        assert future.result(LONG_TIMEOUT).decode() == "real"
        dropped = [r for r in caplog.records if "Dropped a reply" in r.getMessage()]
        assert len(dropped) == 1  # once per request, however many forgeries
        assert "'c-2'" in dropped[0].getMessage()

    @pytest.mark.parametrize("transport", QUEUES)
    def test_unsigned_request_is_refused(
        self, make_broker, unique_name, raw, caplog, transport
    ):
        """A keyed server refuses an unsigned request without running its handler, settles it and logs it, and its caller raises SigningKeyError at once."""
        caplog.set_level(logging.WARNING, logger=CONSUMER_LOG)
        seen = _serve(make_broker, transport, unique_name, signing_key=KEY)
        caller = make_broker()
        with pytest.raises(SigningKeyError) as info:
            caller.request(
                "hi",
                **_target(transport, unique_name),
                correlation_id="c-3",
                timeout=LONG_TIMEOUT,
            )
        assert info.value.reason == "caller_has_no_key"
        assert (info.value.destination, info.value.correlation_id) == (
            f"{transport}:{unique_name}",
            "c-3",
        )
        refused = [r for r in caplog.records if "refused" in r.getMessage()]
        assert len(refused) == 1
        assert "'c-3'" in refused[0].getMessage()
        assert "not signed" in refused[0].getMessage()
        assert seen == []
        if transport == "stream":  # settled: acknowledged, not left pending
            group = raw.xinfo_groups(unique_name)[0]
            assert group["pending"] == 0
        else:
            assert raw.llen(unique_name) == 0

    @pytest.mark.parametrize("transport", TRANSPORTS)
    def test_wrong_key_is_refused(self, make_broker, unique_name, caplog, transport):
        """A request signed with another key is refused, and its caller raises SigningKeyError saying the keys differ, at once."""
        caplog.set_level(logging.WARNING, logger=CONSUMER_LOG)
        seen = _serve(make_broker, transport, unique_name, signing_key=KEY)
        caller = make_broker(signing_key=OTHER_KEY)
        with pytest.raises(SigningKeyError, match="differs") as info:
            caller.request(
                "hi", **_target(transport, unique_name), timeout=LONG_TIMEOUT
            )
        assert info.value.reason == "keys_differ"
        assert seen == []
        assert any(
            "signature does not verify" in r.getMessage() for r in caplog.records
        )

    def test_unsigned_event_is_refused(self, make_broker, unique_name):
        """A keyed server runs its handler for signed events only."""
        handled = threading.Event()
        server = make_broker(signing_key=KEY)
        bodies = []

        @server.subscriber(list=ListSub(unique_name))
        def handle(msg: str) -> None:
            bodies.append(msg)
            handled.set()

        server.start()
        make_broker().publish("unsigned", list=unique_name)
        make_broker(signing_key=OTHER_KEY).publish("wrong key", list=unique_name)
        make_broker(signing_key=KEY).publish("signed", list=unique_name)
        assert handled.wait(LONG_TIMEOUT)
        assert bodies == ["signed"]

    def test_result_sent_to_reply_to_reaches_keyed_subscriber(
        self, make_broker, unique_name
    ):
        """A keyed server's answer to a signed publish(reply_to=...) is accepted by a keyed subscriber there."""
        results_channel = f"{unique_name}-results"
        received = threading.Event()
        results = []
        _serve(make_broker, "list", unique_name, body="result", signing_key=KEY)
        sink = make_broker(signing_key=KEY)

        @sink.subscriber(results_channel)
        def collect(msg: str) -> None:
            results.append(msg)
            received.set()

        sink.start()
        make_broker(signing_key=KEY).publish(
            "hi", list=unique_name, reply_to=results_channel
        )
        assert received.wait(LONG_TIMEOUT)
        assert results == ["result"]

    @pytest.mark.parametrize("failure", ["handler", "validation"])
    def test_error_replies_are_signed(self, make_broker, unique_name, failure):
        """A keyed server's error replies verify at a keyed caller, which raises RemoteError."""
        server = make_broker(signing_key=KEY)

        @server.subscriber(stream=StreamSub(unique_name, group="g", consumer="c"))
        def handle(n: int) -> int:
            raise ValueError("no")

        server.start()
        caller = make_broker(signing_key=KEY)
        body = 1 if failure == "handler" else "not a number"
        with pytest.raises(RemoteError) as caught:
            caller.request(body, stream=unique_name, timeout=LONG_TIMEOUT)
        expected = "ValueError" if failure == "handler" else "ValidationError"
        assert caught.value.type_name == expected

    @pytest.mark.parametrize("transport", TRANSPORTS)
    def test_server_without_key_refuses_a_signed_request(
        self, make_broker, unique_name, transport
    ):
        """A server without a key does not run a signed request, whose caller takes signed replies only: the caller raises SigningKeyError at once."""
        seen = _serve(make_broker, transport, unique_name)
        caller = make_broker(signing_key=KEY)
        with pytest.raises(SigningKeyError, match="server has no signing_key") as info:
            caller.request(
                "hi", **_target(transport, unique_name), timeout=LONG_TIMEOUT
            )
        assert info.value.reason == "server_has_no_key"
        assert seen == []

    def test_keyed_caller_refuses_unsigned_reply(
        self, make_broker, unique_name, raw, pool, caplog
    ):
        """A keyed caller does not take an unsigned reply that is not a refusal, and keeps waiting."""
        caplog.set_level(logging.WARNING, logger=REQUEST_LOG)
        caller = make_broker(signing_key=KEY)
        future = pool.submit(
            caller.request, "hi", list=unique_name, timeout=SHORT_TIMEOUT
        )
        headers = _stored_request(raw, "list", unique_name)
        raw.publish(
            headers[REPLY_TO],
            build_frame("unsigned", correlation_id="", headers={NONCE: headers[NONCE]}),
        )
        with pytest.raises(TimeoutError):
            future.result(LONG_TIMEOUT)
        assert any("is not signed" in r.getMessage() for r in caplog.records)


class TestDestinations:
    @pytest.mark.parametrize("transport", QUEUES)
    def test_signed_request_copied_to_another_service_is_refused_there(
        self, make_broker, unique_name, raw, pool, caplog, transport
    ):
        """A signed request copied unchanged into another service's list or stream sharing the key is refused there, and the caller takes only its own service's answer."""
        caplog.set_level(logging.WARNING, logger=CONSUMER_LOG)
        ours, theirs = f"{unique_name}-a", f"{unique_name}-b"
        other = _serve(make_broker, transport, theirs, body="other", signing_key=KEY)
        caller = make_broker(signing_key=KEY)
        future = pool.submit(
            caller.request, "hi", **_target(transport, ours), timeout=LONG_TIMEOUT
        )
        # The attacker may only read and push: it copies the request as it is.
        assert wait_for(
            lambda: raw.llen(ours) if transport == "list" else raw.xlen(ours),
            LONG_TIMEOUT,
        )
        payload = (
            raw.lrange(ours, 0, -1)
            if transport == "list"
            else [f[b"__data__"] for _, f in raw.xrange(ours)]
        )[0]
        if transport == "list":
            raw.rpush(theirs, payload)
        else:
            raw.xadd(theirs, {"__data__": payload})
        assert wait_for(
            lambda: any("addressed to" in r.getMessage() for r in caplog.records),
            LONG_TIMEOUT,
        )
        assert other == []
        _serve(make_broker, transport, ours, body="mine", signing_key=KEY)
        assert future.result(LONG_TIMEOUT).decode() == "mine"

    def test_signed_channel_request_published_elsewhere_is_refused(
        self, make_broker, unique_name, raw, caplog
    ):
        """A signed channel request published again on another channel is refused by that channel's server."""
        caplog.set_level(logging.WARNING, logger=CONSUMER_LOG)
        ours, theirs = f"{unique_name}.a", f"{unique_name}.b"
        seen = _serve(make_broker, "channel", theirs, signing_key=KEY)
        spy = raw.pubsub()
        spy.subscribe(ours)
        try:
            assert spy.get_message(timeout=LONG_TIMEOUT)  # the confirmation
            caller = make_broker(signing_key=KEY)
            with pytest.raises(TimeoutError):
                caller.request("hi", ours, timeout=SHORT_TIMEOUT, fail_fast=False)
            payload = spy.get_message(timeout=LONG_TIMEOUT)["data"]
        finally:
            spy.close()
        raw.publish(theirs, payload)
        assert wait_for(
            lambda: any("addressed to" in r.getMessage() for r in caplog.records),
            LONG_TIMEOUT,
        )
        assert seen == []

    def test_pattern_subscriber_takes_signed_requests_on_each_channel(
        self, make_broker, unique_name
    ):
        """A keyed pattern subscriber takes a signed request addressed to any channel its pattern matches."""
        server = make_broker(signing_key=KEY)

        @server.subscriber(f"{unique_name}.{{region}}")
        def handle(body: str, region: str = Path()) -> str:
            return f"{region}:{body}"

        server.start()
        caller = make_broker(signing_key=KEY)
        for region in ("eu", "us"):
            reply = caller.request(
                "hi", f"{unique_name}.{region}", timeout=LONG_TIMEOUT
            )
            assert reply.decode() == f"{region}:hi"

    def test_reply_signed_for_another_destination_is_dropped(
        self, make_broker, unique_name, raw, pool, caplog
    ):
        """A reply signed with the key over the request's nonce but for another destination is dropped, and the real reply is taken."""
        caplog.set_level(logging.WARNING, logger=REQUEST_LOG)
        caller = make_broker(signing_key=KEY)
        future = pool.submit(
            caller.request, "hi", list=unique_name, timeout=LONG_TIMEOUT
        )
        headers = _stored_request(raw, "list", unique_name)
        # What a server of another list, not checking destinations, would sign.
        forged = {"correlation_id": "", "content-type": "text/plain"}
        forged[NONCE] = headers[NONCE]
        forged[SIGNATURE] = signature(
            KEY,
            b"elsewhere",
            forged,
            reply_to_nonce=headers[NONCE],
            reply_to_destination=f"list:{unique_name}-other",
        )
        raw.publish(headers[REPLY_TO], encode_frame(b"elsewhere", forged))
        assert wait_for(
            lambda: any("Dropped a reply" in r.getMessage() for r in caplog.records),
            LONG_TIMEOUT,
        )
        _serve(make_broker, "list", unique_name, signing_key=KEY)
        assert future.result(LONG_TIMEOUT).decode() == "real"
