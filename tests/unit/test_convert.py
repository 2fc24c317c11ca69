"""Typed bodies and error replies, without Redis: the converter, decode(into), error frames."""

from __future__ import annotations

import collections
import collections.abc
import dataclasses
import datetime
import enum
import json
import logging
import math
import typing
from typing import Any, Optional, TypedDict, Union

import attrs
import cattrs
import pytest

from redis_rpc import RedisBroker, RedisMessage, RemoteError, make_converter
from redis_rpc._server.handler import Handler
from redis_rpc._wire.codec import encode_frame
from redis_rpc._wire.convert import structure, unstructure
from redis_rpc._wire.message import (
    CONTENT_TYPE,
    CORRELATION_ID,
    ERROR,
    build_error_frame,
    build_frame,
)
from redis_rpc.errors import MessageDecodeError, SetupError, ValidationError

LOGGER = logging.getLogger("tests.unit.test_convert")
UTC = datetime.timezone.utc


@attrs.frozen
class Item:
    name: str
    price: int


@attrs.frozen
class Order:
    id: int
    items: list[Item]


@dataclasses.dataclass(frozen=True)
class Point:
    x: float
    y: float


class Color(enum.Enum):
    RED = "red"
    BLUE = "blue"


class Money:
    """A plain class: cattrs cannot structure it without a hook."""

    def __init__(self, cents: int) -> None:
        self.cents = cents

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Money) and other.cents == self.cents

    __hash__ = None  # type: ignore[assignment]


@attrs.frozen
class Reading:
    value: float
    tags: list[str] = attrs.Factory(list)


class Counts(TypedDict):
    a: int


class PaymentDeclinedError(Exception):
    """A server-side exception class that a caller must never see as a class."""


def handler_for(annotation: Any) -> Handler:
    """A Handler whose body parameter is annotated *annotation*."""

    def handle(body):
        return body

    handle.__annotations__ = {"body": annotation}
    return Handler(handle, LOGGER, make_converter())


def error_message(body: bytes, type_name: str = "Boom") -> RedisMessage:
    """An error reply with a hand-made body, as any sender could put on the wire."""
    frame = encode_frame(
        body,
        {CORRELATION_ID: "c-1", CONTENT_TYPE: "application/json", ERROR: type_name},
    )
    return RedisMessage.from_payload(frame)


class TestStrictPrimitives:
    @pytest.mark.parametrize(
        ("target", "value", "expected"),
        [
            pytest.param(str, "text", "text", id="str-from-str"),
            pytest.param(str, "wörld".encode(), "wörld", id="str-from-utf8-bytes"),
            pytest.param(int, 5, 5, id="int-from-int"),
            pytest.param(int, -(2**70), -(2**70), id="int-from-big-int"),
            pytest.param(int, 2.0, 2, id="int-from-integral-float"),
            pytest.param(float, 1, 1.0, id="float-from-int"),
            pytest.param(float, 1.5, 1.5, id="float-from-float"),
            pytest.param(bool, True, True, id="bool-from-true"),
            pytest.param(bool, False, False, id="bool-from-false"),
        ],
    )
    def test_accepts(self, target, value, expected):
        """The default converter takes a primitive only from its own JSON type."""
        result = structure(make_converter(), value, target)
        assert result == expected
        assert type(result) is target

    @pytest.mark.parametrize(
        ("target", "value"),
        [
            pytest.param(str, 5, id="str-from-int"),
            pytest.param(str, 1.5, id="str-from-float"),
            pytest.param(str, True, id="str-from-bool"),
            pytest.param(str, None, id="str-from-none"),
            pytest.param(str, b"\xff\xfe", id="str-from-non-utf8-bytes"),
            pytest.param(str, ["a"], id="str-from-list"),
            pytest.param(int, True, id="int-from-bool"),
            pytest.param(int, "5", id="int-from-str"),
            pytest.param(int, 2.5, id="int-from-fractional-float"),
            pytest.param(int, None, id="int-from-none"),
            pytest.param(float, True, id="float-from-bool"),
            pytest.param(float, "1.5", id="float-from-str"),
            pytest.param(float, None, id="float-from-none"),
            pytest.param(bool, 1, id="bool-from-int"),
            pytest.param(bool, "true", id="bool-from-str"),
            pytest.param(bool, None, id="bool-from-none"),
        ],
    )
    def test_refuses(self, target, value):
        """The default converter refuses to coerce a primitive from another JSON type."""
        with pytest.raises(ValidationError) as info:
            structure(make_converter(), value, target)
        assert len(info.value.errors) == 1
        assert info.value.errors[0].endswith(" @ $")
        assert target.__name__ in str(info.value)

    def test_global_converter_is_untouched(self):
        """Building our converter registers nothing on cattrs' global converter."""
        make_converter()
        assert cattrs.global_converter.structure("5", int) == 5


