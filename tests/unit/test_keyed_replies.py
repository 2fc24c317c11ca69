"""A keyed request processed under hooks: its reply built in the hooks' reply event, stored, and kept ahead of the PUBLISH."""

from __future__ import annotations

import contextlib
import logging
import uuid

from redis_rpc._io.commands import Publish, Set
from redis_rpc._memory import MemoryConnection
from redis_rpc._server.handler import Handler
from redis_rpc._server.model import Delivery, Policy, Subscriber
from redis_rpc._server.process import Processor
from redis_rpc._wire.message import (
    IDEMPOTENCY_KEY,
    KEEP,
    NONCE,
    REPLY_PREFIX,
    RedisMessage,
    build_frame,
    kept_key,
)
from redis_rpc._wire.schemas import ListSub


def _keyed_request(correlation_id: str, reply_to: str) -> bytes:
    headers = {KEEP: "1", IDEMPOTENCY_KEY: "order-42", NONCE: uuid.uuid4().hex}
    return build_frame(
        "pay", correlation_id=correlation_id, reply_to=reply_to, headers=headers
    )


def test_a_keyed_request_under_hooks_is_stored_kept_and_replayed():
    """The first keyed request runs the handler in a process and a reply event, its reply stored and SET before its PUBLISH; a duplicate gets the stored reply without either."""
    runs = []
    seen = []

    def pay(body: str) -> str:
        runs.append(body)
        return f"paid {body}"

    @contextlib.contextmanager
    def hook(event):
        seen.append(event.kind)
        if event.kind == "reply":
            event.headers["x-hook"] = "reply"  # goes out with the reply it is around
        yield

    connection = MemoryConnection()
    processor = Processor(
        Subscriber(ListSub("pay"), Handler(pay, logging.getLogger("test")), False, 1),
        Policy(hooks=(hook,)),
        name="redis_rpc:list:pay",
        connection=connection,
    )
    reply_to = f"{REPLY_PREFIX}{uuid.uuid4().hex}.{uuid.uuid4().hex}"

    first = processor.run(Delivery(_keyed_request("c1", reply_to)))

    assert first.outcome == "handled"
    assert seen == ["process", "reply"]
    kept, published = first.commands
    assert isinstance(kept, Set)
    assert kept.key == kept_key(reply_to)
    assert isinstance(published, Publish)
    assert published.channel == reply_to
    assert kept.data == published.data
    reply = RedisMessage.from_payload(published.data)
    assert (reply.decode(), reply.correlation_id) == ("paid pay", "c1")
    assert reply.headers["x-hook"] == "reply"
    # Stored by the time run() returned, before anything it returned is sent.
    assert [record.get("data") for record in connection._records.values()] == [
        b"paid pay"
    ]

    seen.clear()
    again = processor.run(Delivery(_keyed_request("c2", reply_to)))

    assert again.outcome == "replayed"
    assert runs == ["pay"]
    assert seen == []
    answer = again.commands[-1]
    assert isinstance(answer, Publish)
    replayed = RedisMessage.from_payload(answer.data)
    assert (replayed.decode(), replayed.correlation_id) == ("paid pay", "c2")
