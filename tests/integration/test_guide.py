"""Each example of FastStream's Redis RPC guide, in blocking form, against a real Redis."""

from __future__ import annotations

from typing import Any

import pytest

from redis_rpc import App, Logger, RedisBroker, RedisMessage, RedisResponse, Response
from tests.conftest import POLL_INTERVAL, SHORT_TIMEOUT

TRANSPORTS = ["channel", "list", "stream"]


def test_full_example_with_app(redis_url, unique_name, caplog):
    """The guide's full example runs under App: three echo handlers answer three requests."""
    broker = RedisBroker(redis_url, poll_interval=POLL_INTERVAL)
    app = App(broker)
    names: dict[str, Any] = {kind: f"{unique_name}-{kind}" for kind in TRANSPORTS}
    answers = []

    @broker.subscriber(channel=names["channel"])
    def handle_channel(msg: str, logger: Logger):
        logger.info(msg)
        return msg

    @broker.subscriber(list=names["list"])
    def handle_list(msg: str, logger: Logger):
        logger.info(msg)
        return msg

    @broker.subscriber(stream=names["stream"])
    def handle_stream(msg: str, logger: Logger):
        logger.info(msg)
        return msg

    @app.after_startup
    def t():
        for kind in TRANSPORTS:
            response: RedisMessage = broker.request(
                "Hi!", **{kind: names[kind]}, timeout=3.0
            )
            answers.append(response.decode())
        app.exit()

    with caplog.at_level("INFO", logger="redis_rpc.handler"):
        app.run()

    assert answers == ["Hi!", "Hi!", "Hi!"]
    assert [
        r.getMessage() for r in caplog.records if r.name == "redis_rpc.handler"
    ] == ["Hi!"] * 3


@pytest.mark.parametrize("kind", TRANSPORTS)
def test_rpc_subscriber_returns_value(make_broker, unique_name, kind):
    """A handler's plain return value is the reply, over every transport."""
    broker = make_broker()

    @broker.subscriber(**{kind: unique_name})
    def handle(msg):
        return f"Received: {msg}"

    with broker:
        msg: RedisMessage = broker.request("Hello, Redis!", **{kind: unique_name})
    assert msg.decode() == "Received: Hello, Redis!"


@pytest.mark.parametrize("kind", TRANSPORTS)
def test_response_carries_headers_and_correlation_id(make_broker, unique_name, kind):
    """A returned Response sets the reply's body, user headers and correlation id."""
    broker = make_broker()

    @broker.subscriber(**{kind: unique_name})
    def handle(msg):
        return Response(
            body=f"Processed: {msg}",
            headers={"x-token": "some-token"},
            correlation_id="some-correlation-id",
        )

    with broker:
        msg = broker.request("Hello, Redis!", **{kind: unique_name})
    assert msg.body == b"Processed: Hello, Redis!"
    assert msg.headers == {"x-token": "some-token"}
    assert msg.correlation_id == "some-correlation-id"


def test_redis_response_on_stream(make_broker, unique_name):
    """A RedisResponse with maxlen is a normal reply to a stream request."""
    broker = make_broker()

    @broker.subscriber(stream=unique_name)
    def handle(msg):
        return RedisResponse(
            body=f"Processed: {msg}",
            headers={"x-token": "some-token"},
            correlation_id="some-correlation-id",
            maxlen=1000,
        )

    with broker:
        msg = broker.request("Hello, Redis!", stream=unique_name)
    assert (msg.body, msg.headers, msg.correlation_id) == (
        b"Processed: Hello, Redis!",
        {"x-token": "some-token"},
        "some-correlation-id",
    )


@pytest.mark.parametrize("kind", TRANSPORTS)
def test_no_reply_suppresses_the_reply(make_broker, unique_name, kind):
    """With no_reply=True the handler runs but the caller gets no reply."""
    broker = make_broker()
    seen = []

    @broker.subscriber(**{kind: unique_name}, no_reply=True)
    def handle(msg):
        seen.append(msg)
        return "never sent"

    with broker, pytest.raises(TimeoutError):
        broker.request("x", **{kind: unique_name}, timeout=SHORT_TIMEOUT / 4)
    assert seen == ["x"]