# Strings, bytes and objects are not arrays of their characters, bytes or keys.
NOT_ARRAYS = [
    pytest.param(b"hello", id="bytes"),
    pytest.param("abc", id="str"),
    pytest.param({"k": "v"}, id="object"),
]
ARRAY_TARGETS = [
    list,
    list[int],
    list[str],
    typing.List[str],  # noqa: UP006 - the spelling under test
    tuple,
    tuple[str, ...],
    tuple[str, str],
    set[str],
    frozenset[str],
    collections.deque[str],
    collections.abc.Sequence[str],
    collections.abc.MutableSequence[str],
    collections.abc.Set[str],
    collections.abc.MutableSet[str],
    collections.abc.Iterable[str],
    collections.abc.Collection[str],
    Optional[list[str]],  # noqa: UP045 - the spelling under test
    list[str] | None,
    typing.Annotated[list[str], "metadata"],
]
UNSUPPORTED = (collections.abc.Iterable, collections.abc.Collection)
MAPPING_TARGETS = [
    dict,
    dict[str, int],
    dict[str, Any],
    collections.abc.Mapping,
    collections.abc.Mapping[str, int],
    collections.abc.MutableMapping[str, int],
    collections.OrderedDict[str, int],
    collections.Counter[str],
    Counts,
]
NON_FINITE = [
    pytest.param(math.nan, id="nan"),
    pytest.param(math.inf, id="inf"),
    pytest.param(-math.inf, id="-inf"),
]


