"""Garbage on the wire: consumers log it, survive it, and answer the next request."""

from __future__ import annotations

import random
import struct

import pytest

from redis_rpc import StreamSub
from redis_rpc._server.process import logger as consumer_logger
from redis_rpc._wire.codec import MAGIC, decode_payload, encode_frame
from redis_rpc.errors import MessageDecodeError
from tests.conftest import LONG_TIMEOUT
from tests.helpers import wait_for

TRANSPORTS = ["channel", "list", "stream"]
_PREFIX = struct.Struct(">8sHII")


def _frame(headers_start: int, data_start: int, rest: bytes) -> bytes:
    return _PREFIX.pack(MAGIC, 1, headers_start, data_start) + rest


# Frames that start like one but lie: each must be rejected and logged once.
BROKEN_FRAMES = {
    "truncated prefix": MAGIC + b"\x00\x01\x00",
    "body past the end": _frame(18, 4_000_000_000, b"\x00\x00"),
    "header count past the end": _frame(18, 20, b"\xff\xff"),
    "header length past the end": _frame(18, 26, b"\x00\x01\xff\xf0abc"),
    "non-UTF-8 header": _frame(18, 30, b"\x00\x01\x00\x02\xff\xfe\x00\x02ok"),
    "cut in half": encode_frame(b"body", {"correlation_id": "c", "k": "v"})[:30],
}


def _mutants(count: int) -> list[bytes]:
    """Valid frames with random bytes changed: some still parse, some do not."""
    rng = random.Random(20261125)  # fixed, so that a failure can be replayed
    base = encode_frame(
        b'{"n": 1}', {"correlation_id": "c", "content-type": "application/json"}
    )
    mutants = []
    for _ in range(count):
        data = bytearray(base)
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        mutants.append(bytes(data[: rng.randint(0, len(data))]))
    return mutants


def _garbage(count: int) -> list[bytes]:
    rng = random.Random(7)
    return [rng.randbytes(rng.randint(0, 64)) for _ in range(count)]


def _unreadable(payload: bytes) -> bool:
    try:
        decode_payload(payload)
    except MessageDecodeError:
        return True
    return False


def _send_raw(raw, transport: str, name: str, payload: bytes) -> None:
    if transport == "channel":
        raw.publish(name, payload)
    elif transport == "list":
        raw.rpush(name, payload)
    else:
        raw.xadd(name, {"__data__": payload})


@pytest.mark.timeout(60)
@pytest.mark.parametrize("transport", TRANSPORTS)
def test_consumer_survives_fuzzed_frames(
    make_broker, unique_name, raw, caplog, transport
):
    """Broken, mutated and random payloads never kill or stall the consumer: each
    broken frame is logged once as rejected, and a request sent afterwards is answered."""
    broker = make_broker()
    handled = []
    target = {
        transport: StreamSub(unique_name, claim_idle_time=None)
        if transport == "stream"
        else unique_name
    }

    @broker.subscriber(**target)
    def echo(body: object) -> object:
        handled.append(body)
        return body

    payloads = list(BROKEN_FRAMES.values()) + _mutants(150) + _garbage(50)
    with broker:
        for payload in payloads:
            _send_raw(raw, transport, unique_name, payload)
        # A sentinel after the garbage: once it is handled, all before it was taken.
        _send_raw(raw, transport, unique_name, b"sentinel")
        assert wait_for(lambda: b"sentinel" in handled, LONG_TIMEOUT)
        reply = broker.request({"after": "fuzz"}, **target, timeout=LONG_TIMEOUT)
        assert reply.decode() == {"after": "fuzz"}
    rejected = [
        r.getMessage()
        for r in caplog.records
        if r.name == consumer_logger.name and "rejected" in r.getMessage()
    ]
    # One line per payload that is not a frame, and nothing for the rest.
    assert len(rejected) == sum(map(_unreadable, payloads))
    for name, frame in BROKEN_FRAMES.items():
        with pytest.raises(MessageDecodeError) as info:
            decode_payload(frame)
        assert any(f"{len(frame)} bytes): {info.value}" in line for line in rejected), (
            name
        )
    # Printable lines: no frame bytes, and no byte that is not ASCII.
    assert not any("BIN" in line or not line.isascii() for line in rejected)
    died = [r for r in caplog.records if r.levelname == "CRITICAL"]
    assert died == []


def test_stream_entry_without_data_field_is_handled_as_json(
    make_broker, unique_name, raw
):
    """An entry written by someone else, without __data__, reaches the handler as the JSON of its fields."""
    broker = make_broker()
    seen = []

    @broker.subscriber(stream=unique_name)
    def handle(body: dict[str, str]) -> None:
        seen.append(body)

    with broker:
        raw.xadd(unique_name, {"sku": "A-1", "qty": "\xff2"})
        assert wait_for(lambda: seen, LONG_TIMEOUT)
    assert seen == [{"sku": "A-1", "qty": "\xff2"}]
