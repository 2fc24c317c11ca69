"""What start() says when it fails: the cause first, each cause once, and the parts it kept down."""

from __future__ import annotations

import threading

import attrs

from redis_rpc._server.serving import start_error
from redis_rpc.errors import RedisCommandError, RedisConnectionError

ADDRESS = "127.0.0.1:6379"
REFUSED = (
    f"Redis at {ADDRESS} refused the credentials (invalid username-password pair);"
    " check the user name and password."
)


@attrs.define
class _Part:
    name: str
    error: Exception | None = None
    ready: threading.Event = attrs.field(factory=threading.Event)


def test_one_cause_shared_by_every_part_is_said_once_and_first():
    """When every part failed for the same reason, the message opens with it, says it once and names each part."""
    cause = RedisConnectionError(REFUSED, reason="authentication")
    parts = [_Part(name, cause) for name in ("redis_rpc:replies", "redis_rpc:list:a")]
    error = start_error(parts, 10.0, ADDRESS)
    assert isinstance(error, RedisConnectionError)
    assert error.reason == "authentication"
    assert error.__cause__ is cause
    assert str(error) == (
        f"{REFUSED[:-1]}. Not started: redis_rpc:replies, redis_rpc:list:a."
    )
    assert "within" not in str(error)


def test_distinct_causes_are_grouped_with_the_redis_error_first():
    """Parts are grouped by cause, the first Redis error's group first, and parts not up yet come last."""
    denied = RedisCommandError(
        f"Redis at {ADDRESS} says no (NOPERM xreadgroup).", reason="permission"
    )
    other = RuntimeError("something else broke")
    parts = [
        _Part("redis_rpc:replies"),
        _Part("redis_rpc:channels", other),
        _Part("redis_rpc:stream:s", denied),
        _Part("redis_rpc:stream:t", denied),
    ]
    error = start_error(parts, 10.0, ADDRESS)
    assert isinstance(error, RedisCommandError)
    assert error.reason == "permission"
    assert str(error) == (
        f"Redis at {ADDRESS} says no (NOPERM xreadgroup). Not started:"
        " redis_rpc:stream:s, redis_rpc:stream:t."
        " something else broke. Not started: redis_rpc:channels."
        " Not up yet: redis_rpc:replies."
    )


def test_parts_that_never_said_why_point_at_the_address():
    """Without any Redis error, the message says how long start() waited and asks whether Redis is reachable."""
    error = start_error([_Part("redis_rpc:replies")], 2.5, ADDRESS)
    assert isinstance(error, RedisConnectionError)
    assert error.reason == "timeout"
    assert str(error) == (
        f"Could not start within 2.5 s; is Redis reachable at {ADDRESS}?"
        " Not up yet: redis_rpc:replies."
    )
