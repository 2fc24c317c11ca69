"""JSON Schemas of the types that handlers are annotated with, to describe a service.

The schemas say what goes over the wire, as the broker's converter reads
and writes it: attrs classes, dataclasses and TypedDicts as objects,
lists, tuples and sets as arrays, mappings as objects, datetimes and
dates as ISO 8601 strings, enums by value, bytes inside JSON as base85
text. Pydantic types are described by pydantic itself (``models``).

Named types (classes, enums, models) become components, referenced as
``#/components/schemas/<name>``: written once however often they are
used, and recursive ones terminate. The schemas follow JSON Schema draft
07, which AsyncAPI 3.0's Schema Object extends. A type that the converter
handles by a hook of the user's own has no known shape: its schema is
``{}``, which allows anything.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import datetime
import enum
import re
import types
import typing
from typing import Any

import attrs

from redis_rpc._wire import convert, models

COMPONENTS = "#/components/schemas/"
# What a component name may hold (AsyncAPI's components.schemas keys).
_UNSAFE = re.compile(r"[^\w.\-]")
_SCALARS: dict[type, dict[str, Any]] = {
    bool: {"type": "boolean"},
    int: {"type": "integer"},
    float: {"type": "number"},
    str: {"type": "string"},
    # cattrs' JSON converter writes bytes inside JSON as base85 text.
    bytes: {"type": "string", "contentEncoding": "base85"},
    datetime.datetime: {"type": "string", "format": "date-time"},
    datetime.date: {"type": "string", "format": "date"},
}


class Schemas:
    """Builds JSON Schemas of types, collecting the named ones in ``components``.

    Not thread-safe: one builder describes one service.
    """

    def __init__(self) -> None:
        # Component name -> its schema, in the order first met.
        self.components: dict[str, dict[str, Any]] = {}
        self._names: dict[
            Any, str
        ] = {}  # a named type (with its mode) -> its component

    def of(self, target: Any, *, mode: str = "validation") -> dict[str, Any]:
        """The schema of *target*: what a handler accepts (``"validation"``) or what it returns (``"serialization"``).

        The mode only matters to pydantic, whose models may dump more
        (computed fields) than they take.
        """
        if target is Any or target is object or isinstance(target, typing.TypeVar):
            return {}
        if target is None or target is type(None):
            return {"type": "null"}
        if models.is_pydantic_type(target):
            return self._pydantic(target, mode)
        origin, arguments = typing.get_origin(target), typing.get_args(target)
        if origin is typing.Annotated:
            return self.of(arguments[0], mode=mode)
        if origin is typing.Literal:
            return {"enum": list(arguments)}
        if origin in (typing.Union, types.UnionType):
            return {"anyOf": [self.of(member, mode=mode) for member in arguments]}
        supertype = getattr(target, "__supertype__", None)  # a typing.NewType
        if supertype is not None:
            return self.of(supertype, mode=mode)
        base = origin or target
        if not isinstance(base, type):
            return {}
        if base in _SCALARS:
            return dict(_SCALARS[base])
        if issubclass(base, datetime.datetime):
            return dict(_SCALARS[datetime.datetime])
        if (
            issubclass(base, enum.Enum)
            or attrs.has(base)
            or dataclasses.is_dataclass(base)
        ):
            return self._named(target, mode)
        if convert.typed_dict_keys(base) is not None:
            return self._named(target, mode)
        return self._collection(base, arguments, mode)

    def _collection(
        self, base: type, arguments: tuple[Any, ...], mode: str
    ) -> dict[str, Any]:
        if issubclass(base, collections.abc.Mapping):
            if len(arguments) == 2:
                return {
                    "type": "object",
                    "additionalProperties": self.of(arguments[1], mode=mode),
                }
            return {"type": "object"}
        if issubclass(base, tuple) and arguments and arguments[-1] is not Ellipsis:
            if arguments == ((),):  # tuple[()]: the empty tuple
                return {"type": "array", "maxItems": 0}
            return {  # draft 07's tuple: an array of schemas, one per place
                "type": "array",
                "items": [self.of(item, mode=mode) for item in arguments],
                "minItems": len(arguments),
                "maxItems": len(arguments),
            }
        if issubclass(base, (str, bytes, bytearray)) or not issubclass(
            base, collections.abc.Iterable
        ):
            return {}  # a class the converter knows by a hook of the user's own
        schema: dict[str, Any] = {"type": "array"}
        if arguments:
            schema["items"] = self.of(arguments[0], mode=mode)
        if issubclass(base, collections.abc.Set):
            schema["uniqueItems"] = True
        return schema

    def _named(self, target: Any, mode: str) -> dict[str, Any]:
        """A reference to *target*'s component, which is built on first use."""
        name = self._names.get(target)
        if name is None:
            name = self._free_name(_type_name(target))
            self._names[target] = name
            self.components[
                name
            ] = {}  # taken before recursing: target may contain itself
            self.components[name] = self._object(target, mode)
        return {"$ref": COMPONENTS + name}

    def _object(self, target: Any, mode: str) -> dict[str, Any]:
        base = typing.get_origin(target) or target
        title = _type_name(target)
        if issubclass(base, enum.Enum):
            return {"title": title, "enum": [member.value for member in base]}
        # A generic class's type variables, as the arguments of target give them.
        bound = dict(
            zip(
                getattr(base, "__parameters__", ()),
                typing.get_args(target),
                strict=False,
            )
        )
        fields = _fields(base)
        properties = {
            name: self.of(bound.get(hint, hint), mode=mode)
            for name, (hint, _) in fields.items()
        }
        schema: dict[str, Any] = {
            "title": title,
            "type": "object",
            "properties": properties,
        }
        required = [name for name, (_, needed) in fields.items() if needed]
        if required:
            schema["required"] = required
        return schema

    def _pydantic(self, target: Any, mode: str) -> dict[str, Any]:
        """Pydantic's schema of *target*, its named types moved into the components."""
        schema = models.json_schema(
            target, mode=mode, ref_template=COMPONENTS + "{model}"
        )
        renamed: dict[str, str] = {}
        for name, definition in schema.pop("$defs", {}).items():
            renamed[name] = self._claim(name, definition)
        if isinstance(target, type):  # a model is a component, as FastStream makes it
            name = self._claim(target.__name__, schema)
            renamed[target.__name__] = name
            schema = {"$ref": COMPONENTS + name}
        if any(old != new for old, new in renamed.items()):  # a name was taken
            for name in set(renamed.values()):
                self.components[name] = _renamed(self.components[name], renamed)
            schema = _renamed(schema, renamed)
        result: dict[str, Any] = _draft7(schema)
        return result

    def _claim(self, name: str, schema: dict[str, Any]) -> str:
        """The component name under which *schema* is kept: *name*, unless another schema has it."""
        schema = _draft7(schema)
        wanted = _UNSAFE.sub("_", name)
        candidate, number = wanted, 1
        while candidate in self.components and self.components[candidate] != schema:
            number += 1
            candidate = f"{wanted}{number}"
        self.components[candidate] = schema
        return candidate

    def _free_name(self, name: str) -> str:
        wanted = _UNSAFE.sub("_", name)
        candidate, number = wanted, 1
        while candidate in self.components:
            number += 1
            candidate = f"{wanted}{number}"
        return candidate


