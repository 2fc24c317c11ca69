"""``redis-rpc docs gen``: the AsyncAPI 3.0 document of a service, checked against the official schema."""

from __future__ import annotations

import dataclasses
import datetime
import enum
import json
import subprocess
import sys
import typing
import urllib.parse
import uuid
from pathlib import Path
from typing import Any, Literal

import attrs
import jsonschema
import pydantic
import pytest
import yaml
from typing_extensions import NotRequired

from redis_rpc import RedisBroker, make_converter
from redis_rpc._cli.asyncapi import document, dump
from redis_rpc._cli.command import main
from redis_rpc._wire.codec import decode_payload
from redis_rpc._wire.convert import unstructure
from redis_rpc._wire.message import ERROR, build_error_frame
from redis_rpc._wire.typeschema import Schemas
from redis_rpc.errors import OverloadedError, ValidationError
from tests.unit import asyncapi_app

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "tests" / "data" / "asyncapi"
TARGET = "tests.unit.asyncapi_app:app"
CLOSED_URL = "redis://127.0.0.1:1/0"


@pytest.fixture(scope="module")
def official_schema():
    """The AsyncAPI 3.0.0 JSON Schema from @asyncapi/specs, vendored under tests/data."""
    return json.loads((DATA / "3.0.0.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def doc():
    """The document of tests/unit/asyncapi_app.py, as the command writes it."""
    return json.loads(dump(document(asyncapi_app.broker, title=TARGET)))


def resolve(doc: dict[str, Any], ref: str) -> Any:
    """What the local reference *ref* (``#/a/b%7Bc%7D``) points to in *doc*."""
    assert ref.startswith("#/"), ref
    found: Any = doc
    for part in ref[2:].split("/"):
        key = urllib.parse.unquote(part).replace("~1", "/").replace("~0", "~")
        found = found[int(key)] if isinstance(found, list) else found[key]
    return found


def references(value: Any) -> list[str]:
    """Every ``$ref`` in *value*, at any depth."""
    if isinstance(value, dict):
        found = [value["$ref"]] if isinstance(value.get("$ref"), str) else []
        return found + [r for item in value.values() for r in references(item)]
    if isinstance(value, list):
        return [r for item in value for r in references(item)]
    return []


def payload_validator(doc: dict[str, Any], schema: dict[str, Any]):
    """A validator of *schema* whose references resolve in *doc*, as a payload's do."""
    return jsonschema.Draft7Validator({**schema, "components": doc["components"]})


def reply_payload(doc: dict[str, Any], operation: str) -> Any:
    """The payload of the result message that *operation* replies with."""
    reply = doc["operations"][operation]["reply"]
    message = resolve(doc, resolve(doc, reply["messages"][0]["$ref"])["$ref"])
    return message["payload"]


def request_payload(doc: dict[str, Any], operation: str) -> Any:
    """The payload of the message that *operation* receives."""
    (ref,) = doc["operations"][operation]["messages"]
    return resolve(doc, resolve(doc, ref["$ref"])["$ref"])["payload"]


class TestDocument:
    def test_validates_against_the_official_schema(self, doc, official_schema):
        """The document of an app with attrs, dataclass and pydantic handlers is valid AsyncAPI 3.0.0."""
        errors = list(jsonschema.Draft7Validator(official_schema).iter_errors(doc))
        assert not errors, [f"{list(e.absolute_path)}: {e.message}" for e in errors]

    def test_the_official_schema_refuses_a_broken_document(self, doc, official_schema):
        """The vendored schema does check: an operation with an unknown action is refused."""
        broken = json.loads(json.dumps(doc))
        broken["operations"]["quotes:QuoteSubscribe"]["action"] = "consume"
        assert not jsonschema.Draft7Validator(official_schema).is_valid(broken)

    def test_every_reference_resolves(self, doc):
        """Every $ref in the document points at something in it."""
        refs = references(doc)
        assert len(refs) > 20
        for ref in refs:
            resolve(doc, ref)

    def test_replies_name_the_return_schemas(self, doc):
        """Each request/reply operation's reply names the return type's schema: attrs, TypedDict, pydantic."""
        assert reply_payload(doc, "quotes:QuoteSubscribe") == {
            "$ref": "#/components/schemas/Quote"
        }
        assert reply_payload(doc, "parcels:LabelSubscribe") == {
            "$ref": "#/components/schemas/Label"
        }
        assert reply_payload(doc, "orders:PlaceSubscribe") == {
            "$ref": "#/components/schemas/Receipt"
        }
        assert reply_payload(doc, "blobs:SizeSubscribe") == {"type": "integer"}
        schemas = doc["components"]["schemas"]
        assert schemas["Receipt"]["required"] == ["order_id", "items"]
        assert schemas["Quote"]["properties"]["items"] == {
            "type": "array",
            "items": {"$ref": "#/components/schemas/Item"},
        }
        assert schemas["Label"]["required"] == ["text"]

    def test_requests_name_the_body_schemas(self, doc):
        """Each receive operation's message names the body parameter's schema: a list of attrs, a dataclass, a pydantic model."""
        assert request_payload(doc, "quotes:QuoteSubscribe") == {
            "type": "array",
            "items": {"$ref": "#/components/schemas/Item"},
        }
        assert request_payload(doc, "parcels:LabelSubscribe") == {
            "$ref": "#/components/schemas/Parcel"
        }
        assert request_payload(doc, "orders:PlaceSubscribe") == {
            "$ref": "#/components/schemas/Order"
        }
        order = doc["components"]["schemas"]["Order"]
        assert order["properties"]["lines"]["items"] == {
            "$ref": "#/components/schemas/Line"
        }
        assert (
            doc["components"]["schemas"]["Line"]["properties"]["quantity"][
                "exclusiveMinimum"
            ]
            == 0
        )

    def test_every_reply_can_be_an_error_reply(self, doc):
        """A reply is the result or the error reply, whose header and body match what a server sends, a shed request's retry_after included."""
        reply = doc["operations"]["orders:PlaceSubscribe"]["reply"]
        assert reply["address"]["location"] == "$message.header#/reply_to"
        error = resolve(doc, resolve(doc, reply["messages"][1]["$ref"])["$ref"])
        for failure in (
            ValidationError("bad", errors=["Field required @ $.id"]),
            OverloadedError("shed", destination="list:orders", retry_after=0.25),
        ):
            body, headers = decode_payload(
                build_error_frame(failure, correlation_id="c-1")
            )
            payload_validator(doc, error["payload"]).validate(json.loads(body))
            jsonschema.validate(headers, error["headers"])
        assert error["headers"]["required"] == [ERROR]
        described = resolve(doc, error["payload"]["$ref"])["properties"]
        assert described["retry_after"]["type"] == "number"

    def test_payload_schemas_take_what_the_converter_writes(self, doc):
        """Real bodies, unstructured by the broker's converter, fit their message's schema."""
        converter = make_converter()
        quote = asyncapi_app.Quote([asyncapi_app.Item("A", 2)], total=3.5)
        parcel = asyncapi_app.Parcel(
            1.5, datetime.datetime(2024, 5, 1), frozenset({"x"})
        )
        receipt = asyncapi_app.Receipt(order_id=1, items=2)
        for operation, value, reply in [
            ("quotes:QuoteSubscribe", quote, True),
            ("parcels:LabelSubscribe", parcel, False),
            ("parcels:LabelSubscribe", {"text": "t"}, True),
            ("orders:PlaceSubscribe", receipt, True),
        ]:
            schema = (reply_payload if reply else request_payload)(doc, operation)
            payload_validator(doc, schema).validate(unstructure(converter, value))
        with pytest.raises(jsonschema.ValidationError):
            payload_validator(
                doc, reply_payload(doc, "quotes:QuoteSubscribe")
            ).validate({"items": [{"sku": 1}], "total": 1.0})

    def test_channels_carry_their_redis_transport(self, doc):
        """Each channel's redis binding names its key and method, as FastStream's generator does."""
        bindings = {
            key: channel["bindings"]["redis"]
            for key, channel in doc["channels"].items()
            if "bindings" in channel
        }
        assert bindings == {
            "quotes:Quote": {
                "channel": "quotes",
                "method": "subscribe",
                "bindingVersion": "custom",
            },
            "parcels:Label": {
                "channel": "parcels",
                "method": "lpop",
                "bindingVersion": "custom",
            },
            "orders:Place": {
                "channel": "orders",
                "method": "xreadgroup",
                "groupName": "billing",
                "bindingVersion": "custom",
            },
            "receipts:Publisher": {
                "channel": "receipts",
                "method": "rpush",
                "bindingVersion": "custom",
            },
            "logs.{level}:Log": {
                "channel": "logs.{level}",
                "method": "psubscribe",
                "bindingVersion": "custom",
            },
            "blobs:Size": {
                "channel": "blobs",
                "method": "lpop",
                "bindingVersion": "custom",
            },
        }
        assert doc["operations"]["receipts:Publisher"]["action"] == "send"
        assert list(doc["channels"]["logs.{level}:Log"]["parameters"]) == ["level"]

    def test_a_handler_without_reply_has_none(self, doc):
        """A no_reply subscriber's operation has no reply; its text body is text/plain."""
        assert "reply" not in doc["operations"]["logs.{level}:LogSubscribe"]
        message = doc["components"]["messages"]["logs.{level}:Log:SubscribeMessage"]
        assert message["contentType"] == "text/plain"
        raw = doc["components"]["messages"]["blobs:Size:SubscribeMessage"]
        assert raw["contentType"] == "application/octet-stream"

    def test_the_server_never_shows_a_password(self):
        """The server is the broker's host and port, never its URL with a password."""
        broker = RedisBroker("redis://user:secret@127.0.0.1:1/0")
        text = dump(document(broker, title="t"))
        broker.close()
        assert "secret" not in text
        assert json.loads(text)["servers"]["development"]["host"] == "127.0.0.1:1"

    def test_a_broker_without_handlers_is_an_empty_valid_document(
        self, official_schema
    ):
        """A broker with nothing declared gives a valid document without channels or error message."""
        broker = RedisBroker(CLOSED_URL)
        empty = document(broker, title="empty")
        broker.close()
        assert empty["channels"] == {}
        assert empty["components"]["messages"] == {}
        jsonschema.validate(empty, official_schema)


class TestFastStreamShape:
    def test_keys_and_bindings_match_faststreams_document(self, doc):
        """The channels, operations and redis bindings are keyed and shaped as FastStream's generator makes them for the same app."""
        from faststream import FastStream
        from faststream.redis import RedisBroker as FastStreamBroker
        from faststream.redis import StreamSub as FastStreamStream
        from faststream.specification import AsyncAPI

        fs = FastStreamBroker("redis://127.0.0.1:1/0")

        @fs.subscriber("quotes")
        async def quote(items: list[dict[str, Any]]) -> dict[str, Any]:
            return {}

        @fs.subscriber(list="parcels")
        async def label(parcel: dict[str, Any]) -> dict[str, Any]:
            return {}

        @fs.subscriber(stream=FastStreamStream("orders", group="billing", consumer="c"))
        @fs.publisher(list="receipts")
        async def place(order: dict[str, Any]) -> dict[str, Any]:
            return {}

        @fs.subscriber("logs.{level}")
        async def log(text: str) -> None:
            pass

        @fs.subscriber(list="blobs")
        async def size(blob: bytes) -> int:
            return 0

        spec = AsyncAPI(schema_version="3.0.0")
        theirs = (
            FastStream(fs, specification=spec).schema.to_specification().to_jsonable()
        )
        ours = doc
        assert set(theirs["channels"]) <= set(ours["channels"])
        assert set(theirs["operations"]) <= set(ours["operations"])
        for key, channel in theirs["channels"].items():
            binding = dict(channel["bindings"]["redis"])
            binding.pop("consumerName", None)  # ours draw one per process by default
            assert ours["channels"][key]["address"] == channel["address"]
            assert ours["channels"][key]["bindings"]["redis"] == binding
            assert ours["channels"][key]["messages"] == channel["messages"]
        for key, operation in theirs["operations"].items():
            assert {
                k: v for k, v in ours["operations"][key].items() if k != "reply"
            } == operation
        assert (
            ours["servers"]["development"]["protocol"]
            == theirs["servers"]["development"]["protocol"]
        )


class Shade(enum.Enum):
    DARK = 1


@attrs.frozen
class Tree:
    name: str
    children: list[Tree] = attrs.Factory(list)


@dataclasses.dataclass
class Pair:
    both: tuple[int, str]
    kind: Literal["a", "b"]
    shade: Shade | None = None


class Extras(typing.TypedDict, total=False):
    size: int
    note: NotRequired[str]


class Shape(pydantic.BaseModel):
    sides: int


class TestSchemas:
    def test_recursive_attrs_class_refers_to_itself(self):
        """A recursive attrs class is one component that refers to itself."""
        schemas = Schemas()
        assert schemas.of(Tree) == {"$ref": "#/components/schemas/Tree"}
        assert schemas.components["Tree"]["properties"]["children"]["items"] == {
            "$ref": "#/components/schemas/Tree"
        }
        assert schemas.components["Tree"]["required"] == ["name"]

    def test_dataclass_with_tuple_literal_and_enum(self):
        """A dataclass's tuple, Literal and optional enum fields become draft-07 schemas."""
        schemas = Schemas()
        schemas.of(Pair)
        pair = schemas.components["Pair"]
        assert pair["properties"]["both"] == {
            "type": "array",
            "items": [{"type": "integer"}, {"type": "string"}],
            "minItems": 2,
            "maxItems": 2,
        }
        assert pair["properties"]["kind"] == {"enum": ["a", "b"]}
        assert pair["required"] == ["both", "kind"]
        assert schemas.components["Shade"] == {"title": "Shade", "enum": [1]}

    def test_typeddict_without_required_keys(self):
        """A total=False TypedDict lists no required keys."""
        schemas = Schemas()
        schemas.of(Extras)
        assert "required" not in schemas.components["Extras"]

    def test_same_name_from_two_modules_gets_two_components(self):
        """Two classes of one name are two components, the second numbered."""
        first = attrs.make_class("Thing", {"a": attrs.field(type=int)})
        second = attrs.make_class("Thing", {"b": attrs.field(type=str)})
        schemas = Schemas()
        assert schemas.of(first) == {"$ref": "#/components/schemas/Thing"}
        assert schemas.of(second) == {"$ref": "#/components/schemas/Thing2"}

    @pytest.mark.parametrize(
        ("target", "schema"),
        [
            (Any, {}),
            (None, {"type": "null"}),
            (int | None, {"anyOf": [{"type": "integer"}, {"type": "null"}]}),
            (
                dict[str, float],
                {"type": "object", "additionalProperties": {"type": "number"}},
            ),
            (
                set[str],
                {"type": "array", "items": {"type": "string"}, "uniqueItems": True},
            ),
            (tuple[int, ...], {"type": "array", "items": {"type": "integer"}}),
            (datetime.date, {"type": "string", "format": "date"}),
            (typing.Annotated[int, "meta"], {"type": "integer"}),
        ],
        ids=repr,
    )
    def test_plain_types(self, target, schema):
        """Builtin types and collections map to their JSON Schema."""
        assert Schemas().of(target) == schema

    def test_pydantic_model_and_constrained_type(self):
        """A model is a component as pydantic describes it; a Field-constrained type is inline."""
        schemas = Schemas()
        assert schemas.of(Shape) == {"$ref": "#/components/schemas/Shape"}
        assert schemas.components["Shape"]["required"] == ["sides"]
        constrained = typing.Annotated[int, pydantic.Field(ge=1)]
        assert schemas.of(constrained) == {"minimum": 1, "type": "integer"}


@pytest.fixture
def project(tmp_path, monkeypatch):
    """An empty directory as the current one, which the command adds to sys.path only for this test."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    return tmp_path


def _service(project: Path) -> str:
    """Write a service module with one handler into *project*; return its target."""
    name = f"svc_{uuid.uuid4().hex}"
    (project / f"{name}.py").write_text(
        "from redis_rpc import RedisBroker\n"
        "broker = RedisBroker('redis://127.0.0.1:1/0')\n"
        "@broker.subscriber(list='jobs')\n"
        "def work(n: int) -> str:\n"
        "    return str(n)\n"
    )
    return f"{name}:broker"


class TestCommand:
    def test_writes_asyncapi_json(self, project, capsys, official_schema):
        """docs gen writes asyncapi.json in the current directory, a valid AsyncAPI document."""
        assert main(["docs", "gen", _service(project)]) == 0
        written = json.loads((project / "asyncapi.json").read_text())
        jsonschema.validate(written, official_schema)
        assert "asyncapi.json" in capsys.readouterr().out

    def test_out_and_yaml(self, project):
        """--yaml writes YAML, to --out's path, with the same content as the JSON."""
        target = _service(project)
        assert main(["docs", "gen", target, "--out", "spec.json"]) == 0
        assert main(["docs", "gen", target, "--yaml", "--out", "spec.yaml"]) == 0
        as_json = json.loads((project / "spec.json").read_text())
        assert yaml.safe_load((project / "spec.yaml").read_text()) == as_json

    def test_out_dash_prints(self, project, capsys):
        """--out - prints the document instead of writing a file."""
        assert main(["docs", "gen", _service(project), "--out", "-"]) == 0
        assert json.loads(capsys.readouterr().out)["asyncapi"] == "3.0.0"
        assert not list(project.glob("asyncapi.*"))

    def test_a_bad_target_exits_2(self, project, capsys):
        """A target that does not load is one line on stderr and status 2."""
        assert main(["docs", "gen", "missing_module:app"]) == 2
        assert capsys.readouterr().err.startswith("redis-rpc: error: Cannot import")

    def test_yaml_without_pyyaml_exits_2(self, project, capsys, monkeypatch):
        """--yaml without PyYAML installed says what to install, with status 2."""
        monkeypatch.setitem(sys.modules, "yaml", None)
        assert main(["docs", "gen", _service(project), "--yaml"]) == 2
        assert "pip install pyyaml" in capsys.readouterr().err

    @pytest.mark.timeout(60)
    def test_the_installed_command_writes_the_document(self):
        """python -m redis_rpc docs gen prints the document of the test service, as the console script would."""
        done = subprocess.run(
            [sys.executable, "-m", "redis_rpc", "docs", "gen", TARGET, "--out", "-"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=50,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        assert "orders:PlaceSubscribe" in json.loads(done.stdout)["operations"]

    def test_the_app_target_of_the_test_service(self, project, official_schema):
        """The test service's App target works as well as a broker target."""
        assert main(["docs", "gen", TARGET, "--out", "app.json"]) == 0
        jsonschema.validate(
            json.loads((project / "app.json").read_text()), official_schema
        )
