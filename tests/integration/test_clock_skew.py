"""A caller whose clock is behind its server's: the skew is detected and named at once, not mistaken for a missing consumer."""

from __future__ import annotations

import time
import types

import pytest

from redis_rpc._client import request as request_module
from redis_rpc.errors import RequestTimeoutError
from tests.conftest import LONG_TIMEOUT
from tests.helpers import Callers, wait_for

TIMEOUT = 2.0
SKEW = 3.0


@pytest.fixture
def caller_clock_behind(monkeypatch):
    """The caller's Unix clock SKEW seconds behind the server's; both in this process, so only the caller's module sees it."""
    skewed = types.SimpleNamespace(
        time=lambda: time.time() - SKEW, monotonic=time.monotonic
    )
    monkeypatch.setattr(request_module, "time", skewed)


@pytest.mark.parametrize("transport", ["channel", "list", "stream"])
def test_caller_behind_the_server_is_told_of_the_skew_at_once(
    caller_clock_behind, make_broker, unique_name, transport
):
    """With a caller 3 s behind, request(timeout=2) raises RequestTimeoutError naming the clocks within well under its timeout, not 'is a consumer running?' after it."""
    server = make_broker()
    seen = []

    @server.subscriber(**{transport: unique_name})
    def handle(body):
        seen.append(body)
        return body

    with server:
        caller = make_broker()
        started = time.monotonic()
        with pytest.raises(RequestTimeoutError) as info:
            caller.request("hi", **{transport: unique_name}, timeout=TIMEOUT)
        took = time.monotonic() - started
    message = str(info.value)
    assert "skipped the request as expired" in message
    assert "ahead of this one's" in message
    assert "synchronise the clocks" in message
    assert took < TIMEOUT - 0.5, took
    assert seen == []


def test_request_expired_in_a_backlog_is_skipped_and_counted(
    make_broker, raw, unique_name
):
    """With the clocks in step, a request whose caller gave up while it waited in a list is skipped unhandled and counted as expired."""
    caller = make_broker()
    with Callers(1) as pool:
        future = pool.submit(caller.request, "late", list=unique_name, timeout=1.0)
        assert wait_for(lambda: raw.llen(unique_name) == 1, LONG_TIMEOUT)
        with pytest.raises(RequestTimeoutError, match="is a consumer running"):
            future.result(LONG_TIMEOUT)
    server = make_broker()
    seen = []

    @server.subscriber(list=unique_name)
    def handle(body):
        seen.append(body)

    with server:
        key = f"list:{unique_name}"
        assert wait_for(
            lambda: server.stats().subscribers[key].expired == 1, LONG_TIMEOUT
        )
    assert seen == []


def test_expiry_notice_reaches_the_caller_signed(
    caller_clock_behind, make_broker, unique_name
):
    """With a signing key, the expiry notice is signed, and the keyed caller takes it and names the skew."""
    key = b"a shared secret of 32 bytes long"
    server = make_broker(signing_key=key)

    @server.subscriber(list=unique_name)
    def handle(body):
        return body

    with server:
        caller = make_broker(signing_key=key)
        with pytest.raises(RequestTimeoutError, match="ahead of this one's"):
            caller.request("hi", list=unique_name, timeout=TIMEOUT)
