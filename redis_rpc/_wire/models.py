"""Pydantic types in typed bodies: validated and serialised by pydantic itself.

A body, path value or field annotated with a pydantic model (or a pydantic
dataclass, a type pydantic defines such as ``AnyUrl``, or an ``Annotated``
type constrained with ``pydantic.Field`` or ``annotated_types``) is handed
to a ``pydantic.TypeAdapter`` by the broker's converter, and instances of
them are dumped by pydantic too. Everything else stays with cattrs.

We never import pydantic: it is an optional extra. A type can only be a
pydantic type when pydantic has been imported already, by the code that
defined it, so the predicates look in ``sys.modules`` and answer ``False``
while pydantic is absent (or blocked, as ``sys.modules["pydantic"] = None``).

A body arrives as JSON, so it is validated in pydantic's JSON mode, with
the model's own configuration: a ``strict`` model takes an ISO 8601 string
for a ``datetime``, as it would from ``model_validate_json()``. A failure
is raised as ``ModelInvalid``, which keeps pydantic's errors as lines of
``"<message> @ <path>"``, the shape of cattrs' errors, for
``convert.structure()`` to report.
"""

from __future__ import annotations

import json
import sys
import typing
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable

# The top-level packages whose Annotated metadata only pydantic understands:
# cattrs would drop a Field(gt=0) or an annotated_types.Gt(0) silently.
_CONSTRAINT_PACKAGES = frozenset(("pydantic", "pydantic_core", "annotated_types"))
# The packages whose classes (AnyUrl, SecretStr, Color, ...) pydantic validates.
_TYPE_PACKAGES = frozenset(("pydantic", "pydantic_core", "pydantic_extra_types"))
# What json.loads() gives: such a value can be validated as the JSON it was.
_JSON_VALUES = (dict, list, str, int, float, bool, type(None))


class ModelInvalid(ValueError):  # noqa: N818 - cattrs reports a ValueError per field
    """Pydantic refused a value.

    Attributes:
        lines: ``(message, path)`` per failing field, the path relative to
            the value validated: ``".items[2].price"``, or ``""`` for the value itself.
    """

    def __init__(self, lines: list[tuple[str, str]]) -> None:
        super().__init__("; ".join(f"{message} @ ${path}" for message, path in lines))
        self.lines = lines


def _pydantic() -> Any:
    """The pydantic module if it has been imported, else ``None``; never imports it."""
    return sys.modules.get("pydantic")


def is_pydantic_type(target: Any) -> bool:
    """Whether values of *target* are pydantic's to validate and dump."""
    pydantic = _pydantic()
    if pydantic is None or str(getattr(pydantic, "VERSION", "1")).startswith("1"):
        return False  # absent, blocked, or pydantic 1, whose models we do not know
    origin = typing.get_origin(target)
    if origin is None and isinstance(target, type):
        # Only what is imported: a class cannot derive from a module not loaded.
        main = sys.modules.get("pydantic.main")
        dataclasses = sys.modules.get("pydantic.dataclasses")
        module = getattr(target, "__module__", "") or ""
        return (
            (main is not None and issubclass(target, main.BaseModel))
            or (dataclasses is not None and dataclasses.is_pydantic_dataclass(target))
            or module.partition(".")[0] in _TYPE_PACKAGES
        )
    if origin is typing.Annotated:
        return any(
            type(meta).__module__.partition(".")[0] in _CONSTRAINT_PACKAGES
            for meta in target.__metadata__
        )
    return False


def structure_hook(target: Any) -> Callable[[Any, Any], Any]:
    """A cattrs structure hook that validates with pydantic; built once per type and converter.

    Raises:
        pydantic.errors.PydanticSchemaGenerationError: Pydantic cannot
            validate *target*, say for a field of a type it does not know.
    """
    pydantic = _pydantic()
    adapter = pydantic.TypeAdapter(target)
    invalid = pydantic.ValidationError

    def structure_model(value: Any, _: Any) -> Any:
        try:
            if isinstance(value, _JSON_VALUES):
                return adapter.validate_json(json.dumps(value))
            return adapter.validate_python(value)  # raw bytes, or an instance already
        except invalid as exc:
            raise ModelInvalid(
                [(error["msg"], _path(error["loc"])) for error in exc.errors()]
            ) from exc

    return structure_model


def is_pydantic_instance_type(cls: Any) -> bool:
    """Whether instances of the class *cls* are dumped by pydantic."""
    return isinstance(cls, type) and is_pydantic_type(cls)


def unstructure_hook(cls: Any) -> Callable[[Any], Any]:
    """A cattrs unstructure hook that dumps with pydantic, to JSON-ready data.

    By alias, so that the value validates again on the other side (pydantic
    validates by alias by default), and as FastStream sends a model.
    """
    pydantic = _pydantic()
    if issubclass(cls, pydantic.BaseModel):
        return _dump_model
    adapter = pydantic.TypeAdapter(cls)
    return lambda value: adapter.dump_python(value, mode="json", by_alias=True)


def _dump_model(value: Any) -> Any:
    return value.model_dump(mode="json", by_alias=True)


def json_schema(target: Any, *, mode: str, ref_template: str) -> dict[str, Any]:
    """Pydantic's JSON Schema of *target*: what it validates (*mode* ``"validation"``) or dumps (``"serialization"``).

    The types it names are in ``$defs``, referenced through *ref_template*,
    such as ``"#/components/schemas/{model}"``.
    """
    adapter = _pydantic().TypeAdapter(target)
    schema: dict[str, Any] = adapter.json_schema(mode=mode, ref_template=ref_template)
    return schema


def _path(loc: tuple[int | str, ...]) -> str:
    """``".items[2].price"`` from pydantic's ``("items", 2, "price")``."""
    return "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in loc)
