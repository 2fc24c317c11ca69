"""Pydantic models as typed bodies, over a real Redis."""

from __future__ import annotations

import pydantic
import pytest

from redis_rpc import RemoteError
from tests.conftest import LONG_TIMEOUT


class Line(pydantic.BaseModel):
    sku: str
    quantity: int = pydantic.Field(gt=0)


class Order(pydantic.BaseModel):
    id: int
    lines: list[Line]


class Receipt(pydantic.BaseModel):
    order_id: int
    items: int


def _serve(broker, name, calls):
    @broker.subscriber(list=name)
    def place(order: Order) -> Receipt:
        calls.append(order)
        return Receipt(order_id=order.id, items=sum(x.quantity for x in order.lines))


def test_order_to_receipt_round_trips(make_broker, unique_name):
    """A pydantic Order -> Receipt handler answers a model sent as the body with a Receipt."""
    broker = make_broker()
    calls: list[Order] = []
    _serve(broker, unique_name, calls)
    order = Order(id=1, lines=[Line(sku="A", quantity=2), Line(sku="B", quantity=3)])
    with broker:
        reply = broker.request(order, list=unique_name, timeout=LONG_TIMEOUT)
    assert reply.decode(Receipt) == Receipt(order_id=1, items=5)
    assert calls == [order]


def test_bad_order_is_refused_field_by_field(make_broker, unique_name):
    """A body that does not fit Order is refused with RemoteError("ValidationError"), one line per field, and the handler never runs."""
    broker = make_broker()
    calls: list[Order] = []
    _serve(broker, unique_name, calls)
    bad = {"id": "one", "lines": [{"sku": "A", "quantity": 0}]}
    with broker, pytest.raises(RemoteError) as info:
        broker.request(bad, list=unique_name, timeout=LONG_TIMEOUT)
    assert info.value.type_name == "ValidationError"
    assert info.value.errors == (
        "Input should be a valid integer, unable to parse string as an integer @ $.id",
        "Input should be greater than 0 @ $.lines[0].quantity",
    )
    assert calls == []
