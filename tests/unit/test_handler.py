"""The handler argument plan: which value each parameter of a user function gets.

This module uses ``from __future__ import annotations`` on purpose: every
annotation below is a string that ``Handler`` must resolve.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import pytest

from redis_rpc import Logger, RedisMessage
from redis_rpc._server.handler import Handler
from redis_rpc.errors import SetupError

LOGGER = logging.getLogger("tests.unit.handler")
MESSAGE = RedisMessage(
    body=b'{"n":1}', content_type="application/json", correlation_id="c"
)


def _call(func: Callable[..., Any]) -> Any:
    return Handler(func, LOGGER)(MESSAGE)


def test_annotations_are_strings_here():
    """This module's annotations are unevaluated strings, as with PEP 563."""

    def handler(body: bytes) -> None: ...

    assert handler.__annotations__["body"] == "bytes"


class TestBody:
    def test_first_parameter_gets_decoded_body(self):
        """The first parameter gets the body decoded by its content type."""
        assert _call(lambda body: body) == {"n": 1}

    def test_annotated_first_parameter_gets_decoded_body(self):
        """A first parameter annotated with another type still gets the decoded body."""

        def handler(body: dict[str, int]) -> object:
            return body

        assert _call(handler) == {"n": 1}

    def test_bytes_annotation_gets_raw_body(self):
        """A body parameter annotated bytes gets the raw body."""

        def handler(body: bytes) -> object:
            return body

        assert _call(handler) == b'{"n":1}'

    def test_zero_parameters(self):
        """A handler without parameters is called with nothing."""
        assert _call(lambda: "called") == "called"

    def test_keyword_only_body(self):
        """A keyword-only first parameter gets the body too."""

        def handler(*, body):
            return body

        assert _call(handler) == {"n": 1}

    def test_positional_only_body(self):
        """A positional-only first parameter gets the body too."""

        def handler(body, /):
            return body

        assert _call(handler) == {"n": 1}

    def test_decode_error_propagates_from_call(self):
        """A body that does not match its content type fails the call, not the construction."""
        handler = Handler(lambda body: body, LOGGER)
        with pytest.raises(ValueError, match="content type"):
            handler(RedisMessage(body=b"{", content_type="application/json"))

    def test_body_not_decoded_when_not_asked_for(self):
        """A handler that takes only the message is called even when the body is undecodable."""

        def handler(message: RedisMessage) -> object:
            return message.body

        broken = RedisMessage(body=b"{", content_type="application/json")
        assert Handler(handler, LOGGER)(broken) == b"{"


class TestInjection:
    def test_logger_and_message_after_body(self):
        """Parameters annotated Logger and RedisMessage get the logger and the message."""

        def handler(body: object, logger: Logger, message: RedisMessage) -> object:
            return body, logger, message

        assert _call(handler) == ({"n": 1}, LOGGER, MESSAGE)

    def test_injected_before_body(self):
        """Injected parameters may come before the body parameter."""

        def handler(message: RedisMessage, logger: Logger, body: bytes) -> object:
            return message, logger, body

        assert _call(handler) == (MESSAGE, LOGGER, b'{"n":1}')

    def test_body_between_injected(self):
        """The body parameter may sit between injected parameters."""

        def handler(logger: Logger, body: object, message: RedisMessage) -> object:
            return logger, body, message

        assert _call(handler) == (LOGGER, {"n": 1}, MESSAGE)

    def test_only_injected(self):
        """A handler may take injected parameters only and no body."""

        def handler(logger: Logger) -> object:
            return logger

        assert _call(handler) is LOGGER

    def test_logging_logger_annotation(self):
        """logging.Logger works as the annotation, since Logger is the same class."""

        def handler(body: object, log: logging.Logger) -> object:
            return log

        assert Logger is logging.Logger
        assert _call(handler) is LOGGER

    def test_keyword_only_injection(self):
        """Keyword-only injected parameters are passed by name."""

        def handler(body: object, *, message: RedisMessage, logger: Logger) -> object:
            return body, message, logger

        assert _call(handler) == ({"n": 1}, MESSAGE, LOGGER)


class TestSignatureErrors:
    def test_extra_required_parameter(self):
        """A second required parameter that is neither body nor injected raises SetupError at construction."""

        def handler(body, extra):
            raise AssertionError("never called")

        with pytest.raises(SetupError, match="extra"):
            Handler(handler, LOGGER)

    def test_extra_required_keyword_only_parameter(self):
        """A required keyword-only parameter beyond the body raises SetupError."""

        def handler(body: object, *, extra: int) -> object:
            raise AssertionError("never called")

        with pytest.raises(SetupError, match="extra"):
            Handler(handler, LOGGER)

    def test_defaulted_parameters_are_left_alone(self):
        """Parameters with defaults after the body keep their defaults."""

        def handler(body: object, extra: int = 5, *, flag: bool = True) -> object:
            return body, extra, flag

        assert _call(handler) == ({"n": 1}, 5, True)

    def test_variadic_parameters_are_left_alone(self):
        """*args and **kwargs neither take the body nor raise."""

        def handler(*args, **kwargs):
            return args, kwargs

        assert _call(handler) == ((), {})

    def test_body_then_variadic(self):
        """A body followed by *args and **kwargs gets only the body."""

        def handler(body, *args, **kwargs):
            return body, args, kwargs

        assert _call(handler) == ({"n": 1}, (), {})


class TestCallables:
    def test_bound_method(self):
        """A bound method's self is not taken for the body."""

        class Service:
            def handle(self, body: bytes, logger: Logger) -> object:
                return self, body, logger

        service = Service()
        assert _call(service.handle) == (service, b'{"n":1}', LOGGER)

    def test_exceptions_propagate(self):
        """Whatever the handler raises propagates out of the call."""

        def handler(body):
            raise KeyError(body["n"])

        with pytest.raises(KeyError):
            _call(handler)

    def test_name_is_qualname(self):
        """The handler's name is the function's qualified name."""

        def handler(body):
            return body

        assert Handler(handler, LOGGER).name.endswith(
            "test_name_is_qualname.<locals>.handler"
        )

    def test_callable_object(self):
        """An object with __call__ is a handler, with injection from its signature."""

        class Echo:
            def __call__(self, body, logger: Logger):
                return body, logger

        assert _call(Echo()) == ({"n": 1}, LOGGER)

    def test_unresolvable_annotation_keeps_other_injections(self):
        """An annotation that cannot be resolved does not cost the other parameters theirs."""

        def handler(body: NotImportedAtRuntime, logger: Logger):  # type: ignore[name-defined]  # noqa: F821
            return body, logger

        assert _call(handler) == ({"n": 1}, LOGGER)