class TestStrictCollections:
    @pytest.mark.parametrize("value", NOT_ARRAYS)
    @pytest.mark.parametrize("target", ARRAY_TARGETS, ids=repr)
    def test_array_targets_refuse_strings_bytes_and_objects(self, target, value):
        """A list, tuple, set or other collection target refuses a str, bytes or an object instead of iterating it."""
        with pytest.raises(ValidationError) as info:
            structure(make_converter(), value, target)
        assert info.value.errors[0].endswith(" @ $")

    @pytest.mark.parametrize(
        "target",
        # cattrs has no hook at all for Iterable and Collection: they refuse everything.
        [t for t in ARRAY_TARGETS if typing.get_origin(t) not in UNSUPPORTED],
        ids=repr,
    )
    def test_array_targets_take_arrays(self, target):
        """Every collection target still takes a JSON array."""
        value = [1, 2] if target == list[int] else ["a", "b"]
        result = structure(make_converter(), value, target)
        assert sorted(result) == value

    @pytest.mark.parametrize("target", MAPPING_TARGETS, ids=repr)
    def test_mapping_targets_refuse_lists_of_pairs(self, target):
        """A mapping target takes only a JSON object, not a list of key-value pairs."""
        with pytest.raises(ValidationError) as info:
            structure(make_converter(), [["a", 1]], target)
        assert "expected an object, got list @ $" in info.value.errors

    @pytest.mark.parametrize("value", [b"a=1", "a=1", None, 1])
    @pytest.mark.parametrize("target", [dict, dict[str, int]], ids=repr)
    def test_mapping_targets_refuse_non_objects(self, target, value):
        """A mapping target refuses a str, bytes, null or a number."""
        with pytest.raises(ValidationError):
            structure(make_converter(), value, target)

    @pytest.mark.parametrize("target", MAPPING_TARGETS, ids=repr)
    def test_mapping_targets_take_objects(self, target):
        """Every mapping target still takes a JSON object."""
        assert dict(structure(make_converter(), {"a": 1}, target)) == {"a": 1}

    def test_nested_string_is_not_a_list(self):
        """A string inside an array is refused where an inner list is expected, and the path says where."""
        with pytest.raises(ValidationError) as info:
            structure(make_converter(), [["a"], "bc"], list[list[str]])
        assert any(error.endswith("@ $[1]") for error in info.value.errors)

    def test_attrs_field_refuses_a_string_for_a_list(self):
        """An attrs class's list field refuses a string."""
        with pytest.raises(ValidationError) as info:
            structure(make_converter(), {"value": 1.0, "tags": "ab"}, Reading)
        assert any(error.endswith("@ $.tags") for error in info.value.errors)

    @pytest.mark.parametrize(
        ("body", "target"),
        [
            pytest.param(b"hello", list[int], id="raw-bytes-into-list-int"),
            pytest.param(b'"abc"', list[str], id="json-str-into-list-str"),
            pytest.param(b'{"k":"v"}', list[str], id="json-object-into-list-str"),
            pytest.param(b'[["k","v"]]', dict[str, str], id="json-pairs-into-dict"),
            pytest.param(b"NaN", float, id="json-nan-into-float"),
            pytest.param(b"[1.0,Infinity]", list[float], id="json-inf-into-list"),
        ],
    )
    def test_decode_into_refuses(self, body, target):
        """RedisMessage.decode(into) refuses a body that JSON would not give the target type."""
        with pytest.raises(ValidationError):
            RedisMessage(body=body).decode(target)


class TestNonFiniteFloats:
    @pytest.mark.parametrize("value", NON_FINITE)
    @pytest.mark.parametrize(
        ("target", "wrap"),
        [
            pytest.param(float, lambda v: v, id="float"),
            pytest.param(list[float], lambda v: [1.0, v], id="list"),
            pytest.param(dict[str, float], lambda v: {"a": v}, id="dict"),
            pytest.param(tuple[float, float], lambda v: [v, 1.0], id="tuple"),
            pytest.param(Reading, lambda v: {"value": v}, id="attrs"),
            pytest.param(Point, lambda v: {"x": v, "y": 0.0}, id="dataclass"),
            pytest.param(Optional[float], lambda v: v, id="optional"),  # noqa: UP045
            pytest.param(Union[float, str], lambda v: v, id="union"),  # noqa: UP007
            pytest.param(int, lambda v: v, id="int"),
        ],
    )
    def test_refused(self, target, wrap, value):
        """NaN and the infinities, which json.loads() reads, are refused by float fields wherever they are."""
        with pytest.raises(ValidationError):
            structure(make_converter(), wrap(value), target)

    @pytest.mark.parametrize("value", NON_FINITE)
    @pytest.mark.parametrize(
        ("target", "wrap", "unwrap"),
        [
            pytest.param(Any, lambda v: v, lambda r: r, id="Any"),
            pytest.param(object, lambda v: v, lambda r: r, id="object"),
            pytest.param(list[Any], lambda v: [v], lambda r: r[0], id="list-of-Any"),
            pytest.param(
                dict[str, object],
                lambda v: {"a": v},
                lambda r: r["a"],
                id="dict-of-object",
            ),
            pytest.param(
                list[object], lambda v: [v], lambda r: r[0], id="list-of-object"
            ),
        ],
    )
    def test_any_and_object_take_them_as_decoded(self, target, wrap, unwrap, value):
        """A value annotated Any or object is handed over as decoded, non-finite floats included."""
        result = structure(make_converter(), wrap(value), target)
        assert unwrap(result) is value

    def test_int_too_large_for_a_float(self):
        """An int beyond float's range is refused by a float field, with a message saying so."""
        with pytest.raises(ValidationError) as info:
            structure(make_converter(), 10**400, float)
        assert "too large" in info.value.errors[0]

    def test_user_hook_allows_them(self):
        """A user's float hook registered on make_converter()'s converter lets NaN through."""
        converter = make_converter()
        converter.register_structure_hook(float, lambda value, _: float(value))
        assert math.isnan(structure(converter, math.nan, float))
        assert math.isinf(structure(converter, [math.inf], list[float])[0])


