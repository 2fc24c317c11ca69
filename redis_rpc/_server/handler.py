"""Calling a user's handler: which argument goes to which parameter.

The first parameter that is not injected gets the body: structured into its
annotation by the broker's converter (``Item``, ``list[int]``, ...), as
bytes when annotated ``bytes``, and as decoded when it has no annotation or
``Any``. A parameter annotated ``Logger`` gets a logger, one annotated
``RedisMessage`` the incoming message, and one whose default is ``Path()``
a placeholder's value from the channel the message arrived on. The plan is
worked out once, when the handler is registered, so bad signatures fail at
import time rather than per message.
"""

from __future__ import annotations

import contextlib
import enum
import inspect
import logging
import types
import typing
from typing import TYPE_CHECKING, Any

import attrs

from redis_rpc._wire import convert, path
from redis_rpc._wire.message import RedisMessage
from redis_rpc.errors import SetupError, ValidationError

if TYPE_CHECKING:
    from collections.abc import Callable

    import cattrs


class _Arg(enum.Enum):
    BODY = enum.auto()  # the body, decoded by its content type
    TYPED_BODY = enum.auto()  # the body, structured into the parameter's annotation
    RAW_BODY = enum.auto()  # the body bytes, for a parameter annotated ``bytes``
    LOGGER = enum.auto()
    MESSAGE = enum.auto()


@attrs.frozen
class _PathArg:
    """A path parameter: the value of the placeholder *name*, structured into *hint*."""

    name: str
    parameter: str
    hint: Any  # None: the text as it is
    default: Any


