"""Typed bodies: structuring JSON into annotated types and back, with cattrs.

Each broker owns one ``cattrs.Converter`` (``make_converter()`` by default,
or the user's own), so hooks registered for one broker never leak into
another. The default is cattrs' JSON converter (datetimes as ISO 8601
strings, enums by value) made strict: it does no coercion that JSON would
not do. A ``str`` field does not take ``5``; an ``int`` field does not take
``"5"``, ``True`` or ``2.5``; a ``float`` field does not take NaN or the
infinities (which ``json.loads()`` reads); a list, tuple or set does not take
a string, bytes or an object (cattrs would iterate them); a mapping takes
only an object, not a list of pairs. ``Any`` and ``object`` take the value
as it was decoded.

Pydantic types are pydantic's to validate and dump (``models``); a
``TypedDict`` whose ``Required``/``NotRequired`` keys its class got wrong
(string annotations, under ``from __future__ import annotations``) is read
from its resolved annotations instead.
"""

from __future__ import annotations

import collections.abc
import math
import sys
import threading
import types
import typing
from typing import TYPE_CHECKING, Any

import cattrs
import cattrs.preconf.json
from cattrs.v import format_exception

from redis_rpc._wire import models
from redis_rpc.errors import ValidationError

if TYPE_CHECKING:
    from collections.abc import Callable

# The cattrs errors that hold one error per field or item.
_GROUPS = (cattrs.ClassValidationError, cattrs.IterableValidationError)
# Types a body is handed over as it was decoded, without structuring.
_AS_DECODED = frozenset((Any, object))
# What decoded JSON gives for an array and for an object.
_ARRAY = (list, tuple)
_OBJECT = (dict,)
# What a body decodes to when it is not an array or an object: a JSON scalar,
# or bytes for a raw body. Unions with such members are checked here.
_PRIMITIVES = frozenset((str, int, float, bool, type(None), bytes))


def make_converter() -> cattrs.Converter:
    """Build the converter a broker uses when it is given none.

    It also hands pydantic models, and other types pydantic validates, to
    pydantic, without importing it. Start from this one to add hooks of your
    own; a hook registered later wins over ours. ``bytes`` inside a
    structure (``{"a": b"x"}``, an attrs field typed ``bytes``) cannot be
    sent: JSON has no bytes, and cattrs' base85 text would reach the
    receiver as a ``str``; register an unstructure hook for ``bytes`` to
    choose an encoding. To let ``float`` fields take NaN and the infinities::

        converter = redis_rpc.make_converter()
        converter.register_structure_hook(Money, Money.parse)
        converter.register_structure_hook(float, lambda value, _: float(value))
        broker = RedisBroker(url, converter=converter)
    """
    converter = cattrs.preconf.json.make_converter()
    from_json_bytes = converter.get_structure_hook(bytes)  # base85 text, in JSON

    def structure_bytes(value: Any, target: type) -> bytes:
        # A raw body is already bytes; only bytes inside JSON are text.
        return value if isinstance(value, bytes) else from_json_bytes(value, target)

    converter.register_structure_hook(bytes, structure_bytes)
    # cattrs would send bytes inside a structure as base85 text, which a
    # receiver takes for a str: refuse rather than change the value.
    converter.register_unstructure_hook(bytes, _refuse_bytes)
    converter.register_structure_hook(str, _structure_str)
    converter.register_structure_hook(int, _structure_int)
    converter.register_structure_hook(float, _structure_float)
    converter.register_structure_hook(bool, _structure_bool)
    # A predicate, not a class: a hook for the class object would match every class.
    converter.register_structure_hook_func(lambda t: t is object, _as_decoded)
    strict = _StrictCollections(converter)
    converter.register_structure_hook_factory(strict.applies, strict.hook)
    converter.register_structure_hook_factory(_is_primitive_union, _primitive_union)
    converter.register_structure_hook_factory(_misread_typeddict, _corrected_typeddict)
    # Last, so that they win: a pydantic model is also an Iterable.
    converter.register_structure_hook_factory(
        models.is_pydantic_type, models.structure_hook
    )
    converter.register_unstructure_hook_factory(
        models.is_pydantic_instance_type, models.unstructure_hook
    )
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


def structure(
    converter: cattrs.Converter, value: Any, target: Any, *, what: str = "The body"
) -> Any:
    """Structure a decoded body *value* into *target*; *what* names it in the error.

    Raises:
        ValidationError: *value* does not fit *target*; its ``errors`` name
            each failing path, such as ``"... @ $.items[2].price"``.
    """
    try:
        return converter.structure(value, target)
    except Exception as exc:  # any hook may raise anything
        errors = error_lines(exc)
        name = target.__name__ if isinstance(target, type) else repr(target)
        msg = f"{what} does not fit {name}: {'; '.join(errors)}."
        raise ValidationError(msg, errors=errors) from exc