class TestStrictUnions:
    @pytest.mark.parametrize(
        ("value", "target"),
        [
            pytest.param(True, int | str, id="bool-into-int-or-str"),
            pytest.param(1, bool | str, id="int-into-bool-or-str"),
            pytest.param("1", int | float, id="str-into-int-or-float"),
            pytest.param(math.nan, float | None, id="nan-into-optional-float"),
            pytest.param(["a"], int | str, id="list-into-int-or-str"),
        ],
    )
    def test_refuses_what_no_member_takes(self, value, target):
        """A union of primitives passes a value only when one member's strict hook takes it."""
        with pytest.raises(ValidationError):
            structure(make_converter(), value, target)

    @pytest.mark.parametrize(
        ("value", "target", "expected"),
        [
            pytest.param(True, bool | int, True, id="bool"),
            pytest.param(2, int | float, 2, id="int-stays-int"),
            pytest.param(2.5, int | float, 2.5, id="float-stays-float"),
            pytest.param(2, float | str, 2.0, id="int-into-float"),
            pytest.param(b"raw", int | str, "raw", id="raw-bytes-into-str"),
            pytest.param(None, int | None, None, id="none"),
            pytest.param(
                {"name": "n", "price": 1}, Item | None, Item("n", 1), id="attrs"
            ),
            pytest.param("red", int | Color, Color.RED, id="enum-after-primitives"),
            pytest.param(b"raw", str | bytes, b"raw", id="raw-bytes-stay-bytes"),
            pytest.param("text", str | bytes, "text", id="str-stays-str"),
        ],
    )
    def test_takes_what_a_member_takes(self, value, target, expected):
        """A union of primitives gives each value to the member of its own type first."""
        result = structure(make_converter(), value, target)
        assert result == expected
        assert type(result) is type(expected)


