"""Typed bodies: structuring JSON into annotated types and back, with cattrs.

Each broker owns one ``cattrs.Converter`` (``make_converter()`` by default,
or the user's own), so hooks registered for one broker never leak into
another. The default is cattrs' JSON converter (datetimes as ISO 8601
strings, enums by value) made strict about JSON's primitive types: a
``str`` field does not take ``5``, and an ``int`` field does not take
``"5"``, ``True`` or ``2.5``.
"""

from __future__ import annotations

import typing
from typing import Any

import cattrs
import cattrs.preconf.json

from redis_rpc.errors import ValidationError

# Types a body is handed over as it was decoded, without structuring.
_AS_DECODED = frozenset((Any, object))


def make_converter() -> cattrs.Converter:
    """Build the converter a broker uses when it is given none.

    Start from this one to add hooks of your own::

        converter = redis_rpc.make_converter()
        converter.register_structure_hook(Money, Money.parse)
        broker = RedisBroker(url, converter=converter)
    """
    converter = cattrs.preconf.json.make_converter()
    from_json_bytes = converter.get_structure_hook(bytes)  # base85 text, in JSON

    def structure_bytes(value: Any, target: type) -> bytes:
        # A raw body is already bytes; only bytes inside JSON are text.
        return value if isinstance(value, bytes) else from_json_bytes(value, target)

    converter.register_structure_hook(bytes, structure_bytes)
    converter.register_structure_hook(str, _structure_str)
    converter.register_structure_hook(int, _structure_int)
    converter.register_structure_hook(float, _structure_float)
    converter.register_structure_hook(bool, _structure_bool)
    return converter


def needs_structuring(annotation: Any) -> bool:
    """True when a body parameter annotated *annotation* gets a structured value."""
    return annotation not in _AS_DECODED


def check_structurable(converter: cattrs.Converter, target: Any) -> None:
    """Make sure *converter* can structure *target* and every type inside it.

    cattrs builds hooks for unions, optionals and sets lazily, so a member
    type it cannot handle would only fail on the first body; look inside.

    Raises:
        cattrs.errors.StructureHandlerNotFoundError: Some type inside has no hook.
    """
    converter.get_structure_hook(target)
    origin = typing.get_origin(target)
    if origin is typing.Literal:
        return  # its arguments are values, not types
    arguments = typing.get_args(target)
    if origin is typing.Annotated:
        arguments = arguments[:1]  # the rest is metadata
    for argument in arguments:
        if (
            argument is not Ellipsis
            and argument is not type(None)
            and needs_structuring(argument)
        ):
            check_structurable(converter, argument)


def structure(converter: cattrs.Converter, value: Any, target: Any) -> Any:
    """Structure a decoded body *value* into *target*.

    Raises:
        ValidationError: *value* does not fit *target*; its ``errors`` name
            each failing path, such as ``"... @ $.items[2].price"``.
    """
    try:
        return converter.structure(value, target)
    except Exception as exc:  # any hook may raise anything
        if isinstance(exc, cattrs.BaseValidationError):
            errors = cattrs.transform_error(exc)
        else:
            errors = [f"{exc} @ $"]
        name = target.__name__ if isinstance(target, type) else repr(target)
        msg = f"The body does not fit {name}: {'; '.join(errors)}."
        raise ValidationError(msg, errors=errors) from exc


def unstructure(converter: cattrs.Converter, value: Any) -> Any:
    """Turn *value* (attrs instances, dataclasses, datetimes, ...) into JSON-ready data."""
    return converter.unstructure(value)


def _structure_str(value: Any, _: type) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bytes):  # a raw body, as FastStream senders of bytes send it
        try:
            return value.decode()
        except UnicodeDecodeError:
            msg = "expected a str, got bytes that are not UTF-8"
            raise ValueError(msg) from None
    msg = f"expected a str, got {type(value).__name__}"
    raise ValueError(msg)


def _structure_int(value: Any, _: type) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    msg = f"expected an int, got {type(value).__name__}"
    raise ValueError(msg)


def _structure_float(value: Any, _: type) -> float:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    msg = f"expected a float, got {type(value).__name__}"
    raise ValueError(msg)


def _structure_bool(value: Any, _: type) -> bool:
    if isinstance(value, bool):
        return value
    msg = f"expected a bool, got {type(value).__name__}"
    raise ValueError(msg)
