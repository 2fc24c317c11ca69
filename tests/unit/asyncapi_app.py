"""A small service for tests/unit/test_asyncapi.py: handlers typed with attrs, a dataclass and pydantic, on every transport."""

from __future__ import annotations

import dataclasses
import datetime
import enum
import typing

import attrs
import pydantic

from redis_rpc import App, Path, RedisBroker, StreamSub

broker = RedisBroker("redis://127.0.0.1:1/0")
app = App(broker)


class Priority(enum.Enum):
    LOW = "low"
    HIGH = "high"


@attrs.frozen
class Item:
    sku: str
    quantity: int = 1


@attrs.frozen
class Quote:
    items: list[Item]
    total: float
    priority: Priority = Priority.LOW


@dataclasses.dataclass
class Parcel:
    weight: float
    sent: datetime.datetime
    tags: frozenset[str] = frozenset()


class Label(typing.TypedDict):
    text: str
    note: typing.NotRequired[str]


class Line(pydantic.BaseModel):
    sku: str
    quantity: int = pydantic.Field(gt=0)


class Order(pydantic.BaseModel):
    id: int
    lines: list[Line]


class Receipt(pydantic.BaseModel):
    order_id: int
    items: int


@broker.subscriber("quotes")
def quote(items: list[Item]) -> Quote:
    return Quote(items, total=1.0)


@broker.subscriber(list="parcels")
def label(parcel: Parcel) -> Label:
    return {"text": f"{parcel.weight} kg"}


@broker.subscriber(stream=StreamSub("orders", group="billing"))
@broker.publisher(list="receipts")
def place(order: Order) -> Receipt:
    return Receipt(order_id=order.id, items=len(order.lines))


@broker.subscriber("logs.{level}", no_reply=True)
def log(text: str, level: str = Path()) -> None:
    pass


@broker.subscriber(list="blobs")
def size(blob: bytes) -> int:
    return len(blob)