class TestStructureErrors:
    def test_nested_attrs_names_every_failing_path(self):
        """Every failing field of a nested attrs class is named by its path."""
        body = {
            "id": 1,
            "items": [{"name": "a", "price": "x"}, {"name": 3, "price": 2}],
        }
        with pytest.raises(ValidationError) as info:
            structure(make_converter(), body, Order)
        assert info.value.errors == (
            "invalid value for type, expected int @ $.items[0].price",
            "invalid value for type, expected str @ $.items[1].name",
        )
        assert str(info.value).startswith("The body does not fit Order: ")
        assert isinstance(info.value, ValueError)

    def test_missing_field(self):
        """A missing required field is named."""
        with pytest.raises(ValidationError) as info:
            structure(make_converter(), {"id": 1}, Order)
        assert info.value.errors == ("required field missing @ $.items",)

    def test_dataclass(self):
        """A dataclass field of the wrong type is named."""
        with pytest.raises(ValidationError) as info:
            structure(make_converter(), {"x": 1, "y": "a"}, Point)
        assert info.value.errors == ("invalid value for type, expected float @ $.y",)

    def test_list_of_int(self):
        """A bad list element is named by its index."""
        with pytest.raises(ValidationError) as info:
            structure(make_converter(), [1, "2", 3], list[int])
        assert info.value.errors == ("invalid value for type, expected int @ $[1]",)

    def test_dict_of_items(self):
        """A bad value in a dict of attrs instances is named by its key and field."""
        body = {"a": {"name": "a", "price": 1}, "b": {"name": "b", "price": 1.5}}
        with pytest.raises(ValidationError) as info:
            structure(make_converter(), body, dict[str, Item])
        assert info.value.errors == (
            "invalid value for type, expected int @ $['b'].price",
        )

    def test_optional(self):
        """Optional takes None or a value of its type, nothing else."""
        converter = make_converter()
        assert structure(converter, None, Optional[int]) is None  # noqa: UP045 - the spelling under test
        assert structure(converter, 3, int | None) == 3
        with pytest.raises(ValidationError) as info:
            structure(converter, "3", Optional[int])  # noqa: UP045 - the spelling under test
        assert info.value.errors == ("expected an int, got str @ $",)

    def test_union(self):
        """A union of primitives takes each member's own type and refuses others."""
        converter = make_converter()
        assert structure(converter, 1, int | str) == 1
        assert structure(converter, "s", int | str) == "s"
        with pytest.raises(ValidationError) as info:
            structure(converter, 1.5, int | str)
        assert len(info.value.errors) == 1
        assert info.value.errors[0].endswith(" @ $")

    def test_enum(self):
        """An enum is structured from its value, and an unknown value is refused."""
        converter = make_converter()
        assert structure(converter, "red", Color) is Color.RED
        with pytest.raises(ValidationError) as info:
            structure(converter, "green", Color)
        assert "'green' is not a valid Color @ $" in info.value.errors

    @pytest.mark.parametrize(
        ("value", "expected"),
        [
            ("2024-05-06T07:08:09", datetime.datetime(2024, 5, 6, 7, 8, 9)),
            (
                "2024-05-06T07:08:09+00:00",
                datetime.datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC),
            ),
        ],
    )
    def test_datetime_from_iso_string(self, value, expected):
        """A datetime is structured from an ISO 8601 string, keeping its time zone."""
        assert structure(make_converter(), value, datetime.datetime) == expected

    @pytest.mark.parametrize("value", ["not a date", 1700000000])
    def test_datetime_refused(self, value):
        """A datetime is not structured from anything but an ISO 8601 string."""
        with pytest.raises(ValidationError) as info:
            structure(make_converter(), value, datetime.datetime)
        assert info.value.errors[0].endswith(" @ $")

    def test_hook_raising_anything_becomes_validation_error(self):
        """A user hook that raises any exception gives a ValidationError at $."""
        converter = make_converter()

        def parse(value, _):
            raise KeyError(value)

        converter.register_structure_hook(Money, parse)
        with pytest.raises(ValidationError) as info:
            structure(converter, "nope", Money)
        assert info.value.errors == ("'nope' @ $",)
        assert isinstance(info.value.__cause__, KeyError)


class TestUnstructure:
    @pytest.mark.parametrize(
        ("value", "expected"),
        [
            pytest.param(Item("pen", 3), {"name": "pen", "price": 3}, id="attrs"),
            pytest.param(
                Order(1, [Item("a", 2)]),
                {"id": 1, "items": [{"name": "a", "price": 2}]},
                id="nested-attrs",
            ),
            pytest.param(Point(1.0, 2.5), {"x": 1.0, "y": 2.5}, id="dataclass"),
            pytest.param(
                datetime.datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC),
                "2024-05-06T07:08:09+00:00",
                id="datetime",
            ),
            pytest.param(Color.BLUE, "blue", id="enum"),
            pytest.param(
                {"items": [Item("a", 1)], "when": datetime.date(2024, 1, 2)},
                {"items": [{"name": "a", "price": 1}], "when": "2024-01-02"},
                id="inside-dict-and-list",
            ),
        ],
    )
    def test_to_json_data(self, value, expected):
        """attrs instances, dataclasses, datetimes and enums become JSON-ready data, also nested."""
        assert unstructure(make_converter(), value) == expected

    def test_build_frame_sends_attrs_as_json(self):
        """build_frame sends an attrs instance as a JSON body that decodes back into it."""
        message = RedisMessage.from_payload(
            build_frame([Item("pen", 3)], correlation_id="c")
        )
        assert message.content_type == "application/json"
        assert json.loads(message.body) == [{"name": "pen", "price": 3}]
        assert message.decode(list[Item]) == [Item("pen", 3)]


