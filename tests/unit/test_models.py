"""Pydantic models, dataclasses and TypedDicts as typed bodies, without Redis."""

from __future__ import annotations

import ast
import dataclasses
import datetime
import subprocess
import sys
from pathlib import Path
from typing import Annotated, TypedDict

import attrs
import cattrs
import pydantic
import pydantic.dataclasses
import pytest
import typing_extensions
from typing_extensions import NotRequired, Required

import redis_rpc
from redis_rpc import Path as PathParam
from redis_rpc import RedisBroker, RedisMessage, RemoteError, make_converter
from redis_rpc._wire.convert import check_structurable, structure, unstructure
from redis_rpc._wire.message import build_frame
from redis_rpc.errors import SetupError, ValidationError
from redis_rpc.testing import TestRedisBroker
from tests.conftest import LONG_TIMEOUT

CLOSED_URL = "redis://127.0.0.1:1/0"
PACKAGE_DIR = Path(redis_rpc.__file__).parent


class Line(pydantic.BaseModel):
    sku: str
    quantity: int = pydantic.Field(gt=0)


class Order(pydantic.BaseModel):
    id: int
    lines: list[Line]


class Receipt(pydantic.BaseModel):
    order_id: int = pydantic.Field(alias="orderId")
    total: int


class Stamped(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(strict=True)

    at: datetime.datetime


@pydantic.dataclasses.dataclass
class Coupon:
    code: str
    percent: int = pydantic.Field(le=100)


@attrs.frozen
class Basket:
    owner: str
    order: Order


@dataclasses.dataclass
class Parcel:
    weight: float
    orders: list[Order] = dataclasses.field(default_factory=list)


class Address(TypedDict):
    street: str
    note: NotRequired[str]


class Contact(typing_extensions.TypedDict, total=False):
    name: Required[str]
    address: Address


@dataclasses.dataclass(kw_only=True)
class Shipment:
    to: Contact
    when: datetime.datetime | None = None


class Unknown:
    """A plain class that neither cattrs nor pydantic can validate."""


def _broker(**options):
    return RedisBroker(CLOSED_URL, **options)


class TestPydantic:
    def test_handler_round_trips_order_to_receipt(self):
        """A handler taking an Order model and returning a Receipt model round-trips through TestRedisBroker."""
        broker = _broker()

        @broker.subscriber(list="orders")
        def place(order: Order) -> Receipt:
            total = sum(line.quantity for line in order.lines)
            return Receipt(orderId=order.id, total=total)

        body = {"id": 7, "lines": [{"sku": "A", "quantity": 2}]}
        with TestRedisBroker(broker) as test:
            reply = test.request(body, list="orders", timeout=LONG_TIMEOUT)
        assert reply.decode() == {"orderId": 7, "total": 2}
        assert reply.decode(Receipt) == Receipt(orderId=7, total=2)

    def test_model_instance_is_a_request_body(self):
        """A model instance sent with request() reaches the handler as the same model."""
        broker = _broker()
        seen = []

        @broker.subscriber(channel="orders")
        def place(order: Order) -> None:
            seen.append(order)

        order = Order(id=1, lines=[Line(sku="A", quantity=1)])
        with TestRedisBroker(broker) as test:
            test.request(order, channel="orders", timeout=LONG_TIMEOUT)
        assert seen == [order]

    def test_model_instance_is_dumped_as_json_by_alias(self):
        """A model body is serialised with model_dump(mode="json"), by alias, so it validates again."""
        frame = build_frame(Receipt(orderId=3, total=9), correlation_id="c")
        message = RedisMessage.from_payload(frame)
        assert message.decode() == {"orderId": 3, "total": 9}
        assert message.decode(Receipt) == Receipt(orderId=3, total=9)

    def test_bad_body_is_a_remote_validation_error_per_field(self):
        """A body that does not fit the model reaches the caller as RemoteError("ValidationError"), one line per field."""
        broker = _broker()
        calls = []

        @broker.subscriber(list="orders")
        def place(order: Order) -> None:
            calls.append(order)

        body = {"id": "x", "lines": [{"sku": "A", "quantity": 0}, {}]}
        with TestRedisBroker(broker) as test, pytest.raises(RemoteError) as info:
            test.request(body, list="orders", timeout=LONG_TIMEOUT)
        assert info.value.type_name == "ValidationError"
        assert info.value.errors == (
            "Input should be a valid integer, unable to parse string as an integer @ $.id",
            "Input should be greater than 0 @ $.lines[0].quantity",
            "Field required @ $.lines[1].sku",
            "Field required @ $.lines[1].quantity",
        )
        assert calls == []

    def test_decode_into_a_model(self):
        """RedisMessage.decode(Model) returns the model, and raises ValidationError naming each failing field."""
        good = RedisMessage(body=b'{"sku": "A", "quantity": 2}')
        bad = RedisMessage(body=b'{"quantity": -1}')
        assert good.decode(Line) == Line(sku="A", quantity=2)
        with pytest.raises(ValidationError) as info:
            bad.decode(Line)
        assert info.value.errors == (
            "Field required @ $.sku",
            "Input should be greater than 0 @ $.quantity",
        )
        assert str(info.value).startswith("The body does not fit Line: Field required")

    @pytest.mark.parametrize(
        ("target", "value", "where"),
        [
            pytest.param(
                list[Line], [{"sku": "A", "quantity": 1}, {"sku": 1}], "$[1].sku"
            ),
            pytest.param(
                dict[str, Line],
                {"a": {"sku": "A", "quantity": "many"}},
                "$['a'].quantity",
            ),
            pytest.param(
                Basket,
                {"owner": "o", "order": {"id": 1, "lines": [{}]}},
                "$.order.lines[0].sku",
            ),
            pytest.param(
                Parcel, {"weight": 1.0, "orders": [{"lines": []}]}, "$.orders[0].id"
            ),
            pytest.param(Line | None, {"sku": "A"}, "$.quantity"),
        ],
    )
    def test_nested_model_errors_name_the_full_path(self, target, value, where):
        """A model inside a list, dict, attrs class, dataclass or union reports its fields under the outer path."""
        with pytest.raises(ValidationError) as info:
            structure(make_converter(), value, target)
        assert any(error.endswith(f" @ {where}") for error in info.value.errors), (
            info.value.errors
        )

    def test_models_inside_attrs_and_dataclasses_round_trip(self):
        """attrs classes and dataclasses holding models are structured and unstructured through pydantic."""
        converter = make_converter()
        data = {
            "weight": 2.5,
            "orders": [{"id": 1, "lines": [{"sku": "A", "quantity": 3}]}],
        }
        parcel = structure(converter, data, Parcel)
        assert parcel.orders[0].lines[0] == Line(sku="A", quantity=3)
        assert unstructure(converter, parcel) == data

    def test_body_arrives_as_json_so_strict_models_take_iso_datetimes(self):
        """Bodies are validated in pydantic's JSON mode: a strict model takes an ISO 8601 string for a datetime."""
        stamped = RedisMessage(body=b'{"at": "2024-05-01T12:00:00Z"}').decode(Stamped)
        assert stamped.at == datetime.datetime(
            2024, 5, 1, 12, tzinfo=datetime.timezone.utc
        )
        with pytest.raises(ValidationError):
            RedisMessage(body=b'{"at": 1714564800}').decode(Stamped)

    def test_pydantic_dataclass_is_validated_by_pydantic(self):
        """A pydantic dataclass is validated by pydantic, constraints included, and dumped by it."""
        converter = make_converter()
        assert structure(converter, {"code": "X", "percent": 10}, Coupon) == Coupon(
            "X", 10
        )
        with pytest.raises(ValidationError) as info:
            structure(converter, {"code": "X", "percent": 101}, Coupon)
        assert info.value.errors == (
            "Input should be less than or equal to 100 @ $.percent",
        )
        assert unstructure(converter, Coupon("X", 10)) == {"code": "X", "percent": 10}

    def test_field_constraints_on_a_body_and_a_path_parameter(self):
        """Annotated types constrained with pydantic.Field hold for the body and for path parameters."""
        broker = _broker()

        @broker.subscriber("stock.{shelf}")
        def count(
            amount: Annotated[int, pydantic.Field(ge=0)],
            shelf: Annotated[int, pydantic.Field(gt=0)] = PathParam(),
        ) -> list[int]:
            return [shelf, amount]

        with TestRedisBroker(broker) as test:
            assert test.request(5, "stock.3", timeout=LONG_TIMEOUT).decode() == [3, 5]
            with pytest.raises(RemoteError) as body_error:
                test.request(-1, "stock.3", timeout=LONG_TIMEOUT)
            with pytest.raises(RemoteError) as path_error:
                test.request(5, "stock.0", timeout=LONG_TIMEOUT)
        assert body_error.value.errors == (
            "Input should be greater than or equal to 0 @ $",
        )
        assert path_error.value.errors == ("Input should be greater than 0 @ $",)

    def test_a_type_pydantic_cannot_handle_fails_at_decoration(self):
        """A handler whose pydantic-constrained type pydantic cannot validate is refused when it is declared."""
        broker = _broker()
        with pytest.raises(SetupError, match="Cannot structure the body of handler"):

            @broker.subscriber(list="orders")
            def place(thing: Annotated[Unknown, pydantic.Field(title="x")]) -> None:
                pass

    def test_pydantic_own_types_go_to_pydantic(self):
        """A type pydantic defines, such as AnyUrl, is validated and dumped by pydantic."""
        converter = make_converter()
        url = structure(converter, "https://example.com/a", pydantic.AnyUrl)
        assert isinstance(url, pydantic.AnyUrl)
        assert unstructure(converter, url) == "https://example.com/a"
        with pytest.raises(ValidationError):
            structure(converter, "not a url", pydantic.AnyUrl)

    def test_a_users_module_named_like_pydantic_stays_with_cattrs(self):
        """A class of the user's own module pydantic_helpers is not taken for one of pydantic's."""

        @attrs.frozen
        class Helper:
            name: str

        Helper.__module__ = "pydantic_helpers"
        assert structure(make_converter(), {"name": "h"}, Helper) == Helper("h")

    def test_global_converter_is_left_alone(self):
        """Using models through a broker registers nothing on cattrs' global converter."""
        check_structurable(make_converter(), Order)
        with pytest.raises(cattrs.errors.StructureHandlerNotFoundError):
            cattrs.global_converter.get_structure_hook(Receipt)

    def test_a_plain_cattrs_converter_knows_no_models(self):
        """A broker given a converter not built by make_converter() refuses a model annotation when it is declared."""
        broker = _broker(converter=cattrs.Converter())
        with pytest.raises(SetupError):

            @broker.subscriber(list="orders")
            def place(order: Order) -> None:
                pass


class TestDataclassesAndTypedDicts:
    def test_dataclass_and_typeddict_handler_round_trips(self):
        """A handler taking a kw-only dataclass holding TypedDicts round-trips through TestRedisBroker."""
        broker = _broker()

        @broker.subscriber(list="ship")
        def ship(shipment: Shipment) -> Shipment:
            return shipment

        body = {"to": {"name": "Ann", "address": {"street": "Main"}}, "when": None}
        with TestRedisBroker(broker) as test:
            reply = test.request(body, list="ship", timeout=LONG_TIMEOUT)
        assert reply.decode(Shipment) == Shipment(
            to={"name": "Ann", "address": {"street": "Main"}}
        )
        assert reply.decode() == body

    def test_not_required_keys_under_string_annotations(self):
        """NotRequired and Required keys hold although this module's annotations are strings."""
        converter = make_converter()
        assert Address.__required_keys__ == {"street", "note"}  # the class got it wrong
        assert structure(converter, {"street": "Main"}, Address) == {"street": "Main"}
        assert structure(converter, {"name": "Ann"}, Contact) == {"name": "Ann"}
        with pytest.raises(ValidationError) as info:
            structure(converter, {"address": {"note": "n"}}, Contact)
        assert set(info.value.errors) == {
            "required field missing @ $.name",
            "required field missing @ $.address.street",
        }

    def test_typeddict_fields_are_checked(self):
        """A TypedDict's fields are structured strictly, and the error names each one."""
        with pytest.raises(ValidationError) as info:
            structure(make_converter(), {"street": 5, "note": ["n"]}, Address)
        assert info.value.errors == (
            "invalid value for type, expected str @ $.street",
            "invalid value for type, expected str @ $.note",
        )

    def test_dataclass_errors_name_each_field(self):
        """A dataclass that does not fit names each failing field, nested ones included."""
        with pytest.raises(ValidationError) as info:
            structure(
                make_converter(), {"to": {"address": {}}, "when": "soon"}, Shipment
            )
        assert set(info.value.errors) == {
            "required field missing @ $.to.name",
            "required field missing @ $.to.address.street",
            "invalid value for type, expected datetime.datetime | None @ $.when",
        }


def _run(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=PACKAGE_DIR.parent,
        capture_output=True,
        text=True,
        timeout=50,
        check=False,
    )


class TestPydanticIsOptional:
    @pytest.mark.timeout(60)
    def test_import_does_not_import_pydantic(self):
        """import redis_rpc (and its testing and errors modules) does not import pydantic."""
        done = _run(
            "import sys\n"
            "import redis_rpc, redis_rpc.errors, redis_rpc.testing\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('pydantic', 'pydantic_core')))\n"
        )
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == "[]"

    @pytest.mark.timeout(60)
    def test_broker_works_with_pydantic_blocked(self):
        """A broker whose handlers use attrs, dataclasses and TypedDicts serves with pydantic unimportable."""
        done = _run(
            "import sys\n"
            "sys.modules['pydantic'] = None\n"
            "import dataclasses, typing, attrs\n"
            "from redis_rpc import RedisBroker, RemoteError\n"
            "from redis_rpc.testing import TestRedisBroker\n"
            "@attrs.frozen\n"
            "class Item:\n"
            "    sku: str\n"
            "@dataclasses.dataclass\n"
            "class Box:\n"
            "    items: list[Item]\n"
            "class Label(typing.TypedDict):\n"
            "    text: str\n"
            "broker = RedisBroker('redis://127.0.0.1:1/0')\n"
            "@broker.subscriber(list='box')\n"
            "def pack(box: Box) -> Label:\n"
            "    return {'text': ','.join(i.sku for i in box.items)}\n"
            "with TestRedisBroker(broker) as test:\n"
            "    print(test.request(Box([Item('A'), Item('B')]), list='box').decode())\n"
            "    try:\n"
            "        test.request({'items': [{}]}, list='box')\n"
            "    except RemoteError as exc:\n"
            "        print(exc.errors)\n"
        )
        assert done.returncode == 0, done.stderr
        assert done.stdout.splitlines() == [
            "{'text': 'A,B'}",
            "('required field missing @ $.items[0].sku',)",
        ]

    @pytest.mark.parametrize("path", sorted(PACKAGE_DIR.rglob("*.py")), ids=str)
    def test_no_module_imports_pydantic(self, path):
        """No module of redis_rpc imports pydantic: it is recognised in sys.modules, never imported."""
        imported: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                imported.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module:
                imported.add(node.module.split(".")[0])
        assert not imported & {"pydantic", "pydantic_core"}