def error_lines(exc: BaseException, path: str = "$") -> list[str]:
    """One ``"<what went wrong> @ <path>"`` line per failing field of *exc*.

    As ``cattrs.transform_error()``, except that a pydantic failure anywhere
    inside gives one line per field that pydantic names.
    """
    if isinstance(exc, models.ModelInvalid):
        return [f"{message} @ {path}{where}" for message, where in exc.lines]
    if not isinstance(exc, _GROUPS):
        if not isinstance(exc, cattrs.BaseValidationError):
            return [f"{exc} @ {path}"]  # a hook's own words, not a guess from its type
        return [f"{format_exception(exc, None)} @ {path}"]
    lines: list[str] = []
    with_notes, without = exc.group_exceptions()
    for inner, note in with_notes:
        if isinstance(note, cattrs.AttributeValidationNote):
            where = f"{path}.{note.name}"
        else:
            where = f"{path}[{note.index!r}]"
        if isinstance(inner, (*_GROUPS, models.ModelInvalid)):
            lines += error_lines(inner, where)
        else:
            lines.append(f"{format_exception(inner, note.type)} @ {where}")
    lines += [f"{format_exception(inner, None)} @ {path}" for inner in without]
    return lines


def unstructure(converter: cattrs.Converter, value: Any) -> Any:
    """Turn *value* (attrs instances, dataclasses, datetimes, ...) into JSON-ready data."""
    return converter.unstructure(value)


def _refuse_bytes(value: bytes) -> Any:
    msg = f"Cannot send bytes ({value[:20]!r}) inside a JSON body: JSON has no bytes. Send bytes alone as the whole body, or turn them into text first, such as base64.b64encode(data).decode()."
    raise TypeError(msg)


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
        try:
            number = float(value)
        except OverflowError:  # an int beyond float's range
            msg = "expected a float, got an int too large for one"
            raise ValueError(msg) from None
        if math.isfinite(number):
            return number
        msg = f"expected a finite float, got {number}"
        raise ValueError(msg)
    msg = f"expected a float, got {type(value).__name__}"
    raise ValueError(msg)


def _structure_bool(value: Any, _: type) -> bool:
    if isinstance(value, bool):
        return value
    msg = f"expected a bool, got {type(value).__name__}"
    raise ValueError(msg)


def _as_decoded(value: Any, _: type) -> Any:
    return value


def _shape(target: Any) -> tuple[tuple[type, ...], str] | None:
    """What a collection *target* accepts, and its name in errors; ``None`` if no collection."""
    origin = typing.get_origin(target) or target
    if not isinstance(origin, type) or issubclass(origin, (str, bytes, bytearray)):
        return None
    if issubclass(origin, collections.abc.Mapping):
        return _OBJECT, "an object"
    if issubclass(origin, collections.abc.Iterable):
        return _ARRAY, "an array"
    return None


class _StrictCollections:
    """Wraps cattrs' own hooks for collections so that they take only JSON arrays and objects.

    cattrs structures a ``list[str]`` by iterating whatever it gets, so
    ``"abc"`` would become ``["a", "b", "c"]``, and a ``dict`` from any
    iterable of pairs. Our hook checks the value's type, then hands it to
    the hook cattrs would have used.
    """

    def __init__(self, converter: cattrs.Converter) -> None:
        self._converter = converter
        # .building: the targets whose cattrs hook this thread is asking for.
        self._local = threading.local()

    def _building(self) -> set[Any]:
        building: set[Any] | None = getattr(self._local, "building", None)
        if building is None:
            building = self._local.building = set()
        return building

    def applies(self, target: Any) -> bool:
        # Not while asking cattrs for its own hook for the same target.
        return _shape(target) is not None and target not in self._building()

    def hook(self, target: Any) -> Callable[[Any, Any], Any]:
        shape = _shape(target)
        assert shape is not None  # applies() said so
        allowed, expected = shape
        building = self._building()
        building.add(target)
        try:  # not cached: the cache must hold our hook, not the one we wrap
            inner = self._converter.get_structure_hook(target, cache_result=False)
        finally:
            building.discard(target)

        def structure_collection(value: Any, cl: Any) -> Any:
            if not isinstance(value, allowed):
                msg = f"expected {expected}, got {type(value).__name__}"
                raise ValueError(msg)  # cattrs reports a ValueError per field
            return inner(value, cl)

        return structure_collection


def typed_dict_keys(target: Any) -> dict[str, tuple[Any, bool]] | None:
    """Each key of the TypedDict *target*: its type, and whether it is required; ``None`` for no TypedDict.

    By its resolved annotations, which may disagree with the class's own
    ``__required_keys__`` (see ``_read_typed_dict()``).
    """
    found = _read_typed_dict(target)
    return None if found is None else found[1]