class TestConverterPerBroker:
    def test_make_converter_builds_a_new_one_each_time(self):
        """A hook registered on one converter does not reach another."""
        first, second = make_converter(), make_converter()
        assert first is not second
        first.register_structure_hook(Money, lambda value, _: Money(value))
        assert structure(first, 250, Money) == Money(250)
        with pytest.raises(ValidationError):
            structure(second, 250, Money)

    def test_broker_uses_its_own_converter(self):
        """A type one broker's converter has a hook for is refused by another broker's default converter."""
        converter = make_converter()
        converter.register_structure_hook(Money, lambda value, _: Money(value))
        with_hook, default = RedisBroker(converter=converter), RedisBroker()

        def pay(amount: Money):
            return amount

        with_hook.subscriber(list="payments")(pay)
        with pytest.raises(SetupError, match="Money"):
            default.subscriber(list="payments")(pay)

    def test_handler_uses_given_converter(self):
        """A handler accepts a body type its given converter has a hook for, and structures with it."""
        converter = make_converter()
        converter.register_structure_hook(Money, lambda value, _: Money(value))

        def pay(amount: Money):
            return amount

        handler = Handler(pay, LOGGER, converter)
        # As the consumer does: the message is read with the handler's converter.
        frame = build_frame(250, correlation_id="c")
        message = RedisMessage.from_payload(frame, handler.converter)
        assert handler(message) == Money(250)


class TestHandlerAnnotations:
    @pytest.mark.parametrize(
        "annotation",
        [Money, list[Money], dict[str, Money], tuple[Money, int], Order | Money],
        ids=[
            "plain",
            "list-of-plain",
            "dict-of-plain",
            "tuple-of-plain",
            "union-of-classes",
        ],
    )
    def test_unstructurable_annotation_fails_at_registration(self, annotation):
        """A body type the converter cannot structure raises SetupError when the handler is registered."""
        with pytest.raises(SetupError, match="Cannot structure the body"):
            handler_for(annotation)

    @pytest.mark.parametrize(
        "annotation",
        [
            Optional[Money],  # noqa: UP045 - the spelling under test
            Union[int, Money],  # noqa: UP007 - the spelling under test
            set[Money],
            frozenset[Money],
            tuple[Money, ...],
        ],
        ids=["optional", "union-with-int", "set", "frozenset", "variadic-tuple"],
    )
    def test_container_of_unstructurable_fails_at_registration(self, annotation):
        """A union or container of a type the converter cannot structure raises SetupError when registered."""
        with pytest.raises(SetupError, match="Cannot structure the body"):
            handler_for(annotation)

    def test_unstructurable_annotation_via_subscriber(self):
        """broker.subscriber() refuses a handler whose body type cannot be structured."""
        broker = RedisBroker()

        def pay(amount: Money):
            return amount

        with pytest.raises(SetupError, match=r"pay.*Money.*'amount'"):
            broker.subscriber(list="payments")(pay)

    @pytest.mark.parametrize(
        "annotation",
        [Any, object, "NotDefinedAnywhere", "list[NotDefinedAnywhere]"],
        ids=["any", "object", "unresolvable", "unresolvable-generic"],
    )
    def test_untyped_bodies_are_passed_as_decoded(self, annotation):
        """A body annotated Any, object or something unresolvable is handed over as decoded."""
        handler = handler_for(annotation)
        message = RedisMessage.from_payload(build_frame({"a": 1}, correlation_id="c"))
        assert handler(message) == {"a": 1}

    def test_bytes_body_is_raw(self):
        """A body annotated bytes is the raw body, never structured."""
        handler = handler_for(bytes)
        message = RedisMessage.from_payload(build_frame({"a": 1}, correlation_id="c"))
        assert handler(message) == b'{"a":1}'

    def test_typed_body_is_structured(self):
        """A body annotated with an attrs class arrives as an instance of it."""
        handler = handler_for(Order)
        frame = build_frame(Order(7, [Item("a", 1)]), correlation_id="c")
        assert handler(RedisMessage.from_payload(frame)) == Order(7, [Item("a", 1)])

    def test_body_that_does_not_fit_raises_before_the_call(self):
        """A body that does not fit the annotation raises ValidationError without calling the function."""
        calls = []

        def handle(item: Item):
            calls.append(item)

        handler = Handler(handle, LOGGER, make_converter())
        message = RedisMessage.from_payload(
            build_frame({"name": "pen", "price": "3"}, correlation_id="c")
        )
        with pytest.raises(ValidationError) as info:
            handler.arguments(message)
        assert info.value.errors == ("invalid value for type, expected int @ $.price",)
        assert calls == []