def _type_name(target: Any) -> str:
    """``Item``, or ``Box_int_`` for ``Box[int]``."""
    base = typing.get_origin(target) or target
    arguments = typing.get_args(target)
    name = getattr(base, "__name__", repr(base))
    if arguments:
        inner = ",".join(getattr(a, "__name__", repr(a)) for a in arguments)
        name = f"{name}[{inner}]"
    return name


def _fields(cls: type) -> dict[str, tuple[Any, bool]]:
    """The keys of an attrs class, dataclass or TypedDict, each with its type and whether it is required."""
    try:
        hints = typing.get_type_hints(cls, include_extras=True)
    except Exception:  # noqa: BLE001 - an unresolvable annotation describes as anything
        hints = {}
    if attrs.has(cls):
        return {
            field.name: (hints.get(field.name, Any), field.default is attrs.NOTHING)
            for field in attrs.fields(cls)
            if field.init
        }
    if dataclasses.is_dataclass(cls):
        return {
            field.name: (
                hints.get(field.name, Any),
                field.default is dataclasses.MISSING
                and field.default_factory is dataclasses.MISSING,
            )
            for field in dataclasses.fields(cls)
            if field.init
        }
    return convert.typed_dict_keys(cls) or {}


def _renamed(value: Any, renamed: dict[str, str]) -> Any:
    """*value* with every reference to a component in *renamed* pointing to its new name."""
    if isinstance(value, dict):
        ref = value.get("$ref")
        if isinstance(ref, str) and ref.startswith(COMPONENTS):
            name = ref[len(COMPONENTS) :]
            return {**value, "$ref": COMPONENTS + renamed.get(name, name)}
        return {key: _renamed(item, renamed) for key, item in value.items()}
    if isinstance(value, list):
        return [_renamed(item, renamed) for item in value]
    return value


def _draft7(value: Any) -> Any:
    """Pydantic's schema in the words of draft 07 and AsyncAPI where they differ.

    A discriminator is a property name there, not OpenAPI's object; a tuple
    is ``items`` as a list, not ``prefixItems``.
    """
    if isinstance(value, list):
        return [_draft7(item) for item in value]
    if not isinstance(value, dict):
        return value
    result = {key: _draft7(item) for key, item in value.items()}
    discriminator = result.get("discriminator")
    if isinstance(discriminator, dict):
        result["discriminator"] = discriminator.get("propertyName", "")
    if "prefixItems" in result:
        result["items"] = result.pop("prefixItems")
    return result