def _read_typed_dict(
    target: Any,
) -> tuple[Any, dict[str, tuple[Any, bool]], bool] | None:
    """Each key of the TypedDict *target*, with its type and whether it is required, by its resolved annotations.

    Also the module (typing or typing_extensions) whose ``Required`` and
    ``NotRequired`` the annotations use, and whether the class's own
    ``__required_keys__`` disagree: under ``from __future__ import
    annotations`` a ``NotRequired[str]`` is a string to the class, which
    then counts the key as required (Python before 3.14, and
    ``typing_extensions``). ``None`` when *target* is no TypedDict (a
    generic one is left to cattrs).
    """
    if not (
        isinstance(target, type)
        and issubclass(target, dict)
        and hasattr(target, "__required_keys__")
        and not getattr(target, "__parameters__", ())
    ):
        return None
    try:
        hints = typing.get_type_hints(target, include_extras=True)
    except Exception:  # noqa: BLE001 - cattrs says what it cannot resolve
        return None
    keys, misread, markers = {}, False, None
    for key, hint in hints.items():
        required = key in target.__required_keys__
        origin = typing.get_origin(hint)
        said, module = _marker(origin)
        if said is not None:
            misread |= said is not required
            required, hint, markers = said, typing.get_args(hint)[0], module
        keys[key] = (hint, required)
    return markers, keys, misread


# The markers of a TypedDict key, by name, in typing and typing_extensions alike.
_MARKERS = {"Required": True, "NotRequired": False}


def _marker(origin: Any) -> tuple[bool | None, Any]:
    """Whether a key annotated ``origin[...]`` is required (``None``: it does not say), and *origin*'s module."""
    name = getattr(origin, "_name", None)
    module = sys.modules.get(getattr(origin, "__module__", None) or "")
    # A special form of typing or typing_extensions, not some class of that name.
    if name not in _MARKERS or getattr(module, name, None) is not origin:
        return None, None
    return _MARKERS[name], module


def _misread_typeddict(target: Any) -> bool:
    found = _read_typed_dict(target)
    return found is not None and found[2]


def _corrected_typeddict(
    target: Any, converter: cattrs.Converter
) -> Callable[[Any, Any], Any]:
    """cattrs' hook for a copy of the TypedDict *target* whose keys are required as annotated."""
    found = _read_typed_dict(target)
    assert found is not None  # _misread_typeddict() said so
    # The module whose markers the annotations use has a TypedDict that
    # understands them: typing from 3.11 on, typing_extensions always.
    module, keys, _ = found
    fields = {
        key: (module.Required if required else module.NotRequired)[hint]
        for key, (hint, required) in keys.items()
    }
    return converter.get_structure_hook(module.TypedDict(target.__name__, fields))


def _is_primitive_union(target: Any) -> bool:
    return typing.get_origin(target) in (typing.Union, types.UnionType) and any(
        member in _PRIMITIVES for member in typing.get_args(target)
    )


def _primitive_union(
    target: Any, converter: cattrs.Converter
) -> Callable[[Any, Any], Any]:
    """A union hook that tries our strict hooks for its str, int, float, bool and bytes members.

    cattrs' JSON converter passes such values through when their class is in
    the union, and ``bool`` counts as an ``int``: ``int | str`` would take
    ``True`` and ``float | str`` NaN. The other members form a union of their
    own, tried last.
    """
    members = typing.get_args(target)
    nullable = type(None) in members
    hooks = {
        member: converter.get_structure_hook(member)
        for member in members
        if member in _PRIMITIVES and member is not type(None)
    }
    rest = tuple(member for member in members if member not in _PRIMITIVES)
    rest_type: Any = None
    if rest:
        rest_type = rest[0] if len(rest) == 1 else typing.Union[rest]  # noqa: UP007 - built at run time
    rest_hook = None if rest_type is None else converter.get_structure_hook(rest_type)

    def structure_union(value: Any, _: Any) -> Any:
        if value is None and nullable:
            return None
        exact, reasons = type(value), []
        for member in sorted(hooks, key=lambda m: m is not exact):  # its own type first
            try:
                return hooks[member](value, member)
            except ValueError as exc:
                reasons.append(str(exc))
        if rest_hook is not None:
            return rest_hook(value, rest_type)
        if len(reasons) == 1:  # Optional[int]: the int's own complaint says it all
            raise ValueError(reasons[0])
        msg = f"no member of {target!r} takes it ({'; '.join(reasons) or f'got {exact.__name__}'})"
        raise ValueError(msg)

    return structure_union