class TestDecodeInto:
    def test_json_into_attrs(self):
        """decode(Item) structures a JSON body into an attrs instance."""
        message = RedisMessage.from_payload(
            build_frame({"name": "pen", "price": 3}, correlation_id="c")
        )
        assert message.decode(Item) == Item("pen", 3)

    def test_without_into_returns_decoded_value(self):
        """decode() without a type returns the value by content type, unstructured."""
        message = RedisMessage.from_payload(
            build_frame(Item("pen", 3), correlation_id="c")
        )
        assert message.decode() == {"name": "pen", "price": 3}

    def test_empty_body_without_content_type_is_none(self):
        """An empty body without a content type counts as None for decode(into)."""
        message = RedisMessage.from_payload(build_frame(None, correlation_id="c"))
        assert message.content_type is None
        assert message.decode() == b""
        assert message.decode(Optional[Item]) is None  # noqa: UP045 - the spelling under test
        with pytest.raises(ValidationError):
            message.decode(Item)

    def test_empty_text_is_an_empty_string(self):
        """An empty text/plain body is the empty string, not None."""
        message = RedisMessage.from_payload(build_frame("", correlation_id="c"))
        assert message.decode(str) == ""
        with pytest.raises(ValidationError):
            message.decode(Optional[int])  # noqa: UP045 - the spelling under test

    def test_raw_utf8_bytes_into_str(self):
        """A raw body that is not JSON is structured into str when it is UTF-8."""
        message = RedisMessage(body="hé!".encode())
        assert message.decode(str) == "hé!"

    @pytest.mark.parametrize(
        ("body", "content_type"),
        [(b"hello", None), (b"\x00\xffraw", None), (b"hello", "text/plain")],
        ids=["ascii", "binary", "text"],
    )
    def test_into_bytes_is_the_raw_body(self, body, content_type):
        """decode(bytes) returns the body bytes unchanged, as a handler parameter annotated bytes receives them."""
        message = RedisMessage(body=body, content_type=content_type)
        assert message.decode(bytes) == body

    def test_validation_error_names_the_field(self):
        """decode(into) raises ValidationError naming the field that does not fit."""
        message = RedisMessage.from_payload(
            build_frame({"name": "pen", "price": True}, correlation_id="c")
        )
        with pytest.raises(ValidationError) as info:
            message.decode(Item)
        assert info.value.errors == ("invalid value for type, expected int @ $.price",)

    def test_broken_json_is_a_decode_error(self):
        """A body that is not what its content type says raises MessageDecodeError, not ValidationError."""
        message = RedisMessage(body=b"{", content_type="application/json")
        with pytest.raises(MessageDecodeError):
            message.decode(Item)

    def test_uses_the_converter_it_was_read_with(self):
        """decode(into) uses the converter passed to from_payload."""
        converter = make_converter()
        converter.register_structure_hook(Money, lambda value, _: Money(value))
        frame = build_frame(250, correlation_id="c")
        assert RedisMessage.from_payload(frame, converter).decode(Money) == Money(250)
        with pytest.raises(ValidationError):
            RedisMessage.from_payload(frame).decode(Money)