class Handler:
    """A user function with its argument plan. Immutable after construction."""

    def __init__(
        self,
        func: Callable[..., Any],
        logger: logging.Logger,
        converter: cattrs.Converter | None = None,
        template: path.ChannelTemplate | None = None,
    ) -> None:
        """*template*: the subscriber's channel template, which path parameters must name placeholders of."""
        self.func = func
        self.name = getattr(func, "__qualname__", repr(func))
        self._logger = logger
        self.converter = converter or convert.make_converter()
        self._body_type: Any = None  # what a TYPED_BODY is structured into
        # What describes the handler (redis-rpc docs gen): the body parameter's
        # annotation and the return annotation, Any where there is none.
        self.body_hint: Any = Any
        self._template = template
        self._args: list[_Arg | _PathArg] = []  # positional-only parameters, in order
        self._kwargs: dict[str, _Arg | _PathArg] = {}
        hints = _type_hints(func)
        self.result_hint: Any = hints.get("return", Any)
        body_taken = False
        for index, param in enumerate(inspect.signature(func).parameters.values()):
            hint = hints.get(param.name)
            variadic = param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD)
            arg: _Arg | _PathArg
            if isinstance(param.default, path.PathParam):
                arg = self._path_arg(param.name, hint, param.default)
            elif _plain(hint) is logging.Logger:
                arg = _Arg.LOGGER
            elif _plain(hint) is RedisMessage:
                arg = _Arg.MESSAGE
            elif not body_taken and not variadic:
                arg, body_taken = self._body_arg(param.name, hint), True
            elif param.default is not param.empty or variadic:
                continue
            else:
                msg = (
                    f"Cannot call handler {self.name}: parameter {param.name!r} is neither the body "
                    "nor annotated Logger or RedisMessage; give it a default value."
                )
                raise SetupError(msg)
            if param.kind is not param.POSITIONAL_ONLY:
                self._kwargs[param.name] = arg
            elif len(self._args) == index:
                self._args.append(arg)
            else:  # a defaulted positional-only parameter was skipped before this one
                msg = f"Cannot call handler {self.name}: positional-only parameter {param.name!r} follows one we must skip."
                raise SetupError(msg)

    def __call__(self, message: RedisMessage) -> Any:
        """Call the function for *message*; whatever it raises propagates."""
        args, kwargs = self.arguments(message)
        return self.func(*args, **kwargs)

    def arguments(self, message: RedisMessage) -> tuple[list[Any], dict[str, Any]]:
        """Work out the arguments for *message*, without calling the function.

        Raises:
            MessageDecodeError: The body is not what its content type says.
            ValidationError: The body does not fit the body parameter's
                annotation, or a path value its parameter's, or the channel
                gave no value for a path parameter without a default.
        """
        args = [self._value(arg, message) for arg in self._args]
        kwargs = {name: self._value(arg, message) for name, arg in self._kwargs.items()}
        return args, kwargs

    def _body_arg(self, name: str, hint: Any) -> _Arg:
        self.body_hint = Any if hint is None else hint
        if hint is None or not convert.needs_structuring(_plain(hint)):
            return _Arg.BODY
        if _plain(hint) is bytes:
            return _Arg.RAW_BODY
        try:  # a type the converter cannot handle fails here, not on every body
            convert.check_structurable(self.converter, hint)
        except Exception as exc:
            msg = f"Cannot structure the body of handler {self.name} into {hint!r} (parameter {name!r}): {exc}"
            raise SetupError(msg) from exc
        self._body_type = hint
        return _Arg.TYPED_BODY

    def _path_arg(self, parameter: str, hint: Any, marker: path.PathParam) -> _PathArg:
        name = marker.real_name or parameter
        names = () if self._template is None else self._template.names
        if name not in names:
            where = (
                "its subscriber is not a channel"
                if self._template is None
                else f"channel {self._template.template!r} has no {{{name}}}"
            )
            msg = f"Cannot call handler {self.name}: parameter {parameter!r} takes a path value, but {where}."
            raise SetupError(msg)
        if hint is not None and not convert.needs_structuring(_plain(hint)):
            hint = None
        if _plain(hint) is bytes:
            hint = bytes
        if hint is not None and hint is not bytes:
            try:  # as for the body: a type the converter cannot handle fails here
                convert.check_structurable(self.converter, hint)
            except Exception as exc:
                msg = f"Cannot structure path parameter {parameter!r} of handler {self.name} into {hint!r}: {exc}"
                raise SetupError(msg) from exc
        return _PathArg(name, parameter, hint, marker.default)

    def _path_value(self, arg: _PathArg, message: RedisMessage) -> Any:
        text = message.path.get(arg.name)
        if text is None:
            if arg.default is not path.MISSING:
                return arg.default
            assert self._template is not None  # else _path_arg() refused it
            msg = f"No value for path parameter {arg.parameter!r}: the channel the message came on does not fit {self._template.template!r}."
            raise ValidationError(msg, errors=[f"missing {{{arg.name}}} @ path"])
        if arg.hint is None:
            return text
        return path.value(self.converter, text, arg.hint, arg.parameter)

    def _value(self, arg: _Arg | _PathArg, message: RedisMessage) -> Any:
        if isinstance(arg, _PathArg):
            return self._path_value(arg, message)
        if arg is _Arg.BODY:
            return message.decode()
        if arg is _Arg.TYPED_BODY:
            return message.decode(self._body_type, self.converter)
        if arg is _Arg.RAW_BODY:
            return message.body
        if arg is _Arg.LOGGER:
            return self._logger
        return message


def _plain(hint: Any) -> Any:
    """*hint* without ``Annotated[...]``'s metadata, for telling what to inject."""
    while typing.get_origin(hint) is typing.Annotated:
        hint = typing.get_args(hint)[0]
    return hint


def _type_hints(func: Callable[..., Any]) -> dict[str, Any]:
    """Resolve *func*'s annotations one by one, skipping any that cannot be resolved.

    One at a time, so that an annotation imported only under ``TYPE_CHECKING``
    does not cost the other parameters their injection. ``Annotated``
    metadata is kept: ``pydantic.Field(gt=0)`` constrains a value.
    """
    # A callable object's annotations live on its class's __call__.
    target = func if inspect.isroutine(func) else type(func).__call__
    namespace = getattr(inspect.unwrap(target), "__globals__", {})
    hints = {}
    for name, annotation in inspect.get_annotations(target).items():
        probe = types.SimpleNamespace(__annotations__={name: annotation})
        # An unresolvable annotation is simply not injected.
        with contextlib.suppress(Exception):
            hints[name] = typing.get_type_hints(
                probe, globalns=namespace, include_extras=True
            )[name]
    return hints