class TestErrorFrames:
    def test_round_trip(self):
        """An error frame carries the exception's type name and message back as strings."""
        frame = build_error_frame(
            PaymentDeclinedError("card expired"), correlation_id="c-1"
        )
        message = RedisMessage.from_payload(frame)
        assert message.correlation_id == "c-1"
        assert message.headers == {}
        assert message.error_details() == {
            "type_name": "PaymentDeclinedError",
            "remote_message": "card expired",
            "errors": [],
            "traceback": None,
        }

    def test_validation_errors_and_traceback_travel(self):
        """A validation error's failing fields, and a traceback when given, come back."""
        error = ValidationError("bad body", errors=["x @ $.a", "y @ $.b"])
        frame = build_error_frame(error, correlation_id="c", traceback="Traceback ...")
        details = RedisMessage.from_payload(frame).error_details()
        assert details == {
            "type_name": "ValidationError",
            "remote_message": "bad body",
            "errors": ["x @ $.a", "y @ $.b"],
            "traceback": "Traceback ...",
        }

    def test_normal_reply_has_no_error_details(self):
        """A normal reply, even one whose body looks like an error, reports no error."""
        frame = build_frame({"type": "ValueError", "message": "x"}, correlation_id="c")
        assert RedisMessage.from_payload(frame).error_details() is None

    @pytest.mark.parametrize(
        "body",
        [
            pytest.param(
                {
                    "type": 5,
                    "message": {"a": 1},
                    "errors": [1, None, {"b": 2}],
                    "traceback": 7,
                },
                id="wrong-types",
            ),
            pytest.param(
                {"type": ["x"], "errors": "not a list"}, id="errors-not-a-list"
            ),
            pytest.param([1, 2, 3], id="a-list"),
            pytest.param("just text", id="a-string"),
            pytest.param(None, id="null"),
            pytest.param({}, id="empty-object"),
        ],
    )
    def test_only_strings_come_back(self, body):
        """Whatever JSON an error body holds, the details are only strings."""
        details = error_message(json.dumps(body).encode()).error_details()
        assert details is not None
        assert isinstance(details["type_name"], str)
        assert details["type_name"]
        assert isinstance(details["remote_message"], str)
        assert all(isinstance(e, str) for e in details["errors"])
        assert details["traceback"] is None or isinstance(details["traceback"], str)

    @pytest.mark.parametrize(
        "body", [b"", b"\xff\xfe not utf-8", b"{broken", b'{"type": "X"' + b"[" * 5000]
    )
    def test_unreadable_body_keeps_header_type(self, body):
        """An error body that is not a JSON object still reports the header's type name, as strings."""
        details = error_message(body, type_name="Boom").error_details()
        assert details is not None
        assert details["type_name"] == "Boom"
        assert isinstance(details["remote_message"], str)
        assert details["errors"] == []
        assert details["traceback"] is None

    @pytest.mark.parametrize(
        "type_name", ["SystemExit", "os.system", "PaymentDeclinedError", "__import__"]
    )
    def test_remote_error_never_becomes_the_named_class(self, type_name):
        """A RemoteError built from an error reply is a RemoteError, whatever type it names."""
        body = json.dumps({"type": type_name, "message": "m"}).encode()
        details = error_message(body, type_name=type_name).error_details()
        assert details is not None
        error = RemoteError(**details, destination="list:x", correlation_id="c-1")
        assert type(error) is RemoteError
        assert error.type_name == type_name
        assert error.remote_message == "m"
        assert str(error) == f"The handler of list:x raised {type_name}: m"
